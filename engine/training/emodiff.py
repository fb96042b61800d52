"""Training EmoDiff (with its audio encoder and style encoder, end to end).

Objective, per window (normalised motion x, v-prediction, cosine schedule, t ~ U(0, 1)):

    L = || v_hat - v ||^2                                  on the frames to generate
      + velocity_weight * alpha_t^2 || dx_hat - dx ||^2     frame-to-frame velocity of the clean
                                                           estimate x_hat = alpha z - sigma v
      + align_weight * || s_clip - sg(s_label) ||^2        style-clip and label embeddings agree

The v loss is the standard diffusion objective (x-error weighted by SNR + 1). The velocity term
is what keeps motion from jittering at few steps; it is weighted by alpha_t^2 because at high
noise the best clean estimate is a blurry mean whose velocity *should* be small. The alignment
term puts a clip of an emotion near that emotion's label embedding, so `style_from_clip` and
`style_from_emotion` drive the model the same way (the label side is not pulled: no collapse).

Conditioning dropout: the style comes from a clip (``p_clip``) or the label, and is replaced by
the null style with ``p_uncond`` (classifier-free guidance). Known frames: `KnownPolicy`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engine.data.corpus import SplitArrays
from engine.diffusion import add_noise, v_target, x_from_v
from engine.models import EmoDiff, EmoDiffConfig
from engine.motion_model import DEFAULT_GUIDANCE, FULL_SAMPLER_STEPS
from engine.training.common import mean_metrics, motion_metrics, set_stats
from engine.training.loop import WindowTask
from engine.training.windows import KnownPolicy, WindowBatch, WindowSampler, fixed_batches

log = logging.getLogger(__name__)


@dataclass
class EmoDiffTrainConfig:
    p_uncond: float = 0.15
    p_clip: float = 0.5
    velocity_weight: float = 1.0
    align_weight: float = 0.1
    p_known_none: float = 0.1
    p_known_init: float = 0.5
    val_batches: int = 2
    val_batch_size: int = 64
    val_steps: int = 16  # DDIM steps of the sampling check in validation
    val_guidance: float = 2.0


def make_sampler(
    arrays: SplitArrays,
    cfg: EmoDiffConfig,
    tcfg: EmoDiffTrainConfig,
    seed: int,
    known_init: int | None = None,
) -> WindowSampler:
    """Windows for EmoDiff; ``known_init`` is the known-frame count drawn with probability
    ``p_known_init`` (None: the model's K)."""
    init = cfg.init_frames if known_init is None else known_init
    policy = KnownPolicy(init, tcfg.p_known_none, tcfg.p_known_init)
    return WindowSampler(
        arrays,
        cfg.seq_len,
        cfg.audio.left_context,
        cfg.audio.lookahead,
        cfg.style_clip_frames,
        policy,
        seed,
    )


def batch_style(
    model: EmoDiff, batch: WindowBatch, p_clip: float, p_uncond: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Style vectors for a batch (clip or label, some dropped to null) and the clip-to-label
    alignment loss."""
    b = batch.motion.shape[0]
    label = model.style.from_emotion(batch.emotion, batch.intensity)
    clip = model.style.from_clip(model.motion_norm.normalize(batch.clip), batch.clip_mask)
    align = ((clip - label.detach()) ** 2).mean()
    use_clip = (torch.rand(b) < p_clip)[:, None]
    drop = (torch.rand(b) < p_uncond)[:, None]
    style = torch.where(drop, model.style.null(b), torch.where(use_clip, clip, label))
    return style, align


def diffusion_losses(
    model: EmoDiff,
    x: torch.Tensor,
    known_mask: torch.Tensor,
    feats: torch.Tensor,
    style: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v loss, velocity loss), both averaged over the frames to generate."""
    z = add_noise(x, t, eps)
    v = model(z, t, x, known_mask, feats, style)
    gen = (1 - known_mask)[..., None]
    frames = gen.sum().clamp(min=1) * x.shape[-1]
    v_loss = (((v - v_target(x, t, eps)) ** 2) * gen).sum() / frames
    x_hat = x_from_v(z, t, v) * gen + x * (1 - gen)
    dv = (x_hat[:, 1:] - x_hat[:, :-1]) - (x[:, 1:] - x[:, :-1])
    alpha2 = torch.cos(0.5 * torch.pi * t)[:, None, None] ** 2
    vel_loss = ((dv**2) * gen[:, 1:] * alpha2).sum() / frames
    return v_loss, vel_loss


class EmoDiffTask(WindowTask):
    kind = "emodiff"

    def __init__(
        self,
        model: EmoDiff,
        train: SplitArrays,
        val: SplitArrays,
        batch_size: int,
        tcfg: EmoDiffTrainConfig,
        seed: int = 0,
        data: str | Path | None = None,
    ):
        self.model, self.tcfg, self.batch_size, self.data = model, tcfg, batch_size, data
        self.stats = set_stats(model.motion_norm, model.audio.mel_norm, train)
        self.sampler = make_sampler(train, model.cfg, tcfg, seed)
        val_sampler = make_sampler(val, model.cfg, tcfg, seed + 1)
        self.val = fixed_batches(val_sampler, tcfg.val_batches, tcfg.val_batch_size, seed + 2)

    def loss(self, model: EmoDiff, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.sampler.sample(self.batch_size)
        x = model.motion_norm.normalize(batch.motion)
        feats = model.audio(batch.mel)
        style, align = batch_style(model, batch, self.tcfg.p_clip, self.tcfg.p_uncond)
        t = torch.rand(x.shape[0])
        v_loss, vel_loss = diffusion_losses(
            model, x, batch.known_mask(), feats, style, t, torch.randn_like(x)
        )
        loss = v_loss + self.tcfg.velocity_weight * vel_loss + self.tcfg.align_weight * align
        return loss, {"v": v_loss.item(), "vel": vel_loss.item()}

    @torch.no_grad()
    def validate(self, model: EmoDiff) -> dict[str, float]:
        from engine.motion_model import clamp_motion, sample_emodiff

        gen = torch.Generator().manual_seed(0)
        losses, metrics = [], []
        for batch in self.val:
            x = model.motion_norm.normalize(batch.motion)
            feats = model.audio(batch.mel)
            label = model.style.from_emotion(batch.emotion, batch.intensity)
            t = torch.rand(x.shape[0], generator=gen)
            eps = torch.randn(x.shape, generator=gen)
            v_loss, _ = diffusion_losses(model, x, batch.known_mask(), feats, label, t, eps)
            losses.append(v_loss.item())
            # sampling check: K known frames, W generated, guided DDIM with few steps
            mask = torch.zeros_like(batch.known_mask())
            mask[:, : model.cfg.init_frames] = 1.0
            x_gen = sample_emodiff(
                model, feats, x, mask, label, self.tcfg.val_steps, self.tcfg.val_guidance, gen
            )
            pred = clamp_motion(model.motion_norm.denormalize(x_gen))
            w = slice(model.cfg.init_frames, None)
            metrics.append(motion_metrics(pred[:, w], batch.motion[:, w]))
        return {"val_v": sum(losses) / len(losses), **mean_metrics(metrics)}

    def meta(self) -> dict[str, Any]:
        return {
            "train": asdict(self.tcfg),
            "data": str(self.data) if self.data else None,
            "norm": self.stats,
            "sampler": {"kind": "ddim", "steps": FULL_SAMPLER_STEPS, "guidance": DEFAULT_GUIDANCE},
        }
