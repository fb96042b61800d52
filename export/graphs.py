"""The networks as they leave PyTorch: one `Graph` per exported file.

A graph is an `nn.Module` with a fixed-shape forward (but for its symbolic axes), named inputs
and one named output, and what the runtime needs to know about it: the tolerance that counts as
"the same output", the ranges of its symbolic axes (TensorRT's optimization profile) and the
files whose change makes an export stale. The PyTorch backend runs the very same modules, so
every backend computes one function.

- ``audio_encoder``: mel (batch, mel_rows, 80) -> features (batch, frames, dim).
- ``lip_audio_encoder``: the same for the lip refiner's own audio encoder, when it has one.
- ``emodiff_step``: one denoiser call (EmoDiff's forward, the v-prediction); the Python sampler
  (`engine.diffusion`) drives it, any number of steps. The default form: measured faster in
  the live path on the CPU (docs/export.md).
- ``emodiff_sampler``: the distilled student's whole few-step sampler unrolled into one graph
  (`engine.motion_model.sample_emodiff` traced with its steps): noise, known frames, features,
  style and guidance in, the window's clean motion (normalised) out. One call per window
  (``--denoiser unrolled``): faster in a tight loop, and what a GPU may prefer.
- ``lip_refiner``: features, raw motion and style -> motion with the mouth redone, clamped.
- ``renderer_<size>``: motion (batch, 58) and the avatar's tensors -> RGB frames in [0, 1].

Every graph has a dynamic ``batch`` axis (cross-session batching); the audio encoder and the
refiner also take any number of frames.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.backends.base import Runner
from engine.backends.kinds import DEFAULT_FORM, DENOISER_FORMS
from engine.backends.networks import Networks
from engine.blendshapes import MOTION_DIM
from engine.models import EmoDiff, LipRefiner
from engine.motion_model import MotionModels, clamp_motion, sample_emodiff

log = logging.getLogger(__name__)

# The longest span (video frames) that the audio encoder and the refiner are built for in
# TensorRT (10 s); longer calls (offline encoding of a long file) run in PyTorch instead.
MAX_FRAMES = 250
# The live path calls the networks with this many new frames (`StreamConfig.hop_frames`):
# TensorRT tunes its kernels for it.
OPT_FRAMES = 2

AUDIO = "audio_encoder"
LIP_AUDIO = "lip_audio_encoder"
REFINER = "lip_refiner"
SAMPLER = "emodiff_sampler"
STEP = "emodiff_step"
MAX_UNROLLED_STEPS = 8  # more steps than a distilled student takes: export one step instead

# Largest absolute difference from PyTorch that counts as the same output, per graph, for FP32
# engines (measured: about 100 times less) and for FP16 TensorRT engines (half precision
# keeps about 3 decimal digits; the motion is in normalised or [0, 1] units). None: never
# built in FP16. The renderer's sampling positions need FP32: in [-1, 1], FP16's spacing
# near the edges is 1/2048, an eighth of a pixel at 512 px, before the arithmetic that makes
# them (measured in FP16 at 256 px: 0.044 off in colour).
TOLERANCES = {
    AUDIO: (1e-4, 5e-2),
    LIP_AUDIO: (1e-4, 5e-2),
    SAMPLER: (1e-3, 1e-1),
    STEP: (1e-3, 5e-2),
    REFINER: (1e-4, 2e-2),
    "renderer": (2e-3, None),
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, dtype and shape (str entries are symbolic axes)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class Graph:
    """One network as it is exported, verified and run (module docstring)."""

    name: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    tolerance: float
    tolerance_fp16: float | None  # None: FP16 engines keep this graph in FP32
    # (min, opt, max) of each symbolic axis but ``batch`` (TensorRT's optimization profile)
    ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    source: Path | None = None  # the checkpoint its weights come from (None: no weights)
    code: tuple[str, ...] = ()  # source files that define it: a change makes exports stale
    meta: dict = field(default_factory=dict)  # what else the manifest records (form, steps)
    # fixed example values of inputs that are not batched (the renderer's avatar tensors)
    constants: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @property
    def half(self) -> bool:
        """Whether an FP16 engine may run this graph in half precision."""
        return self.tolerance_fp16 is not None

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {}
        for spec in (*self.inputs, self.output):
            named = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
            if named:
                axes[spec.name] = named
        return axes

    def shape(self, spec: TensorSpec, batch: int, pick: int = 1) -> tuple[int, ...]:
        """A concrete shape: ``batch`` for the batch axis, the range's min / opt / max
        (``pick`` 0 / 1 / 2) for the other symbolic ones."""
        return tuple(
            batch if d == "batch" else self.ranges[d][pick] if isinstance(d, str) else d
            for d in spec.shape
        )

    def example(self, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Inputs of the right shapes and dtypes for tracing (batch 2: a batch of 1 could be
        specialised away by the tracer)."""
        gen = torch.Generator().manual_seed(seed)
        out = []
        for spec in self.inputs:
            if spec.name in self.constants:
                out.append(self.constants[spec.name])
                continue
            shape = self.shape(spec, batch)
            if spec.dtype == "float32":
                out.append(torch.randn(shape, generator=gen))
            else:
                out.append(torch.zeros(shape, dtype=getattr(torch, spec.dtype)))
        return tuple(out)

    def code_digest(self) -> str:
        """sha256 of the source files that define the graph (part of the staleness check)."""
        h = hashlib.sha256()
        for path in self.code:
            h.update(Path(path).read_bytes())
        return h.hexdigest()


