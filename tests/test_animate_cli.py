"""`dreamtalk animate` through `dreamtalk.cli.main`: real CSVs in, real MP4s out.

The default portrait is redirected to a copy in a temporary folder, so the avatar file that
`load_avatar` caches beside the image lands there and not in the repository's assets.
"""

from __future__ import annotations

import logging
import math
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from dreamtalk.cli import main
from engine.avatar import DEFAULT_PORTRAIT
from engine.blendshapes import MOTION_INDEX, neutral_motion
from engine.motion_csv import write_motion_csv
from engine.video_io import Mp4Writer, probe_media, read_video_frames

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FRAMES = 20


@pytest.fixture(scope="module")
def portrait_copy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("portrait") / DEFAULT_PORTRAIT.name
    shutil.copyfile(DEFAULT_PORTRAIT, path)
    return path


@pytest.fixture(autouse=True)
def default_portrait_in_tmp(portrait_copy, monkeypatch):
    monkeypatch.setattr("engine.avatar.DEFAULT_PORTRAIT", portrait_copy)


def _motion(frames: int) -> np.ndarray:
    motion = neutral_motion(frames)
    motion[:, MOTION_INDEX["jawOpen"]] = np.linspace(0.0, 1.0, frames)
    return motion


@pytest.fixture(scope="module")
def jaw_csv(tmp_path_factory) -> Path:
    """A Live Link Face CSV: 20 frames of a jawOpen ramp at 25 fps."""
    return write_motion_csv(tmp_path_factory.mktemp("csv") / "jaw.csv", _motion(FRAMES), fps=25)


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory) -> Path:
    """1 s of a 440 Hz sine, 16 kHz mono 16-bit PCM."""
    path = tmp_path_factory.mktemp("wav") / "tone.wav"
    rate = 16_000
    t = np.arange(rate) / rate
    pcm = (0.5 * 32767 * np.sin(2 * math.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def animate(*args: str | Path) -> int:
    return main(["animate", *map(str, args), "--no-progress"])


def _leftovers(folder: Path) -> list[str]:
    """Temporary files a writer may have left (Mp4Writer's are hidden: '.a.mp4.xyz.tmp.mp4')."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ---- success ---------------------------------------------------------------------------------


def test_animate_writes_one_frame_per_csv_row(jaw_csv, tmp_path):
    out = tmp_path / "a.mp4"
    assert animate("--blendshapes", jaw_csv, "--out", out) == 0
    info = probe_media(out)
    assert (info["width"], info["height"]) == (256, 256)
    assert info["fps"] == pytest.approx(25.0)
    assert info["num_frames"] == FRAMES
    assert not info["has_audio"]
    frames = read_video_frames(out)
    assert frames.shape == (FRAMES, 256, 256, 3)
    # The mouth opens along the ramp, so the video is not a still.
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).max() > 50
    assert _leftovers(tmp_path) == []


def test_animate_muxes_the_audio_cut_to_the_video(jaw_csv, tone_wav, tmp_path):
    out = tmp_path / "a.mp4"
    assert animate("--blendshapes", jaw_csv, "--out", out, "--audio", tone_wav) == 0
    info = probe_media(out)
    assert info["num_frames"] == FRAMES and info["has_audio"]
    video_seconds = FRAMES / 25  # 0.8 s; the WAV is 1 s long
    assert info["audio_duration"] == pytest.approx(video_seconds, abs=0.05)


def test_animate_at_512(jaw_csv, tmp_path):
    out = tmp_path / "a.mp4"
    assert animate("--blendshapes", jaw_csv, "--out", out, "--size", "512") == 0
    info = probe_media(out)
    assert (info["width"], info["height"]) == (512, 512)
    assert info["num_frames"] == FRAMES


def test_animate_the_shipped_sample(tmp_path):
    out = tmp_path / "sample.mp4"
    assert animate("--blendshapes", ASSETS / "sample_blendshapes.csv", "--out", out) == 0
    info = probe_media(out)
    rows = sum(1 for line in (ASSETS / "sample_blendshapes.csv").open() if line.strip()) - 1
    assert info["num_frames"] == rows  # the sample is a 25 fps recording
    assert info["fps"] == pytest.approx(25.0)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (60, 30),  # 1.2 s of timecode (crosses a second): unambiguously 50 fps
        (50, 25),  # 1.0 s, all inside timecode second 0: the lowest consistent rate, 50
    ],
)
def test_animate_resamples_a_50fps_recording_to_25fps(tmp_path, rows, expected):
    csv = write_motion_csv(tmp_path / "fast.csv", _motion(rows), fps=50)
    out = tmp_path / "a.mp4"
    assert animate("--blendshapes", csv, "--out", out, "--fps", "25") == 0
    info = probe_media(out)
    assert info["fps"] == pytest.approx(25.0)
    assert info["num_frames"] == expected


# ---- bad input: exit code 2, one clear error line, no MP4 --------------------------------------


@pytest.mark.parametrize(
    ("damage", "line"),
    [
        ("not_a_number", 7),
        ("missing_fields", 12),
    ],
)
def test_malformed_csv_row_names_its_line(jaw_csv, tmp_path, caplog, damage, line):
    lines = jaw_csv.read_text().splitlines()
    fields = lines[line - 1].split(",")
    if damage == "not_a_number":
        fields[20] = "abc"
    else:
        fields = fields[:30]
    lines[line - 1] = ",".join(fields)
    csv = tmp_path / "bad.csv"
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "a.mp4"
    assert animate("--blendshapes", csv, "--out", out) == 2
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    assert f"line {line}" in errors[0] and "bad.csv" in errors[0], errors[0]
    assert not out.exists() and _leftovers(tmp_path) == []


def test_non_image_portrait_is_refused_clearly(jaw_csv, tmp_path, caplog):
    portrait = tmp_path / "face.png"
    portrait.write_text("this is not a picture\n")
    out = tmp_path / "a.mp4"
    assert animate("--portrait", portrait, "--blendshapes", jaw_csv, "--out", out) == 2
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    # Names the file the user gave, and what is wrong with it.
    assert "face.png" in errors[0], errors[0]
    assert "not a JPEG/PNG/WebP image" in errors[0], errors[0]
    assert not out.exists() and _leftovers(tmp_path) == []


def test_missing_csv_is_refused(tmp_path, caplog):
    out = tmp_path / "a.mp4"
    assert animate("--blendshapes", tmp_path / "nowhere.csv", "--out", out) == 2
    errors = _errors(caplog)
    assert len(errors) == 1 and "nowhere.csv" in errors[0], errors
    assert not out.exists() and _leftovers(tmp_path) == []


def test_failure_mid_video_leaves_no_partial_mp4(jaw_csv, tmp_path, caplog, monkeypatch):
    """The disk fills up after the first batch: the old MP4 at --out survives untouched."""
    out = tmp_path / "a.mp4"
    out.write_bytes(b"the previous render")
    real_write = Mp4Writer.write
    calls = []

    def write_then_fail(self, frames):
        calls.append(len(frames))
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        real_write(self, frames)

    monkeypatch.setattr(Mp4Writer, "write", write_then_fail)
    assert animate("--blendshapes", jaw_csv, "--out", out) == 2
    assert len(calls) == 2  # the writer was mid-file when it failed
    assert any("No space left" in e for e in _errors(caplog))
    assert out.read_bytes() == b"the previous render"
    assert _leftovers(tmp_path) == []
