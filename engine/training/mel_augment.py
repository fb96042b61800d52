"""Voice augmentation on log-mel batches: new timbres, levels and microphones for the audio
encoders that must work on voices they never heard.

The test voices of the corpus (and every user) differ from the training voices in vocal tract
length (formants shifted in frequency), level and channel colour. Per window, on the log-mel
(B, rows, n_mels) the encoder reads:

- vocal tract length perturbation (Jaitly & Hinton 2013): the mel axis is resampled by a factor
  alpha ~ U(1 - warp, 1 + warp), moving every formant by the same ratio, as a shorter or longer
  vocal tract would;
- level: a gain of up to +-``gain_db``;
- colour: a spectral tilt of up to +-``tilt_db`` from the lowest to the highest band.

Silence stays silence: nothing goes below the log-mel floor (`SILENCE_LOG_MEL`), where digital
silence and the padding around utterances sit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.models.audio_encoder import SILENCE_LOG_MEL


@dataclass
class MelAugmentConfig:
    p: float = 0.8  # share of windows augmented
    warp: float = 0.15  # vocal tract length: mel axis scaled by up to +-15%
    gain_db: float = 10.0
    tilt_db: float = 6.0


def augment_mel(
    mel: torch.Tensor, cfg: MelAugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A copy of log-mel windows (B, rows, n_mels) with per-window random voice changes."""
    b, rows, n = mel.shape

    def uniform(*shape: int) -> torch.Tensor:  # in [-1, 1)
        return 2.0 * torch.rand(*shape, generator=generator) - 1.0

    on = (torch.rand(b, 1, 1, generator=generator) < cfg.p).float()
    alpha = 1.0 + cfg.warp * uniform(b, 1, 1) * on
    src = (torch.arange(n, dtype=mel.dtype)[None, None] * alpha).clamp(0, n - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = src - lo
    lo, hi = lo.expand(b, rows, n), hi.expand(b, rows, n)
    warped = torch.gather(mel, 2, lo) * (1 - w) + torch.gather(mel, 2, hi) * w
    # log-mel is the natural log of power: a gain of g dB adds g * ln(10) / 10
    per_db = math.log(10.0) / 10.0
    gain = cfg.gain_db * per_db * uniform(b, 1, 1)
    tilt = cfg.tilt_db * per_db * uniform(b, 1, 1) * torch.linspace(-0.5, 0.5, n)[None, None]
    out = warped + (gain + tilt) * on
    silent = mel <= SILENCE_LOG_MEL + 1e-6  # padding and digital silence stay as they are
    return torch.where(silent, mel, out.clamp(min=SILENCE_LOG_MEL))
