"""`dreamtalk data prepare`: real talking videos -> the training corpus (engine.data.corpus).

For every video: the audio at 16 kHz (from the video, or a separate audio file beside it);
MediaPipe face-mesh landmarks per frame at 25 fps (engine.data.track, which also rejects
videos with no face, several faces or cuts); ARKit blendshapes and head pose fitted per
frame against the project's face rig, with temporal smoothing (engine.fit); log-mel features.

Layouts (``layout``):

- ``mead``: MEAD's tree, ``<speaker>/video/front/<emotion>/level_<n>/<clip>.mp4`` (``DIR`` may
  hold many speakers, or be one speaker's folder). Emotion and intensity come from the
  folders, the sentence id is the clip number (``001`` -> 1). Audio: the video's own track,
  else ``<speaker>/audio/<emotion>/level_<n>/<clip>.m4a``. Views other than ``front`` are
  counted in the manifest (``ignored_views``) and left out.
- ``flat``: any videos under ``DIR`` (subfolders included). The speaker is the name of the
  folder holding the video (``DIR/alice/take3.mp4`` -> ``alice``; videos directly in ``DIR``
  take ``DIR``'s name). The file name may carry the emotion and intensity anywhere in it
  (``happy_level_2_017.mp4``, ``alice-angry-level3.mov``; MEAD's spellings accepted), else
  neutral, intensity 1. The sentence id is the number ending the name (``..._017`` -> 17),
  else one derived from the whole name (every such video its own sentence). Audio: the
  video's own track, else a file of the same name with an audio extension beside it.

Each speaker gets one face rig, built from their most neutral frames (engine.fit.
reference_landmarks), taken from their neutral videos when they have any: with MEAD, where
an emotional clip is emotional throughout, a rig made from the clip itself would read its
emotion as neutral. Weights and rotations are relative to that reference.

Splits are by sentence (the corpus's rule: splits never share one) and, given enough
speakers, by speaker too. A held-out speaker's clip goes to the speaker's split only when
its sentence is held out for that split as well; their other clips are left out (listed as
``unused`` in the manifest) rather than leak a sentence or a face across splits. With few
videos everything goes to train, and the manifest's ``split_policy`` says why. The choice
of held-out sentences and speakers is a fixed hash of their ids: the same on every run.

Output is atomic: the corpus is built in a hidden sibling folder and renamed into place
when complete, so a failed or interrupted run leaves nothing at ``out_dir``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.audio_io import AudioError, load_audio
from engine.data.corpus import SPLITS, Sample, ShardWriter, write_manifest
from engine.data.track import SkipVideo, TrackConfig, VideoTrack, track_video
from engine.emotions import EMOTIONS, check_intensity, emotion_index
from engine.features import log_mel
from engine.fit import (
    UNOBSERVED,
    FitConfig,
    build_reference_rig,
    fit_motion,
    normalise_tracks,
    reference_landmarks,
)
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

GENERATOR = "dreamtalk data prepare"
GENERATOR_VERSION = 1
LAYOUTS: tuple[str, ...] = ("mead", "flat")
VIDEO_EXTENSIONS = frozenset((".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm"))
AUDIO_EXTENSIONS: tuple[str, ...] = (".m4a", ".wav", ".flac", ".mp3", ".aac", ".ogg", ".opus")
MEAD_VIEW = "front"

_LEVEL = re.compile(r"level[_\-\s]?([0-9]+)", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z]+", re.IGNORECASE)
_TRAILING_NUMBER = re.compile(r"([0-9]+)\D*$")


@dataclass(frozen=True)
class PrepareConfig:
    track: TrackConfig = field(default_factory=TrackConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    # A speaker's reference face comes from their first this many usable (neutral) clips.
    reference_clips: int = 8
    # A clip whose landmarks the rig cannot follow (mean residual per point above this, in
    # IOD) is not this speaker's face, or not tracked: skipped. Good fits are ~0.01-0.02.
    max_fit_rms: float = 0.06
    # Hold out sentences (and speakers) for val and test, this share each, once there are
    # at least this many to choose from.
    held_out_share: float = 0.1
    min_sentences_to_split: int = 10
    min_speakers_to_split: int = 10
    samples_per_shard: int = 256


@dataclass(frozen=True)
class Clip:
    """One video and what its path says about it."""

    video: Path
    speaker: str
    emotion: int  # index in EMOTIONS
    intensity: int
    sentence: int
    sample_id: str
    audio: Path | None = None  # a separate audio file, used when the video has no audio


# --- finding the videos ----------------------------------------------------------------


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and not path.name[0] == "."


def _mead_clip(root: Path, path: Path, ignored: dict[str, int]) -> Clip | str | None:
    """The clip a MEAD path describes, a reason it does not fit the layout, or None for a
    view that is not used."""
    parts = path.relative_to(root).parts
    expected = "<speaker>/video/<view>/<emotion>/level_<n>/<clip>.mp4"
    if "video" not in parts[:-1]:
        return f"not in MEAD's layout {expected}"
    i = len(parts) - 1 - parts[::-1].index("video", 1)  # the last "video" folder
    if len(parts) != i + 5:
        return f"not in MEAD's layout {expected}"
    view, emotion_dir, level_dir, name = parts[i + 1 : i + 5]
    if view != MEAD_VIEW:
        ignored[view] = ignored.get(view, 0) + 1
        return None
    speaker_dir = root.joinpath(*parts[:i])
    speaker = speaker_dir.name if i > 0 else root.resolve().name
    try:
        emotion = emotion_index(emotion_dir)
    except ValueError as err:
        return f"emotion folder {emotion_dir!r}: {err}"
    level = re.fullmatch(r"level_([0-9]+)", level_dir)
    if level is None:
        return f"intensity folder {level_dir!r} is not level_<n>"
    try:
        intensity = check_intensity(int(level.group(1)))
    except ValueError as err:
        return f"intensity folder {level_dir!r}: {err}"
    stem = Path(name).stem
    if not stem.isdigit():
        return f"clip name {name!r} is not a number (MEAD names clips 001, 002, ...)"
    audio = speaker_dir / "audio" / emotion_dir / level_dir / f"{stem}.m4a"
    return Clip(
        video=path,
        speaker=speaker,
        emotion=emotion,
        intensity=intensity,
        sentence=int(stem),
        sample_id=f"{speaker}_{EMOTIONS[emotion]}_{intensity}_{stem}",
        audio=audio if audio.is_file() else None,
    )


def parse_flat_name(stem: str) -> tuple[int, int, int]:
    """(emotion index, intensity, sentence id) from a flat-layout file name (no extension)."""
    emotion = 0  # neutral
    for token in _TOKEN.findall(stem):
        try:
            emotion = emotion_index(token)
            break
        except ValueError:
            continue
    level = _LEVEL.search(stem)
    intensity = 1
    rest = stem
    if level is not None:
        intensity = check_intensity(int(level.group(1)))
        rest = stem[: level.start()] + "_" + stem[level.end() :]
    number = _TRAILING_NUMBER.search(rest)
    if number is not None:
        sentence = int(number.group(1)) % 2**31
    else:  # a stable id of its own: no other video shares its sentence
        sentence = zlib.crc32(stem.encode()) & 0x7FFFFFFF
    return emotion, intensity, sentence


def _flat_clip(root: Path, path: Path) -> Clip | str:
    speaker = path.parent.name if path.parent != root else root.resolve().name
    try:
        emotion, intensity, sentence = parse_flat_name(path.stem)
    except ValueError as err:
        return f"file name {path.name!r}: {err}"
    audio = next((a for ext in AUDIO_EXTENSIONS if (a := path.with_suffix(ext)).is_file()), None)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem)
    return Clip(
        video=path,
        speaker=speaker,
        emotion=emotion,
        intensity=intensity,
        sentence=sentence,
        sample_id=f"{speaker}_{safe}",
        audio=audio,
    )


def find_clips(
    videos_dir: Path, layout: str
) -> tuple[list[Clip], list[dict[str, str]], dict[str, int]]:
    """(clips, skipped [{"video", "reason"}], ignored MEAD views {view: count})."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if not videos_dir.exists():
        raise ValueError(f"videos folder not found: {videos_dir}")
    if not videos_dir.is_dir():
        raise ValueError(f"--videos must be a folder, got a file: {videos_dir}")
    videos = sorted(p for p in videos_dir.rglob("*") if _is_video(p))
    if not videos:
        exts = ", ".join(sorted(VIDEO_EXTENSIONS))
        raise ValueError(f"no videos ({exts}) found under {videos_dir}")
    clips: list[Clip] = []
    skipped: list[dict[str, str]] = []
    ignored: dict[str, int] = {}
    seen: dict[str, Path] = {}
    for path in videos:
        clip = _mead_clip(videos_dir, path, ignored) if layout == "mead" else _flat_clip(
            videos_dir, path
        )  # fmt: skip
        if clip is None:
            continue
        if isinstance(clip, str):
            skipped.append({"video": str(path), "reason": clip})
            continue
        if clip.sample_id in seen:
            skipped.append({"video": str(path), "reason": f"same sample id {clip.sample_id!r} "
                            f"as {seen[clip.sample_id]}"})  # fmt: skip
            continue
        seen[clip.sample_id] = path
        clips.append(clip)
    if not clips:
        reasons = "; ".join(sorted({s["reason"] for s in skipped})[:3])
        views = f" (views found: {', '.join(sorted(ignored))})" if ignored else ""
        raise ValueError(
            f"no {layout}-layout videos under {videos_dir}{views}" + (f": {reasons}" if reasons
                                                                      else "")
        )  # fmt: skip
    return clips, skipped, ignored


