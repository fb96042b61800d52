"""Motion tracks as CSV: our own channel names, or Live Link Face's export as the app writes it.

One row per frame, one column per channel. Reading accepts any subset of the channels
(missing ones are 0), matches names case-insensitively (``jawOpen`` and ``JawOpen`` are the same
column), and understands the Live Link Face (LLF) iPhone app's CSV export: a ``Timecode``
column, a ``BlendShapeCount`` column, capitalised ARKit names, head rotation as
``HeadYaw``/``HeadPitch``/``HeadRoll`` and per-eye rotations we do not use.

Writing produces an LLF-style file so tools that consume LLF recordings read it, with our head
translation channels (``headTx``, ``headTy``, ``headTz``) appended as extra columns.

Head rotation, LLF vs ours (see ``engine.blendshapes`` for our conventions). Epic documents
neither the units nor the signs of the LLF columns. What public sources show:
- Units: radians, per a pipeline that compared real captures against its own angles (Unreal's
  in-engine ARKit source streams degrees / 180 instead; that is not what the CSV holds).
- Signs: Unreal's AppleARKitFaceSupport code (``ToBlendShapeMap``; LLF is built on Unreal) takes
  the face anchor's rotation in Unreal axes and negates yaw and roll unless the face is
  mirrored. Working that through ARKit's face frame (+x to the viewer's right, +y up, +z out of
  the face) gives: ``HeadYaw`` > 0 when the subject turns towards their own left, ``HeadPitch``
  > 0 when the nose goes down, ``HeadRoll`` > 0 when the head turns counter-clockwise as the
  camera sees it. An open-source MediaPipe-to-LLF streamer (MeFaMo) uses the same yaw and roll
  signs, but the opposite pitch sign; we follow Unreal's code.
So: headYaw = HeadYaw, headPitch = HeadPitch, headRoll = -HeadRoll (our roll is clockwise in the
image). Assumed, not verified against a device: if recordings show otherwise, flip the sign in
``_LLF_HEAD_SIGN``; reading and writing both use it, so round trips still hold.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import re
import statistics
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.blendshapes import (
    BLENDSHAPE_INDEX,
    BLENDSHAPE_NAMES,
    MOTION_DIM,
    MOTION_INDEX,
    MOTION_NAMES,
    NUM_BLENDSHAPES,
    POSE_NAMES,
)

logger = logging.getLogger(__name__)

TIMECODE_COLUMN = "Timecode"
BLENDSHAPE_COUNT_COLUMN = "BlendShapeCount"
# Real LLF captures write 61 here: the 52 blendshapes plus the 9 head and eye rotations.
LLF_BLENDSHAPE_COUNT = 61
# LLF's per-eye rotations: known columns we read past without counting them as unknown.
LLF_EYE_COLUMNS: tuple[str, ...] = (
    "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)  # fmt: skip

# LLF value = sign * our value (and back); see the module docstring for where the signs come from.
_LLF_HEAD_SIGN: dict[str, float] = {"headYaw": 1.0, "headPitch": 1.0, "headRoll": -1.0}
# The order LLF writes its head columns in: yaw, pitch, roll.
_LLF_HEAD_ORDER: tuple[str, ...] = ("headYaw", "headPitch", "headRoll")
# LLF lists these pairs right-before-left (Unreal's enum order), unlike ARKit's list. Order only
# matters to tools that read LLF files by position, but those exist.
_LLF_SWAPPED_PAIRS: tuple[tuple[str, str], ...] = (
    ("jawLeft", "jawRight"),
    ("mouthLeft", "mouthRight"),
)
_TRANSLATION_NAMES: tuple[str, ...] = tuple(n for n in POSE_NAMES if n not in _LLF_HEAD_SIGN)

assert set(_LLF_HEAD_SIGN) <= set(POSE_NAMES) and set(_LLF_HEAD_ORDER) == set(_LLF_HEAD_SIGN)
assert all(a in BLENDSHAPE_INDEX and b in BLENDSHAPE_INDEX for a, b in _LLF_SWAPPED_PAIRS)

# Timecode frame rates an LLF timecode may count in; the FF field wraps at one of these.
_TIMECODE_RATES: tuple[int, ...] = (24, 25, 30, 48, 50, 60)
# Capture rates an estimate is snapped to (the nearest, if within _SNAP_TOLERANCE).
_STANDARD_FPS: tuple[float, ...] = (
    23.976, 24.0, 25.0, 29.97, 30.0, 48.0, 50.0, 59.94, 60.0, 90.0, 100.0, 119.88, 120.0,
)  # fmt: skip
_SNAP_TOLERANCE = 0.02
_CROSSING_TOLERANCE = 0.75  # timecode frames
# HH:MM:SS:FF with an optional sub-frame fraction (".483"); ';' marks drop-frame timecode.
_TIMECODE_RE = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})[:;](\d{1,3})(?:\.(\d+))?$")


class MotionCsvError(ValueError):
    """A motion CSV that cannot be read; the message names the file, line and column."""


@dataclass
class MotionTrack:
    """Motion frames read from a CSV file."""

    frames: np.ndarray  # (T, MOTION_DIM) float32, channels in MOTION_NAMES order
    fps: float | None  # from the Timecode column when present and unambiguous, else None
    unknown_columns: list[str] = field(default_factory=list)  # header names we did not recognise


def llf_column_name(name: str) -> str:
    """The LLF spelling of one of our channel names: ARKit's name with a capital first letter."""
    return name[0].upper() + name[1:]


