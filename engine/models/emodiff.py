"""EmoDiff: the transformer denoiser that generates emotional expression and head pose.

One call denoises a sequence of ``K + W`` motion frames (``init_frames`` + ``window_frames``),
each a ``MOTION_DIM`` vector (ARKit blendshapes + head pose, normalised per channel):

- the first frames may be *known*: the initial state (the frames just before the window; in a
  stream, what was already emitted). A per-frame mask says which; known frames enter clean,
  the others as the noisy diffusion state ``z_t``. Training varies how many frames are known
  (none at all, the ``K`` frames of initial state, or more, up to ``K + W - 1``), so one network
  serves a stream's first window (nothing known), offline generation (``K`` known, ``W`` new)
  and the live hop (``K + W - H`` known, the last ``H`` frames new).
- every frame carries its audio feature (``engine.models.audio_encoder``), known frames too.
- the *emotion style* is one vector per sequence: from the emotion label and intensity
  (``EmotionEmbedding``) or from a few seconds of motion of the wanted emotion
  (``StyleClipEncoder``), or a learned *null* style. Training replaces the style with the null
  one at random, which is what classifier-free guidance needs at sampling time.
- the diffusion time ``t`` in [0, 1] (cosine schedule, ``engine.diffusion``) and, in a student
  distilled with guidance (``guidance_embed``), the guidance scale.

Style, time and guidance condition every block through adaptive LayerNorm with zero-initialised
gates (adaLN-Zero, as in DiT, Peebles & Xie 2023): cheap at batch 1 and strong enough that the
style visibly moves the expression. The output is the v-prediction (Salimans & Ho 2022) of the
whole sequence; the sampler ignores it on known frames.

Attention is written out (matmul, softmax, matmul) rather than through
`scaled_dot_product_attention` so the ONNX graph is plain and every runtime has its ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from engine.blendshapes import MOTION_DIM
from engine.emotions import INTENSITIES, NUM_EMOTIONS
from engine.models.audio_encoder import AudioEncoder, AudioEncoderConfig
from engine.motion_norm import ChannelNorm

INIT_FRAMES = 8  # K: frames of initial state before the window (320 ms)
WINDOW_FRAMES = 8  # W: frames generated per window (320 ms)
STYLE_CLIP_FRAMES = 64  # frames of motion the style-clip encoder reads (2.56 s)


@dataclass
class EmoDiffConfig:
    init_frames: int = INIT_FRAMES
    window_frames: int = WINDOW_FRAMES
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    style_clip_frames: int = STYLE_CLIP_FRAMES
    style_blocks: int = 2
    # Students of guided distillation read the guidance scale as an extra condition.
    guidance_embed: bool = False
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)

    @property
    def seq_len(self) -> int:
        return self.init_frames + self.window_frames


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of a (B,) float in [0, 1] (scaled so 1/1000 steps are resolvable)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class EmotionEmbedding(nn.Module):
    """(emotion index, intensity 1..3) -> style vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.emotion = nn.Embedding(NUM_EMOTIONS, dim)
        self.intensity = nn.Embedding(len(INTENSITIES), dim)
        # The MLP lets intensity scale an emotion's own direction instead of only adding to it.
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, emotion: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.emotion(emotion.long()) + self.intensity(intensity.long() - 1))


class StyleClipEncoder(nn.Module):
    """A few seconds of (normalised) motion of the wanted emotion -> style vector.

    Reads values and frame-to-frame velocities through two residual convolutions and pools
    over the valid frames: the style is what the clip does on average, not when."""

    def __init__(self, dim: int, num_blocks: int):
        super().__init__()
        self.inp = nn.Linear(2 * MOTION_DIM, dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(dim, dim, 5, padding=2), nn.GELU(), nn.Conv1d(dim, dim, 1))
            for _ in range(num_blocks)
        )
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU())
        self.proj = nn.Linear(dim, dim)

    def forward(self, clip: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """clip (B, S, MOTION_DIM) normalised motion, mask (B, S) 1 on valid frames."""
        m = mask.float()[..., None]
        velocity = torch.cat([torch.zeros_like(clip[:, :1]), clip[:, 1:] - clip[:, :-1]], dim=1)
        velocity = velocity * m * torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], dim=1)
        h = self.inp(torch.cat([clip, velocity], dim=-1)) * m
        for block in self.blocks:
            h = (h + block(h.transpose(1, 2)).transpose(1, 2)) * m
        pooled = h.sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return self.proj(self.out(pooled))


