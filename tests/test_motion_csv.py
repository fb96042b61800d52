"""Motion CSV: Live Link Face exports and our own names in, LLF-style files out."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from engine import motion_csv
from engine.blendshapes import MOTION_DIM, MOTION_INDEX, NUM_BLENDSHAPES
from engine.motion_csv import (
    LLF_BLENDSHAPE_COUNT,
    MotionCsvError,
    fps_from_timecodes,
    read_motion_csv,
    write_motion_csv,
)

# The header row of a real Live Link Face capture, as the app writes it (note its spelling
# "BlendshapeCount" and its order: JawRight before JawLeft, MouthRight before MouthLeft).
LLF_HEADER = (
    "Timecode,BlendshapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,"
    "EyeLookUpLeft,EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,"
    "EyeLookOutRight,EyeLookUpRight,EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,"
    "JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,MouthLeft,MouthSmileLeft,"
    "MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,"
    "MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,"
    "MouthShrugUpper,MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,"
    "MouthUpperUpLeft,MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,"
    "BrowOuterUpRight,CheekPuff,CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,"
    "TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,"
    "RightEyePitch,RightEyeRoll"
)
LLF_COLUMNS = LLF_HEADER.split(",")

# A 60 fps capture stamped with a 30 fps timecode (two rows per timecode frame, sub-frames
# .483/.983), crossing a second boundary so the timecode rate is unambiguous.
LLF_TIMECODES = [
    "13:41:52:28.483",
    "13:41:52:28.983",
    "13:41:52:29.483",
    "13:41:52:29.983",
    "13:41:53:00.483",
    "13:41:53:00.983",
    "13:41:53:01.483",
]


def _llf_row(timecode: str, values: dict[str, float]) -> str:
    cells = [timecode, "61"] + [f"{values.get(name, 0.0):.6f}" for name in LLF_COLUMNS[2:]]
    return ",".join(cells)


def _write(tmp_path, text: str, name: str = "take.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def test_reads_live_link_face_export(tmp_path, caplog):
    rows = []
    for i, tc in enumerate(LLF_TIMECODES):
        values = {
            "JawOpen": 0.1 * i,
            "EyeBlinkLeft": 0.9,
            "MouthLeft": 0.25,
            "HeadYaw": 0.05,
            "HeadPitch": -0.02,
            "HeadRoll": 0.03,
            "LeftEyeYaw": 0.2,  # known LLF column we do not use
        }
        rows.append(_llf_row(tc, values))
    path = _write(tmp_path, LLF_HEADER + "\n" + "\n".join(rows) + "\n")

    with caplog.at_level(logging.WARNING, logger="engine.motion_csv"):
        track = read_motion_csv(path)

    assert caplog.records == []  # every LLF column is known
    assert track.unknown_columns == []
    assert track.frames.shape == (len(LLF_TIMECODES), MOTION_DIM)
    assert track.frames.dtype == np.float32
    np.testing.assert_allclose(
        track.frames[:, MOTION_INDEX["jawOpen"]], 0.1 * np.arange(7), atol=1e-6
    )
    assert track.frames[0, MOTION_INDEX["eyeBlinkLeft"]] == pytest.approx(0.9)
    assert track.frames[0, MOTION_INDEX["mouthLeft"]] == pytest.approx(0.25)
    assert track.frames[0, MOTION_INDEX["mouthRight"]] == 0.0
    # Head rotation: yaw and pitch keep LLF's sign, roll flips (see engine.motion_csv).
    assert track.frames[0, MOTION_INDEX["headYaw"]] == pytest.approx(0.05)
    assert track.frames[0, MOTION_INDEX["headPitch"]] == pytest.approx(-0.02)
    assert track.frames[0, MOTION_INDEX["headRoll"]] == pytest.approx(-0.03)
    assert track.frames[0, MOTION_INDEX["headTx"]] == 0.0
    assert track.fps == 60.0


def test_reads_our_own_names_any_subset_any_case(tmp_path):
    path = _write(tmp_path, "jawOpen,MOUTHCLOSE,headRoll,headTx\n0.5,0.25,0.1,-0.2\n0.0,1.0,0,0\n")
    track = read_motion_csv(path)
    assert track.fps is None
    assert track.unknown_columns == []
    first = track.frames[0]
    assert first[MOTION_INDEX["jawOpen"]] == 0.5
    assert first[MOTION_INDEX["mouthClose"]] == 0.25
    # Without LLF markers (Timecode / BlendShapeCount), head channels are ours: no sign flip.
    assert first[MOTION_INDEX["headRoll"]] == pytest.approx(0.1)
    assert first[MOTION_INDEX["headTx"]] == pytest.approx(-0.2)
    untouched = np.delete(
        first, [MOTION_INDEX[n] for n in ("jawOpen", "mouthClose", "headRoll", "headTx")]
    )
    assert not untouched.any()


def test_bom_whitespace_and_blank_lines(tmp_path):
    text = "\ufeff jawOpen , mouthClose \r\n\r\n 0.5 , 0.25 \r\n   \r\n0.75,0\r\n\r\n"
    track = read_motion_csv(_write(tmp_path, text))
    np.testing.assert_allclose(track.frames[:, MOTION_INDEX["jawOpen"]], [0.5, 0.75])
    np.testing.assert_allclose(track.frames[:, MOTION_INDEX["mouthClose"]], [0.25, 0.0])


def test_unknown_columns_warned_once_and_listed(tmp_path, caplog):
    text = "jawOpen,frame,Confidence\n" + "".join(f"0.5,{i},0.9\n" for i in range(20))
    path = _write(tmp_path, text)
    with caplog.at_level(logging.WARNING, logger="engine.motion_csv"):
        track = read_motion_csv(path)
    assert track.unknown_columns == ["frame", "Confidence"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "frame" in warnings[0].getMessage() and "Confidence" in warnings[0].getMessage()
    assert track.frames[:, MOTION_INDEX["jawOpen"]].tolist() == [0.5] * 20


def test_values_outside_unit_range_are_clipped_with_one_warning(tmp_path, caplog):
    path = _write(tmp_path, "jawOpen,mouthClose,headYaw\n1.5,-0.25,-2.0\n1.2,0.5,2.0\n")
    with caplog.at_level(logging.WARNING, logger="engine.motion_csv"):
        track = read_motion_csv(path)
    assert track.frames[:, MOTION_INDEX["jawOpen"]].tolist() == [1.0, 1.0]
    assert track.frames[:, MOTION_INDEX["mouthClose"]].tolist() == [0.0, 0.5]
    # Pose is not a weight: it is never clipped.
    assert track.frames[:, MOTION_INDEX["headYaw"]].tolist() == [-2.0, 2.0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "clipped 3" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("0.1,0.2\n0.3\n", ["line 3", "expected 2 fields", "found 1"]),
        ("0.1,0.2\n0.3,0.4,0.5\n", ["line 3", "found 3"]),
        ("0.1,0.2\n0.3,abc\n", ["line 3", "column 2", "'mouthClose'", "'abc'", "not a number"]),
        ("0.1,\n", ["line 2", "column 2", "'mouthClose'", "not a number"]),
        ("0.1,0.2\nnan,0.2\n", ["line 3", "column 1", "'jawOpen'", "not finite"]),
        ("0.1,0.2\n\n0.1,-inf\n", ["line 4", "column 2", "not finite"]),
    ],
)
def test_malformed_rows_name_file_line_and_column(tmp_path, body, expected):
    path = _write(tmp_path, "jawOpen,mouthClose\n" + body)
    with pytest.raises(MotionCsvError) as info:
        read_motion_csv(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty"), ("\ufeff\n  \n", "empty"), ("jawOpen,mouthClose\n", "no frame rows")],
)
def test_empty_or_header_only_is_a_clear_error(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(MotionCsvError, match=fragment) as info:
        read_motion_csv(path)
    assert str(path) in str(info.value)


def test_duplicate_channel_is_an_error(tmp_path):
    path = _write(tmp_path, "jawOpen,JawOpen\n0.1,0.2\n")
    with pytest.raises(MotionCsvError, match="columns 1 .* and 2"):
        read_motion_csv(path)


def test_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    frames = np.empty((40, MOTION_DIM), dtype=np.float32)
    frames[:, :NUM_BLENDSHAPES] = rng.uniform(0.0, 1.0, (40, NUM_BLENDSHAPES))
    frames[:, NUM_BLENDSHAPES:] = rng.normal(0.0, 0.3, (40, MOTION_DIM - NUM_BLENDSHAPES))
    frames[3] = 0.0  # exact zeros survive (no "-0" from the roll sign flip)
    path = tmp_path / "out.csv"

    write_motion_csv(path, frames, fps=25.0)
    track = read_motion_csv(path)

    np.testing.assert_array_equal(track.frames, frames)
    assert track.fps == 25.0
    assert track.unknown_columns == []


def test_written_file_is_live_link_face_shaped(tmp_path):
    frames = np.zeros((3, MOTION_DIM), dtype=np.float32)
    frames[:, MOTION_INDEX["headRoll"]] = 0.1
    path = write_motion_csv(tmp_path / "out.csv", frames, fps=60.0)
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    # LLF's columns in LLF's order, then our translation channels.
    assert [h.lower() for h in header[:-3]] == [c.lower() for c in LLF_COLUMNS]
    assert header[-3:] == ["headTx", "headTy", "headTz"]
    first = dict(zip(header, lines[1].split(","), strict=True))
    assert first["Timecode"] == "00:00:00:00.000"
    assert first["BlendShapeCount"] == str(LLF_BLENDSHAPE_COUNT)
    assert float(first["HeadRoll"]) == pytest.approx(-0.1)
    assert float(first["LeftEyeYaw"]) == 0.0
    assert lines[2].split(",")[0] == "00:00:00:01.000"


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    frames = np.zeros((5, MOTION_DIM), dtype=np.float32)
    fresh = tmp_path / "fresh.csv"
    existing = tmp_path / "existing.csv"
    existing.write_text("previous contents")

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(motion_csv.os, "replace", failing_replace)
    for target in (fresh, existing):
        with pytest.raises(OSError, match="simulated"):
            write_motion_csv(target, frames)
    monkeypatch.undo()

    assert not fresh.exists()
    assert existing.read_text() == "previous contents"
    assert sorted(os.listdir(tmp_path)) == ["existing.csv"]  # no temp files left behind


@pytest.mark.parametrize(
    "frames",
    [np.zeros((0, MOTION_DIM)), np.zeros((4, MOTION_DIM - 1)), np.full((2, MOTION_DIM), np.nan)],
)
def test_write_rejects_bad_frames(tmp_path, frames):
    with pytest.raises(ValueError):
        write_motion_csv(tmp_path / "bad.csv", frames)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [24.0, 25.0, 29.97, 30.0, 50.0, 60.0])
def test_fps_survives_the_timecode(tmp_path, fps):
    path = write_motion_csv(tmp_path / "t.csv", np.zeros((70, MOTION_DIM)), fps=fps)
    assert read_motion_csv(path).fps == fps


def test_fps_from_timecodes_only_when_unambiguous():
    assert fps_from_timecodes(LLF_TIMECODES) == 60.0
    # Within one second the timecode's own rate (where FF wraps) is unknown.
    assert fps_from_timecodes(["10:00:00:01.000", "10:00:00:02.000", "10:00:00:03.000"]) is None
    # ... unless the frame numbers reach the last one of the lowest rate that fits (49 for
    # 50): that count was about to wrap, so the clip is taken as 50 fps.
    assert fps_from_timecodes([f"10:00:00:{ff:02d}.000" for ff in range(50)]) == 50.0
    assert fps_from_timecodes(["1", "2", "3"]) is None
    assert fps_from_timecodes(["10:00:00:01.000"]) is None
