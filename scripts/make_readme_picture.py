"""Render docs/avatar.jpg, the README's picture: the default portrait at eight extremes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.avatar import load_avatar
from engine.blendshapes import MOTION_DIM, MOTION_INDEX
from engine.renderer import Renderer, RendererConfig, to_uint8_frames

PANELS = (
    {},
    {"jawOpen": 1.0},
    {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0},
    {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0},
    {"headYaw": 0.35},
    {"headPitch": 0.35},
    {"browInnerUp": 1.0, "eyeWideLeft": 1.0, "eyeWideRight": 1.0},
    {"jawOpen": 0.6, "mouthSmileLeft": 0.8, "mouthSmileRight": 0.8},
)


def main(out: Path = Path("docs/avatar.jpg"), size: int = 256, thumb: int = 192) -> None:
    avatar = load_avatar(None, size)
    motion = np.zeros((len(PANELS), MOTION_DIM), np.float32)
    for row, values in zip(motion, PANELS, strict=True):
        for name, value in values.items():
            row[MOTION_INDEX[name]] = value
    with torch.no_grad():
        frames = to_uint8_frames(
            Renderer(RendererConfig(size))(torch.from_numpy(motion), *avatar.render_inputs())
        )
    sheet = Image.new("RGB", (thumb * 4, thumb * 2))
    for i, frame in enumerate(frames):
        sheet.paste(
            Image.fromarray(frame).resize((thumb, thumb), Image.LANCZOS),
            ((i % 4) * thumb, (i // 4) * thumb),
        )
    sheet.save(out, quality=88)
    print(out)


if __name__ == "__main__":
    main()
