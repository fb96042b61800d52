"""Portrait registration, on the real MediaPipe graphs (no mocks).

Inputs are built from assets/portrait.png: re-encoded, rotated, shrunk, pasted into
canvases. Registrations reused by several tests are cached in module-scoped fixtures.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.portrait import (
    BACKGROUND_RGB,
    EYE_LINE_FRACTION,
    FACE_HEIGHT_FRACTION,
    MIN_FACE_PX,
    PortraitError,
    RegisteredPortrait,
    register_portrait,
)

# mediapipe 0.10.14 calls a protobuf API that protobuf 4.x deprecates, on every image.
pytestmark = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype:UserWarning")

PORTRAIT_PATH = Path(__file__).resolve().parent.parent / "assets" / "portrait.png"

FOREHEAD, CHIN, IRIS_R, IRIS_L, UPPER_LIP, LOWER_LIP = 10, 152, 468, 473, 13, 14

# Crop boxes of re-encoded or moved copies must match the original's within this (px).
# JPEG/WebP compression moves MediaPipe's landmarks by a pixel or two.
BOX_TOLERANCE_PX = 4.0


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def eye_y(reg: RegisteredPortrait) -> float:
    return float(reg.landmarks[[IRIS_R, IRIS_L], 1].mean())


def mouth_y(reg: RegisteredPortrait) -> float:
    return float(reg.landmarks[[UPPER_LIP, LOWER_LIP], 1].mean())


def assert_box_close(box: tuple[float, ...], expected: tuple[float, ...], tol: float) -> None:
    assert np.allclose(box, expected, atol=tol), f"crop box {box} != {expected} (+-{tol})"


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    return Image.open(PORTRAIT_PATH).convert("RGB")


@pytest.fixture(scope="module")
def registered() -> dict[int, RegisteredPortrait]:
    return {size: register_portrait(PORTRAIT_PATH, size) for size in (256, 512)}


@pytest.fixture(scope="module")
def registered_jpeg(portrait: Image.Image) -> RegisteredPortrait:
    """The reference for lossy re-encodings: same JPEG quality as the rotated copies."""
    return register_portrait(encode(portrait, "JPEG", quality=92))


# --- the default portrait ---------------------------------------------------------------


@pytest.mark.parametrize("size", [256, 512])
def test_default_portrait_shapes(registered: dict[int, RegisteredPortrait], size: int) -> None:
    reg = registered[size]
    assert reg.size == size
    assert reg.image.shape == (size, size, 3) and reg.image.dtype == np.uint8
    assert reg.landmarks.shape == (478, 3) and reg.landmarks.dtype == np.float32
    assert np.isfinite(reg.landmarks).all()
    assert reg.num_faces == 1
    assert reg.source == str(PORTRAIT_PATH)
    x0, y0, x1, y1 = reg.crop_box
    assert x1 - x0 == pytest.approx(y1 - y0)  # square
    xy = reg.landmarks[:, :2]
    assert (xy >= 0).all() and (xy <= size).all(), "landmarks outside the crop"


@pytest.mark.parametrize("size", [256, 512])
def test_default_portrait_framing(registered: dict[int, RegisteredPortrait], size: int) -> None:
    reg = registered[size]
    lm = reg.landmarks
    face_height = np.linalg.norm(lm[CHIN, :2] - lm[FOREHEAD, :2])
    assert face_height / size == pytest.approx(FACE_HEIGHT_FRACTION, abs=0.005)
    assert eye_y(reg) / size == pytest.approx(EYE_LINE_FRACTION, abs=0.005)
    head_center_x = (lm[:, 0].min() + lm[:, 0].max()) / 2
    assert head_center_x / size == pytest.approx(0.5, abs=0.005)
    assert eye_y(reg) < mouth_y(reg) < lm[CHIN, 1]
    # The landmarks sit on the actual face: the iris centres are darker than the cheeks.
    grey = reg.image.mean(axis=2)

    def brightness(index: int) -> float:
        x, y = reg.landmarks[index, :2].astype(int)
        return float(grey[y - 1 : y + 2, x - 1 : x + 2].mean())

    cheeks = (brightness(50) + brightness(280)) / 2
    assert brightness(IRIS_R) < cheeks - 30 and brightness(IRIS_L) < cheeks - 30


def test_default_portrait_sizes_agree(registered: dict[int, RegisteredPortrait]) -> None:
    small, large = registered[256], registered[512]
    assert small.crop_box == pytest.approx(large.crop_box)
    # Same landmarks in both; z scales with x and y.
    assert np.abs(large.landmarks - 2 * small.landmarks).max() < 1e-3
    # MediaPipe's z: the nose tip is nearer the camera (more negative) than the cheeks.
    assert small.landmarks[1, 2] < small.landmarks[[234, 454], 2].min()


def test_padding_has_no_black_bars(registered: dict[int, RegisteredPortrait]) -> None:
    # The photo has less headroom than the framing wants, so the top is padded.
    reg = registered[512]
    assert reg.crop_box[1] < 0
    padded_rows = int(np.ceil(-reg.crop_box[1] * reg.size / (reg.crop_box[2] - reg.crop_box[0])))
    top = reg.image[:padded_rows].astype(np.float32)
    below = reg.image[padded_rows : padded_rows + 10].astype(np.float32)
    assert top.mean() > 150, "padding is dark"
    assert abs(top.mean() - below.mean()) < 15, "padding does not continue the photo"


def test_tight_photo_padded_softly(portrait: Image.Image) -> None:
    # Face and little else: a third of the output is padding, on every side.
    reg = register_portrait(encode(portrait.crop((60, 40, 240, 220)), "PNG"), 512)
    x0, y0, x1, y1 = reg.crop_box
    assert x0 < -40 and y0 < -40 and x1 > 220 and y1 > 220
    assert reg.num_faces == 1
    face_height = np.linalg.norm(reg.landmarks[CHIN, :2] - reg.landmarks[FOREHEAD, :2])
    assert face_height / reg.size == pytest.approx(FACE_HEIGHT_FRACTION, abs=0.005)
    image = reg.image.astype(np.float32)
    # The photo's top and right edges are light background: so must the padding there be
    # (zero padding would make black bars; the bottom-left continues the dark suit).
    grey = image.mean(axis=2)
    for where, band in {
        "top": grey[:40],
        "right": grey[:, -40:],
        "corner": grey[:20, -20:],
    }.items():
        assert band.mean() > 150, f"dark padding at the {where}"
    # The outer band is blurred: far smoother than the photo itself.
    band, face = grey[:40], grey[200:300, 200:300]
    assert np.abs(np.diff(band, axis=1)).mean() < 0.25 * np.abs(np.diff(face, axis=1)).mean()


def test_bytes_input_matches_path(registered: dict[int, RegisteredPortrait]) -> None:
    reg = register_portrait(PORTRAIT_PATH.read_bytes(), 256)
    assert reg.source.startswith("uploaded file (")
    assert np.array_equal(reg.image, registered[256].image)
    assert np.array_equal(reg.landmarks, registered[256].landmarks)


def test_concurrent_registrations_match(registered: dict[int, RegisteredPortrait]) -> None:
    data = PORTRAIT_PATH.read_bytes()
    results: list[RegisteredPortrait | BaseException] = []

    def work() -> None:
        try:
            results.append(register_portrait(data, 256))
        except BaseException as exc:  # surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for reg in results:
        assert isinstance(reg, RegisteredPortrait), reg
        assert np.array_equal(reg.landmarks, registered[256].landmarks)


# --- inputs that must be refused -----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 128, 300, 1024])
def test_unsupported_size(size: int) -> None:
    with pytest.raises(PortraitError, match=r"unsupported portrait size .*256 or 512"):
        register_portrait(PORTRAIT_PATH, size)


def test_portrait_error_is_a_value_error() -> None:
    assert issubclass(PortraitError, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(PortraitError, match="not found") as info:
        register_portrait(path)
    assert str(path) in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(PortraitError, match="directory"):
        register_portrait(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"name,jawOpen\nframe0,0.5\n",
        np.random.default_rng(0).bytes(4096),
        encode(Image.new("RGB", (64, 64)), "GIF"),
    ],
    ids=["text", "random-bytes", "gif"],
)
def test_not_an_image(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "portrait.jpg"  # the extension must not fool it
    path.write_bytes(content)
    with pytest.raises(PortraitError, match="not a JPEG/PNG/WebP image"):
        register_portrait(path)


def test_empty_file() -> None:
    with pytest.raises(PortraitError, match="empty file"):
        register_portrait(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path: Path, portrait: Image.Image, fmt: str) -> None:
    data = encode(portrait, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PortraitError, match=f"truncated or corrupt {fmt}"):
        register_portrait(path)


def test_truncated_header(portrait: Image.Image) -> None:
    data = encode(portrait, "JPEG")
    with pytest.raises(PortraitError, match="JPEG file but is truncated or corrupt"):
        register_portrait(data[:20])


def test_no_face_gradient(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 640)[None, :, None]
    y = np.linspace(0, 1, 480)[:, None, None]
    rgb = (255 * np.concatenate([x + 0 * y, y + 0 * x, (1 - x) * (1 - y)], axis=2)).astype(np.uint8)
    path = tmp_path / "gradient.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(PortraitError, match="no face found"):
        register_portrait(path)


def test_no_face_landscape() -> None:
    # Sky, hills and a sun, with texture; big enough (1600 px) to go through tiled search.
    rng = np.random.default_rng(1)
    h, w = 900, 1600
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array([110, 160, 230]) + (yy / h)[..., None] * np.array([80, 60, 20])
    hills = yy > 520 + 80 * np.sin(xx / 170.0) + 40 * np.sin(xx / 53.0)
    img[hills] = np.array([70, 120, 50]) + 30 * rng.standard_normal((hills.sum(), 1))
    sun = (xx - 1250) ** 2 + (yy - 200) ** 2 < 70**2
    img[sun] = (255, 240, 180)
    data = encode(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), "JPEG", quality=90)
    with pytest.raises(PortraitError, match="no face found"):
        register_portrait(data)


def test_face_too_small(portrait: Image.Image) -> None:
    canvas = Image.new("RGB", (480, 360), (90, 110, 130))
    canvas.paste(portrait.resize((135, 135), Image.Resampling.LANCZOS), (150, 100))
    with pytest.raises(PortraitError, match="face too small") as info:
        register_portrait(encode(canvas, "PNG"))
    message = str(info.value)
    measured = int(re.search(r"(\d+) px across", message).group(1))  # type: ignore[union-attr]
    assert 30 <= measured < MIN_FACE_PX  # the face is ~48 px here
    assert f"minimum is {MIN_FACE_PX} px" in message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [10_000, 20_000], ids=["over-limit", "bomb"])
def test_decompression_bomb(side: int) -> None:
    # Only a header claiming side x side pixels: refused before anything is decoded.
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(PortraitError, match="too large"):
        register_portrait(data)


# --- inputs that must work -------------------------------------------------------------------


def test_several_faces_takes_largest(
    portrait: Image.Image, caplog: pytest.LogCaptureFixture
) -> None:
    # The smaller copy on the left, so "largest" cannot be confused with "first".
    canvas = Image.new("RGB", (500, 300), (90, 110, 130))
    canvas.paste(portrait.resize((200, 200), Image.Resampling.LANCZOS), (0, 50))
    canvas.paste(portrait, (200, 0))
    with caplog.at_level(logging.WARNING, logger="engine.portrait"):
        reg = register_portrait(encode(canvas, "PNG"))
    assert reg.num_faces == 2
    assert (reg.crop_box[0] + reg.crop_box[2]) / 2 > 300, "took the smaller face"
    assert any(
        r.levelno == logging.WARNING and "2 faces" in r.getMessage() and "largest" in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_huge_image(portrait: Image.Image, registered: dict[int, RegisteredPortrait]) -> None:
    # 48 MP, the face only ~1.3% of the width: found by the tiled search.
    canvas = Image.new("RGB", (8000, 6000), (90, 110, 130))
    offset = (5000, 2000)
    canvas.paste(portrait, offset)
    reg = register_portrait(encode(canvas, "JPEG", quality=92), 256)
    assert reg.num_faces == 1
    ref = registered[256].crop_box
    expected = (ref[0] + offset[0], ref[1] + offset[1], ref[2] + offset[0], ref[3] + offset[1])
    assert_box_close(reg.crop_box, expected, BOX_TOLERANCE_PX)


def test_huge_jpeg_decoded_at_reduced_scale(
    portrait: Image.Image, registered: dict[int, RegisteredPortrait]
) -> None:
    # 10000 px wide: decoded at half scale, but crop_box still in the file's own pixels.
    canvas = Image.new("RGB", (10_000, 7000), (90, 110, 130))
    scale, offset = 4, (6000, 3000)
    canvas.paste(portrait.resize((300 * scale, 300 * scale), Image.Resampling.LANCZOS), offset)
    reg = register_portrait(encode(canvas, "JPEG", quality=90), 512)
    ref = registered[256].crop_box
    expected = tuple(v * scale + offset[i % 2] for i, v in enumerate(ref))
    assert_box_close(reg.crop_box, expected, BOX_TOLERANCE_PX * scale)


def test_grayscale(portrait: Image.Image, registered: dict[int, RegisteredPortrait]) -> None:
    reg = register_portrait(encode(portrait.convert("L"), "PNG"))
    assert reg.image.shape == (256, 256, 3)
    assert (reg.image[..., 0] == reg.image[..., 1]).all()
    assert (reg.image[..., 1] == reg.image[..., 2]).all()
    assert_box_close(reg.crop_box, registered[256].crop_box, BOX_TOLERANCE_PX)


def test_rgba_transparency(
    portrait: Image.Image, registered: dict[int, RegisteredPortrait]
) -> None:
    # The left 40 px fully transparent, black underneath: must come out light grey.
    rgba = np.dstack([np.asarray(portrait), np.full((300, 300), 255, np.uint8)])
    rgba[:, :40] = 0
    reg = register_portrait(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert reg.image.shape == (256, 256, 3)
    assert_box_close(reg.crop_box, registered[256].crop_box, BOX_TOLERANCE_PX)
    # Output pixels showing source x < 40, less a margin for the resampling kernel, and
    # below the padded top rows (their blur mixes in the opaque part).
    k = reg.size / (reg.crop_box[2] - reg.crop_box[0])
    last_col = int((40 - reg.crop_box[0]) * k) - 4
    first_row = int(np.ceil(-reg.crop_box[1] * k)) + 2
    assert last_col > 10
    transparent = reg.image[first_row:, :last_col].astype(int)
    assert np.abs(transparent - np.array(BACKGROUND_RGB)).max() <= 2


@pytest.mark.parametrize(
    ("orientation", "stored_rotation"),
    [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)],
)
def test_exif_orientation(
    portrait: Image.Image,
    registered_jpeg: RegisteredPortrait,
    orientation: int,
    stored_rotation: Image.Transpose,
) -> None:
    # The pixels are stored sideways; the Orientation tag says how to turn them upright.
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(portrait.transpose(stored_rotation), "JPEG", quality=92, exif=exif)
    reg = register_portrait(data)
    assert eye_y(reg) < mouth_y(reg) - 20, "face not upright"
    assert abs(reg.landmarks[IRIS_R, 1] - reg.landmarks[IRIS_L, 1]) < 10, "eyes not level"
    assert_box_close(reg.crop_box, registered_jpeg.crop_box, BOX_TOLERANCE_PX)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        (
            "16-bit grey PNG",
            lambda p: (Image.fromarray(np.asarray(p.convert("L"), np.uint16) * 257), "PNG", {}),
        ),
        ("palette PNG", lambda p: (p.quantize(64), "PNG", {"transparency": 0})),
        ("CMYK JPEG", lambda p: (p.convert("CMYK"), "JPEG", {"quality": 92})),
        ("progressive JPEG", lambda p: (p, "JPEG", {"quality": 92, "progressive": True})),
    ],
)
def test_other_pixel_formats(
    portrait: Image.Image, registered: dict[int, RegisteredPortrait], name: str, make: Any
) -> None:
    img, fmt, options = make(portrait)
    reg = register_portrait(encode(img, fmt, **options))
    assert reg.image.shape == (256, 256, 3), name
    assert_box_close(reg.crop_box, registered[256].crop_box, BOX_TOLERANCE_PX)


def test_webp(portrait: Image.Image, registered: dict[int, RegisteredPortrait]) -> None:
    reg = register_portrait(encode(portrait, "WEBP", quality=90), 512)
    assert reg.image.shape == (512, 512, 3)
    assert_box_close(reg.crop_box, registered[512].crop_box, BOX_TOLERANCE_PX)
