"""Verification: each exported model against PyTorch on recorded real inputs.

For every model in the folder's manifest, the recorded inputs (`export.recording`) run through
PyTorch (the same module that was exported, with the current weights) and through the exported
file on a backend (ONNX Runtime for ONNX files, TensorRT for engines); the largest absolute
difference must be within the model's tolerance (the manifest's, its FP16 one for FP16
engines, or one given for all). Batches larger than a TensorRT engine's max batch are run in
slices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.backends import Backend, Runner, TorchBackend, make_backend
from engine.backends.kinds import ORT_CPU
from engine.motion_model import MotionModels
from export.graphs import (
    AUDIO,
    LIP_AUDIO,
    REFINER,
    SAMPLER,
    STEP,
    Graph,
    audio_encoder_graph,
    refiner_graph,
    renderer_graph,
    sampler_graph,
    step_graph,
)
from export.manifest import read_manifest, sha256_file
from export.recording import inputs_of, load_recorded

log = logging.getLogger(__name__)


@dataclass
class Check:
    """One model's verification."""

    model: str
    backend: str
    file: str
    batch: int
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance  # NaN fails too


def graph_for(name: str, entry: dict, models: MotionModels) -> Graph:
    """The PyTorch graph a manifest entry was exported from."""
    if name in (AUDIO, LIP_AUDIO):
        return audio_encoder_graph(models, lip=name == LIP_AUDIO)
    if name == SAMPLER:
        return sampler_graph(models, steps=entry.get("steps"))
    if name == STEP:
        return step_graph(models)
    if name == REFINER:
        return refiner_graph(models)
    if name.startswith("renderer_"):
        return renderer_graph(int(entry.get("size", name.removeprefix("renderer_"))))
    raise ValueError(f"unknown model {name!r} in the manifest")


def _batched(graph: Graph) -> list[bool]:
    return [bool(s.shape) and s.shape[0] == "batch" for s in graph.inputs]


def run_sliced(
    runner: Runner, graph: Graph, inputs: tuple[torch.Tensor, ...], max_batch: int
) -> torch.Tensor:
    """Run ``inputs`` in slices of at most ``max_batch`` along the batch axis."""
    batched = _batched(graph)
    n = next(t.shape[0] for t, b in zip(inputs, batched, strict=True) if b)
    outs = []
    for start in range(0, n, max_batch):
        part = [
            t[start : start + max_batch] if b else t for t, b in zip(inputs, batched, strict=True)
        ]
        outs.append(runner(*part))
    return torch.cat(outs)


def verify_model(
    graph: Graph,
    path: Path,
    backend: Backend,
    inputs: tuple[torch.Tensor, ...],
    tolerance: float,
    max_batch: int | None = None,
) -> Check:
    reference = TorchBackend().runner(graph)(*inputs)
    runner = backend.runner(graph, path)
    out = run_sliced(runner, graph, inputs, max_batch) if max_batch else runner(*inputs)
    if out.shape != reference.shape:
        raise ValueError(f"{graph.name}: {path.name} gives {tuple(out.shape)}, "
                         f"PyTorch {tuple(reference.shape)}")  # fmt: skip
    diff = float((out.float() - reference).abs().max()) if out.numel() else 0.0
    batch = next((t.shape[0] for t, b in zip(inputs, _batched(graph), strict=True) if b), 1)
    return Check(graph.name, runner.backend, path.name, batch, diff, tolerance)


def verify_folder(
    folder: str | Path,
    models: MotionModels,
    tensorrt: bool = False,
    tolerance: float | None = None,
) -> list[Check]:
    """Verify every model of an export folder: its ONNX file on ONNX Runtime's CPU provider,
    and with ``tensorrt`` its engines for this GPU too."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest["models"]:
        raise ValueError(f"{folder}: no exported models (no manifest.json)")
    recorded = load_recorded(folder)
    ort = make_backend(ORT_CPU)
    trt_backend = None
    if tensorrt:
        from engine.backends.tensorrt_backend import TrtBackend

        # no PyTorch fallback: a call outside an engine's profile must fail, not pass
        trt_backend = TrtBackend(fallback=None)
    checks = []
    for name, entry in manifest["models"].items():
        graph = graph_for(name, entry, models)
        inputs = inputs_of(graph, recorded)
        onnx_path = folder / entry["file"]
        if sha256_file(onnx_path) != entry["sha256"]:
            log.warning("%s: %s changed since it was exported", name, entry["file"])
        tol = entry["tolerance"] if tolerance is None else tolerance
        checks.append(verify_model(graph, onnx_path, ort, inputs, tol))
        if trt_backend is None:
            continue
        for engine in entry.get("tensorrt", {}).values():
            if engine["onnx_sha256"] != entry["sha256"]:
                continue  # built from an older file
            from export.tensorrt_build import Target

            if engine["gpu"] != Target.current().gpu:
                continue  # another GPU's engine: it cannot run here
            fp16 = engine["precision"] == "fp16"
            tol = (entry["tolerance_fp16"] if fp16 else entry["tolerance"]) if tolerance is None \
                else tolerance  # fmt: skip
            checks.append(verify_model(graph, folder / engine["file"], trt_backend, inputs, tol,
                                       engine["max_batch"]))  # fmt: skip
    return checks


def report(checks: list[Check]) -> str:
    """A table of the checks, one line each."""
    lines = [f"{'model':<16} {'backend':<17} {'batch':>5} {'max |diff|':>11} {'tolerance':>10}  "]
    for c in checks:
        verdict = "ok" if c.ok else "FAILED"
        lines.append(f"{c.model:<16} {c.backend:<17} {c.batch:>5} {c.max_abs_diff:>11.3g} "
                     f"{c.tolerance:>10.3g}  {verdict}")  # fmt: skip
    return "\n".join(lines)
