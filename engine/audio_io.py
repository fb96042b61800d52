"""Audio files in: anything FFmpeg (through PyAV) decodes, as the engine's 16 kHz mono float32."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import av
import numpy as np

from engine.timebase import SAMPLE_RATE

logger = logging.getLogger(__name__)


class AudioError(ValueError):
    """A file that cannot be loaded as audio; the message names the file and the reason."""


def load_audio(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of ``path`` to mono float32 in [-1, 1] at ``sample_rate``.

    Any container and codec PyAV decodes works (WAV, MP3, AAC/MP4, FLAC, Ogg, ...). Channels are
    averaged, which keeps the level of a centred voice, unlike FFmpeg's own stereo-to-mono mix
    (it adds the channels at -3 dB each, so a centred voice gains 3 dB and can clip).
    Raises ``AudioError`` if the file is missing, is not decodable media, or has no audio stream.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise AudioError(f"{path}: not decodable audio ({exc.strerror or exc})") from exc

    with container:
        if not container.streams.audio:
            kinds = ", ".join(s.type for s in container.streams) or "no streams at all"
            raise AudioError(f"{path}: has no audio stream (found: {kinds})")
        stream = container.streams.audio[0]
        # Keep the source's channel layout through resampling (layout=None) and mix it down
        # ourselves; planar float gives one row per channel.
        resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
            for out in resampler.resample(None):  # flush what the resampler still holds
                chunks.append(out.to_ndarray().mean(axis=0))
        except av.error.FFmpegError as exc:
            raise AudioError(f"{path}: not decodable audio ({exc.strerror or exc})") from exc

    if not chunks:
        logger.warning("%s: audio stream decoded to no samples", path)
        return np.zeros(0, dtype=np.float32)
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    audio = _trim_encoder_padding(audio, stream, sample_rate)
    # Lossy decoders (MP3, AAC) overshoot full scale slightly; the engine's contract is [-1, 1].
    np.clip(audio, -1.0, 1.0, out=audio)
    logger.debug(
        "%s: %s %d Hz %d ch -> %d samples at %d Hz",
        path, stream.codec_context.name, stream.rate, stream.channels, len(audio), sample_rate,
    )  # fmt: skip
    return audio


# Longest tail we treat as encoder padding: two AAC frames, in source samples.
_MAX_PADDING_SOURCE_SAMPLES = 2048


def _trim_encoder_padding(
    audio: np.ndarray, stream: av.audio.stream.AudioStream, sample_rate: int
) -> np.ndarray:
    """Drop the silence a lossy encoder pads its last frame with, as the container reports it.

    FFmpeg skips AAC's leading priming samples but can leave the trailing padding that an MP4
    edit list cuts off. Only a short tail is trimmed: a duration the container merely estimated
    (say from an MP3's bitrate) must never cut real audio.
    """
    if stream.duration is None or stream.time_base is None or not stream.rate:
        return audio
    expected = round(float(stream.duration * stream.time_base) * sample_rate)
    excess = len(audio) - expected
    if 0 < excess <= _MAX_PADDING_SOURCE_SAMPLES * sample_rate / stream.rate:
        return audio[:expected]
    return audio
