"""Training the LSTM baseline: plain regression of every motion channel, as prior art did.

    L = mean |x_hat - x| + velocity_weight * mean |dx_hat - dx|     (normalised units)

on windows of ``seq_len`` frames, the LSTM starting from a zero state at each window's start
(at inference it runs over the whole utterance from its first frame).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engine.data.corpus import SplitArrays
from engine.models import LSTMBaseline
from engine.training.common import mean_metrics, motion_metrics, set_stats
from engine.training.loop import WindowTask
from engine.training.windows import WindowSampler, fixed_batches


@dataclass
class LSTMTrainConfig:
    seq_len: int = 64
    velocity_weight: float = 1.0
    val_batches: int = 2
    val_batch_size: int = 64


class LSTMTask(WindowTask):
    kind = "lstm"

    def __init__(
        self,
        model: LSTMBaseline,
        train: SplitArrays,
        val: SplitArrays,
        batch_size: int,
        tcfg: LSTMTrainConfig,
        seed: int = 0,
        data: str | Path | None = None,
    ):
        self.model, self.tcfg, self.batch_size, self.data = model, tcfg, batch_size, data
        self.stats = set_stats(model.motion_norm, model.audio.mel_norm, train)
        a = model.cfg.audio
        # the baseline reads no style clip: one frame keeps the sampler's work small
        self.sampler = WindowSampler(
            train, tcfg.seq_len, a.left_context, a.lookahead, 1, None, seed
        )
        val_sampler = WindowSampler(
            val, tcfg.seq_len, a.left_context, a.lookahead, 1, None, seed + 1
        )
        self.val = fixed_batches(val_sampler, tcfg.val_batches, tcfg.val_batch_size, seed + 2)

    def _loss(self, model: LSTMBaseline, batch) -> tuple[torch.Tensor, torch.Tensor]:
        pred = model.predict_normalized(batch.mel, batch.emotion, batch.intensity)
        x = model.motion_norm.normalize(batch.motion)
        l1 = (pred - x).abs().mean()
        vel = ((pred[:, 1:] - pred[:, :-1]) - (x[:, 1:] - x[:, :-1])).abs().mean()
        return l1, vel

    def loss(self, model: LSTMBaseline, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        l1, vel = self._loss(model, self.sampler.sample(self.batch_size))
        return l1 + self.tcfg.velocity_weight * vel, {"l1": l1.item(), "vel": vel.item()}

    @torch.no_grad()
    def validate(self, model: LSTMBaseline) -> dict[str, float]:
        out = []
        for batch in self.val:
            l1, _ = self._loss(model, batch)
            m = motion_metrics(model(batch.mel, batch.emotion, batch.intensity), batch.motion)
            out.append({"val_l1": l1.item(), **m})
        return mean_metrics(out)

    def meta(self) -> dict[str, Any]:
        return {"train": asdict(self.tcfg), "data": str(self.data) if self.data else None}