# --- splits ------------------------------------------------------------------------------


def _rank(values: list[Any], salt: str) -> list[Any]:
    """A fixed pseudo-random order (the same on every machine and run)."""
    return sorted(values, key=lambda v: hashlib.sha1(f"{salt}:{v}".encode()).hexdigest())


def _hold_out(values: list[Any], share: float, salt: str) -> dict[Any, str]:
    n = max(1, round(share * len(values)))
    ranked = _rank(values, salt)
    split = {v: "train" for v in values}
    for v in ranked[:n]:
        split[v] = "test"
    for v in ranked[n : 2 * n]:
        split[v] = "val"
    return split


def assign_splits(
    clips: list[Clip], cfg: PrepareConfig
) -> tuple[dict[str, str | None], dict[str, Any]]:
    """{sample_id: split, or None for a clip left out}, and the policy for the manifest."""
    sentences = sorted({c.sentence for c in clips})
    speakers = sorted({c.speaker for c in clips})
    policy: dict[str, Any] = {"by": [], "notes": []}
    if len(sentences) >= cfg.min_sentences_to_split:
        by_sentence = _hold_out(sentences, cfg.held_out_share, "sentence")
        policy["by"].append("sentence")
    else:
        by_sentence = {s: "train" for s in sentences}
        policy["notes"].append(
            f"{len(sentences)} sentences (< {cfg.min_sentences_to_split}): none held out"
        )
    by_speaker: dict[str, str] = {s: "train" for s in speakers}
    if len(speakers) >= cfg.min_speakers_to_split:
        by_speaker = _hold_out(speakers, cfg.held_out_share, "speaker")
        policy["by"].append("speaker")
    else:
        policy["notes"].append(
            f"{len(speakers)} speakers (< {cfg.min_speakers_to_split}): none held out"
        )
    if not policy["by"]:
        policy["notes"].append("everything is in train")
    split: dict[str, str | None] = {}
    for c in clips:
        s_sent, s_spk = by_sentence[c.sentence], by_speaker[c.speaker]
        if s_spk == "train":
            split[c.sample_id] = s_sent
        else:
            # A held-out speaker's clip goes to their split only where its sentence is held
            # out for that split too; otherwise a sentence or a face would leak across.
            split[c.sample_id] = s_spk if s_sent == s_spk else None
    policy["speakers"] = {s: sorted(k for k, v in by_speaker.items() if v == s) for s in SPLITS}
    policy["sentences"] = {s: sorted(k for k, v in by_sentence.items() if v == s) for s in SPLITS}
    return split, policy


