"""load_audio: real files (WAV, MP3, 48 kHz stereo) decoded by real PyAV, no mocks."""

from __future__ import annotations

import wave

import av
import numpy as np
import pytest

from engine.audio_io import AudioError, load_audio
from engine.timebase import SAMPLE_RATE


def _sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def _encode(path, codec: str, rate: int, channels: np.ndarray) -> None:
    """Encode planar float channels (C, N) with PyAV into ``path``."""
    layout = "mono" if len(channels) == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(channels, dtype=np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_wav_16k_mono_from_the_wave_module(tmp_path):
    samples = _sine(440, 1.0, SAMPLE_RATE)
    pcm = np.round(samples * 32767).astype("<i2")
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm.tobytes())

    audio = load_audio(path)

    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == SAMPLE_RATE
    np.testing.assert_allclose(audio, samples, atol=2 / 32768)


def test_mp3_is_decoded_and_resampled(tmp_path):
    rate = 44_100
    path = tmp_path / "clip.mp3"
    _encode(path, "libmp3lame", rate, _sine(440, 1.0, rate)[None])

    audio = load_audio(path)

    assert audio.dtype == np.float32
    assert abs(len(audio) - SAMPLE_RATE) <= 0.05 * SAMPLE_RATE  # codec delay/padding
    assert _dominant_frequency(audio, SAMPLE_RATE) == pytest.approx(440, abs=3)
    assert _rms(audio[2000:-2000]) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)
    assert np.abs(audio).max() <= 1.0


def test_48k_stereo_is_averaged_to_mono_at_16k(tmp_path):
    rate = 48_000
    left = _sine(440, 1.0, rate, amplitude=0.8)
    right = _sine(1000, 1.0, rate, amplitude=0.4)
    path = tmp_path / "stereo.wav"
    _encode(path, "pcm_s16le", rate, np.stack([left, left]))
    both = tmp_path / "two_tones.wav"
    _encode(both, "pcm_s16le", rate, np.stack([left, right]))

    centred = load_audio(path)
    assert len(centred) == SAMPLE_RATE
    # The same signal on both channels keeps its level (FFmpeg's own downmix would add 3 dB
    # and clip a 0.8 sine).
    assert np.abs(centred).max() == pytest.approx(0.8, abs=0.01)
    assert _dominant_frequency(centred, SAMPLE_RATE) == pytest.approx(440, abs=2)

    mixed = load_audio(both)
    spectrum = np.abs(np.fft.rfft(mixed))
    freqs = np.fft.rfftfreq(len(mixed), 1 / SAMPLE_RATE)
    peaks = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert peaks == pytest.approx([440, 1000], abs=2)  # both channels made it into the mix


def test_other_target_rate(tmp_path):
    path = tmp_path / "a.wav"
    _encode(path, "pcm_s16le", 22_050, _sine(300, 0.5, 22_050)[None])
    audio = load_audio(path, sample_rate=8_000)
    assert len(audio) == 4_000
    assert _dominant_frequency(audio, 8_000) == pytest.approx(300, abs=3)


def test_text_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio, just some text\n" * 20)
    with pytest.raises(AudioError, match="not decodable audio") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError, match="no such file") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_video_without_audio_is_a_clear_error(tmp_path):
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.codec_context.width = stream.codec_context.height = 32
        stream.codec_context.pix_fmt = "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(AudioError, match="has no audio stream") as info:
        load_audio(path)
    assert str(path) in str(info.value)
