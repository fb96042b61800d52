"""`Networks`: the network calls of `MotionModels` and of the renderers, on one backend."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.backends.base import Runner, TorchRunner
from engine.backends.kinds import TORCH

if TYPE_CHECKING:
    from engine.motion_model import MotionModels

log = logging.getLogger(__name__)


@dataclass
class Networks:
    """Runners for the audio encoder, EmoDiff (the unrolled ``sampler`` of ``sampler_steps``
    steps, and / or the one-step ``denoiser``; neither: the PyTorch module), the lip refiner,
    and renderers made per frame size on first use."""

    backend: str  # the kind that runs the motion networks (`engine.backends.base.KINDS`)
    audio_encoder: Runner
    refiner: Runner | None
    make_renderer: Callable[[int], Runner]
    renderer_backend: str  # the kind that runs the renderer, but for the sizes below
    sampler: Runner | None = None
    sampler_steps: int | None = None
    denoiser: Runner | None = None
    lip_audio_encoder: Runner | None = None  # the refiner's own encoder, when it has one
    torch_render_sizes: Callable[[int], bool] = lambda size: False  # rendered in PyTorch
    # sizes whose batches of frames render in PyTorch (single frames on ``renderer_backend``)
    torch_render_batches: Callable[[int], bool] = lambda size: False
    _renderers: dict[int, Runner] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _warned: set[int] = field(default_factory=set, repr=False)

    def renderer(self, size: int) -> Runner:
        """The renderer of ``size`` px frames:
        ``runner(motion (B, 58), *avatar.render_inputs()) -> (B, 3, size, size)``."""
        with self._lock:
            if size not in self._renderers:
                self._renderers[size] = self.make_renderer(size)
            return self._renderers[size]

    def renderer_kind(self, size: int, batch: int = 1) -> str:
        """The kind that renders a call of ``batch`` frames of ``size`` px."""
        if self.torch_render_sizes(size) or (batch > 1 and self.torch_render_batches(size)):
            return TORCH
        return self.renderer_backend

    def describe_renderer(self, size: int) -> str:
        """Which kind renders ``size`` px frames, as the log says it."""
        one, batches = self.renderer_kind(size), self.renderer_kind(size, batch=2)
        if one == batches:
            return f"{one} at {size} px"
        return f"{one} at {size} px ({batches} for batches)"

    def denoiser_for(self, steps: int) -> Runner | None:
        """The one-step network for a sampler of ``steps`` steps (None: the PyTorch module)."""
        if self.denoiser is None and self.sampler is not None and steps not in self._warned:
            self._warned.add(steps)
            log.warning("the exported EmoDiff sampler runs %s steps: %d-step windows run in "
                        "PyTorch (export the one-step form for any step count)",
                        self.sampler_steps, steps)  # fmt: skip
        return self.denoiser


def torch_renderer(size: int) -> Runner:
    from engine.renderer import Renderer, RendererConfig

    return TorchRunner(f"renderer_{size}", Renderer(RendererConfig(size=size)).eval())


def torch_networks(models: MotionModels) -> Networks:
    """PyTorch eager, exactly the calls the project made before it had backends. The runners
    read ``models`` at call time, so swapping a model in the bundle takes effect."""
    from engine.motion_model import clamp_motion

    def refine(feats, motion, style):
        return clamp_motion(models.refiner(feats, motion, style))

    return Networks(
        backend=TORCH,
        audio_encoder=TorchRunner("audio_encoder", lambda mel: models.emodiff.audio(mel)),
        lip_audio_encoder=TorchRunner("lip_audio_encoder", lambda mel: models.refiner.audio(mel)),
        refiner=TorchRunner("lip_refiner", refine),
        make_renderer=torch_renderer,
        renderer_backend=TORCH,
    )
