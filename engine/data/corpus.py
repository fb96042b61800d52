"""The corpus format: what `data synth` and `data prepare` write and training reads.

A corpus is a folder::

    DIR/manifest.json            format, generator and its parameters, splits -> shard files
    DIR/shards/<split>-<tag>.npz one shard: many samples' arrays concatenated

Each shard holds, for its ``n`` samples (``F`` motion frames in all)::

    motion         float32 (F, MOTION_DIM)   targets at 25 fps, columns = MOTION_NAMES
    mel            float16 (4F, 80)          log-mel (engine.features), 4 per motion frame
    audio          int16   (640F,)           16 kHz speech, kept for inspection and `data show`
    frame_offsets  int64   (n+1,)            sample k owns frames [off[k], off[k+1])
    emotion        int16   (n,)              index in engine.emotions.EMOTIONS
    intensity      int8    (n,)              1..3
    voice, sample_id, text   str (n,)
    sentence       int32   (n,)              sentence id (splits never share one)
    phone_offsets  int64   (n+1,)            sample k owns phones [po[k], po[k+1])
    phone_symbol   str (P,), phone_start, phone_end float32 (P,) seconds from sample start

Shards are written atomically, one writer per worker, so generation can run in parallel;
the manifest is written last, listing the shards of each split.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.blendshapes import MOTION_DIM, MOTION_NAMES
from engine.emotions import EMOTIONS
from engine.features import MEL, MELS_PER_FRAME
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

CORPUS_FORMAT = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")


class CorpusError(ValueError):
    """A folder that is not a readable corpus; the message says which file and why."""


@dataclass
class Phone:
    symbol: str
    start: float  # seconds from the sample's start
    end: float


@dataclass
class Sample:
    sample_id: str
    motion: np.ndarray  # (F, MOTION_DIM) float32
    mel: np.ndarray  # (4F, n_mels)
    emotion: int
    intensity: int
    voice: str
    sentence: int
    text: str = ""
    audio: np.ndarray | None = None  # (640F,) int16, or None
    phones: list[Phone] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.motion)


def _atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ShardWriter:
    """Collects samples per split and writes a shard every ``samples_per_shard`` samples.

    ``tag`` keeps parallel writers apart (one per worker): shards are named
    ``<split>-<tag>-<k>.npz``.
    """

    def __init__(
        self, out_dir: str | os.PathLike[str], tag: str = "0", samples_per_shard: int = 256
    ):
        self.shard_dir = Path(out_dir) / "shards"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.tag = tag
        self.samples_per_shard = samples_per_shard
        self._pending: dict[str, list[Sample]] = {s: [] for s in SPLITS}
        self._count: dict[str, int] = {s: 0 for s in SPLITS}

    def add(self, split: str, sample: Sample) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        _check_sample(sample)
        self._pending[split].append(sample)
        if len(self._pending[split]) >= self.samples_per_shard:
            self._flush(split)

    def close(self) -> None:
        for split in SPLITS:
            if self._pending[split]:
                self._flush(split)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()

    def _flush(self, split: str) -> None:
        samples = self._pending[split]
        self._pending[split] = []
        path = self.shard_dir / f"{split}-{self.tag}-{self._count[split]:04d}.npz"
        self._count[split] += 1
        _atomic_save_npz(path, _pack(samples))
        log.debug("wrote %s (%d samples)", path, len(samples))


def _check_sample(s: Sample) -> None:
    f = s.num_frames
    if s.motion.shape != (f, MOTION_DIM):
        raise ValueError(f"{s.sample_id}: motion shape {s.motion.shape}, want ({f}, {MOTION_DIM})")
    if s.mel.shape != (f * MELS_PER_FRAME, MEL.n_mels):
        raise ValueError(f"{s.sample_id}: mel shape {s.mel.shape} does not match {f} frames")
    if s.audio is not None and len(s.audio) != f * SAMPLES_PER_FRAME:
        raise ValueError(f"{s.sample_id}: {len(s.audio)} audio samples for {f} frames")
    if not np.isfinite(s.motion).all():
        raise ValueError(f"{s.sample_id}: motion has NaN or inf")


def _offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _pack(samples: list[Sample]) -> dict[str, np.ndarray]:
    phones = [p for s in samples for p in s.phones]
    audio = [
        s.audio if s.audio is not None else np.zeros(s.num_frames * SAMPLES_PER_FRAME, np.int16)
        for s in samples
    ]
    return {
        "motion": np.concatenate([s.motion for s in samples]).astype(np.float32),
        "mel": np.concatenate([s.mel for s in samples]).astype(np.float16),
        "audio": np.concatenate(audio).astype(np.int16),
        "frame_offsets": _offsets([s.num_frames for s in samples]),
        "emotion": np.array([s.emotion for s in samples], np.int16),
        "intensity": np.array([s.intensity for s in samples], np.int8),
        "voice": np.array([s.voice for s in samples]),
        "sample_id": np.array([s.sample_id for s in samples]),
        "text": np.array([s.text for s in samples]),
        "sentence": np.array([s.sentence for s in samples], np.int32),
        "phone_offsets": _offsets([len(s.phones) for s in samples]),
        "phone_symbol": np.array([p.symbol for p in phones], dtype="<U8"),
        "phone_start": np.array([p.start for p in phones], np.float32),
        "phone_end": np.array([p.end for p in phones], np.float32),
    }


def write_manifest(out_dir: str | os.PathLike[str], meta: dict[str, Any]) -> dict[str, Any]:
    """List the shards of every split under ``out_dir`` and write ``manifest.json`` last.

    ``meta`` records how the data was made (generator name, version, seed, parameters) and
    may carry a ``skipped`` list of inputs left out with their reasons.
    """
    out = Path(out_dir)
    shards = sorted((out / "shards").glob("*.npz"))
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for path in shards:
        if path.name.endswith(".tmp.npz"):
            continue
        split = path.name.split("-", 1)[0]
        if split in splits:
            splits[split].append(str(path.relative_to(out)))
    manifest = {
        "format": CORPUS_FORMAT,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "mel": {"n_mels": MEL.n_mels, "hop_length": MEL.hop_length, "win_length": MEL.win_length},
        "motion_names": list(MOTION_NAMES),
        "emotions": list(EMOTIONS),
        "splits": splits,
        **meta,
    }
    _atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


@dataclass
class SplitArrays:
    """One split, every shard concatenated: what a training loop samples windows from."""

    motion: np.ndarray  # (F, MOTION_DIM) float32
    mel: np.ndarray  # (4F, n_mels) float16
    frame_offsets: np.ndarray  # (n+1,)
    emotion: np.ndarray
    intensity: np.ndarray
    voice: np.ndarray
    sentence: np.ndarray
    sample_id: np.ndarray
    phone_offsets: np.ndarray
    phone_symbol: np.ndarray
    phone_start: np.ndarray
    phone_end: np.ndarray

    @property
    def num_samples(self) -> int:
        return len(self.frame_offsets) - 1


class Corpus:
    """Read access to a corpus folder written by ``ShardWriter`` + ``write_manifest``."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise CorpusError(f"{self.root}: no manifest.json (not a corpus folder?)")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}: not valid JSON ({err})") from err
        if self.manifest.get("format") != CORPUS_FORMAT:
            raise CorpusError(f"{path}: corpus format {self.manifest.get('format')!r}, "
                              f"this version reads {CORPUS_FORMAT}")  # fmt: skip
        if list(self.manifest.get("motion_names", [])) != list(MOTION_NAMES):
            raise CorpusError(f"{path}: motion channels differ from engine.blendshapes")

    def shard_paths(self, split: str) -> list[Path]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [self.root / p for p in self.manifest["splits"].get(split, [])]

    def _load(self, path: Path) -> dict[str, np.ndarray]:
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise CorpusError(f"{path}: unreadable shard ({err})") from err

    def samples(self, split: str, with_audio: bool = False) -> Iterator[Sample]:
        """Every sample of ``split``, one at a time (one shard in memory at once)."""
        for path in self.shard_paths(split):
            yield from self._samples_of(path, with_audio)

    def get(self, sample_id: str, with_audio: bool = True) -> Sample:
        """One sample by id, from whichever split holds it."""
        for split in SPLITS:
            for path in self.shard_paths(split):
                with np.load(path) as z:
                    found = sample_id in set(z["sample_id"].tolist())
                if found:
                    return next(
                        s for s in self._samples_of(path, with_audio) if s.sample_id == sample_id
                    )
        raise CorpusError(f"{self.root}: no sample {sample_id!r}")

    def _samples_of(self, path: Path, with_audio: bool) -> Iterator[Sample]:
        z = self._load(path)
        fo, po = z["frame_offsets"], z["phone_offsets"]
        for k in range(len(fo) - 1):
            a, b = int(fo[k]), int(fo[k + 1])
            phones = [
                Phone(
                    str(z["phone_symbol"][j]), float(z["phone_start"][j]), float(z["phone_end"][j])
                )
                for j in range(int(po[k]), int(po[k + 1]))
            ]
            audio = (
                z["audio"][a * SAMPLES_PER_FRAME : b * SAMPLES_PER_FRAME] if with_audio else None
            )
            yield Sample(
                sample_id=str(z["sample_id"][k]),
                motion=z["motion"][a:b],
                mel=z["mel"][a * MELS_PER_FRAME : b * MELS_PER_FRAME].astype(np.float32),
                emotion=int(z["emotion"][k]),
                intensity=int(z["intensity"][k]),
                voice=str(z["voice"][k]),
                sentence=int(z["sentence"][k]),
                text=str(z["text"][k]),
                audio=audio,
                phones=phones,
            )

    def arrays(self, split: str) -> SplitArrays:
        """All of ``split`` as concatenated arrays (motion float32, mel float16)."""
        parts = [self._load(p) for p in self.shard_paths(split)]
        if not parts:
            raise CorpusError(f"{self.root}: split {split!r} has no shards")

        def cat(key: str) -> np.ndarray:
            return np.concatenate([z[key] for z in parts])

        def cat_offsets(key: str) -> np.ndarray:
            out, base = [np.zeros(1, np.int64)], 0
            for z in parts:
                out.append(z[key][1:] + base)
                base += int(z[key][-1])
            return np.concatenate(out)

        return SplitArrays(
            motion=cat("motion"), mel=cat("mel"), frame_offsets=cat_offsets("frame_offsets"),
            emotion=cat("emotion"), intensity=cat("intensity"), voice=cat("voice"),
            sentence=cat("sentence"), sample_id=cat("sample_id"),
            phone_offsets=cat_offsets("phone_offsets"), phone_symbol=cat("phone_symbol"),
            phone_start=cat("phone_start"), phone_end=cat("phone_end"),
        )  # fmt: skip
