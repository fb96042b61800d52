"""Portrait registration: turn a user's photo into a square head-and-shoulders crop plus
MediaPipe face-mesh landmarks in that crop's pixels. Everything downstream (the face rig,
the renderer) starts from a ``RegisteredPortrait``.

Pipeline of ``register_portrait``:
1. Decode JPEG/PNG/WebP with Pillow: EXIF orientation applied, any mode turned into RGB
   (alpha composited over light grey), big JPEGs decoded at reduced scale.
2. Find faces with MediaPipe's full-range face detector on a copy of the photo at most
   4096 px long; if it sees none, scan overlapping tiles at finer scales, because the
   detector looks at 192x192 pixels and misses faces narrower than ~7% of its input.
3. Fit the 478-point face mesh (FaceMesh, iris refinement on) on a square crop around the
   largest face, so the mesh model sees the face at a good size however small it is in
   the photo.
4. Frame a square around the face (``FACE_HEIGHT_FRACTION``, ``EYE_LINE_FRACTION``),
   padding any part outside the photo with blurred edge replication, resize to 256 or 512
   and carry the landmarks into the crop's pixels.

The decoded photo stays a Pillow image; only the detection copy and the pixels under the
two crops ever become numpy arrays, which keeps memory and time low on big photos.

Coordinates are continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``), the
convention MediaPipe's normalised landmarks follow once multiplied by the image size.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

SUPPORTED_SIZES: tuple[int, ...] = (256, 512)

# Framing of the output square, as fractions of its side. The forehead-to-chin span
# (landmarks 10 and 152) at 38% leaves room for the hair above and the shoulders below;
# eyes 40% from the top is the usual head-and-shoulders composition.
FACE_HEIGHT_FRACTION = 0.38
EYE_LINE_FRACTION = 0.40

# Below this the mesh has too few pixels to be trustworthy, and upscaling to 256+ would
# show mush. Measured on the detector's box, in the source photo's pixels.
MIN_FACE_PX = 64

# Face detection runs on a copy at most this long (so at most 16.8 MP): the detector
# shrinks its input to 192 px anyway, and tiling (below) covers small faces.
MAX_WORKING_SIDE = 4096
# Refuse to decode more pixels than Pillow itself deems safe (its decompression-bomb
# warning threshold, ~89 MP, ~270 MB as RGB). Big JPEGs are decoded at reduced scale
# first, so in practice only huge PNG/WebP files hit this.
MAX_DECODE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
MAX_FILE_BYTES = 100 * 1024 * 1024

# Blur of the padding far from the photo, as a fraction of the output side (it ramps up
# from nothing at the photo's edge).
PADDING_MAX_BLUR = 0.08

# What transparent areas become: neutral, light, and unlike any skin tone.
BACKGROUND_RGB: tuple[int, int, int] = (220, 220, 220)

# The mesh is fitted on a square this many times the detector box, resized to
# MESH_INPUT_PX: the face then fills about half of it, which FaceMesh's own short-range
# detector finds reliably.
MESH_CROP_SCALE = 2.0
MESH_INPUT_PX = 384
# Detections tried, largest first, until the mesh fits one.
MAX_MESH_ATTEMPTS = 3

# Tiled detection stops at this tile side. At 512 px the full-range detector still finds
# faces of ~36 px, under MIN_FACE_PX, so small faces get "too small" rather than "no face".
MIN_TILE_PX = 512
MIN_DETECTION_CONFIDENCE = 0.5

NUM_LANDMARKS = 478
LANDMARK_FOREHEAD = 10
LANDMARK_CHIN = 152
LANDMARK_IRIS_RIGHT = 468  # centre of the subject's right iris (image left)
LANDMARK_IRIS_LEFT = 473

_MAGIC_FORMATS = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
)


class PortraitError(ValueError):
    """A photo that cannot become a portrait; the message says why, for the end user."""


@dataclass
class RegisteredPortrait:
    """A registered portrait: the square crop and its face mesh."""

    image: np.ndarray  # (size, size, 3) uint8 RGB, the square crop
    # (478, 3) float32 MediaPipe face-mesh landmarks (468 mesh + 10 iris) in crop pixels:
    # x right, y down, z = MediaPipe's relative depth scaled to the same pixel units as x
    # (positive = away from the camera).
    landmarks: np.ndarray
    size: int
    # (x0, y0, x1, y1) of the crop in the source photo's pixels after EXIF transpose; it
    # extends past the photo where the crop was padded.
    crop_box: tuple[float, float, float, float]
    num_faces: int  # faces detected in the photo (the largest one that fits a mesh is used)
    source: str  # the path, or "uploaded file (N bytes)" for in-memory input


@dataclass
class _Face:
    """A face detector box, in pixels."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def area(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def scaled(self, factor: float, dx: float = 0.0, dy: float = 0.0) -> _Face:
        return _Face(
            (self.x0 + dx) * factor,
            (self.y0 + dy) * factor,
            (self.x1 + dx) * factor,
            (self.y1 + dy) * factor,
            self.score,
        )