def _files(*objects) -> tuple[str, ...]:
    """Source files of the given modules, classes or functions (deduplicated, in order)."""
    seen: list[str] = []
    for obj in (*objects, _files):  # this file too: it defines the wrappers
        path = inspect.getsourcefile(obj)
        if path and path not in seen:
            seen.append(path)
    return tuple(seen)


class EmoDiffSampler(nn.Module):
    """The whole sampler of one window as one network call: `sample_emodiff` with its steps
    unrolled, noise given (drawn by the caller's generator, so every backend starts from the
    same noise)."""

    def __init__(self, model: EmoDiff, steps: int):
        super().__init__()
        self.model, self.steps = model, steps

    def forward(
        self,
        noise: torch.Tensor,
        known: torch.Tensor,
        known_mask: torch.Tensor,
        feats: torch.Tensor,
        style: torch.Tensor,
        guidance: torch.Tensor,
    ) -> torch.Tensor:
        return sample_emodiff(
            self.model, feats, known, known_mask, style, self.steps, guidance, noise=noise
        )


class RefinerCall(nn.Module):
    """The lip refiner as `MotionModels.refine_lips` calls it: clamped to valid weights."""

    def __init__(self, refiner: LipRefiner):
        super().__init__()
        self.refiner = refiner

    def forward(
        self, feats: torch.Tensor, motion: torch.Tensor, style: torch.Tensor
    ) -> torch.Tensor:
        return clamp_motion(self.refiner(feats, motion, style))


def _tolerances(name: str) -> dict[str, float | None]:
    fp32, fp16 = TOLERANCES[name]
    return {"tolerance": fp32, "tolerance_fp16": fp16}


def audio_encoder_graph(models: MotionModels, lip: bool = False) -> Graph:
    """EmoDiff's audio encoder, or (``lip``) the lip refiner's own."""
    if lip and models.lip_features_shared:
        raise ValueError("the lip refiner has no audio encoder of its own")
    encoder = models.refiner.audio if lip else models.emodiff.audio
    cfg = encoder.cfg

    def rows(frames: int) -> int:
        return cfg.mels_per_frame * (cfg.left_context + frames + cfg.lookahead)

    from engine import motion_norm
    from engine.models import audio_encoder

    return Graph(
        name=LIP_AUDIO if lip else AUDIO,
        module=encoder,
        inputs=(TensorSpec("mel", "float32", ("batch", "mel_rows", cfg.n_mels)),),
        output=TensorSpec("feats", "float32", ("batch", "frames", cfg.dim)),
        ranges={"mel_rows": (rows(1), rows(OPT_FRAMES), rows(MAX_FRAMES))},
        source=models.sources.get("refiner" if lip else "emodiff"),
        code=_files(audio_encoder, motion_norm),
        **_tolerances("audio_encoder"),
    )


def _window_inputs(model: EmoDiff, first: tuple[str, ...]) -> tuple[TensorSpec, ...]:
    seq, adim, sdim = model.cfg.seq_len, model.cfg.audio.dim, model.cfg.dim
    shapes = {
        "noise": ("batch", seq, MOTION_DIM),
        "z": ("batch", seq, MOTION_DIM),
        "t": ("batch",),
    }
    rest = {
        "known": ("batch", seq, MOTION_DIM),
        "known_mask": ("batch", seq),
        "feats": ("batch", seq, adim),
        "style": ("batch", sdim),
    }
    specs = [TensorSpec(n, "float32", shapes[n]) for n in first]
    specs += [TensorSpec(n, "float32", s) for n, s in rest.items()]
    return tuple(specs)


def sampler_graph(models: MotionModels, steps: int | None = None) -> Graph:
    """The unrolled few-step sampler of ``models.emodiff`` (its default steps unless given)."""
    from engine import diffusion
    from engine.models import emodiff

    model = models.emodiff
    steps = models.steps if steps is None else steps
    seq = model.cfg.seq_len
    return Graph(
        name=SAMPLER,
        module=EmoDiffSampler(model, steps),
        inputs=(*_window_inputs(model, ("noise",)), TensorSpec("guidance", "float32", ("batch",))),
        output=TensorSpec("x", "float32", ("batch", seq, MOTION_DIM)),
        source=models.sources.get("emodiff"),
        code=_files(emodiff, diffusion, MotionModels),
        meta={"form": "unrolled", "steps": steps, "guidance_embed": model.cfg.guidance_embed},
        **_tolerances(SAMPLER),
    )


