"""Face tracking for `data prepare`: one talking video in, MediaPipe face-mesh landmarks out,
one set per 25 fps frame, or a reason why the video is not usable.

Per decoded frame: MediaPipe's face detector (the one portrait registration uses, full-range
model) counts the faces and boxes the largest; the 478-point face mesh is fitted inside the
box, exactly as registration does; a colour histogram of a thumbnail is kept for cut
detection. Every frame is fitted on its own (no tracking state carried over), so a lost
face or a cut cannot drag wrong landmarks along.

A video is rejected (`SkipVideo`, with the reason for the manifest) when it has:
- no face, or none in too many frames, or none for too long at a stretch;
- several faces in too many frames (whose voice is it?);
- a cut: the face jumps or changes size from one frame to the next by more than a head can
  move in 1/25 s, or the colours of the whole frame change at once (a different shot);
- too few frames, or undecodable video.

Frames are resampled to 25 fps by linear interpolation of the landmarks over the source
frames' timestamps, and short gaps (a hand in front of the face) are interpolated too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from engine.fit import interocular
from engine.portrait import detect_faces, fit_face_mesh
from engine.timebase import FPS

log = logging.getLogger(__name__)


class SkipVideo(Exception):
    """A video that cannot go into the corpus; ``str()`` is the reason for the manifest."""


@dataclass(frozen=True)
class TrackConfig:
    # Faces: a video is skipped when no face is found in more than this share of its
    # frames, or for longer than max_gap_s at a stretch (gaps up to that are interpolated).
    max_missing: float = 0.2
    max_gap_s: float = 0.5
    # A second face counts when it is at least this wide relative to the largest one (smaller
    # ones are people far in the background, or posters); the video is skipped when such a
    # face is seen in more than this share of the frames with a face.
    second_face_min_size: float = 0.3
    max_multi_face: float = 0.1
    # Cuts, between consecutive frames. A fast head turn moves the face ~0.1 IOD per frame
    # at 25 fps and changes its size by a few percent; a talking-head frame's colour
    # histogram changes by a few percent (total variation), a new shot by tens of percent.
    cut_shift: float = 0.5  # face centre jump, IOD
    cut_scale: float = 0.2  # |log| of the IOD ratio (0.2: 22% bigger or smaller)
    cut_histogram: float = 0.35  # total-variation distance of the colour histograms
    min_frames: int = 13  # at 25 fps: half a second
    # Below this the mesh has too few pixels: registration's limit (engine.portrait).
    min_face_px: float = 32.0


@dataclass
class VideoTrack:
    """Landmarks of one video at 25 fps, in the source frame's pixels."""

    landmarks: np.ndarray  # (F, 478, 3) float32
    width: int
    height: int
    source_fps: float
    source_frames: int
    missing_frames: int  # source frames without a face (interpolated)

    @property
    def num_frames(self) -> int:
        return len(self.landmarks)

    @property
    def duration(self) -> float:
        return self.num_frames / FPS


