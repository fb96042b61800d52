"""The LSTM baseline: the prior-art design DREAM-Talk argues against.

Audio and emotion in, motion out, by regression (L1 plus velocity), as in the emotional
talking-head systems before it (e.g. EVP, EAMM): the same audio encoder architecture as EmoDiff,
an emotion + intensity embedding, two LSTM layers, a linear read-out of every motion channel.
Regression to the mean is the point of the comparison: it lip-syncs, but its expression is the
average of the emotion, with no diversity between runs and damped intensity.

Unidirectional, so it can stream too; its only look-ahead is the audio encoder's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from engine.blendshapes import MOTION_DIM
from engine.emotions import INTENSITIES, NUM_EMOTIONS
from engine.models.audio_encoder import AudioEncoder, AudioEncoderConfig
from engine.motion_norm import ChannelNorm


@dataclass
class LSTMConfig:
    hidden: int = 192
    layers: int = 2
    emotion_dim: int = 32
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)


class LSTMBaseline(nn.Module):
    """mel (B, 4 * (T + left + lookahead), 80), emotion (B,), intensity (B,) -> motion (B, T, 58)
    in raw units (blendshapes unclamped)."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.motion_norm = ChannelNorm(MOTION_DIM)
        self.audio = AudioEncoder(cfg.audio)
        self.emotion = nn.Embedding(NUM_EMOTIONS, cfg.emotion_dim)
        self.intensity = nn.Embedding(len(INTENSITIES), cfg.emotion_dim)
        self.lstm = nn.LSTM(
            cfg.audio.dim + cfg.emotion_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True
        )
        self.out = nn.Linear(cfg.hidden, MOTION_DIM)

    def predict_normalized(
        self, mel: torch.Tensor, emotion: torch.Tensor, intensity: torch.Tensor
    ) -> torch.Tensor:
        feats = self.audio(mel)
        emo = self.emotion(emotion.long()) + self.intensity(intensity.long() - 1)
        emo = emo[:, None].expand(-1, feats.shape[1], -1)
        h, _ = self.lstm(torch.cat([feats, emo], dim=-1))
        return self.out(h)

    def forward(
        self, mel: torch.Tensor, emotion: torch.Tensor, intensity: torch.Tensor
    ) -> torch.Tensor:
        return self.motion_norm.denormalize(self.predict_normalized(mel, emotion, intensity))