def step_graph(models: MotionModels) -> Graph:
    """One EmoDiff call (the v-prediction). A guided student reads the guidance scale; a
    teacher's graph has no guidance input (the sampler batches its two predictions)."""
    from engine.models import emodiff

    model = models.emodiff
    inputs = _window_inputs(model, ("z", "t"))
    if model.cfg.guidance_embed:
        inputs = (*inputs, TensorSpec("guidance", "float32", ("batch",)))
    return Graph(
        name=STEP,
        module=model,
        inputs=inputs,
        output=TensorSpec("v", "float32", ("batch", model.cfg.seq_len, MOTION_DIM)),
        source=models.sources.get("emodiff"),
        code=_files(emodiff),
        meta={"form": "step", "guidance_embed": model.cfg.guidance_embed},
        **_tolerances(STEP),
    )


def refiner_graph(models: MotionModels) -> Graph:
    from engine import motion_norm
    from engine.models import lip_refiner

    refiner = models.refiner
    if refiner is None:
        raise ValueError("no lip refiner loaded (lips.pt missing from the weights folder)")
    cfg, context = refiner.cfg, models.refiner_context
    frames = ("batch", "frames")
    return Graph(
        name=REFINER,
        module=RefinerCall(refiner),
        inputs=(
            TensorSpec("feats", "float32", (*frames, cfg.audio_dim)),
            TensorSpec("motion", "float32", (*frames, MOTION_DIM)),
            TensorSpec("style", "float32", ("batch", cfg.style_dim)),
        ),
        output=TensorSpec("refined", "float32", (*frames, MOTION_DIM)),
        ranges={"frames": (1, context + OPT_FRAMES, context + MAX_FRAMES)},
        source=models.sources.get("refiner"),
        code=_files(lip_refiner, motion_norm, MotionModels),
        **_tolerances(REFINER),
    )


def renderer_graph(size: int, avatar=None) -> Graph:
    """The renderer at one frame size. The avatar's tensors are inputs (one file serves every
    avatar of that size); ``avatar`` (default: the bundled portrait) only gives their shapes."""
    from engine import face_rig, renderer
    from engine.avatar import load_avatar
    from engine.renderer import RENDER_INPUT_NAMES, Renderer, RendererConfig

    avatar = load_avatar(None, size) if avatar is None else avatar
    if avatar.size != size:
        raise ValueError(f"a {size} px renderer needs a {size} px avatar, got {avatar.size}")
    tensors = dict(zip(RENDER_INPUT_NAMES, avatar.render_inputs(), strict=True))
    avatar_specs = tuple(
        TensorSpec(n, str(t.dtype).removeprefix("torch."), tuple(t.shape))
        for n, t in tensors.items()
    )
    return Graph(
        name=f"renderer_{size}",
        module=Renderer(RendererConfig(size=size)).eval(),
        inputs=(TensorSpec("motion", "float32", ("batch", MOTION_DIM)), *avatar_specs),
        output=TensorSpec("frames", "float32", ("batch", 3, size, size)),
        code=_files(renderer, face_rig),
        meta={"size": size},
        constants=tensors,
        **_tolerances("renderer"),
    )


def networks_of(
    runners: Mapping[str, Runner],
    backend: str,
    models: MotionModels,
    make_renderer: Callable[[int], Runner],
    **renderer: Any,
) -> Networks:
    """The `Networks` of the runners of `motion_graphs` (keyed by graph name): EmoDiff as the
    unrolled sampler, the one-step network, or both; ``renderer``: `Networks`' renderer fields
    (``renderer_backend``, ``torch_render_sizes``, ``torch_render_batches``)."""
    sampler = runners.get(SAMPLER)
    return Networks(
        backend=backend,
        audio_encoder=runners[AUDIO],
        lip_audio_encoder=runners.get(LIP_AUDIO),
        refiner=runners.get(REFINER),
        make_renderer=make_renderer,
        sampler=sampler,
        sampler_steps=models.steps if sampler is not None else None,
        denoiser=runners.get(STEP),
        **{"renderer_backend": backend, **renderer},
    )


def motion_graphs(models: MotionModels, form: str = DEFAULT_FORM) -> list[Graph]:
    """The motion networks of ``models``: audio encoder, EmoDiff in the given form, refiner."""
    if form not in DENOISER_FORMS:
        raise ValueError(f"denoiser form must be one of {', '.join(DENOISER_FORMS)}, got {form!r}")
    if form == "unrolled" and models.steps > MAX_UNROLLED_STEPS:
        # a teacher's 64-step sampler would be a graph of 64 network copies
        log.info("EmoDiff runs %d steps: exporting the one-step form", models.steps)
        form = "step"
    graphs = [audio_encoder_graph(models)]
    graphs.append(sampler_graph(models) if form == "unrolled" else step_graph(models))
    if models.refiner is not None:
        graphs.append(refiner_graph(models))
    if not models.lip_features_shared:
        graphs.append(audio_encoder_graph(models, lip=True))
    return graphs
