"""Audio encoder: log-mel frames in, one feature vector per video frame out.

The four 10 ms mel frames of each 40 ms video frame are stacked into one 320-vector, projected,
then passed through residual temporal convolutions that use *valid* padding: the output has
``LEFT`` + ``LOOKAHEAD`` fewer frames than the input. Feature ``i`` of the output depends on
input frames ``i .. i + LEFT + LOOKAHEAD`` only, i.e. on ``LEFT`` frames of past audio and
``LOOKAHEAD`` frames of future audio around its own frame.

Because nothing is padded inside the network, a stream and a whole file give the same features:

- offline, ``pad_mel`` puts ``LEFT`` frames of silence before the utterance and ``LOOKAHEAD``
  after it, and one call encodes everything;
- streaming, the caller keeps the last ``LEFT`` frames of mel as history (silence at the start
  of a session) and encodes ``[s - LEFT, e + LOOKAHEAD)`` to get the features of ``[s, e)``;
  frame ``e - 1``'s feature therefore needs audio up to the end of frame ``e - 1 + LOOKAHEAD``.

The look-ahead is ``AUDIO_LOOKAHEAD_FRAMES`` = 2 video frames = 80 ms (plus the mel window's own
7.5 ms, ``engine.features.MEL_LOOKAHEAD_SAMPLES``). It is spent in the first blocks: each of
them looks one frame ahead, the later ones only look back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.features import MEL, MELS_PER_FRAME
from engine.motion_norm import ChannelNorm

AUDIO_LOOKAHEAD_FRAMES = 2  # 80 ms of future audio per feature frame
# log-mel of digital silence (engine.features floors the mel energy at MEL.log_floor)
SILENCE_LOG_MEL = float(np.log(MEL.log_floor))


@dataclass
class AudioEncoderConfig:
    n_mels: int = MEL.n_mels
    mels_per_frame: int = MELS_PER_FRAME
    dim: int = 128
    num_blocks: int = 4
    kernel: int = 5
    lookahead: int = AUDIO_LOOKAHEAD_FRAMES

    def __post_init__(self) -> None:
        if not 0 <= self.lookahead <= self.num_blocks:
            raise ValueError(f"look-ahead {self.lookahead} needs at least as many conv blocks")

    def block_context(self, i: int) -> tuple[int, int]:
        """(past, future) frames that block ``i`` reads around its output frame: the first
        ``lookahead`` blocks look one frame ahead, the rest only look back."""
        future = 1 if i < self.lookahead else 0
        return self.kernel - 1 - future, future

    @property
    def left_context(self) -> int:
        """Past frames of audio each output frame sees (the receptive field behind it)."""
        return sum(self.block_context(i)[0] for i in range(self.num_blocks))

    @property
    def receptive_field(self) -> int:
        return self.left_context + 1 + self.lookahead


class ConvBlock(nn.Module):
    """Pre-norm residual block: LayerNorm -> conv (valid, `kernel` frames) -> GELU -> 1x1 conv.

    LayerNorm normalises each frame on its own (no statistic over time), so a frame's output
    never depends on how long the input was: the chunk-invariance above holds."""

    def __init__(self, dim: int, kernel: int, past: int, future: int):
        super().__init__()
        self.past, self.future = past, future
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel)
        self.proj = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T - past - future, C)
        h = self.norm(x).transpose(1, 2)
        h = self.proj(F.gelu(self.conv(h))).transpose(1, 2)
        end = x.shape[1] - self.future
        return x[:, self.past : end] + h


class AudioEncoder(nn.Module):
    """mel (B, 4 * (T + left + lookahead), 80) -> features (B, T, dim)."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.mel_norm = ChannelNorm(cfg.n_mels)
        self.inp = nn.Linear(cfg.n_mels * cfg.mels_per_frame, cfg.dim)
        self.blocks = nn.ModuleList(
            ConvBlock(cfg.dim, cfg.kernel, *cfg.block_context(i)) for i in range(cfg.num_blocks)
        )
        self.out_norm = nn.LayerNorm(cfg.dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        b = mel.shape[0]
        x = self.mel_norm.normalize(mel.float())
        x = x.reshape(b, -1, self.cfg.mels_per_frame * self.cfg.n_mels)  # one row per video frame
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out_norm(x)


def pad_mel(mel: np.ndarray | torch.Tensor, cfg: AudioEncoderConfig, left: int | None = None):
    """Surround an utterance's mel (..., 4T, 80) with silence: ``left`` video frames before
    (default: the encoder's whole left context) and the look-ahead after, so that encoding the
    result gives exactly T features, the way a stream starting in silence would."""
    left = cfg.left_context if left is None else left
    before, after = left * cfg.mels_per_frame, cfg.lookahead * cfg.mels_per_frame
    if isinstance(mel, torch.Tensor):
        pad = (0, 0, before, after)
        return F.pad(mel.float(), pad, value=SILENCE_LOG_MEL)
    widths = [(0, 0)] * (mel.ndim - 2) + [(before, after), (0, 0)]
    return np.pad(mel.astype(np.float32), widths, constant_values=SILENCE_LOG_MEL)