def _llf_blendshape_order() -> list[str]:
    order = list(BLENDSHAPE_NAMES)
    for left, right in _LLF_SWAPPED_PAIRS:
        i, j = order.index(left), order.index(right)
        order[i], order[j] = order[j], order[i]
    return order


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class _Column:
    channel: int  # index into the motion frame
    sign: float  # motion value = sign * CSV value


def _classify_columns(
    path: Path, header_line: int, header: list[str]
) -> tuple[dict[int, _Column], int | None, list[str]]:
    """Map CSV column positions to motion channels; also find Timecode and unknown columns."""
    lowered = [name.lower() for name in header]
    llf_style = TIMECODE_COLUMN.lower() in lowered or BLENDSHAPE_COUNT_COLUMN.lower() in lowered
    ours = {name.lower(): name for name in MOTION_NAMES}
    ignored = {BLENDSHAPE_COUNT_COLUMN.lower()} | {n.lower() for n in LLF_EYE_COLUMNS}

    columns: dict[int, _Column] = {}
    owner: dict[int, int] = {}  # motion channel -> CSV column that sets it
    timecode_col: int | None = None
    unknown: list[str] = []
    seen: dict[str, int] = {}
    for col, (name, key) in enumerate(zip(header, lowered, strict=True)):
        if key in seen and key:
            raise MotionCsvError(
                f"{path}: line {header_line}: columns {seen[key] + 1} ({header[seen[key]]!r}) and "
                f"{col + 1} ({name!r}) have the same name (names are case-insensitive)"
            )
        seen[key] = col
        if not key or key in ignored:
            # Empty names come from trailing commas; nothing to read there.
            continue
        if key == TIMECODE_COLUMN.lower():
            timecode_col = col
            continue
        if key not in ours:
            unknown.append(name)
            continue
        channel_name = ours[key]
        # In an LLF export, HeadYaw/HeadPitch/HeadRoll follow LLF's signs; elsewhere they are ours.
        sign = _LLF_HEAD_SIGN.get(channel_name, 1.0) if llf_style else 1.0
        channel = MOTION_INDEX[channel_name]
        if channel in owner:
            first = owner[channel]
            raise MotionCsvError(
                f"{path}: line {header_line}: columns {first + 1} ({header[first]!r}) and "
                f"{col + 1} ({name!r}) both set channel {channel_name!r}"
            )
        owner[channel] = col
        columns[col] = _Column(channel=channel, sign=sign)
    return columns, timecode_col, unknown