def register_portrait(source: str | Path | bytes, size: int = 256) -> RegisteredPortrait:
    """Register a portrait photo (a path or the file's bytes) at ``size`` (256 or 512).

    Raises ``PortraitError`` (a ``ValueError``) with a user-facing message when the input is
    not a usable JPEG/PNG/WebP portrait. Pure (no state besides the shared MediaPipe graphs)
    and safe to call from several threads.
    """
    if size not in SUPPORTED_SIZES:
        allowed = " or ".join(map(str, SUPPORTED_SIZES))
        raise PortraitError(f"unsupported portrait size {size!r}: must be {allowed}")
    data, label = _read_source(source)
    # decode_scale: source pixels per `photo` pixel (above 1 for a big JPEG decoded small).
    photo, decode_scale = _decode(data, label)
    del data

    faces = _detect_faces(photo)
    if not faces:
        raise PortraitError(
            f"no face found in {label}; use a photo with one clearly visible, roughly "
            "frontal face (if the face is tiny in a large photo, crop closer to it first)"
        )
    faces.sort(key=lambda f: f.area, reverse=True)
    face_px = faces[0].width * decode_scale
    if face_px < MIN_FACE_PX:
        raise PortraitError(
            f"face too small in {label}: {face_px:.0f} px across, the minimum is "
            f"{MIN_FACE_PX} px; use a larger or closer photo"
        )

    # A detection the mesh cannot fit is most likely a false positive (a face on a
    # T-shirt, a pattern): fall back to the next largest face rather than give up.
    landmarks = None
    for rank, face in enumerate(faces[:MAX_MESH_ATTEMPTS]):
        if face.width * decode_scale < MIN_FACE_PX:
            break
        landmarks = _fit_mesh(photo, face)
        if landmarks is not None:
            break
        log.info("no face mesh fits detection %d in %s; trying the next one", rank, label)
    if landmarks is None:
        raise PortraitError(
            f"no face found in {label}: a face-like region was detected but no facial "
            "landmarks could be fitted; use a clear, roughly frontal photo"
        )
    if len(faces) > 1:
        log.warning(
            "%d faces found in %s; using the %s (%.0f px across)",
            len(faces),
            label,
            "largest" if rank == 0 else f"largest that fits a face mesh (number {rank + 1})",
            face.width * decode_scale,
        )

    x0, y0, side = box = _frame(landmarks)
    image = _crop_square(photo, box, size, blur_padding=True)
    k = size / side  # output pixels per photo pixel
    out_landmarks = np.empty((NUM_LANDMARKS, 3), np.float32)
    out_landmarks[:, 0] = (landmarks[:, 0] - x0) * k
    out_landmarks[:, 1] = (landmarks[:, 1] - y0) * k
    out_landmarks[:, 2] = landmarks[:, 2] * k
    crop_box = (
        x0 * decode_scale,
        y0 * decode_scale,
        (x0 + side) * decode_scale,
        (y0 + side) * decode_scale,
    )
    log.debug("registered %s: %d face(s), crop box %s", label, len(faces), crop_box)
    return RegisteredPortrait(
        image=image,
        landmarks=out_landmarks,
        size=size,
        crop_box=crop_box,
        num_faces=len(faces),
        source=label,
    )


