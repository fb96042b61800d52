"""Real inputs for verification, recorded from a short run of the live path.

`record_inputs` runs `engine.stream.render_motion` over a couple of seconds of speech
(espeak-ng sentences, or a synthetic voiced signal where espeak-ng is missing) with every
network call going through a recording PyTorch runner, then keeps, per network, the first
``calls`` calls of its most frequent shape stacked along the batch axis (so one verification
call also covers a batch of several), and for the renderer ``calls`` frames of the motion the
run produced with the bundled portrait's tensors. Every EmoDiff form and renderer size in an
export folder gets its inputs (one run per form). Saved as ``recorded_inputs.npz`` beside the
export, keys ``<model>/<input>``.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from engine.backends import DEFAULT_FORM, TorchRunner
from engine.backends.kinds import TORCH
from engine.backends.networks import torch_renderer
from engine.motion_model import MotionModels
from export.graphs import Graph, motion_graphs, networks_of, renderer_graph
from export.manifest import write_atomic

log = logging.getLogger(__name__)

RECORDED = "recorded_inputs.npz"
SECONDS = 2.0  # of speech: about 25 blocks of the live path
CALLS = 8  # recorded calls kept per network (the batch verification runs at)


class RecordingRunner(TorchRunner):
    """A PyTorch runner that keeps a copy of every call's inputs."""

    def __init__(self, graph: Graph):
        super().__init__(graph.name, graph.module)
        self.calls: list[tuple[np.ndarray, ...]] = []

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(t.detach().numpy().copy() for t in inputs))
        return super().__call__(*inputs)


def stack_calls(graph: Graph, calls: list[tuple[np.ndarray, ...]], count: int) -> dict:
    """The first ``count`` calls of the most frequent shape, stacked along the batch axis."""
    if not calls:
        raise ValueError(f"{graph.name}: the recording run made no call of it")
    shapes = Counter(tuple(a.shape for a in call) for call in calls)
    common = shapes.most_common(1)[0][0]
    kept = [c for c in calls if tuple(a.shape for a in c) == common][:count]
    return {
        f"{graph.name}/{spec.name}": np.concatenate([c[i] for c in kept])
        for i, spec in enumerate(graph.inputs)
    }


def speech(seconds: float = SECONDS) -> np.ndarray:
    from dreamtalk.bench_stream import speech_audio

    audio, what = speech_audio(seconds)
    log.info("recording network inputs from %.1f s of %s", seconds, what)
    return audio


def record_inputs(
    models: MotionModels,
    sizes: tuple[int, ...] = (256,),
    forms: tuple[str, ...] = (DEFAULT_FORM,),
    calls: int = CALLS,
    audio: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Recorded inputs (module docstring), keys ``<model>/<input>``, of the motion networks
    with EmoDiff in each of ``forms`` (one run each) and of the renderer at each of ``sizes``."""
    audio = speech() if audio is None else audio
    out: dict[str, np.ndarray] = {}
    for form in forms:
        motion = _record_run(models, form, calls, audio, out)
    for size in sizes:
        render = renderer_graph(size)
        picks = np.linspace(0, len(motion) - 1, min(calls, len(motion))).round().astype(int)
        out[f"{render.name}/motion"] = motion[picks].astype(np.float32)
        for spec in render.inputs[1:]:
            out[f"{render.name}/{spec.name}"] = render.constants[spec.name].numpy()
    return out


def _record_run(
    models: MotionModels, form: str, calls: int, audio: np.ndarray, out: dict[str, np.ndarray]
) -> np.ndarray:
    """One run of the live path with EmoDiff in ``form``; adds what it recorded to ``out`` (the
    networks both forms share are kept from the first run) and returns the motion."""
    from engine.stream import render_motion

    graphs = motion_graphs(models, form)
    recorders: dict[str, RecordingRunner] = {g.name: RecordingRunner(g) for g in graphs}
    nets = networks_of(recorders, TORCH, models, torch_renderer)
    previous, models.networks = models.networks, nets
    try:
        motion = render_motion(models, audio, seed=0)
    finally:
        models.networks = previous
    for g in graphs:
        for key, value in stack_calls(g, recorders[g.name].calls, calls).items():
            out.setdefault(key, value)
    return motion


def save_recorded(folder: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = write_atomic(Path(folder) / RECORDED, buffer.getvalue())
    log.info("recorded inputs of %d networks in %s",
             len({k.split("/")[0] for k in arrays}), path)  # fmt: skip
    return path


def load_recorded(folder: str | Path) -> dict[str, np.ndarray]:
    path = Path(folder) / RECORDED
    if not path.is_file():
        raise ValueError(f"{path}: no recorded inputs (run `dreamtalk export --out {folder}`)")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def inputs_of(graph: Graph, recorded: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """The graph's recorded inputs as tensors, in its input order."""
    try:
        return tuple(torch.from_numpy(recorded[f"{graph.name}/{s.name}"]) for s in graph.inputs)
    except KeyError as err:
        raise ValueError(f"{graph.name}: no recorded input {err.args[0]!r}") from err
