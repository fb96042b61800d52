"""`dreamtalk render`: audio files of any kind in, MP4 (and CSV) out, through the live path.

The weights are small random models saved as real checkpoints: these tests check the
command's plumbing (decoding, the streaming path, muxing, errors), not lip-sync quality,
which `dreamtalk eval` measures on the trained weights.
"""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest

from dreamtalk.bench_stream import random_models
from dreamtalk.cli import main
from engine.checkpoint import Checkpoint, save_checkpoint
from engine.motion_csv import read_motion_csv
from engine.motion_model import DEFAULT_FILES
from engine.timebase import SAMPLE_RATE
from engine.video_io import probe_media

SECONDS = 1.6


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    models = random_models(seed=0, tiny=True)
    sampler = {"sampler": {"steps": models.steps, "guidance": models.guidance}}
    for kind, model, name in (
        ("emodiff", models.emodiff, DEFAULT_FILES["emodiff"]),
        ("lips", models.refiner, DEFAULT_FILES["refiner"]),
    ):
        ckpt = Checkpoint(kind=kind, config=model.cfg, model=model.state_dict(), meta=sampler)
        save_checkpoint(folder / name, ckpt)
    return folder


def _speechlike(rate: int, channels: int) -> np.ndarray:
    """A voiced, syllable-modulated tone with a pause: (samples, channels) float32."""
    t = np.arange(int(SECONDS * rate)) / rate
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0.0, None) * (t < 1.1)
    voice = (
        0.3 * envelope * np.sin(2 * np.pi * 140.0 * t) * (1.0 + 0.5 * np.sin(2 * np.pi * 420 * t))
    )
    return np.repeat(voice[:, None], channels, axis=1).astype(np.float32)


def _write_wav(path: Path, rate: int, channels: int) -> Path:
    pcm = (_speechlike(rate, channels) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return path


def _write_mp3(path: Path, rate: int = 44_100) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        samples = _speechlike(rate, 1)[:, 0]
        for start in range(0, len(samples), 1152):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + 1152], format="flt", layout="mono"
            )
            frame.sample_rate = rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def render(weights: Path, audio: Path, out: Path, *extra: str) -> int:
    return main(["render", "--audio", str(audio), "--out", str(out), "--weights", str(weights),
                 "--no-progress", *extra])  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: _write_wav(p / "a.wav", SAMPLE_RATE, 1), id="wav-16k-mono"),
        pytest.param(lambda p: _write_wav(p / "a.wav", 48_000, 2), id="wav-48k-stereo"),
        pytest.param(lambda p: _write_mp3(p / "a.mp3"), id="mp3"),
    ],
)
def test_render_writes_an_mp4_with_the_audio(weights, tmp_path, make):
    audio = make(tmp_path)
    out, csv = tmp_path / "out.mp4", tmp_path / "motion.csv"
    assert render(weights, audio, out, "--emotion", "happy", "--blendshapes-out", str(csv)) == 0
    info = probe_media(out)
    assert info["has_audio"] and info["fps"] == pytest.approx(25.0)
    frames = round(SECONDS * 25)
    assert abs(info["num_frames"] - frames) <= 1  # MP3's encoder delay may add a frame
    track = read_motion_csv(csv)
    assert len(track.frames) == info["num_frames"]
    assert np.isfinite(track.frames).all()


def test_same_seed_same_motion_other_seed_other_motion(weights, tmp_path):
    audio = _write_wav(tmp_path / "a.wav", SAMPLE_RATE, 1)
    motions = []
    for seed, name in ((3, "a"), (3, "b"), (4, "c")):
        csv = tmp_path / f"{name}.csv"
        assert render(weights, audio, tmp_path / f"{name}.mp4", "--seed", str(seed),
                      "--blendshapes-out", str(csv)) == 0  # fmt: skip
        motions.append(read_motion_csv(csv).frames)
    np.testing.assert_array_equal(motions[0], motions[1])
    assert np.abs(motions[0] - motions[2]).max() > 1e-3


def test_render_refuses_bad_input_clearly(weights, tmp_path, caplog):
    audio = _write_wav(tmp_path / "a.wav", SAMPLE_RATE, 1)
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("this is not audio\n" * 50)
    out = tmp_path / "out.mp4"

    assert render(weights, not_audio, out) == 2
    assert "notes.txt" in caplog.text
    caplog.clear()
    assert render(weights, audio, out, "--emotion", "joyful") == 2
    assert "joyful" in caplog.text and "contempt" in caplog.text  # lists the valid names
    caplog.clear()
    assert render(tmp_path / "no_weights", audio, out) == 2
    assert "no EmoDiff weights" in caplog.text
    assert not out.exists()
