"""Evaluation metrics: plain functions over raw motion arrays (frames, MOTION_DIM).

Raw motion is what `MotionModels` and the corpus hold: ARKit weights in [0, 1], head pose in
radians / face units, 25 frames a second. Every function here takes numpy arrays and returns
floats or arrays, so each can be checked on constructed inputs (tests/test_evaluation.py).

Conventions:
- *lag*: ``lagged_correlation(pred, target)[k]`` correlates ``pred[t + k]`` with ``target[t]``;
  a positive best lag means the prediction is *late* by that many frames.
- *jerk*: the third difference ``x[i + 2] - 3 x[i + 1] + 3 x[i] - x[i - 1]``, centred on the edge
  between frames ``i`` and ``i + 1`` (the definition `dreamtalk bench stream` uses for seams).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.data.visemes import bilabial_closure_rate, lip_opening

# A signal whose standard deviation is below this does not move: its correlation is undefined.
FLAT_STD = 1e-6


def pearson(pred: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation of two 1-D signals.

    NaN when the target does not move (nothing to follow); 0 when only the prediction is flat
    (a mouth that never moves follows nothing), so a frozen output scores 0, not NaN."""
    a = np.asarray(pred, np.float64)
    b = np.asarray(target, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pearson needs two 1-D signals of one length, got {a.shape}, {b.shape}")
    if len(b) < 2 or b.std() < FLAT_STD:
        return float("nan")
    if a.std() < FLAT_STD:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def lagged_correlation(pred: np.ndarray, target: np.ndarray, max_lag: int) -> np.ndarray:
    """Correlations at lags -max_lag..max_lag, shape (2 max_lag + 1,): entry ``max_lag + k``
    correlates ``pred[t + k]`` with ``target[t]`` over the frames both cover."""
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    n = len(target)
    if len(pred) != n:
        raise ValueError(f"prediction has {len(pred)} frames, target {n}")
    out = np.full(2 * max_lag + 1, np.nan)
    for k in range(-max_lag, max_lag + 1):
        if n - abs(k) < 2:
            continue
        if k >= 0:
            out[max_lag + k] = pearson(pred[k:], target[: n - k])
        else:
            out[max_lag + k] = pearson(pred[: n + k], target[-k:])
    return out


def best_lag(curves: Sequence[np.ndarray]) -> tuple[int, float, float]:
    """(best lag, correlation there, correlation at lag 0) of the mean of per-utterance lag
    curves (NaN entries, i.e. flat targets, left out). The lag is in frames, positive = late."""
    stack = np.asarray(curves, np.float64)
    if stack.ndim != 2 or not len(stack):
        raise ValueError("best_lag needs at least one lag curve")
    valid = ~np.isnan(stack)
    if not valid.any():
        return 0, float("nan"), float("nan")
    count = valid.sum(0)
    mean = np.where(count > 0, np.nansum(stack, 0) / np.maximum(count, 1), np.nan)
    max_lag = (stack.shape[1] - 1) // 2
    i = int(np.nanargmax(mean))
    return i - max_lag, float(mean[i]), float(mean[max_lag])


def lip_sync(
    preds: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    phones: Sequence[Sequence[object]],
    mouth: Sequence[int],
    jaw: int,
    max_lag: int = 5,
    lips: Sequence[int] | None = None,
) -> dict[str, float]:
    """Lip-sync of generated utterances against their targets.

    - ``jaw_corr_lag0``, ``jaw_best_lag``, ``jaw_corr_best_lag``: jawOpen (channel ``jaw``);
    - ``mouth_corr_lag0``, ``mouth_best_lag``, ``mouth_corr_best_lag``: the mouth opening, the
      gap between the lips as the face rig renders it (`engine.data.visemes.lip_opening`),
      which also counts mouthClose, lower-lip and upper-lip channels;
    - ``bilabial_closure_rate``: share of p/b/m (over all utterances) on which the lips close
      (`bilabial_closure_rate`), ``bilabials`` how many there were;
    - ``mouth_l1``: mean absolute error over the ``mouth`` channels (jaw, mouth, tongue);
    - ``lip_l1``: the same over the ``lips`` channels (given: those that part the lips, the
      articulation; the mouth's expressive channels, a smile, are left to ``mouth_l1``).

    Correlations are per utterance, then averaged (an utterance's timing, not its level)."""
    if not (len(preds) == len(targets) == len(phones)) or not len(preds):
        raise ValueError("lip_sync needs one target and one phone list per prediction")
    jaw_curves, open_curves, l1, lip_l1 = [], [], [], []
    closed = total = 0
    for pred, target, ph in zip(preds, targets, phones, strict=True):
        if pred.shape != target.shape:
            raise ValueError(f"prediction {pred.shape} and target {target.shape} differ")
        jaw_curves.append(lagged_correlation(pred[:, jaw], target[:, jaw], max_lag))
        open_curves.append(lagged_correlation(lip_opening(pred), lip_opening(target), max_lag))
        l1.append(np.abs(pred[:, mouth] - target[:, mouth]).mean())
        if lips is not None:
            lip_l1.append(np.abs(pred[:, lips] - target[:, lips]).mean())
        rate, count = bilabial_closure_rate(pred, ph)
        if count:
            closed += round(rate * count)
            total += count
    jl, jc, j0 = best_lag(jaw_curves)
    ml, mc, m0 = best_lag(open_curves)
    return {
        "jaw_corr_lag0": j0,
        "jaw_best_lag": jl,
        "jaw_corr_best_lag": jc,
        "mouth_corr_lag0": m0,
        "mouth_best_lag": ml,
        "mouth_corr_best_lag": mc,
        "bilabial_closure_rate": closed / total if total else float("nan"),
        "bilabials": total,
        "mouth_l1": float(np.mean(l1)),
        **({"lip_l1": float(np.mean(lip_l1))} if lips is not None else {}),
    }


def seed_spread(runs: np.ndarray, channels: Sequence[int] | slice) -> float:
    """Diversity of one utterance: the standard deviation across seeds (unbiased variance),
    per frame and channel, averaged over frames and the given channels. ``runs`` is
    (seeds >= 2, frames, MOTION_DIM) for the same audio and emotion."""
    r = np.asarray(runs, np.float64)
    if r.ndim != 3 or r.shape[0] < 2:
        raise ValueError(f"seed_spread needs (seeds >= 2, frames, channels), got {r.shape}")
    return float(r[..., channels].std(axis=0, ddof=1).mean())


def third_difference(motion: np.ndarray) -> np.ndarray:
    """(frames - 3, channels): ``x[i + 2] - 3 x[i + 1] + 3 x[i] - x[i - 1]`` for i = 1..frames-3
    (row ``r`` is centred on the edge between frames ``r + 1`` and ``r + 2``)."""
    x = np.asarray(motion, np.float64)
    return x[3:] - 3 * x[2:-1] + 3 * x[1:-2] - x[:-3]


def jerk(motion: np.ndarray, channels: Sequence[int] | slice) -> float:
    """Mean |third difference| over frames and ``channels``, raw units per frame^3."""
    d3 = third_difference(np.asarray(motion)[:, channels])
    return float(np.abs(d3).mean()) if d3.size else float("nan")


def seam_jerk_terms(
    motion: np.ndarray, block_starts: Sequence[int], skip: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """(jerk per edge, edge is a seam) for one utterance generated in blocks.

    Jerk per edge: mean over channels of |third difference| with each channel divided by its own
    standard deviation (channels that do not move, std <= 1e-4, left out), as `dreamtalk bench
    stream` measures it, so a fast channel does not drown the others. The edge between frames
    ``i`` and ``i + 1`` is a seam when a block starts at ``i + 1``. The first ``skip`` frames
    (a session's start) are left out."""
    m = np.asarray(motion, np.float64)[skip:]
    if len(m) < 4:
        return np.zeros(0), np.zeros(0, bool)
    std = m.std(axis=0)
    cols = std > 1e-4
    if not cols.any():
        return np.zeros(0), np.zeros(0, bool)
    d3 = np.abs(third_difference(m[:, cols] / std[cols])).mean(axis=1)
    edge_after = np.arange(1, len(m) - 2) + skip  # frame i of the edge i | i + 1
    starts = np.zeros(len(motion) + 1, bool)
    idx = np.asarray(block_starts, int)
    starts[idx[(idx >= 0) & (idx <= len(motion))]] = True
    return d3, starts[edge_after + 1]


def seam_jerk_ratio(terms: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean jerk on seams over mean jerk inside blocks, pooled over utterances
    (`seam_jerk_terms` of each). 1: no seam; NaN when there are no seams or no inside edges."""
    if not terms:
        return float("nan")
    d3 = np.concatenate([t[0] for t in terms])
    at = np.concatenate([t[1] for t in terms])
    if not at.any() or at.all():
        return float("nan")
    return float(d3[at].mean() / d3[~at].mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    The matrix square root's trace is taken as the sum of the square roots of the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2) (symmetric, so `eigh` is exact and stable; no complex parts)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) and (M, D), got {a.shape}, {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each feature set needs at least 2 rows")
    mu = a.mean(0) - b.mean(0)
    sa = np.atleast_2d(np.cov(a, rowvar=False))
    sb = np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ sb @ root_a)
    cross = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(max(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * cross, 0.0))