# --- reading and decoding -------------------------------------------------------------


def _read_source(source: str | Path | bytes) -> tuple[bytes, str]:
    """The file's bytes and a label for messages."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return data, f"uploaded file ({len(data)} bytes)"
    path = Path(source)
    label = str(path)
    try:
        if path.is_dir():
            raise PortraitError(f"portrait path is a directory, not an image file: {label}")
        file_size = path.stat().st_size
        if file_size > MAX_FILE_BYTES:
            raise PortraitError(
                f"portrait file too large: {label} is {file_size / 2**20:.0f} MiB, "
                f"the limit is {MAX_FILE_BYTES // 2**20} MiB"
            )
        return path.read_bytes(), label
    except FileNotFoundError:
        raise PortraitError(f"portrait file not found: {label}") from None
    except PermissionError:
        raise PortraitError(f"portrait file not readable (permission denied): {label}") from None
    except OSError as exc:
        raise PortraitError(f"cannot read portrait file {label}: {exc}") from exc


def _sniff_format(data: bytes) -> str | None:
    """The format from the file's signature: decides which Pillow plugin may open it, and
    tells "not an image" apart from "a broken image" for the error message."""
    for magic, fmt in _MAGIC_FORMATS:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _decode(data: bytes, label: str) -> tuple[Image.Image, float]:
    """Decode to an upright RGB image, plus source pixels per decoded pixel (above 1 when
    a big JPEG was decoded at reduced scale)."""
    fmt = _sniff_format(data)
    if fmt is None:
        what = "an empty file" if not data else "not a JPEG/PNG/WebP image"
        raise PortraitError(f"{label} is {what}; upload a JPEG, PNG or WebP photo")
    too_big = f"{label} is too large to decode safely"
    try:
        # Pillow's decompression-bomb check runs here on the header's dimensions, before
        # any pixel is decoded.
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise PortraitError(f"{too_big} ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise PortraitError(
            f"{label} starts like a {fmt} file but is truncated or corrupt: "
            "its header cannot be read"
        ) from None

    # No `with img`: closing would free the pixels we return, and a BytesIO holds no OS
    # resource, so the garbage collector is enough.
    try:
        full_w, full_h = img.size
        if fmt == "JPEG" and max(full_w, full_h) > 2 * MAX_WORKING_SIDE:
            # The JPEG decoder can decode at 1/2, 1/4 or 1/8 scale directly, for a fraction
            # of the memory and time; keep at least MAX_WORKING_SIDE on the long side.
            fit = MAX_WORKING_SIDE / max(full_w, full_h)
            img.draft(img.mode, (math.ceil(full_w * fit), math.ceil(full_h * fit)))
        decoded_w, decoded_h = img.size
        if decoded_w * decoded_h > MAX_DECODE_PIXELS:
            raise PortraitError(
                f"{too_big}: {full_w}x{full_h} is {full_w * full_h / 1e6:.0f} MP, the limit is "
                f"{MAX_DECODE_PIXELS / 1e6:.0f} MP; downscale it first"
            )
        img.load()
        try:
            ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to do
        except (SyntaxError, ValueError, KeyError, TypeError, struct.error) as exc:
            # Broken EXIF is common in edited photos; the pixels are still fine.
            log.warning("ignoring unreadable EXIF orientation in %s: %s", label, exc)
        rgb = _to_rgb(img)
    except PortraitError:
        raise
    except Image.DecompressionBombError as exc:
        raise PortraitError(f"{too_big} ({exc})") from None
    except MemoryError:
        raise PortraitError(f"{too_big}: not enough memory") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise PortraitError(f"{label} is a truncated or corrupt {fmt} file ({exc})") from None
    # The draft scale is the same on both axes, so one ratio (taken before any EXIF
    # rotation swapped them) serves both.
    return rgb, full_w / decoded_w


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency composited over BACKGROUND_RGB."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale PNG: Pillow's convert() clips to 255 instead of rescaling.
        grey = np.asarray(img).astype(np.float32)
        if grey.max() > 255:
            grey /= 257.0
        img = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, BACKGROUND_RGB)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


# --- MediaPipe ------------------------------------------------------------------------


class _Graphs:
    """The two MediaPipe graphs, built once per process: building one takes ~100 ms, and
    neither may run two images at once, so callers hold ``_GRAPHS_LOCK``."""

    def __init__(self) -> None:
        # Imported here so that importing engine.portrait stays cheap (mediapipe pulls in
        # matplotlib and protobuf, about a second).
        from mediapipe.python.solutions import face_detection, face_mesh

        self.detector: Any = face_detection.FaceDetection(
            model_selection=1,  # full-range model: finds faces small in the frame too
            min_detection_confidence=MIN_DETECTION_CONFIDENCE,
        )
        try:
            self.mesh: Any = face_mesh.FaceMesh(
                static_image_mode=True,  # every call is an independent photo: no tracking
                max_num_faces=1,
                refine_landmarks=True,  # adds the 10 iris landmarks: 478 in all
                min_detection_confidence=MIN_DETECTION_CONFIDENCE,
            )
        except BaseException:
            self.detector.close()
            raise


_GRAPHS_LOCK = threading.Lock()
_graphs: _Graphs | None = None


def _get_graphs() -> _Graphs:
    """The shared graphs; the caller must hold ``_GRAPHS_LOCK``."""
    global _graphs
    if _graphs is None:
        _graphs = _Graphs()  # assigned only once both graphs exist
    return _graphs


def _detect_in(image: np.ndarray) -> list[_Face]:
    """Run the detector on one image (lock held); boxes in that image's pixels."""
    h, w = image.shape[:2]
    result = _get_graphs().detector.process(np.ascontiguousarray(image))
    faces = []
    for det in result.detections or []:
        rb = det.location_data.relative_bounding_box
        x0, y0 = rb.xmin * w, rb.ymin * h
        faces.append(_Face(x0, y0, x0 + rb.width * w, y0 + rb.height * h, float(det.score[0])))
    return faces


