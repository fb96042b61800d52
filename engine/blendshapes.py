"""The motion-frame contract: ARKit blendshape names and head pose, in one place.

A motion frame is a float vector of ``MOTION_DIM`` values:
``BLENDSHAPE_NAMES`` (ARKit's 52 weights, each in [0, 1]) followed by ``POSE_NAMES``.
Every module that reads or writes motion imports these names; nothing else spells them.

Head pose conventions (camera frame: x to the image's right, y down, z away from the camera):
- ``headPitch``: radians, positive tips the face down (the nose tip moves down the image).
- ``headYaw``: radians, positive turns the face towards the image's right (the subject's left).
- ``headRoll``: radians, positive tilts the head clockwise in the image.
- ``headTx``, ``headTy``: translation in units of the face size (inter-ocular distance),
  along the image's x and y.
- ``headTz``: relative scale change, positive moves the head towards the camera (0.1 = 10%
  larger).
"""

from __future__ import annotations

import numpy as np

# ARKit's order (ARFaceAnchor.BlendShapeLocation, as Live Link Face writes its CSV).
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight",
    "jawForward", "jawLeft", "jawRight", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)  # fmt: skip

POSE_NAMES: tuple[str, ...] = ("headPitch", "headYaw", "headRoll", "headTx", "headTy", "headTz")

MOTION_NAMES: tuple[str, ...] = BLENDSHAPE_NAMES + POSE_NAMES
NUM_BLENDSHAPES = len(BLENDSHAPE_NAMES)
NUM_POSE = len(POSE_NAMES)
MOTION_DIM = len(MOTION_NAMES)

BLENDSHAPE_INDEX: dict[str, int] = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}
MOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(MOTION_NAMES)}

# Channels the lip refiner re-predicts; everything else passes through it untouched.
MOUTH_NAMES: tuple[str, ...] = tuple(
    n for n in BLENDSHAPE_NAMES if n.startswith(("jaw", "mouth")) or n == "tongueOut"
)
EYE_NAMES: tuple[str, ...] = tuple(n for n in BLENDSHAPE_NAMES if n.startswith("eye"))
BROW_NAMES: tuple[str, ...] = tuple(n for n in BLENDSHAPE_NAMES if n.startswith("brow"))


def neutral_motion(num_frames: int = 1) -> np.ndarray:
    """Motion frames with every blendshape and pose value at rest, shape (T, MOTION_DIM)."""
    return np.zeros((num_frames, MOTION_DIM), dtype=np.float32)


def motion_from_dict(values: dict[str, float]) -> np.ndarray:
    """One motion frame from a {name: value} dict; unknown names raise KeyError."""
    frame = np.zeros(MOTION_DIM, dtype=np.float32)
    for name, value in values.items():
        if name not in MOTION_INDEX:
            raise KeyError(f"unknown motion channel {name!r}")
        frame[MOTION_INDEX[name]] = value
    return frame
