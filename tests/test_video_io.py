"""Mp4Writer and the readers: real H.264/AAC files written and decoded by real PyAV."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest

from engine.audio_io import load_audio
from engine.timebase import FPS, SAMPLE_RATE
from engine.video_io import (
    H264_ENCODERS,
    Mp4Writer,
    VideoError,
    pick_h264_encoder,
    probe_media,
    read_video_frames,
)

WIDTH, HEIGHT = 96, 64
# Flat colours, one per frame, so each decoded frame can be matched to the one written.
PALETTE = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 255, 255], [20, 20, 20]],
    dtype=np.uint8,
)


def _frames(count: int) -> np.ndarray:
    colours = PALETTE[np.arange(count) % len(PALETTE)]
    return np.ascontiguousarray(
        np.broadcast_to(colours[:, None, None, :], (count, HEIGHT, WIDTH, 3))
    )


def _tone(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def test_an_h264_encoder_is_available():
    assert pick_h264_encoder() in H264_ENCODERS


def test_writes_playable_h264_with_audio(tmp_path):
    path = tmp_path / "talk.mp4"
    frames = _frames(50)
    with Mp4Writer(path, WIDTH, HEIGHT, fps=FPS, audio=_tone(2.0)) as writer:
        writer.write(frames[0])  # a single (H, W, 3) frame
        writer.write(frames[1:20])  # and batches
        writer.write(frames[20:])

    info = probe_media(path)
    assert info["video_codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"]) == (WIDTH, HEIGHT)
    assert info["fps"] == pytest.approx(FPS)
    assert info["num_frames"] == 50
    assert info["video_duration"] == pytest.approx(2.0, abs=1e-3)
    assert info["has_audio"] and info["audio_codec"] == "aac"
    assert info["audio_rate"] == SAMPLE_RATE and info["audio_channels"] == 1
    assert info["audio_duration"] == pytest.approx(2.0, abs=0.03)

    decoded = read_video_frames(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    # Lossy, but flat colours come back within a few levels, in order.
    assert np.abs(decoded.astype(int) - frames.astype(int)).max() <= 4


def test_constant_frame_rate_timestamps(tmp_path):
    path = tmp_path / "cfr.mp4"
    with Mp4Writer(path, WIDTH, HEIGHT, fps=FPS) as writer:
        writer.write(_frames(30))
    with av.open(str(path)) as container:
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    np.testing.assert_allclose(times, np.arange(30) / FPS, atol=1e-6)
    assert not probe_media(path)["has_audio"]


@pytest.mark.parametrize(("audio_seconds", "loud_until"), [(3.0, 1.2), (0.6, 0.6)])
def test_audio_is_cut_or_padded_to_the_video(tmp_path, audio_seconds, loud_until):
    path = tmp_path / "av.mp4"
    with Mp4Writer(path, WIDTH, HEIGHT, fps=FPS, audio=_tone(audio_seconds)) as writer:
        writer.write(_frames(30))  # 1.2 s of video

    info = probe_media(path)
    assert info["audio_duration"] == pytest.approx(1.2, abs=0.03)
    audio = load_audio(path)
    assert len(audio) == pytest.approx(1.2 * SAMPLE_RATE, abs=0.03 * SAMPLE_RATE)
    split = round(loud_until * SAMPLE_RATE)
    margin = 1600  # 0.1 s around the edges, where the codec smears
    assert _rms(audio[margin : split - margin]) == pytest.approx(0.5 / np.sqrt(2), rel=0.15)
    if split + margin < len(audio):
        assert _rms(audio[split + margin :]) < 0.01  # the padding is silence


def test_audio_at_a_rate_aac_lacks_is_resampled(tmp_path):
    path = tmp_path / "odd_rate.mp4"
    with Mp4Writer(path, WIDTH, HEIGHT, audio=_tone(1.0, 11_025), audio_rate=11_025) as writer:
        writer.write(_frames(25))
    info = probe_media(path)
    assert info["audio_rate"] == 48_000
    assert info["audio_duration"] == pytest.approx(1.0, abs=0.03)


def test_fractional_fps(tmp_path):
    path = tmp_path / "ntsc.mp4"
    with Mp4Writer(path, WIDTH, HEIGHT, fps=Fraction(30000, 1001)) as writer:
        writer.write(_frames(30))
    info = probe_media(path)
    assert info["fps"] == pytest.approx(29.97, abs=0.01)
    assert info["video_duration"] == pytest.approx(30 * 1001 / 30000, abs=1e-3)


def test_exception_mid_write_leaves_nothing(tmp_path):
    path = tmp_path / "broken.mp4"
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"previous video")

    for target in (path, existing):
        with pytest.raises(RuntimeError, match="renderer crashed"):
            with Mp4Writer(target, WIDTH, HEIGHT, audio=_tone(1.0)) as writer:
                writer.write(_frames(10))
                raise RuntimeError("renderer crashed")

    assert not path.exists()
    assert existing.read_bytes() == b"previous video"
    assert sorted(os.listdir(tmp_path)) == ["existing.mp4"]  # no temp files left behind


def test_bad_frames_are_rejected_and_leave_nothing(tmp_path):
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="got shape"):
        with Mp4Writer(path, WIDTH, HEIGHT) as writer:
            writer.write(np.zeros((HEIGHT, WIDTH + 2, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        with Mp4Writer(path, WIDTH, HEIGHT) as writer:
            writer.write(np.zeros((HEIGHT, WIDTH, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_no_frames_is_an_error_and_leaves_nothing(tmp_path):
    path = tmp_path / "empty.mp4"
    with pytest.raises(VideoError, match="no frames"):
        with Mp4Writer(path, WIDTH, HEIGHT):
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("width", "height"), [(95, 64), (96, 63), (0, 64)])
def test_odd_or_empty_sizes_are_rejected(tmp_path, width, height):
    with pytest.raises(ValueError, match="even width and height"):
        Mp4Writer(tmp_path / "x.mp4", width, height)
    assert list(tmp_path.iterdir()) == []


def test_readers_fail_clearly_on_non_media(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 10)
    with pytest.raises(VideoError, match="not a readable media file"):
        probe_media(text)
    with pytest.raises(VideoError, match="no such file"):
        read_video_frames(tmp_path / "missing.mp4")
