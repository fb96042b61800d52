"""Training windows: random spans of the corpus with their audio, initial state and style clip.

A window is ``seq_len`` consecutive motion frames of one utterance, with

- the log-mel the audio encoder needs for them: ``left`` frames before and ``lookahead`` after,
  silence outside the utterance (as `pad_mel` gives offline and a stream gives at its start);
- ``known_len``: how many leading frames are known (initial state), drawn per window by the
  policy below so the model learns every case the streaming engine will ask for;
- a *style clip*: ``clip_frames`` frames of motion from *another* utterance with the same
  emotion and intensity (the same emotion at any intensity, if that is all there is), with a
  mask where it is shorter than the clip;
- the emotion label and intensity.

Every draw comes from one seeded numpy Generator whose state is saved in checkpoints, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.data.corpus import SplitArrays
from engine.features import MELS_PER_FRAME
from engine.models.audio_encoder import SILENCE_LOG_MEL


@dataclass
class KnownPolicy:
    """How many leading frames of a window are given as initial state.

    p_none: nothing known (a stream's first window); p_init: exactly ``init`` frames (offline
    generation); otherwise uniform in [1, seq_len - 1] (live hops and partial starts)."""

    init: int
    p_none: float = 0.1
    p_init: float = 0.5


@dataclass
class WindowBatch:
    motion: torch.Tensor  # (B, T, MOTION_DIM) raw
    mel: torch.Tensor  # (B, 4 (T + left + lookahead), n_mels) float32
    known_len: torch.Tensor  # (B,) int64
    emotion: torch.Tensor  # (B,) int64
    intensity: torch.Tensor  # (B,) int64, 1..3
    clip: torch.Tensor  # (B, S, MOTION_DIM) raw
    clip_mask: torch.Tensor  # (B, S) float
    utterance: torch.Tensor  # (B,) index of the utterance in the split

    def known_mask(self) -> torch.Tensor:
        t = self.motion.shape[1]
        return (torch.arange(t)[None] < self.known_len[:, None]).float()


class WindowSampler:
    def __init__(
        self,
        arrays: SplitArrays,
        seq_len: int,
        left: int,
        lookahead: int,
        clip_frames: int,
        known: KnownPolicy | None = None,
        seed: int = 0,
    ):
        self.a = arrays
        self.seq_len, self.left, self.lookahead = seq_len, left, lookahead
        self.clip_frames = clip_frames
        self.known = known
        self.rng = np.random.default_rng(seed)
        off = arrays.frame_offsets
        self.starts, self.lengths = off[:-1], off[1:] - off[:-1]
        self.eligible = np.flatnonzero(self.lengths >= seq_len)
        if len(self.eligible) == 0:
            raise ValueError(f"no utterance has {seq_len} frames; the corpus is too short")
        # each window position equally likely: utterances weighted by their window count
        weights = (self.lengths[self.eligible] - seq_len + 1).astype(np.float64)
        self.weights = weights / weights.sum()
        self.by_style: dict[tuple[int, int], np.ndarray] = {}
        self.by_emotion: dict[int, np.ndarray] = {}
        emo, inten = arrays.emotion.astype(int), arrays.intensity.astype(int)
        for e in np.unique(emo):
            self.by_emotion[int(e)] = np.flatnonzero(emo == e)
            for i in np.unique(inten[emo == e]):
                self.by_style[(int(e), int(i))] = np.flatnonzero((emo == e) & (inten == i))

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def _known_len(self, batch: int) -> np.ndarray:
        if self.known is None:
            return np.zeros(batch, np.int64)
        u = self.rng.random(batch)
        uniform = self.rng.integers(1, self.seq_len, batch)
        p = self.known
        return np.where(u < p.p_none, 0, np.where(u < p.p_none + p.p_init, p.init, uniform))

    def _style_partner(self, k: int) -> int:
        e, i = int(self.a.emotion[k]), int(self.a.intensity[k])
        pool = self.by_style[(e, i)]
        if len(pool) < 2:
            pool = self.by_emotion[e]
        if len(pool) < 2:
            return k
        j = k
        while j == k:
            j = int(pool[self.rng.integers(len(pool))])
        return j

    def sample(self, batch: int) -> WindowBatch:
        utt = self.eligible[self.rng.choice(len(self.eligible), batch, p=self.weights)]
        start = (self.rng.random(batch) * (self.lengths[utt] - self.seq_len + 1)).astype(np.int64)
        return self.windows(utt, start)

    def windows(self, utt: np.ndarray, start: np.ndarray) -> WindowBatch:
        """The windows of utterances ``utt`` starting at frames ``start`` (draws known_len and
        style clips from the generator)."""
        batch, t = len(utt), self.seq_len
        frame = start[:, None] + np.arange(t)[None]
        motion = self.a.motion[self.starts[utt][:, None] + frame]

        # mel of frames [start - left, start + t + lookahead), silence outside the utterance
        span = t + self.left + self.lookahead
        mel_frame = start[:, None] - self.left + np.arange(span)[None]
        inside = (mel_frame >= 0) & (mel_frame < self.lengths[utt][:, None])
        rows = (self.starts[utt][:, None] + np.clip(mel_frame, 0, None)) * MELS_PER_FRAME
        rows = np.where(inside, rows, 0)
        rows = (rows[..., None] + np.arange(MELS_PER_FRAME)).reshape(batch, -1)
        mel = self.a.mel[rows].astype(np.float32)
        mel[~np.repeat(inside, MELS_PER_FRAME, axis=1)] = SILENCE_LOG_MEL

        s = self.clip_frames
        clip = np.zeros((batch, s, motion.shape[-1]), np.float32)
        clip_mask = np.zeros((batch, s), np.float32)
        for b, k in enumerate(utt):
            j = self._style_partner(int(k))
            n = int(self.lengths[j])
            c0 = int(self.rng.integers(0, n - s + 1)) if n > s else 0
            m = min(n, s)
            clip[b, :m] = self.a.motion[self.starts[j] + c0 : self.starts[j] + c0 + m]
            clip_mask[b, :m] = 1.0

        return WindowBatch(
            motion=torch.from_numpy(np.ascontiguousarray(motion, dtype=np.float32)),
            mel=torch.from_numpy(mel),
            known_len=torch.from_numpy(self._known_len(batch).astype(np.int64)),
            emotion=torch.from_numpy(self.a.emotion[utt].astype(np.int64)),
            intensity=torch.from_numpy(self.a.intensity[utt].astype(np.int64)),
            clip=torch.from_numpy(clip),
            clip_mask=torch.from_numpy(clip_mask),
            utterance=torch.from_numpy(utt.astype(np.int64)),
        )


def fixed_batches(sampler: WindowSampler, count: int, batch: int, seed: int) -> list[WindowBatch]:
    """``count`` batches drawn with their own seed: the same validation set at every check,
    leaving the training generator untouched."""
    saved = sampler.state()
    sampler.rng = np.random.default_rng(seed)
    out = [sampler.sample(batch) for _ in range(count)]
    sampler.rng = np.random.default_rng()
    sampler.set_state(saved)
    return out
