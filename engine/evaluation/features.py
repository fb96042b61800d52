"""Motion-window features: what the emotion classifier reads and what realism is measured on.

A motion window (``window`` frames, every ``hop`` frames; an utterance shorter than one window
is one window of all its frames) is summarised per channel, for all 58 channels (52 ARKit
blendshapes and 6 head-pose values), by

- ``stats="moments"``: the mean and the standard deviation (116 values): what the emotion is
  (a smile's level, a frown, the head's posture) and how much each channel moves;
- ``stats="dynamics"``: mean, standard deviation and mean absolute frame-to-frame velocity
  (174 values): adds how fast each channel moves, so jitter and blur both show.

`FeatureSpace` standardises features with the training targets' statistics (so a channel
counts by how much it varies in real data, not by its units) and projects them on the training
targets' first ``dims`` principal components: realism's Frechet distance is computed there, in
a space fixed by the training data and small enough for covariances estimated from a few
hundred windows to be meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATS = ("moments", "dynamics")


def window_starts(frames: int, window: int, hop: int) -> np.ndarray:
    """First frames of the windows of an utterance (one window when it is shorter)."""
    if window < 2 or hop < 1:
        raise ValueError(f"window must be >= 2 and hop >= 1, got {window}, {hop}")
    if frames < 2:
        return np.zeros(0, int)
    if frames <= window:
        return np.zeros(1, int)
    return np.arange(0, frames - window + 1, hop)


def window_features(
    motion: np.ndarray, window: int, hop: int, stats: str = "dynamics"
) -> np.ndarray:
    """(windows, channels x 2 or 3) features of one utterance's raw motion (frames, channels).

    Means and standard deviations come from cumulative sums (one pass, whatever the overlap)."""
    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}, got {stats!r}")
    x = np.asarray(motion, np.float64)
    if x.ndim != 2:
        raise ValueError(f"motion must be (frames, channels), got {x.shape}")
    starts = window_starts(len(x), window, hop)
    if not len(starts):
        return np.zeros((0, x.shape[1] * (2 if stats == "moments" else 3)))
    w = min(window, len(x))
    ends = starts + w

    def window_mean(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        c = np.concatenate([np.zeros((1, v.shape[1])), np.cumsum(v, 0)])
        return (c[hi] - c[lo]) / (hi - lo)[:, None]

    mean = window_mean(x, starts, ends)
    var = window_mean(x * x, starts, ends) - mean**2
    parts = [mean, np.sqrt(np.clip(var, 0, None))]
    if stats == "dynamics":
        vel = np.abs(np.diff(x, axis=0))  # row j: frames j -> j + 1
        parts.append(window_mean(vel, starts, ends - 1))
    return np.concatenate(parts, 1)


@dataclass
class FeatureConfig:
    """Realism's feature space."""

    window: int = 32  # 1.28 s: a few syllables, a blink, a nod
    hop: int = 16
    stats: str = "dynamics"
    dims: int = 32  # principal components kept


class FeatureSpace:
    """Standardise (training targets' mean and std) then project on their top principal axes."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.axes: np.ndarray | None = None
        self.explained = float("nan")

    def features(self, motion: np.ndarray) -> np.ndarray:
        return window_features(motion, self.cfg.window, self.cfg.hop, self.cfg.stats)

    def fit(self, feats: np.ndarray) -> FeatureSpace:
        if len(feats) <= self.cfg.dims:
            raise ValueError(
                f"{len(feats)} training windows cannot fit {self.cfg.dims} principal axes"
            )
        self.mean = feats.mean(0)
        self.std = np.maximum(feats.std(0), 1e-6)
        z = (feats - self.mean) / self.std
        _, s, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
        self.axes = vt[: self.cfg.dims].T
        var = s**2
        self.explained = float(var[: self.cfg.dims].sum() / var.sum())
        return self

    def transform(self, feats: np.ndarray) -> np.ndarray:
        if self.axes is None:
            raise RuntimeError("FeatureSpace.fit first")
        return ((feats - self.mean) / self.std) @ self.axes