def _read_rows(path: Path) -> tuple[int, list[str], list[tuple[int, list[str]]]]:
    """The header's line number, the stripped header, and the non-blank data rows with their
    1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drop a UTF-8 BOM if there is one
    except UnicodeDecodeError as exc:
        raise MotionCsvError(f"{path}: not a UTF-8 text file ({exc})") from exc
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    header_line = 0
    rows: list[tuple[int, list[str]]] = []
    for fields in reader:
        stripped = [f.strip() for f in fields]
        if not any(stripped):
            continue  # blank line (or only whitespace / commas)
        if header is None:
            header, header_line = stripped, reader.line_num
        else:
            rows.append((reader.line_num, stripped))
    if header is None:
        raise MotionCsvError(f"{path}: file is empty (expected a header row and frame rows)")
    if not rows:
        raise MotionCsvError(f"{path}: has a header row but no frame rows")
    return header_line, header, rows


def _parse_values(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]], positions: list[int]
) -> np.ndarray:
    """The cells of the given columns as a (rows, columns) float64 array, all finite."""
    cells = [[fields[c] for c in positions] for _, fields in rows]
    try:
        values = np.array(cells, dtype=np.float64).reshape(len(rows), len(positions))
    except ValueError:
        # Cell by cell, only to name the first cell that is not a number.
        values = np.empty((len(rows), len(positions)), dtype=np.float64)
        for r, (line, fields) in enumerate(rows):
            for k, c in enumerate(positions):
                try:
                    values[r, k] = float(fields[c])
                except ValueError:
                    raise MotionCsvError(
                        f"{path}: line {line}, column {c + 1} ({header[c]!r}): "
                        f"{fields[c]!r} is not a number"
                    ) from None
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        r, k = bad[0]
        line, fields = rows[r]
        c = positions[k]
        raise MotionCsvError(
            f"{path}: line {line}, column {c + 1} ({header[c]!r}): {fields[c]!r} is not finite"
        )
    return values


def read_motion_csv(path: str | os.PathLike[str]) -> MotionTrack:
    """Read a motion CSV (our names or a Live Link Face export) into (T, MOTION_DIM) frames.

    Raises ``MotionCsvError`` for an empty file, a header without rows, a row with the wrong
    number of fields, or a value that is not a finite number (naming the line and column).
    """
    path = Path(path)
    header_line, header, rows = _read_rows(path)
    columns, timecode_col, unknown = _classify_columns(path, header_line, header)
    if unknown:
        logger.warning(
            "%s: ignoring %d unknown column(s): %s", path, len(unknown), ", ".join(unknown)
        )

    for line, fields in rows:
        if len(fields) != len(header):
            raise MotionCsvError(
                f"{path}: line {line}: expected {len(header)} fields (one per header column), "
                f"found {len(fields)}"
            )

    positions = sorted(columns)
    values = _parse_values(path, header, rows, positions)
    frames = np.zeros((len(rows), MOTION_DIM), dtype=np.float64)
    for k, c in enumerate(positions):
        frames[:, columns[c].channel] = columns[c].sign * values[:, k]
    _clip_blendshapes(path, frames)

    fps = None
    if timecode_col is not None:
        fps = fps_from_timecodes([fields[timecode_col] for _, fields in rows])
        if fps is None:
            logger.info("%s: could not derive a frame rate from the Timecode column", path)
    return MotionTrack(frames=frames.astype(np.float32), fps=fps, unknown_columns=unknown)


def _clip_blendshapes(path: Path, frames: np.ndarray) -> None:
    weights = frames[:, :NUM_BLENDSHAPES]
    outside = (weights < 0.0) | (weights > 1.0)
    if not outside.any():
        return
    names = [BLENDSHAPE_NAMES[i] for i in np.flatnonzero(outside.any(axis=0))]
    logger.warning(
        "%s: clipped %d blendshape value(s) outside [0, 1] (range %.4g..%.4g) in: %s",
        path, int(outside.sum()), float(weights.min()), float(weights.max()), ", ".join(names),
    )  # fmt: skip
    np.clip(weights, 0.0, 1.0, out=weights)


# --------------------------------------------------------------------------------------------
# Frame rate from LLF timecodes


def _parse_timecode(text: str) -> tuple[int, int, float] | None:
    """(whole seconds, frame number, sub-frame fraction), or None if it is not a timecode."""
    match = _TIMECODE_RE.match(text.strip())
    if match is None:
        return None
    hh, mm, ss, ff, sub = match.groups()
    seconds = (int(hh) * 60 + int(mm)) * 60 + int(ss)
    return seconds, int(ff), float(f"0.{sub}") if sub else 0.0


def _snap(fps: float) -> float | None:
    nearest = min(_STANDARD_FPS, key=lambda standard: abs(fps - standard))
    return nearest if abs(fps - nearest) <= _SNAP_TOLERANCE * nearest else None


def _fps_for_rate(seconds: list[int], frames: list[float], rate: int) -> float | None:
    """Capture rate if the timecode counts ``rate`` frames per second, or None if inconsistent."""
    pos = [s * rate + f for s, f in zip(seconds, frames, strict=True)]
    steps = [b - a for a, b in zip(pos, pos[1:], strict=False)]
    if any(step < 0 for step in steps) or pos[-1] <= pos[0]:
        return None
    # Rows are evenly spaced, so the steps that cross a second boundary (where FF wraps at
    # ``rate``) must look like the steps inside a second; a wrong rate makes them too long or
    # too short by the difference between the rates.
    inside = [st for st, a, b in zip(steps, seconds, seconds[1:], strict=False) if a == b]
    crossing = [st for st, a, b in zip(steps, seconds, seconds[1:], strict=False) if a != b]
    # The median shrugs off a dropped frame at a boundary; the tolerance stays under one frame,
    # the smallest error a wrong rate makes (24 vs 25), but above whole-frame rounding.
    if inside and crossing:
        typical = sum(inside) / len(inside)
        if abs(statistics.median(crossing) - typical) > _CROSSING_TOLERANCE:
            return None
    estimate = (len(pos) - 1) * rate / (pos[-1] - pos[0])
    snapped = _snap(estimate)
    if snapped is None and statistics.median(steps) > 0:
        # Dropped frames drag the average rate down; the typical step does not see them.
        snapped = _snap(rate / statistics.median(steps))
    if snapped is not None:
        return snapped
    # Off the usual rates: trust the raw estimate only over at least a second of timecode.
    return round(estimate, 3) if pos[-1] - pos[0] >= rate else None


def fps_from_timecodes(timecodes: Sequence[str]) -> float | None:
    """The capture frame rate implied by LLF timecodes (``HH:MM:SS:FF.sub``), or None.

    The timecode's own rate (where FF wraps) is not written in the file, so each usual rate is
    tried; the answer is returned only if every rate consistent with the data agrees on it.
    """
    parsed = [_parse_timecode(t) for t in timecodes]
    if len(parsed) < 2 or any(p is None for p in parsed):
        return None
    seconds = [p[0] for p in parsed if p is not None]
    whole = [float(p[1]) for p in parsed if p is not None]
    with_sub = [p[1] + p[2] for p in parsed if p is not None]
    max_frame = max(int(f) for f in whole)
    rates = [r for r in _TIMECODE_RATES if r > max_frame]

    # Sub-frames sharpen the estimate, but only if they read as a fraction of a frame: if they
    # make time run backwards inside a second, use whole frames.
    same_second = [i for i in range(len(seconds) - 1) if seconds[i] == seconds[i + 1]]
    subs_ok = all(with_sub[i + 1] >= with_sub[i] for i in same_second)
    frames = with_sub if subs_ok else whole
    answers = {rate: _fps_for_rate(seconds, frames, rate) for rate in rates}
    consistent = {rate: fps for rate, fps in answers.items() if fps is not None}
    if len(set(consistent.values())) > 1:
        # A clip too short for the frame numbers to wrap fits several rates. If they reached
        # the last frame number of the lowest consistent rate (FF = rate - 1), that rate's
        # count was about to wrap; a higher rate would have stopped there only by chance.
        rate = min(consistent)
        if max_frame < rate - 1:
            return None
        logger.warning(
            "Timecode: frame numbers up to %02d fit timecode rates %s; assuming %d, so %g fps",
            max_frame, sorted(consistent), rate, consistent[rate],
        )  # fmt: skip
        return consistent[rate]
    return next(iter(consistent.values()), None)


def _timecode_rate(fps: float) -> int:
    """The rate a timecode for ``fps`` counts in: one a reader will recognise (see above)."""
    if round(fps) in _TIMECODE_RATES:
        return round(fps)
    return next((rate for rate in _TIMECODE_RATES if rate >= fps), _TIMECODE_RATES[-1])


def _format_timecode(index: int, fps: float, rate: int) -> str:
    # Position in thousandths of a timecode frame, in integers so ".1000" can never appear.
    milli = round(index * rate * 1000 / fps)
    whole, sub = divmod(milli, 1000)
    seconds, ff = divmod(whole, rate)
    minutes, ss = divmod(seconds, 60)
    hh, mm = divmod(minutes, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}:{ff:02d}.{sub:03d}"


# --------------------------------------------------------------------------------------------
# Writing


def _llf_header() -> list[str]:
    return (
        [TIMECODE_COLUMN, BLENDSHAPE_COUNT_COLUMN]
        + [llf_column_name(n) for n in _llf_blendshape_order()]
        + [llf_column_name(n) for n in _LLF_HEAD_ORDER]
        + list(LLF_EYE_COLUMNS)
        + list(_TRANSLATION_NAMES)
    )


def write_motion_csv(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 25.0) -> Path:
    """Write (T, MOTION_DIM) frames as a Live Link Face style CSV, atomically.

    Columns: Timecode, BlendShapeCount, the 52 capitalised ARKit names (LLF's order), HeadYaw,
    HeadPitch, HeadRoll (LLF's signs), the six LLF eye rotations (0), then headTx, headTy,
    headTz. Values are written as given (9 significant digits, exact for float32); note that
    reading clips blendshapes to [0, 1]. The file appears at ``path`` only once it is complete.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 2 or frames.shape[1] != MOTION_DIM or frames.shape[0] == 0:
        raise ValueError(f"frames must have shape (T>=1, {MOTION_DIM}), got {frames.shape}")
    if not np.isfinite(frames).all():
        row, col = np.argwhere(~np.isfinite(frames))[0]
        raise ValueError(f"frames[{row}, {col}] ({MOTION_NAMES[col]}) is {frames[row, col]}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")

    data = frames.astype(np.float32)
    # float32 -> float64 is exact, and 9 significant digits round-trip any float32.
    order = (
        [(MOTION_INDEX[n], 1.0) for n in _llf_blendshape_order()]
        + [(MOTION_INDEX[n], _LLF_HEAD_SIGN[n]) for n in _LLF_HEAD_ORDER]
    )  # fmt: skip
    translation = [MOTION_INDEX[n] for n in _TRANSLATION_NAMES]
    eyes = ["0"] * len(LLF_EYE_COLUMNS)
    rate = _timecode_rate(fps)

    def rows() -> Iterator[list[str]]:
        for i, frame in enumerate(data.astype(np.float64)):
            values = [f"{sign * frame[c] + 0.0:.9g}" for c, sign in order]
            extra = [f"{frame[c]:.9g}" for c in translation]
            yield [
                _format_timecode(i, fps, rate),
                str(LLF_BLENDSHAPE_COUNT),
                *values,
                *eyes,
                *extra,
            ]

    _atomic_write_csv(path, _llf_header(), rows())
    logger.info("wrote %s (%d frames at %g fps)", path, len(data), fps)
    return path


def _atomic_write_csv(path: Path, header: list[str], rows: Iterable[list[str]]) -> None:
    """Write to a temp file beside ``path`` and rename it over ``path`` only when complete."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only; this is a normal user file
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