# --- one clip ------------------------------------------------------------------------------


def _clip_audio(clip: Clip, num_frames: int) -> np.ndarray:
    """16 kHz mono float32, exactly num_frames * 640 samples (cut, or padded with silence)."""
    try:
        audio = load_audio(clip.video, SAMPLE_RATE)
    except AudioError as err:
        if clip.audio is None:
            raise SkipVideo(f"no audio: {err}; and no separate audio file beside it") from err
        try:
            audio = load_audio(clip.audio, SAMPLE_RATE)
        except AudioError as err2:
            raise SkipVideo(f"no usable audio: {err2}") from err2
    want = num_frames * SAMPLES_PER_FRAME
    if len(audio) < 0.5 * want:
        raise SkipVideo(
            f"audio ({len(audio) / SAMPLE_RATE:.2f} s) covers under half of the video "
            f"({num_frames / FPS:.2f} s)"
        )
    if len(audio) < want:
        audio = np.pad(audio, (0, want - len(audio)))
    return audio[:want]


def _to_int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


@dataclass
class _Speaker:
    """A speaker's fitting state: the reference face and its rig, once chosen."""

    reference: np.ndarray
    rig: Any
    info: dict[str, Any]


def _make_reference(name: str, pool: list[tuple[Clip, VideoTrack]], any_neutral: bool) -> _Speaker:
    tracks = [t for c, t in pool if c.emotion == 0] if any_neutral else [t for _, t in pool]
    frames = np.concatenate([t.landmarks for t in tracks])
    reference, chosen = reference_landmarks(frames)
    size = max(tracks[0].width, tracks[0].height)
    info = {
        "clips": [c.sample_id for c, _ in pool if c.emotion == 0 or not any_neutral],
        "frames_averaged": len(chosen),
        "neutral": any_neutral,
    }
    if not any_neutral:
        log.warning(
            "speaker %s has no neutral video: their reference face comes from %s clips, so "
            "their weights are relative to an expressive face",
            name,
            ", ".join(sorted({EMOTIONS[c.emotion] for c, _ in pool})),
        )
    return _Speaker(reference=reference, rig=build_reference_rig(reference, size), info=info)


