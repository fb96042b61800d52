"""Write ``assets/portrait.png``, the default avatar, from scikit-image's astronaut photo.

``skimage.data.astronaut()`` is NASA's official portrait of Eileen Collins (public domain),
shipped inside scikit-image, so the default avatar needs no download and no licence review.

The crop box is fixed rather than computed by face detection so the committed asset is
byte-for-byte reproducible whatever MediaPipe version is installed. It was chosen from the
photo's MediaPipe face mesh (512x512 source):
- forehead (landmark 10) at y=72, chin (landmark 152) at y=177: face span 106 px;
- hair spans x=152..300 and starts at y~15; face centre x~226.
A 300 px square from the top edge, centred on x=226, keeps the whole hairdo inside with
~15 px above it (the photo has no more headroom), puts the face at 106/300 = 35% of the
height and the eyes at 34%, and ends on the shoulders of the suit. The crop is written at
its native 300x300: ``engine.portrait.register_portrait`` does any resizing, once.

Usage: ``python scripts/make_default_portrait.py [--out assets/portrait.png]``
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from PIL import Image
from skimage import data

log = logging.getLogger("make_default_portrait")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "assets" / "portrait.png"

# (left, top, right, bottom) in astronaut() pixels; see the module docstring for why.
CROP_BOX: tuple[int, int, int, int] = (76, 0, 376, 300)


def make_default_portrait(out: Path = DEFAULT_OUT) -> Path:
    """Crop the astronaut photo to head and shoulders and save it as a PNG at ``out``."""
    source = data.astronaut()
    if source.shape != (512, 512, 3):
        # CROP_BOX is only meaningful for the photo it was measured on.
        raise RuntimeError(f"unexpected astronaut() shape {source.shape}, expected (512, 512, 3)")
    left, top, right, bottom = CROP_BOX
    crop = Image.fromarray(source[top:bottom, left:right])
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary name first so an interrupted run never leaves a broken asset.
    tmp = out.with_name(out.name + ".tmp")
    crop.save(tmp, format="PNG", optimize=True)
    tmp.replace(out)
    log.info("wrote %s (%dx%d)", out, crop.width, crop.height)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output PNG path")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_default_portrait(args.out)


if __name__ == "__main__":
    main()