class StyleEncoder(nn.Module):
    """Both ways to a style vector, plus the learned null style of classifier-free guidance."""

    def __init__(self, cfg: EmoDiffConfig):
        super().__init__()
        self.cfg = cfg
        self.emotion = EmotionEmbedding(cfg.dim)
        self.clip = StyleClipEncoder(cfg.dim, cfg.style_blocks)
        self.null_style = nn.Parameter(torch.zeros(cfg.dim))

    def from_emotion(self, emotion: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        return self.emotion(emotion, intensity)

    def from_clip(self, clip: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.clip(clip, mask)

    def null(self, batch: int) -> torch.Tensor:
        return self.null_style[None].expand(batch, -1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, c))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """Transformer block with adaLN-Zero conditioning (shift, scale and gate from the condition).

    The gates start at zero, so every block starts as the identity and training opens them."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(cond)).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class EmoDiff(nn.Module):
    """The denoiser, its audio encoder and style encoder, and the motion normalisation stats.

    ``forward`` is one denoiser call on precomputed audio features and style; ``audio`` and
    ``style`` are called once per window and once per session respectively."""

    def __init__(self, cfg: EmoDiffConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.motion_norm = ChannelNorm(MOTION_DIM)
        self.audio = AudioEncoder(cfg.audio)
        self.style = StyleEncoder(cfg)

        self.motion_in = nn.Linear(MOTION_DIM + 1, d)  # motion + the known flag
        self.audio_in = nn.Linear(cfg.audio.dim, d)
        self.pos = nn.Parameter(torch.randn(cfg.seq_len, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.style_in = nn.Linear(d, d)
        if cfg.guidance_embed:
            self.guidance_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            # zero output: a fresh student is exactly its teacher until training moves it
            nn.init.zeros_(self.guidance_mlp[-1].weight)
            nn.init.zeros_(self.guidance_mlp[-1].bias)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.final_ada = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, MOTION_DIM)
        for layer in (self.final_ada, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(
        self, t: torch.Tensor, style: torch.Tensor, guidance: torch.Tensor | None
    ) -> torch.Tensor:
        cond = self.time_mlp(timestep_embedding(t, self.cfg.dim)) + self.style_in(style)
        if self.cfg.guidance_embed:
            if guidance is None:
                raise ValueError("this EmoDiff was distilled with guidance: pass the scale")
            # scale 100 spreads the usual 0..5 range over the sinusoid frequencies
            cond = cond + self.guidance_mlp(timestep_embedding(guidance, self.cfg.dim, 100.0))
        return cond

    def forward(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        known: torch.Tensor,
        known_mask: torch.Tensor,
        feats: torch.Tensor,
        style: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v-prediction for the whole sequence.

        z (B, T, MOTION_DIM) noisy state, t (B,) diffusion time in [0, 1],
        known (B, T, MOTION_DIM) clean frames where known_mask (B, T) is 1 (anything elsewhere),
        feats (B, T, audio dim), style (B, dim), guidance (B,) for guided students."""
        m = known_mask.float()[..., None]
        x = z * (1 - m) + known * m
        h = self.motion_in(torch.cat([x, m], dim=-1)) + self.audio_in(feats) + self.pos
        cond = self.condition(t, style, guidance)
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.final_ada(F.silu(cond)).chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(h), shift, scale))
