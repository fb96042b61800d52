"""The emotion classifier that scores expressiveness: trained on the training split's *targets*.

It tells the 24 (emotion, intensity) pairs apart, so it scores both: an utterance's emotion is
the most likely emotion with its three intensities summed, and its intensity is the most likely
of the three *given the true emotion* (so an intensity error is not also counted as an emotion
error). On the synthetic corpus the emotion alone is easy (every test target is classified
right: the metric checks that the generator keeps the emotion), the intensity is not (about 90%
of the test targets: intensity 1 of one emotion is close to intensity 2 of it).

It reads motion windows (64 frames, 2.56 s, every 32) summarised per channel by their mean and
standard deviation over all 58 channels (`engine.evaluation.features`, ``stats="moments"``),
standardised, through a small MLP (one hidden layer of 64; ``hidden=0``: multinomial logistic
regression), fitted full-batch by L-BFGS on cross-entropy plus an L2 penalty, seeded. (Adam was
tried first: its per-weight step normalisation moves the weights of pure-noise features as fast
as the informative ones, and on small sets those noise weights decided the class.) An
utterance's scores are the mean log-probabilities over its windows.

Why this and not a deep classifier: the generated motion is scored by what a well-fitted simple
model of the *real* data recognises, so a variant cannot win by producing artefacts a big
network latches on to, and the classifier's own accuracy on the test targets (printed with the
results) says how much of the metric is the classifier's limit rather than the generator's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.emotions import INTENSITIES, NUM_EMOTIONS
from engine.evaluation.features import window_features

log = logging.getLogger(__name__)


@dataclass
class ClassifierConfig:
    window: int = 64
    hop: int = 32
    # 0: multinomial logistic regression. One hidden layer of 64 tells intensities apart better
    # (on data/synth test targets: intensity 90.5% against 89.8%; emotion 100% either way).
    hidden: int = 64
    iterations: int = 300  # L-BFGS iterations (full batch)
    l2: float = 1e-3  # penalty on the squared weights (not the biases), per mean loss
    seed: int = 0
    max_windows: int = 60_000  # a seeded subset beyond this (full-batch training stays fast)


class EmotionClassifier:
    """(emotion, intensity) classifier; class ``emotion * 3 + intensity - 1``."""

    def __init__(self, cfg: ClassifierConfig | None = None, num_emotions: int = NUM_EMOTIONS):
        self.cfg = cfg or ClassifierConfig()
        self.num_emotions = num_emotions
        self.num_classes = num_emotions * len(INTENSITIES)
        self.net: nn.Module | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.train_accuracy = float("nan")

    def window_features(self, motion: np.ndarray) -> np.ndarray:
        return window_features(motion, self.cfg.window, self.cfg.hop, "moments")

    def fit(
        self, motions: Sequence[np.ndarray], emotions: Sequence[int], intensities: Sequence[int]
    ) -> EmotionClassifier:
        """Train on utterances (raw motion), their emotion indices and intensities (1..3); every
        window of an utterance carries its labels."""
        if not (len(motions) == len(emotions) == len(intensities)) or not len(motions):
            raise ValueError("fit needs one label per utterance, and at least one utterance")
        if not set(intensities) <= set(INTENSITIES):
            raise ValueError(f"intensities must be in {INTENSITIES}")
        labels = [e * len(INTENSITIES) + i - 1 for e, i in zip(emotions, intensities, strict=True)]
        feats, ys = [], []
        for m, y in zip(motions, labels, strict=True):
            f = self.window_features(m)
            feats.append(f)
            ys.append(np.full(len(f), int(y)))
        x = np.concatenate(feats)
        y = np.concatenate(ys)
        if len(np.unique(y)) < 2:
            raise ValueError("the classifier needs at least two emotions in its training data")
        rng = np.random.default_rng(self.cfg.seed)
        if len(x) > self.cfg.max_windows:
            keep = rng.choice(len(x), self.cfg.max_windows, replace=False)
            x, y = x[keep], y[keep]
        self.mean = x.mean(0)
        self.std = np.maximum(x.std(0), 1e-6)
        xt = torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))
        yt = torch.from_numpy(y.astype(np.int64))
        # fork_rng: seed the initialisation without moving the caller's global torch RNG
        with torch.random.fork_rng():
            torch.manual_seed(self.cfg.seed)
            d, h = xt.shape[1], self.cfg.hidden
            net = (
                nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, self.num_classes))
                if h
                else nn.Linear(d, self.num_classes)
            )
        weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
        opt = torch.optim.LBFGS(
            net.parameters(), lr=1.0, max_iter=self.cfg.iterations, history_size=20,
            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9,
        )  # fmt: skip

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xt), yt)
            loss = loss + self.cfg.l2 * sum((w * w).sum() for w in weights)
            loss.backward()
            return loss

        opt.step(closure)
        net.eval().requires_grad_(False)
        self.net = net
        with torch.no_grad():
            self.train_accuracy = float((net(xt).argmax(1) == yt).float().mean())
        log.info(
            "emotion classifier: %d windows, %d features, hidden %d, train accuracy %.3f",
            len(x), x.shape[1], self.cfg.hidden, self.train_accuracy,
        )  # fmt: skip
        return self

    def log_proba(self, motion: np.ndarray) -> np.ndarray:
        """(windows, classes) log-probabilities of one utterance's windows."""
        if self.net is None:
            raise RuntimeError("EmotionClassifier.fit first")
        f = (self.window_features(motion) - self.mean) / self.std
        with torch.no_grad():
            logits = self.net(torch.from_numpy(f.astype(np.float32)))
        return torch.log_softmax(logits, 1).numpy()

    def scores(self, motion: np.ndarray) -> np.ndarray:
        """(emotions, intensities): one utterance's mean log-probability over its windows."""
        lp = self.log_proba(motion)
        if not len(lp):
            raise ValueError("an utterance of fewer than 2 frames has no window to classify")
        return lp.mean(0).reshape(self.num_emotions, len(INTENSITIES))

    def predict(self, motion: np.ndarray, emotion: int | None = None) -> tuple[int, int]:
        """(emotion, intensity) of one utterance: the emotion whose three intensities are most
        likely together, and the most likely intensity of ``emotion`` (default: the predicted
        one)."""
        s = self.scores(motion)
        m = s.max(1, keepdims=True)
        e = int((m[:, 0] + np.log(np.exp(s - m).sum(1))).argmax())  # logsumexp per emotion
        k = e if emotion is None else emotion
        return e, int(s[k].argmax()) + INTENSITIES[0]


def accuracy_by(
    predicted: Sequence[int], true: Sequence[int], groups: Sequence[object]
) -> dict[str, float]:
    """Accuracy per group value (e.g. per emotion name or per intensity), keys as strings."""
    out: dict[str, list[bool]] = {}
    for p, t, g in zip(predicted, true, groups, strict=True):
        out.setdefault(str(g), []).append(p == t)
    return {k: float(np.mean(v)) for k, v in out.items()}