def _make_sample(
    clip: Clip, track: VideoTrack, speaker: _Speaker, cfg: PrepareConfig
) -> tuple[Sample, float]:
    audio = _clip_audio(clip, track.num_frames)
    tracks, _ = normalise_tracks(track.landmarks, speaker.reference)
    fit = fit_motion(tracks, speaker.rig, cfg.fit)
    rms = float(fit.rms.mean())
    if rms > cfg.max_fit_rms:
        raise SkipVideo(
            f"the fitted rig misses the tracked landmarks by {rms:.3f} IOD on average (limit "
            f"{cfg.max_fit_rms}): a different face than the speaker's reference, or bad tracking"
        )
    sample = Sample(
        sample_id=clip.sample_id,
        motion=fit.motion,
        mel=log_mel(audio, track.num_frames),
        emotion=clip.emotion,
        intensity=clip.intensity,
        voice=clip.speaker,
        sentence=clip.sentence,
        text="",
        audio=_to_int16(audio),
        phones=[],
    )
    return sample, rms


# --- the whole run ---------------------------------------------------------------------------


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty; choose a new folder or empty it first")


def prepare_videos(
    videos_dir: Path,
    out_dir: Path,
    layout: str = "flat",
    config: PrepareConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Track, fit and write every usable video under ``videos_dir`` as a corpus in
    ``out_dir`` (which must be new or empty); returns the manifest.

    Raises ValueError for a missing folder, an unknown layout, no videos, or no usable
    video at all. Unusable videos are skipped and listed with their reasons in the
    manifest's ``skipped``."""
    cfg = config or PrepareConfig()
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    clips, skipped, ignored = find_clips(videos_dir, layout)
    _check_out_dir(out_dir)
    split_of, policy = assign_splits(clips, cfg)
    unused = [
        {"video": str(c.video), "reason": f"held-out speaker {c.speaker} on a sentence of "
                                          "another split"}
        for c in clips if split_of[c.sample_id] is None
    ]  # fmt: skip
    by_speaker: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        if split_of[c.sample_id] is not None:
            # Neutral clips first: the speaker's reference face is made from them.
            by_speaker[c.speaker].append(c)
    for name in by_speaker:
        by_speaker[name].sort(key=lambda c: (c.emotion != 0, str(c.video)))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    references: dict[str, dict[str, Any]] = {}
    total = sum(len(v) for v in by_speaker.values())
    bar = tqdm(total=total, unit="video", desc="prepare", disable=not progress)
    try:
        writer = ShardWriter(stage, tag="p", samples_per_shard=cfg.samples_per_shard)

        def skip(clip: Clip, reason: str) -> None:
            log.info("skipping %s: %s", clip.video, reason)
            skipped.append({"video": str(clip.video), "reason": reason})

        def emit(clip: Clip, track: VideoTrack, speaker: _Speaker) -> None:
            try:
                sample, rms = _make_sample(clip, track, speaker, cfg)
            except SkipVideo as err:
                skip(clip, str(err))
                return
            split = split_of[clip.sample_id]
            assert split is not None
            writer.add(split, sample)
            records.append({
                "sample_id": clip.sample_id, "video": str(clip.video), "split": split,
                "speaker": clip.speaker, "sentence": clip.sentence,
                "emotion": EMOTIONS[clip.emotion], "intensity": clip.intensity,
                "frames": track.num_frames, "source_fps": round(track.source_fps, 3),
                "fit_rms_iod": round(rms, 4),
            })  # fmt: skip

        def track(clip: Clip) -> VideoTrack | None:
            bar.set_postfix_str(f"{clip.speaker}: {clip.video.name}", refresh=False)
            try:
                return track_video(clip.video, cfg.track)
            except SkipVideo as err:
                skip(clip, str(err))
                return None
            finally:
                bar.update(1)

        for name, speaker_clips in by_speaker.items():
            any_neutral = any(c.emotion == 0 for c in speaker_clips)
            pool: list[tuple[Clip, VideoTrack]] = []
            rest = iter(speaker_clips)
            for clip in rest:
                t = track(clip)
                if t is not None:
                    pool.append((clip, t))
                # Enough for a reference, or the neutral clips are used up.
                if len(pool) >= cfg.reference_clips or (any_neutral and pool and clip.emotion != 0):
                    break
            if not pool:
                continue
            usable_neutral = any(c.emotion == 0 for c, _ in pool)
            try:
                speaker = _make_reference(name, pool, usable_neutral)
            except (ValueError, RuntimeError, np.linalg.LinAlgError) as err:
                # A face the rig cannot be built on (degenerate landmarks): this speaker's
                # videos cannot be fitted, the others still can.
                untracked = list(rest)
                bar.update(len(untracked))
                for clip in [c for c, _ in pool] + untracked:
                    skip(clip, f"no face rig for speaker {name}: {err}")
                continue
            references[name] = speaker.info
            for clip, t in pool:
                emit(clip, t, speaker)
            del pool
            for clip in rest:
                t = track(clip)
                if t is not None:
                    emit(clip, t, speaker)
        bar.close()
        writer.close()

        if not records:
            counts: dict[str, int] = defaultdict(int)
            for s in skipped:
                counts[s["reason"]] += 1
            worst = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
            raise ValueError(
                f"no usable video under {videos_dir}: all {len(skipped)} skipped ("
                + "; ".join(f"{n} x {r}" for r, n in worst)
                + ")"
            )
        seconds = sum(r["frames"] for r in records) / FPS
        log.info(
            "prepared %d of %d videos (%.1f min) in %.0f s; %d skipped, %d left out by the "
            "split", len(records), len(clips), seconds / 60, time.perf_counter() - started,
            len(skipped), len(unused),
        )  # fmt: skip
        records.sort(key=lambda r: r["sample_id"])
        meta = {
            "generator": GENERATOR,
            "version": GENERATOR_VERSION,
            "source": str(videos_dir),
            "layout": layout,
            "params": {
                "track": asdict(cfg.track),
                "fit": asdict(cfg.fit),
                "unobserved_blendshapes": list(UNOBSERVED),
                "reference_clips": cfg.reference_clips,
                "max_fit_rms": cfg.max_fit_rms,
                "held_out_share": cfg.held_out_share,
            },
            "num_samples": len(records),
            "hours": round(seconds / 3600, 4),
            "voices": {
                s: sorted({r["speaker"] for r in records if r["split"] == s}) for s in SPLITS
            },
            "sentences": {
                s: sorted({r["sentence"] for r in records if r["split"] == s}) for s in SPLITS
            },  # fmt: skip
            "split_policy": policy,
            "references": references,
            "samples": records,
            "skipped": skipped,
            "unused": unused,
            "ignored_views": ignored,
        }
        manifest = write_manifest(stage, meta)  # shard paths are relative: valid after the move
        _move_into_place(stage, out_dir)
    except BaseException:
        bar.close()
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return manifest


def _move_into_place(stage: Path, out: Path) -> None:
    """Rename the finished corpus to ``out`` (an empty folder there is replaced)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it private; a corpus is no secret
    if out.is_dir():
        out.rmdir()  # empty, checked at the start; fails loudly if something appeared since
    os.replace(stage, out)