def _frames(path: Path) -> Iterator[tuple[float, np.ndarray, float | None, int | None]]:
    """(time in seconds from the first frame, RGB frame, stream fps, stream frame count)."""
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise SkipVideo(f"not a readable video ({exc.strerror or exc})") from exc
    with container:
        if not container.streams.video:
            raise SkipVideo("has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        count = stream.frames or None
        start: float | None = None
        try:
            for index, frame in enumerate(container.decode(stream)):
                t = frame.time
                if t is None:
                    t = index / (fps or FPS)
                if start is None:
                    start = t
                yield t - start, frame.to_ndarray(format="rgb24"), fps, count
        except av.error.FFmpegError as exc:
            raise SkipVideo(f"video stream is not decodable ({exc})") from exc


def _histogram(frame: np.ndarray) -> np.ndarray:
    """Normalised 3 x 16-bin colour histogram of a thumbnail (cheap, and blind to noise)."""
    h, w = frame.shape[:2]
    k = 64.0 / max(h, w)
    thumb = cv2.resize(frame, (max(1, round(w * k)), max(1, round(h * k))), cv2.INTER_AREA)
    hist = [np.bincount(thumb[..., c].ravel() >> 4, minlength=16) for c in range(3)]
    out = np.concatenate(hist).astype(np.float64)
    return out / out.sum()


def _face_jump(prev: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """(centre shift in IOD, |log| of the size ratio) between two frames' landmarks."""
    iod_prev, iod_cur = float(interocular(prev)), float(interocular(cur))
    shift = float(np.linalg.norm(cur[:, :2].mean(0) - prev[:, :2].mean(0))) / iod_prev
    return shift, abs(math.log(max(iod_cur, 1e-6) / max(iod_prev, 1e-6)))


def track_video(path: str | Path, config: TrackConfig | None = None) -> VideoTrack:
    """Landmarks of every 25 fps frame of a talking video; raises `SkipVideo` with the
    reason when the video is not a single face, uncut, tracked in enough frames."""
    cfg = config or TrackConfig()
    path = Path(path)
    times: list[float] = []
    found: list[np.ndarray | None] = []
    multi = 0
    prev_hist: np.ndarray | None = None
    prev_lm: np.ndarray | None = None
    prev_index = -1
    fps: float | None = None
    width = height = 0
    missing = 0
    for index, (t, frame, stream_fps, count) in enumerate(_frames(path)):
        fps = stream_fps
        height, width = frame.shape[:2]
        times.append(t)
        hist = _histogram(frame)
        if prev_hist is not None:
            change = 0.5 * float(np.abs(hist - prev_hist).sum())
            if change > cfg.cut_histogram:
                raise SkipVideo(
                    f"cut at {t:.2f} s: the frame's colours changed by {change:.0%} at once"
                )
        prev_hist = hist

        faces = detect_faces(frame)
        landmarks = None
        if faces and faces[0].width >= cfg.min_face_px:
            big = [f for f in faces if f.width >= cfg.second_face_min_size * faces[0].width]
            multi += len(big) > 1
            landmarks = fit_face_mesh(frame, faces[0])
        found.append(landmarks)
        if landmarks is None:
            missing += 1
            # Give up early on a video that is mostly faceless: no need to decode the rest.
            if count and missing > cfg.max_missing * count + 1:
                raise SkipVideo(_no_face_reason(missing, count, early=True))
            continue
        # Compare with the last frame that had a face, if it is recent enough that the
        # head could not have moved far.
        if prev_lm is not None and index - prev_index <= 2:
            shift, scale = _face_jump(prev_lm, landmarks)
            if shift > cfg.cut_shift or scale > cfg.cut_scale:
                raise SkipVideo(
                    f"cut at {t:.2f} s: the face jumped {shift:.2f} IOD and changed size by "
                    f"x{math.exp(scale):.2f} between consecutive frames"
                )
        prev_lm, prev_index = landmarks, index

    total = len(found)
    if total == 0:
        raise SkipVideo("has no frames")
    tracked = total - missing
    if tracked == 0:
        raise SkipVideo("no face found in any frame")
    if missing > cfg.max_missing * total:
        raise SkipVideo(_no_face_reason(missing, total, early=False))
    with_face = max(tracked, 1)
    if multi > cfg.max_multi_face * with_face:
        raise SkipVideo(f"several faces: 2 or more in {multi} of {with_face} frames with a face")

    source_fps = fps or (total - 1) / max(times[-1], 1e-6)
    t = np.asarray(times)
    ok = np.array([lm is not None for lm in found])
    gap = _longest_gap_s(t, ok)
    if gap > cfg.max_gap_s:
        raise SkipVideo(f"face lost for {gap:.2f} s at a stretch")
    lm = np.stack([x for x in found if x is not None])  # (tracked, 478, 3)
    duration = total / source_fps
    num_frames = int(round(duration * FPS))
    if num_frames < cfg.min_frames:
        raise SkipVideo(f"too short: {duration:.2f} s, the minimum is {cfg.min_frames / FPS} s")
    out_t = np.arange(num_frames) / FPS
    out = _interpolate(t[ok], lm, out_t)
    log.debug(
        "%s: %d frames at %.3g fps -> %d at %d fps, %d without a face",
        path, total, source_fps, num_frames, FPS, missing,
    )  # fmt: skip
    return VideoTrack(
        landmarks=out.astype(np.float32),
        width=width,
        height=height,
        source_fps=float(source_fps),
        source_frames=total,
        missing_frames=missing,
    )


def _no_face_reason(missing: int, total: int, early: bool) -> str:
    of = f"at least {missing} of about {total}" if early else f"{missing} of {total}"
    return f"no face in {of} frames"


def _longest_gap_s(t: np.ndarray, ok: np.ndarray) -> float:
    """Longest time between two frames with a face (or a video end and its nearest one)."""
    idx = np.flatnonzero(ok)
    edges = np.concatenate([[t[0]], t[idx], [t[-1]]])
    # Time from the last face before a gap to the first after it, minus one frame's worth.
    step = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    return float(np.max(np.diff(edges))) - step if len(edges) > 1 else 0.0


def _interpolate(t_src: np.ndarray, values: np.ndarray, t_out: np.ndarray) -> np.ndarray:
    """Linear interpolation of (S, ...) values at times t_src to times t_out (held constant
    past either end)."""
    flat = values.reshape(len(values), -1)
    pos = np.interp(t_out, t_src, np.arange(len(t_src), dtype=np.float64))
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(t_src) - 1)
    frac = (pos - lo)[:, None]
    out = flat[lo] * (1.0 - frac) + flat[hi] * frac
    return out.reshape((len(t_out),) + values.shape[1:])