def _tile_starts(length: int, tile: int) -> list[int]:
    """Tile origins along one axis: half-tile stride, the last tile flush with the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile // 2))
    starts.append(length - tile)
    return starts


def _detect_faces(photo: Image.Image) -> list[_Face]:
    """All faces in ``photo``, boxes in its pixels: whole image first, then finer tiles.

    Tiles are scanned only when the coarser pass found nothing, so a usual portrait costs
    one detector call. Half-tile overlap puts any face under half a tile wholly inside some
    tile; larger faces were already visible at the previous, coarser level.
    """
    scale = min(1.0, MAX_WORKING_SIDE / max(photo.size))
    if scale < 1.0:
        work_size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
        work_img = photo.resize(work_size, Image.Resampling.BOX)  # area average: no aliasing
        scale = max(work_size) / max(photo.size)  # exact ratio after rounding
        work = np.asarray(work_img)
        del work_img
    else:
        work = np.asarray(photo)
    h, w = work.shape[:2]
    with _GRAPHS_LOCK:
        faces = _detect_in(work)
        tile = max(h, w) // 2
        while not faces and tile >= MIN_TILE_PX:
            for ty in _tile_starts(h, tile):
                for tx in _tile_starts(w, tile):
                    tile_faces = _detect_in(work[ty : ty + tile, tx : tx + tile])
                    faces.extend(f.scaled(1.0, tx, ty) for f in tile_faces)
            tile //= 2
    return [f.scaled(1.0 / scale) for f in _merge_duplicates(faces)]


def _merge_duplicates(faces: list[_Face]) -> list[_Face]:
    """Drop boxes that mostly overlap a higher-scoring one: the same face seen in several
    tiles, possibly cut by a tile edge (hence overlap over the smaller box, not IoU)."""
    kept: list[_Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        for other in kept:
            ix = max(0.0, min(face.x1, other.x1) - max(face.x0, other.x0))
            iy = max(0.0, min(face.y1, other.y1) - max(face.y0, other.y0))
            if ix * iy > 0.5 * min(face.area, other.area):
                if face.area > other.area:  # a cut-off copy must not set the face's size
                    other.x0, other.y0, other.x1, other.y1 = face.x0, face.y0, face.x1, face.y1
                break
        else:
            kept.append(face)
    return kept


def _fit_mesh(photo: Image.Image, face: _Face) -> np.ndarray | None:
    """(478, 3) float64 landmarks in ``photo`` pixels for the face in ``face``, or None."""
    side = MESH_CROP_SCALE * max(face.x1 - face.x0, face.y1 - face.y0)
    box = ((face.x0 + face.x1 - side) / 2, (face.y0 + face.y1 - side) / 2, side)
    crop = _crop_square(photo, box, MESH_INPUT_PX, blur_padding=False)
    with _GRAPHS_LOCK:
        result = _get_graphs().mesh.process(crop)
    if not result.multi_face_landmarks:
        return None
    points = result.multi_face_landmarks[0].landmark
    if len(points) != NUM_LANDMARKS:
        raise RuntimeError(f"FaceMesh returned {len(points)} landmarks, expected {NUM_LANDMARKS}")
    # x and y are normalised by the crop's side, z by its width: all three scale by `side`.
    landmarks = np.array([(p.x, p.y, p.z) for p in points], dtype=np.float64) * side
    landmarks[:, 0] += box[0]
    landmarks[:, 1] += box[1]
    return landmarks


# Registration's detector and mesh fit, for callers that track video frames
# (engine.data.track): the same graphs, lock, crops and tiling, one frame at a time.


def detect_faces(image: np.ndarray) -> list[_Face]:
    """Faces in one (H, W, 3) uint8 RGB frame, boxes in its pixels, largest first."""
    faces = _detect_faces(Image.fromarray(image))
    return sorted(faces, key=lambda f: f.area, reverse=True)


def fit_face_mesh(image: np.ndarray, face: _Face) -> np.ndarray | None:
    """(478, 3) float64 landmarks in ``image`` pixels (z scaled like x) for the face in the
    box ``face`` (from `detect_faces`), or None when no mesh fits there."""
    return _fit_mesh(Image.fromarray(image), face)


# --- framing and cropping -------------------------------------------------------------


def _frame(landmarks: np.ndarray) -> tuple[float, float, float]:
    """The output square (x0, y0, side) around the face, in the landmarks' pixels."""
    face_height = float(
        np.linalg.norm(landmarks[LANDMARK_CHIN, :2] - landmarks[LANDMARK_FOREHEAD, :2])
    )
    side = face_height / FACE_HEIGHT_FRACTION
    # The mesh's horizontal extent follows the head's silhouette, so its middle stays on
    # the head when it is turned, where the nose or the midline would drift off-centre.
    center_x = (landmarks[:, 0].min() + landmarks[:, 0].max()) / 2
    eye_y = (landmarks[LANDMARK_IRIS_RIGHT, 1] + landmarks[LANDMARK_IRIS_LEFT, 1]) / 2
    return float(center_x - side / 2), float(eye_y - EYE_LINE_FRACTION * side), side


