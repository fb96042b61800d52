"""A tiny structured corpus for tests and smoke runs (not the synthetic training corpus).

No speech synthesis: each "phone" class has a spectral envelope (its log-mel profile, shifted
per voice) and a mouth shape (viseme); an utterance is a phone sequence, its mel is the
profiles plus noise, its mouth is the visemes with coarticulation (a two-sided smoothing).
Emotion adds an expression offset scaled by intensity, with a slow random modulation that the
audio does not predict (so a diffusion model has a distribution to learn and a regression
model averages it away); head motion follows the speech energy plus a random walk; blinks are
random. Enough structure that a model that learns something shows it within minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.blendshapes import MOTION_DIM, MOTION_INDEX
from engine.data.corpus import Phone, Sample, ShardWriter, write_manifest
from engine.emotions import EMOTIONS
from engine.features import MEL, MELS_PER_FRAME
from engine.timebase import FPS

SILENCE = -11.5

# viseme per phone class: {channel: weight}; class 0 is silence (mouth at rest)
VISEMES: tuple[tuple[str, dict[str, float]], ...] = (
    ("sil", {}),
    ("AA", {"jawOpen": 0.6, "mouthLowerDownLeft": 0.3, "mouthLowerDownRight": 0.3}),
    ("IY", {"jawOpen": 0.2, "mouthStretchLeft": 0.4, "mouthStretchRight": 0.4}),
    ("UW", {"jawOpen": 0.2, "mouthPucker": 0.6, "mouthFunnel": 0.4}),
    ("M", {"mouthClose": 0.35, "mouthPressLeft": 0.4, "mouthPressRight": 0.4}),
    ("F", {"jawOpen": 0.1, "mouthRollLower": 0.5, "mouthUpperUpLeft": 0.2}),
    ("T", {"jawOpen": 0.25, "mouthShrugUpper": 0.2}),
    ("S", {"jawOpen": 0.1, "mouthStretchLeft": 0.3, "mouthStretchRight": 0.3}),
    ("OW", {"jawOpen": 0.45, "mouthFunnel": 0.35}),
    ("SH", {"jawOpen": 0.15, "mouthFunnel": 0.5, "mouthPucker": 0.2}),
)

EXPRESSIONS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"mouthSmileLeft": 0.6, "mouthSmileRight": 0.6, "cheekSquintLeft": 0.4,
              "cheekSquintRight": 0.4, "eyeSquintLeft": 0.2, "eyeSquintRight": 0.2},
    "sad": {"mouthFrownLeft": 0.5, "mouthFrownRight": 0.5, "browInnerUp": 0.6, "headPitch": 0.1},
    "angry": {"browDownLeft": 0.7, "browDownRight": 0.7, "noseSneerLeft": 0.3,
              "noseSneerRight": 0.3, "mouthPressLeft": 0.2, "mouthPressRight": 0.2},
    "surprised": {"browInnerUp": 0.5, "browOuterUpLeft": 0.6, "browOuterUpRight": 0.6,
                  "eyeWideLeft": 0.5, "eyeWideRight": 0.5, "jawOpen": 0.1},
    "fearful": {"browInnerUp": 0.7, "eyeWideLeft": 0.4, "eyeWideRight": 0.4,
                "mouthStretchLeft": 0.3, "mouthStretchRight": 0.3},
    "disgusted": {"noseSneerLeft": 0.6, "noseSneerRight": 0.6, "mouthUpperUpLeft": 0.3,
                  "mouthUpperUpRight": 0.3, "browDownLeft": 0.3, "browDownRight": 0.3},
    "contempt": {"mouthSmileLeft": 0.5, "mouthDimpleLeft": 0.3, "headRoll": 0.05},
}  # fmt: skip


def _vector(weights: dict[str, float]) -> np.ndarray:
    v = np.zeros(MOTION_DIM, np.float32)
    for name, w in weights.items():
        v[MOTION_INDEX[name]] = w
    return v


def _smooth(x: np.ndarray, a: float) -> np.ndarray:
    """Two-sided one-pole smoothing along axis 0 (coarticulation without a lag)."""
    y = x.copy()
    for i in range(1, len(y)):
        y[i] = a * y[i - 1] + (1 - a) * y[i]
    for i in range(len(y) - 2, -1, -1):
        y[i] = a * y[i + 1] + (1 - a) * y[i]
    return y


def _slow_noise(rng: np.random.Generator, n: int, dims: int, a: float = 0.93) -> np.ndarray:
    return _smooth(rng.normal(0, 1, (n, dims)).astype(np.float32), a) * np.sqrt(1 / (1 - a))


def toy_sample(
    rng: np.random.Generator, sentence: int, voice: int, emotion: int, intensity: int
) -> Sample:
    srng = np.random.default_rng(1000 + sentence)  # the sentence fixes the phone sequence
    n_phones = int(srng.integers(8, 20))
    classes = srng.integers(1, len(VISEMES), n_phones)
    durations = rng.integers(2, 6, n_phones)  # each speaker says it at their own pace
    lead, tail = int(rng.integers(3, 8)), int(rng.integers(3, 8))
    spoken = [[c] * d for c, d in zip(classes, durations, strict=True)]
    frames = np.concatenate([[0] * lead, *spoken, [0] * tail]).astype(int)
    n = len(frames)

    # mel: class profile (shifted per voice) + noise, at four mel frames per video frame
    prng = np.random.default_rng(7)
    bins = np.arange(MEL.n_mels)
    profiles = np.stack(
        [-3.0 - 0.04 * bins + 2.0 * np.sin(bins / (4 + k) + k) for k in range(len(VISEMES))]
    )
    profiles = profiles + prng.normal(0, 0.3, profiles.shape)
    profiles = np.roll(profiles, 2 * voice, axis=1)
    profiles[0] = SILENCE
    sub = np.repeat(frames, MELS_PER_FRAME)
    mel = profiles[sub] + rng.normal(0, 0.4, (len(sub), MEL.n_mels))
    mel[sub == 0] = SILENCE + rng.normal(0, 0.1, ((sub == 0).sum(), MEL.n_mels))

    visemes = np.stack([_vector(w) for _, w in VISEMES])
    motion = _smooth(visemes[frames], 0.45)
    scale = intensity / 3.0 * (1 + 0.3 * _slow_noise(rng, n, 1, 0.97))
    motion += _vector(EXPRESSIONS[EMOTIONS[emotion]])[None] * np.clip(scale, 0, 2)
    energy = _smooth((frames > 0).astype(np.float32)[:, None], 0.8)
    pose = 0.03 * _slow_noise(rng, n, 6) + 0.04 * energy
    motion[:, -6:] += pose
    for start in rng.integers(0, n, max(1, n // 60)):  # blinks, 4 frames each
        for k, w in enumerate((0.5, 1.0, 1.0, 0.5)):
            if start + k < n:
                for eye in ("eyeBlinkLeft", "eyeBlinkRight"):
                    motion[start + k, MOTION_INDEX[eye]] = w
    motion[:, :-6] = np.clip(motion[:, :-6], 0, 1)

    phones, t = [], lead / FPS
    for c, d in zip(classes, durations, strict=True):
        phones.append(Phone(VISEMES[c][0], t, t + d / FPS))
        t += d / FPS
    return Sample(
        sample_id=f"s{sentence:03d}_v{voice}_{EMOTIONS[emotion]}_{intensity}",
        motion=motion.astype(np.float32),
        mel=mel.astype(np.float32),
        emotion=emotion,
        intensity=intensity,
        voice=f"toy{voice}",
        sentence=sentence,
        text=" ".join(VISEMES[c][0] for c in classes),
        phones=phones,
    )


def write_toy_corpus(
    out_dir: str | os.PathLike[str],
    sentences: int = 24,
    voices: int = 2,
    seed: int = 0,
    emotions: tuple[int, ...] | None = None,
) -> Path:
    """Write a toy corpus: every sentence by every voice in every emotion at a random intensity.

    Sentences ``k % 8 == 6`` go to val, ``k % 8 == 7`` to test (splits share no sentence)."""
    rng = np.random.default_rng(seed)
    emotions = tuple(range(len(EMOTIONS))) if emotions is None else emotions
    with ShardWriter(out_dir, tag="toy", samples_per_shard=128) as writer:
        for s in range(sentences):
            split = "val" if s % 8 == 6 else "test" if s % 8 == 7 else "train"
            for v in range(voices):
                for e in emotions:
                    intensity = int(rng.integers(1, 4))
                    writer.add(split, toy_sample(rng, s, v, e, intensity))
    write_manifest(out_dir, {"generator": "toy", "seed": seed, "sentences": sentences})
    return Path(out_dir)
