"""No folds: the warp mesh never turns over, for every blendshape and head turns to 20 degrees.

A flipped triangle makes the portrait's warp non-invertible: the picture tears or shows a
mirrored patch. Triangles with every corner on one opening (the lips' inner contour, an eye)
close up by design and are covered by the renderer's mouth and eyelid layers; slivers (under a
pixel, where contours nearly touch) cover no picture.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from engine.avatar import load_avatar
from engine.blendshapes import BLENDSHAPE_NAMES, MOTION_DIM, MOTION_INDEX, NUM_BLENDSHAPES
from engine.face_rig import (
    collapsible_triangles,
    deform,
    project,
    signed_areas,
    sliver_triangles,
)  # fmt: skip
from engine.renderer import RENDER_INPUT_NAMES

TURN = 0.35  # radians, 20 degrees


def _frames() -> dict[str, np.ndarray]:
    frames = {}

    def add(name: str, **values: float) -> None:
        motion = np.zeros(MOTION_DIM, np.float32)
        for key, value in values.items():
            motion[MOTION_INDEX[key]] = value
        frames[name] = motion

    for shape in BLENDSHAPE_NAMES:
        add(f"{shape}=1", **{shape: 1.0})
        add(f"{shape}=0.5", **{shape: 0.5})
    for axis, sign in itertools.product(("headPitch", "headYaw", "headRoll"), (-1, 1)):
        add(f"{axis}={sign * TURN:+}", **{axis: sign * TURN})
    diagonal = TURN / np.sqrt(2.0)  # pitch and yaw together, 20 degrees in all
    for pitch, yaw in itertools.product((-diagonal, diagonal), (-diagonal, diagonal)):
        add(f"pitch={pitch:+.3f} yaw={yaw:+.3f}", headPitch=pitch, headYaw=yaw)
    # Talking while turning: the shapes that move most, under the largest turn.
    for shape in ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft", "mouthFunnel"):
        add(f"{shape} yaw+", **{shape: 1.0, "headYaw": TURN})
        add(f"{shape} yaw-", **{shape: 1.0, "headYaw": -TURN})
    add("speech", jawOpen=0.6, mouthFunnel=0.5, mouthSmileLeft=0.4, mouthSmileRight=0.4)
    return frames


@pytest.mark.parametrize("size", [256, 512])
def test_no_triangle_flips(size: int) -> None:
    avatar = load_avatar(None, size)
    inputs = dict(zip(RENDER_INPUT_NAMES, avatar.render_inputs(), strict=True))
    rest_px = avatar.warp["points0_px"].astype(np.float64)
    triangles = avatar.rig.triangles
    triangles = triangles[~collapsible_triangles(triangles) & ~sliver_triangles(rest_px, triangles)]
    area0 = signed_areas(rest_px, triangles)

    frames = _frames()
    motion = torch.from_numpy(np.stack(list(frames.values())))
    with torch.no_grad():
        posed = project(
            deform(motion[:, :NUM_BLENDSHAPES], inputs), motion[:, NUM_BLENDSHAPES:], inputs
        )
    ratio = signed_areas(posed.double().numpy(), triangles) / area0
    flipped = {
        name: [tuple(int(i) for i in triangles[t]) for t in np.nonzero(row <= 0.0)[0]]
        for name, row in zip(frames, ratio, strict=True)
        if (row <= 0.0).any()
    }
    assert not flipped, f"triangles that flip (landmark indices): {flipped}"