def _crop_square(
    photo: Image.Image, box: tuple[float, float, float], out_px: int, *, blur_padding: bool
) -> np.ndarray:
    """Resample the square ``box`` = (x0, y0, side) of ``photo`` to (out_px, out_px, 3) uint8.

    Sub-pixel exact (the landmark transform relies on it), anti-aliased when shrinking,
    and only the pixels under the box are read. Parts of the box outside the photo are
    filled by edge replication, blurred when ``blur_padding`` so they read as out-of-focus
    background rather than streaks, never as black bars.
    """
    w, h = photo.size
    bx0, by0, side = box
    k = out_px / side  # output pixels per photo pixel
    # The photo region that can affect the output, with room for the Lanczos kernel
    # (4 taps each side, counted in the pixels it runs on).
    margin = math.ceil(5 / min(k, 1.0))
    rx0 = max(0, math.floor(bx0) - margin)
    ry0 = max(0, math.floor(by0) - margin)
    rx1 = min(w, math.ceil(bx0 + side) + margin)
    ry1 = min(h, math.ceil(by0 + side) + margin)
    if rx1 <= rx0 or ry1 <= ry0:
        raise ValueError(f"crop box {box} does not overlap the {w}x{h} photo")
    region_img = photo.crop((rx0, ry0, rx1, ry1))
    sx = sy = 1.0
    if k < 1.0:
        # Area-average down to about the output scale first: warpAffine alone would alias.
        pw = max(1, round((rx1 - rx0) * k))
        ph = max(1, round((ry1 - ry0) * k))
        region_img = region_img.resize((pw, ph), Image.Resampling.BOX)
        sx, sy = pw / (rx1 - rx0), ph / (ry1 - ry0)
    region = np.asarray(region_img)
    # Region pixel index i sits at photo coordinate (i + 0.5) / s + r0, and output index u
    # at (u + 0.5) / k + b0; solving for u gives this affine map.
    matrix = np.array(
        [
            [k / sx, 0.0, (0.5 / sx + rx0 - bx0) * k - 0.5],
            [0.0, k / sy, (0.5 / sy + ry0 - by0) * k - 0.5],
        ]
    )
    out = cv2.warpAffine(
        region,
        matrix,
        (out_px, out_px),
        flags=cv2.INTER_LANCZOS4,
        borderMode=cv2.BORDER_REPLICATE,
    )
    if blur_padding and (bx0 < 0 or by0 < 0 or bx0 + side > w or by0 + side > h):
        # Where the output shows real photo pixels (1) or padding (0). The region's edges
        # reach the output only where they are the photo's edges (elsewhere the margin puts
        # them outside the box), so an all-ones region is exact.
        coverage = cv2.warpAffine(
            np.ones(region.shape[:2], np.float32),
            matrix,
            (out_px, out_px),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )
        out = _soften_padding(out, coverage)
    return out


