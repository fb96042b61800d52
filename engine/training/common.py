"""Helpers the training tasks share: corpus loading, normalisation stats, quick metrics.

The metrics here are the cheap ones validation prints while training runs (is the mouth
following the audio, is the expression right); `dreamtalk eval` owns the real evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from engine.blendshapes import MOTION_INDEX, MOUTH_NAMES, NUM_BLENDSHAPES
from engine.data.corpus import Corpus, SplitArrays
from engine.motion_norm import ChannelNorm, channel_stats

log = logging.getLogger(__name__)

MOUTH = [MOTION_INDEX[n] for n in MOUTH_NAMES]
EXPRESSION = [i for i in range(NUM_BLENDSHAPES) if i not in set(MOUTH)]
POSE = slice(NUM_BLENDSHAPES, None)
JAW = MOTION_INDEX["jawOpen"]


def load_splits(data: str | Path) -> tuple[SplitArrays, SplitArrays]:
    """(train, val) arrays of a corpus; val falls back to train when the corpus has none."""
    corpus = Corpus(data)
    train = corpus.arrays("train")
    try:
        val = corpus.arrays("val")
    except ValueError:
        log.warning("%s has no val split; validating on train", data)
        val = train
    log.info(
        "%s: %d train utterances (%.2f h), %d val",
        data,
        train.num_samples,
        len(train.motion) / 25 / 3600,
        val.num_samples,
    )
    return train, val


def set_stats(motion_norm: ChannelNorm, mel_norm: ChannelNorm | None, train: SplitArrays) -> dict:
    """Fill normalisation buffers from the train split; returns the stats for the record."""
    mean, std = channel_stats(train.motion)
    motion_norm.set_stats(mean, std)
    out = {"motion_frames": len(train.motion)}
    if mel_norm is not None:
        mel_mean, mel_std = channel_stats(train.mel)
        mel_norm.set_stats(mel_mean, mel_std)
    return out


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def motion_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Raw motion (B, T, 58) against targets: mouth / expression / pose mean absolute error, the
    correlation of jawOpen over all frames (the mouth following the audio), and the ratio of
    motion speed."""
    return {
        "mouth_l1": float((pred[..., MOUTH] - target[..., MOUTH]).abs().mean()),
        "expr_l1": float((pred[..., EXPRESSION] - target[..., EXPRESSION]).abs().mean()),
        "pose_l1": float((pred[..., POSE] - target[..., POSE]).abs().mean()),
        "jaw_corr": float(pearson(pred[..., JAW].reshape(-1), target[..., JAW].reshape(-1))),
        # motion energy against the data's: a sampler that blurs (too few steps, regression to
        # the mean) moves less than the data do, < 1
        "speed_ratio": float(speed(pred) / speed(target).clamp(min=1e-8)),
    }


def speed(motion: torch.Tensor) -> torch.Tensor:
    """Mean absolute frame-to-frame change of the blendshapes."""
    return (motion[:, 1:, :NUM_BLENDSHAPES] - motion[:, :-1, :NUM_BLENDSHAPES]).abs().mean()


def mean_metrics(items: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([d[k] for d in items])) for k in items[0]}
