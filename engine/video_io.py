"""MP4 out (H.264 video, optional AAC audio) and small readers for tests and later stages.

``Mp4Writer`` writes to a temporary file beside the target and renames it into place only when
closed cleanly, so a crash or an exception never leaves a truncated video at the target path.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TypedDict

import av
import numpy as np

from engine.timebase import FPS, SAMPLE_RATE

logger = logging.getLogger(__name__)

# Preferred first; the PyAV wheels on PyPI ship libx264, some distro builds only libopenh264.
H264_ENCODERS: tuple[str, ...] = ("libx264", "libopenh264")
# Rates FFmpeg's native AAC encoder accepts; other audio rates are resampled to _AAC_FALLBACK_RATE.
_AAC_RATES = frozenset((96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000))
_AAC_FALLBACK_RATE = 48000
_AAC_BIT_RATE = 64_000  # plenty for mono speech
# BT.709 tags (the H.264 VUI code for each is 1). We convert RGB to YUV with BT.709 and say so
# in the stream; untagged, players guess BT.601 for small frames and shift the colours.
_BT709 = 1
_MPEG_RANGE = 1  # "tv" range, 16..235: what players expect from H.264


class VideoError(RuntimeError):
    """A video that cannot be written or read; the message names the file and the reason."""


def pick_h264_encoder() -> str:
    """The first H.264 encoder this PyAV build has, from ``H264_ENCODERS``."""
    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except ValueError:  # av's UnknownCodecError: not in this build
            continue
        return name
    raise VideoError(
        f"this PyAV build (av {av.__version__}) has no H.264 encoder; tried "
        f"{', '.join(H264_ENCODERS)}. Install a PyAV wheel built with libx264 (PyPI's are)."
    )


def _as_fraction(fps: float | Fraction) -> Fraction:
    if isinstance(fps, Fraction):
        rate = fps
    else:
        if not math.isfinite(fps):
            raise ValueError(f"fps must be finite, got {fps}")
        # 1001 covers the NTSC rates (30000/1001) without inventing huge denominators.
        rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


class Mp4Writer:
    """Write RGB frames (and optionally mono audio) to an H.264/AAC MP4, atomically.

    Usage::

        with Mp4Writer("out.mp4", 512, 512, fps=25, audio=wave16k) as writer:
            writer.write(frames)  # (H, W, 3) or (B, H, W, 3) uint8 RGB

    Video is yuv420p at a constant frame rate (frame i has pts i / fps). Audio, if given, is
    AAC, muxed in step with the video and cut or padded with silence to the video's length.
    The file appears at ``path`` when the writer closes without an exception; otherwise the
    temporary file is deleted and ``path`` is left as it was.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: float | Fraction = FPS,
        audio: np.ndarray | None = None,
        audio_rate: int = SAMPLE_RATE,
        crf: int = 20,
        preset: str = "medium",
    ) -> None:
        """``crf``: libx264 quality, 0 (lossless) to 51, lower is better; ``preset``: libx264
        speed/size trade-off. Both are ignored by libopenh264, which uses its own defaults."""
        self.path = Path(path)
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(
                f"yuv420p needs a positive, even width and height; got {width}x{height}"
            )
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf}")
        self.width, self.height = width, height
        self.fps = _as_fraction(fps)
        self.encoder = pick_h264_encoder()
        self.frames_written = 0
        self._audio, self._audio_rate = self._prepare_audio(audio, audio_rate)
        self._audio_pos = 0  # samples of self._audio already sent to the encoder

        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp.mp4"
        )
        os.close(fd)
        self._tmp_path = Path(tmp)
        try:
            # faststart moves the index to the front, so browsers can play while downloading.
            self._container = av.open(
                tmp, mode="w", format="mp4", options={"movflags": "faststart"}
            )
            self._video = self._add_video_stream(crf, preset)
            self._audio_stream = self._add_audio_stream() if self._audio is not None else None
        except BaseException:
            self._discard()
            raise
        self._closed = False

    # -- setup ---------------------------------------------------------------------------------

    def _add_video_stream(self, crf: int, preset: str) -> av.video.stream.VideoStream:
        stream = self._container.add_stream(self.encoder, rate=self.fps)
        ctx = stream.codec_context
        ctx.width, ctx.height = self.width, self.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = 1 / self.fps  # one tick per frame: pts is simply the frame index
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT709
        ctx.color_range = _MPEG_RANGE
        if self.encoder == "libx264":
            ctx.options = {"crf": str(crf), "preset": preset}
        else:
            # openh264 has no CRF; ask for a bit rate that looks good for talking heads.
            ctx.bit_rate = max(500_000, int(self.width * self.height * float(self.fps) * 0.1))
        return stream

    def _add_audio_stream(self) -> av.audio.stream.AudioStream:
        stream = self._container.add_stream("aac", rate=self._audio_rate, layout="mono")
        stream.codec_context.bit_rate = _AAC_BIT_RATE
        return stream

    @staticmethod
    def _prepare_audio(audio: np.ndarray | None, rate: int) -> tuple[np.ndarray | None, int]:
        """Mono float32 in [-1, 1] at a rate AAC accepts (resampled if needed)."""
        if audio is None:
            return None, rate
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono, shape (samples,); got shape {audio.shape}")
        if not np.issubdtype(audio.dtype, np.floating):
            raise ValueError(f"audio must be float samples in [-1, 1]; got dtype {audio.dtype}")
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinite samples")
        if rate <= 0:
            raise ValueError(f"audio_rate must be positive, got {rate}")
        audio = np.clip(audio.astype(np.float32), -1.0, 1.0)
        if rate in _AAC_RATES:
            return audio, rate
        return _resample_mono(audio, rate, _AAC_FALLBACK_RATE), _AAC_FALLBACK_RATE

    # -- writing -------------------------------------------------------------------------------

    def write(self, frames: np.ndarray) -> None:
        """Append one (H, W, 3) frame or a (B, H, W, 3) batch of uint8 RGB frames."""
        if self._closed:
            raise VideoError(f"{self.path}: write() after the writer was closed")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        expected = (self.height, self.width, 3)
        if frames.ndim != 4 or frames.shape[1:] != expected:
            raise ValueError(
                f"frames must be (H, W, 3) or (B, H, W, 3) with (H, W) = ({self.height}, "
                f"{self.width}); got shape {frames.shape}"
            )
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB; got dtype {frames.dtype}")
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(
                format="yuv420p",
                dst_colorspace="ITU709",
                dst_color_range="MPEG",
                dst_color_trc=_BT709,
                dst_color_primaries=_BT709,
            )
            frame.pts = self.frames_written
            frame.time_base = self._video.codec_context.time_base
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1
            self._write_audio_until(self.frames_written)

    def _write_audio_until(self, num_frames: int) -> None:
        """Send the audio that plays during the first ``num_frames`` video frames."""
        if self._audio is None or self._audio_stream is None:
            return
        end = round(num_frames * self._audio_rate / self.fps)
        if end <= self._audio_pos:
            return
        chunk = self._audio[self._audio_pos : end]
        if len(chunk) < end - self._audio_pos:  # past the end of the audio: silence
            chunk = np.pad(chunk, (0, end - self._audio_pos - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate = self._audio_rate
        frame.pts = self._audio_pos
        frame.time_base = Fraction(1, self._audio_rate)
        self._container.mux(self._audio_stream.encode(frame))
        self._audio_pos = end

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> Path:
        """Flush the encoders, finish the file and move it to ``path``; returns ``path``."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            if self.frames_written == 0:
                raise VideoError(f"{self.path}: no frames were written; not creating the file")
            self._container.mux(self._video.encode(None))
            if self._audio_stream is not None:
                self._container.mux(self._audio_stream.encode(None))
            self._container.close()
            os.chmod(self._tmp_path, 0o644)  # mkstemp makes it owner-only
            os.replace(self._tmp_path, self.path)
        except BaseException:
            self._discard()
            raise
        logger.info(
            "wrote %s (%d frames, %dx%d at %.6g fps, %s, audio: %s)",
            self.path, self.frames_written, self.width, self.height, float(self.fps), self.encoder,
            f"AAC {self._audio_rate} Hz" if self._audio is not None else "none",
        )  # fmt: skip
        return self.path

    def abort(self) -> None:
        """Stop without producing a file: the temporary file is removed, ``path`` untouched."""
        if not self._closed:
            self._closed = True
            self._discard()

    def _discard(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp_path)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _resample_mono(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Resample mono float32 audio with FFmpeg's resampler (PyAV's AudioResampler)."""
    frame = av.AudioFrame.from_ndarray(audio[None, :], format="fltp", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=new_rate)
    out = [f.to_ndarray()[0] for f in resampler.resample(frame)]
    out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Reading


class MediaInfo(TypedDict):
    """What ``probe_media`` reports; fields that do not apply (no video, say) are None."""

    format: str
    duration: float | None  # seconds, the whole file
    has_video: bool
    width: int | None
    height: int | None
    fps: float | None
    num_frames: int | None  # as the container states it; None if it does not say
    video_codec: str | None
    pix_fmt: str | None
    video_duration: float | None
    has_audio: bool
    audio_codec: str | None
    audio_rate: int | None
    audio_channels: int | None
    audio_duration: float | None


def _open_for_reading(path: str | os.PathLike[str]) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: not a readable media file ({exc.strerror or exc})") from exc


def _stream_seconds(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def probe_media(path: str | os.PathLike[str]) -> MediaInfo:
    """Container and stream facts about a media file, without decoding it."""
    with _open_for_reading(path) as container:
        info = MediaInfo(
            format=container.format.name,
            duration=container.duration / av.time_base if container.duration else None,
            has_video=bool(container.streams.video),
            width=None,
            height=None,
            fps=None,
            num_frames=None,
            video_codec=None,
            pix_fmt=None,
            video_duration=None,
            has_audio=bool(container.streams.audio),
            audio_codec=None,
            audio_rate=None,
            audio_channels=None,
            audio_duration=None,
        )
        if container.streams.video:
            video = container.streams.video[0]
            rate = video.average_rate or video.guessed_rate
            info.update(
                width=video.codec_context.width,
                height=video.codec_context.height,
                fps=float(rate) if rate else None,
                num_frames=video.frames or None,
                video_codec=video.codec_context.name,
                pix_fmt=video.codec_context.pix_fmt,
                video_duration=_stream_seconds(video),
            )
        if container.streams.audio:
            audio = container.streams.audio[0]
            info.update(
                audio_codec=audio.codec_context.name,
                audio_rate=audio.rate,
                audio_channels=audio.channels,
                audio_duration=_stream_seconds(audio),
            )
    return info


def read_video_frames(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode every frame of the first video stream as (T, H, W, 3) uint8 RGB."""
    with _open_for_reading(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        try:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: video stream is not decodable ({exc})") from exc
        if not frames:
            ctx = stream.codec_context
            return np.zeros((0, ctx.height, ctx.width, 3), dtype=np.uint8)
    return np.stack(frames)