def _soften_padding(image: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Blur the padded (coverage < 1) part of ``image``, more the further from the photo.

    Edge replication draws streaks; a blur growing with the distance from the photo melts
    them into an out-of-focus background without a seam where the photo ends. The blurs
    form a geometric ladder of sigmas, and each pixel interpolates between the two rungs
    around its target sigma (half its distance to the photo, capped).
    """
    out_px = image.shape[0]
    outside = (coverage < 0.5).astype(np.uint8)
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, 5)
    max_sigma = PADDING_MAX_BLUR * out_px
    rungs = int(math.ceil(math.log2(max_sigma))) + 1  # sigmas 1, 2, 4, ... >= max_sigma
    target = np.clip(0.5 * distance, 1.0, max_sigma)
    position = np.log2(target)  # fractional rung index
    softened = np.zeros(image.shape, np.float32)
    for rung in range(rungs):
        weight = np.clip(1.0 - np.abs(position - rung), 0.0, 1.0)
        if not weight.any():
            continue
        softened += weight[:, :, None] * _gaussian_blur(image, float(2**rung))
    cover = coverage[:, :, None]
    return (cover * image + (1.0 - cover) * softened).round().clip(0, 255).astype(np.uint8)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; wide ones run on a shrunk copy (a sigma-64 kernel at full size costs
    ~0.2 s at 512 px, the shrunk one ~1 ms, and bilinear upsampling cannot be told apart
    after that much blur)."""
    factor = 1
    while sigma / (2 * factor) >= 4 and min(image.shape[:2]) // (2 * factor) >= 16:
        factor *= 2
    if factor == 1:
        return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)
    h, w = image.shape[:2]
    small = cv2.resize(image, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
