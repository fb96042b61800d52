"""The portrait renderer: motion frames in, RGB frames out, as one fixed-shape nn.Module.

Per frame:
1. the face rig deforms the control points (`engine.face_rig.deform`) and the head pose
   projects them to image pixels (`project`);
2. their displacements are interpolated over a coarse grid (barycentric weights on a
   constrained Delaunay mesh of the rest positions that keeps lip and eye contours,
   precomputed per portrait): the *forward* warp, rest -> posed;
3. the forward warp is inverted on that grid by fixed-point iteration, b(x) = -f(x + b(x)),
   which converges wherever the warp is a smooth bijection (|grad f| < 1); the inverse is
   upsampled to the output, so every output pixel knows where to sample the portrait: one
   `grid_sample` at full resolution;
4. the mouth interior (cavity, upper teeth on the skull, lower teeth and tongue on the jaw)
   is drawn on a small patch in face-frame coordinates, masked by the signed distance to the
   deformed inner-lip contour, and the upper eyelids on another (the skin a blink stretches);
   both are composited over the warped portrait through the head pose's affine map, in a
   window around them. Where the lips part, the warp's tear is covered by the mouth.

Everything is tensor ops (gather, matmul, grid_sample): it exports to ONNX as it is.
The portrait-specific tensors are inputs, not buffers, so one exported engine serves every
avatar; `RENDER_INPUT_NAMES` fixes their order. What does not depend on the motion (the
layers' static shading, the eyelids at rest) is part of them, computed once per portrait.

The module is written for ONNX Runtime's CPU kernels as much as for PyTorch's
(docs/export.md): positions and masks are channel planes, (B, 2, H, W), never trailing axes
of 1 or 2, which ONNX Runtime broadcasts over one innermost row at a time; every
`grid_sample` takes align_corners=False and zero padding, the one combination ONNX Runtime's
GridSample has a fast path for (where the border must repeat, positions are clamped to it);
and the layers are sampled only in their window, not over the whole frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine import face_topology as topo
from engine.blendshapes import BLENDSHAPE_INDEX, NUM_BLENDSHAPES
from engine.face_rig import (
    HINGE,
    JAW_MAX_ANGLE,
    PIVOT,
    FaceRig,
    deform,
    project,
    rotation_matrix,
)  # fmt: skip

log = logging.getLogger(__name__)

# Inputs after `motion`, in order: the face rig's arrays, then the renderer's precompute.
RIG_INPUT_NAMES = (
    "points0", "rest", "basis", "jaw_weight", "close_lower", "close_upper", "head_weight",
    "order_upper", "order_lower", "origin_px", "axes_px",
)  # fmt: skip
WARP_INPUT_NAMES = (
    "image", "points0_px", "tri_index", "tri_bary", "mouth_geometry", "eye_geometry", "palette",
    "mouth_columns", "mouth_upper", "eye_rest", "eye_fades",
)  # fmt: skip
RENDER_INPUT_NAMES = RIG_INPUT_NAMES + WARP_INPUT_NAMES
# Rows of `eye_rest`, per eye-patch column: the upper lids' height at rest, 1 between the eye
# corners, the crease above the lids, the floor below the lower lids, the floor's depth below
# the lower lid, the lids' opening at rest (> 0), and the portrait position (`_sample`'s
# units) of the column's skin at the patch centre's height.
EYE_REST = ("top0", "within", "crease", "floor", "floor_depth", "gap", "grid_x", "grid_y")

# Layer patches, in face-frame units (x0, x1, y0, y1) around their centres: the mouth's around
# the rest seam centre, the eyelids' around the midpoint of the four eye corners.
MOUTH_EXTENT = (-0.8, 0.8, -0.45, 1.15)
EYES_EXTENT = (-0.95, 0.95, -0.4, 0.2)


@dataclass(frozen=True)
class RendererConfig:
    size: int = 256  # output frames are size x size
    inverse_iterations: int = 5

    @property
    def grid(self) -> int:
        """Resolution of the warp grid; the warp is smooth, so a quarter of the output does."""
        return self.size // 4 + 1

    @property
    def patch(self) -> int:
        """Resolution of the mouth patch: about one patch pixel per output pixel."""
        return self.size // 3

    @property
    def eye_rows(self) -> int:
        """Rows of the eyelid patch (its columns are `patch`): the same density as the mouth."""
        x0, x1, y0, y1 = MOUTH_EXTENT
        e0, e1, f0, f1 = EYES_EXTENT
        return round(self.patch * (f1 - f0) / (y1 - y0))


def precompute(rig: FaceRig, image: np.ndarray, config: RendererConfig) -> dict[str, np.ndarray]:
    """Per-portrait arrays of the renderer (everything but the rig's own): the warp's
    barycentric weights, the layers' geometry and colours, and every part of the layers that
    does not depend on the motion (`_static_layers`)."""
    size = config.size
    if image.shape != (size, size, 3):
        raise ValueError(f"image must be ({size}, {size}, 3), got {image.shape}")
    points_px = rig.origin_px + rig.points0[:, :2] @ rig.axes_px
    g = config.grid
    coords = np.linspace(0.0, size - 1.0, g)
    gx, gy = np.meshgrid(coords, coords)
    tri_index, bary = _barycentric(points_px, rig.triangles, np.c_[gx.ravel(), gy.ravel()])

    # Mouth geometry in the face frame: seam centre, half width, depth of the teeth.
    p = rig.points0 + rig.rest
    seam = (p[list(topo.LIP_INNER_UPPER)] + p[list(topo.LIP_INNER_LOWER)]) / 2.0
    half_width = np.linalg.norm(p[topo.MOUTH_CORNER_LEFT, :2] - p[topo.MOUTH_CORNER_RIGHT, :2]) / 2
    seam_c = seam[len(seam) // 2]
    geometry = np.array([seam_c[0], seam_c[1], seam_c[2] + 0.12, half_width], dtype=np.float32)

    # Eyelid geometry: centre of the eye corners, the lids' depth, and the band of lid skin
    # above the lash line that a blink stretches down over the eye.
    eyes_upper = list(topo.RIGHT_EYE_UPPER) + list(topo.LEFT_EYE_UPPER)
    eyes_lower = list(topo.RIGHT_EYE_LOWER) + list(topo.LEFT_EYE_LOWER)
    corners = p[[topo.RIGHT_EYE_UPPER[0], topo.RIGHT_EYE_UPPER[-1],
                 topo.LEFT_EYE_UPPER[0], topo.LEFT_EYE_UPPER[-1]]]  # fmt: skip
    opening = float(np.max(p[eyes_lower, 1] - p[eyes_upper, 1]))
    eye_geometry = np.array(
        [corners[:, 0].mean(), corners[:, 1].mean(), p[eyes_upper, 2].mean(), 1.3 * opening],
        dtype=np.float32,
    )

    # Palette from the portrait's lips: the cavity and tongue take their hue.
    lip_px = rig.origin_px + p[list(topo.LIP_OUTER_LOWER[2:-2]), :2] @ rig.axes_px
    lip_px = np.clip(np.round(lip_px).astype(int), 0, size - 1)
    lip = image[lip_px[:, 1], lip_px[:, 0]].astype(np.float32).mean(0) / 255.0
    palette = np.stack([
        lip * 0.3 + np.array([0.08, 0.01, 0.01]),  # cavity
        np.array([0.93, 0.90, 0.83]),  # teeth
        lip * 0.55 + np.array([0.40, 0.16, 0.16]),  # tongue
    ]).clip(0.0, 1.0).astype(np.float32)  # fmt: skip

    image = _fill_lip_gap(image, points_px[: topo.NUM_LANDMARKS])
    return {
        "image": (image.astype(np.float32) / 255.0).transpose(2, 0, 1).copy(),
        "points0_px": points_px.astype(np.float32),
        # (3, g*g): corner k of every grid point's triangle in row k (the warp is channels first)
        "tri_index": tri_index.T.astype(np.int64).copy(),
        "tri_bary": bary.T.astype(np.float32).copy(),
        "mouth_geometry": geometry,
        "eye_geometry": eye_geometry,
        "palette": palette,
        **_static_layers(rig, geometry, eye_geometry, palette, config),
    }


def _barycentric(points: np.ndarray, triangles: np.ndarray, queries: np.ndarray):
    """(index (Q, 3), weights (Q, 3)) of the triangle holding each query point."""
    from matplotlib.tri import Triangulation

    tri = Triangulation(points[:, 0], points[:, 1], triangles)
    inside = tri.get_trifinder()(queries[:, 0], queries[:, 1])
    if (inside < 0).any():  # on the hull's very edge: nudge towards the centre
        centre = points.mean(0)
        nudged = queries + (centre - queries) * 1e-6
        inside = np.where(inside < 0, tri.get_trifinder()(nudged[:, 0], nudged[:, 1]), inside)
    if (inside < 0).any():
        raise ValueError(f"{int((inside < 0).sum())} warp grid points lie outside the mesh")
    corners = points[triangles[inside]]  # (Q, 3, 2)
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    v0, v1, v2 = b - a, c - a, queries - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    wb = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    wc = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    weights = np.c_[1.0 - wb - wc, wb, wc].clip(0.0, 1.0)
    weights /= weights.sum(1, keepdims=True)
    return triangles[inside], weights


def _fill_lip_gap(image: np.ndarray, landmarks_px: np.ndarray) -> np.ndarray:
    """Paint the photo's visible teeth (inside the inner-lip contour) with lip colours.

    The rig closes the mouth at rest by collapsing that contour; whatever was inside would
    otherwise show as a line between the lips. When the lips part, the mouth layer covers
    this area, so the fill is never seen there."""
    upper = landmarks_px[list(topo.LIP_INNER_UPPER)]
    lower = landmarks_px[list(topo.LIP_INNER_LOWER)]
    out = image.copy()
    h = image.shape[0]
    x_lo, x_hi = int(np.floor(upper[:, 0].min())), int(np.ceil(upper[:, 0].max()))
    order_u, order_l = np.argsort(upper[:, 0]), np.argsort(lower[:, 0])
    for x in range(max(x_lo, 0), min(x_hi + 1, image.shape[1])):
        top = np.interp(x, upper[order_u, 0], upper[order_u, 1]) - 1.0
        bottom = np.interp(x, lower[order_l, 0], lower[order_l, 1]) + 1.0
        y0, y1 = int(np.floor(top)), int(np.ceil(bottom))
        if y1 - y0 < 2 or y0 < 0 or y1 >= h:
            continue
        t = np.linspace(0.0, 1.0, y1 - y0 + 1)[:, None]
        column = (1.0 - t) * image[y0, x].astype(np.float32) + t * image[y1, x].astype(np.float32)
        out[y0 : y1 + 1, x] = column.round().astype(np.uint8)
    return out


def _smoothstep(
    edge0: float | torch.Tensor, edge1: float | torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # torch.lerp exports as two branches and a Where; this is one multiply-add
    return a + w * (b - a)


def contour_at(xq: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """Heights (B, Q) of x-monotone polylines (B, K, 2) at abscissae xq (Q,); 0 outside them.

    The inner-lip contours run from corner to corner, so the mouth opening at a column is
    simply the interval between the upper and the lower contour's heights there."""
    x0, x1 = nodes[:, :-1, 0:1], nodes[:, 1:, 0:1]  # (B, K-1, 1)
    y0, y1 = nodes[:, :-1, 1:2], nodes[:, 1:, 1:2]
    width = x1 - x0
    width = torch.where(width.abs() < 1e-6, torch.full_like(width, 1e-6), width)
    t = (xq.view(1, 1, -1) - x0) / width  # (B, K-1, Q)
    in_segment = ((t >= 0.0) & (t < 1.0)).to(nodes.dtype)
    return (in_segment * (y0 + t * (y1 - y0))).sum(1)


def _sample(texture: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (B, C, H, W) of textures (B, C, h, w) at positions (B, 2, H, W).

    Positions are grid_sample's with align_corners=False (-1 and 1 are the outer edges of
    the border pixels) and outside is 0: ONNX Runtime's GridSample has a fast path for
    exactly that (its general one is about 3x slower). Where the border must repeat,
    callers clamp the positions to the border pixels' centres first."""
    grid = at.permute(0, 2, 3, 1)
    return F.grid_sample(texture, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _sample_shared(texture: torch.Tensor, at: torch.Tensor, height: int, width: int):
    """`_sample` of one texture (C, h, w) for a batch of positions (B, 2, height, width).

    The batch is stacked into rows of one grid rather than the texture copied per frame."""
    grid = at.permute(0, 2, 3, 1).reshape(1, -1, width, 2)
    out = F.grid_sample(
        texture.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (1, C, B * height, width)
    return out.view(texture.shape[0], -1, height, width).transpose(0, 1)


def _border(size: int) -> float:
    """The centre of the last pixel of a row of ``size``, in `_sample`'s units."""
    return (size - 1.0) / size


def _patch_axes(config: RendererConfig) -> dict[str, torch.Tensor]:
    """The layer patches' columns and rows, in face-frame units around their centres."""
    p = config.patch
    x0, x1, y0, y1 = MOUTH_EXTENT
    e0, e1, f0, f1 = EYES_EXTENT
    return {
        "patch_x": torch.linspace(x0, x1, p),
        "patch_y": torch.linspace(y0, y1, p),
        "eye_x": torch.linspace(e0, e1, p),
        "eye_y": torch.linspace(f0, f1, config.eye_rows),
    }


def _contour(name: str) -> torch.Tensor:
    return torch.tensor(getattr(topo, name), dtype=torch.int64)


@torch.no_grad()
def _static_layers(
    rig: FaceRig,
    mouth_geometry: np.ndarray,
    eye_geometry: np.ndarray,
    palette: np.ndarray,
    config: RendererConfig,
) -> dict[str, np.ndarray]:
    """What the mouth and eyelid layers draw the same in every frame (see `precompute`)."""
    axes = _patch_axes(config)
    size, p = config.size, config.patch

    # The mouth: the cavity darkens to the sides; the teeth have gaps and shade to the sides;
    # the upper teeth sit on the skull, so they never move on the patch.
    half_w = torch.from_numpy(mouth_geometry)[3]
    cavity, teeth = torch.from_numpy(palette)[0].view(3, 1), torch.from_numpy(palette)[1]
    x = axes["patch_x"].view(1, p)  # columns
    y = axes["patch_y"].view(p, 1)  # rows
    depth = 0.75 + 0.25 * (x / half_w).abs().clamp(max=1.0)
    gaps = 0.86 + 0.14 * _smoothstep(0.0, 0.35, torch.sin(x * (torch.pi / 0.085)).abs())
    side_shade = 1.0 - 0.55 * (x / (0.95 * half_w)).clamp(-1.0, 1.0) ** 2
    lower_teeth = teeth.view(3, 1) * (0.85 * gaps * side_shade)
    upper_edge = 0.06 - 0.32 * x * x
    upper_mask = (
        _smoothstep(upper_edge + 0.01, upper_edge - 0.01, y)
        * _smoothstep(upper_edge - 0.17, upper_edge - 0.15, y)
        * _smoothstep(0.9 * half_w, 0.8 * half_w, x.abs())
    )  # (P, P)
    upper_teeth = teeth.view(3, 1, 1) * (gaps * side_shade) * upper_mask

    # The eyelids at rest: their heights, where the eyes are, the band of lid skin a blink
    # stretches, and where each patch column's skin lies in the portrait.
    cx, cy, band = (torch.from_numpy(eye_geometry)[i] for i in (0, 1, 3))
    ex = axes["eye_x"]
    ey = axes["eye_y"].view(-1, 1)
    rest = torch.from_numpy(rig.points0 + rig.rest)[:, :2].unsqueeze(0) - torch.stack([cx, cy])

    def lids(side_contours: tuple[str, str]) -> torch.Tensor:  # (P,): both eyes' heights
        return sum(contour_at(ex, rest[:, _contour(c)])[0] for c in side_contours)

    def inside_eye(contour: str) -> torch.Tensor:  # 1 between the eye's corners, soft ends
        xs = rest[0, _contour(contour), 0]
        lo, hi = torch.minimum(xs[0], xs[-1]), torch.maximum(xs[0], xs[-1])
        return _smoothstep(0.0, 0.04, ex - lo) * _smoothstep(0.0, 0.04, hi - ex)

    top0 = lids(("RIGHT_EYE_UPPER", "LEFT_EYE_UPPER"))
    bottom0 = lids(("RIGHT_EYE_LOWER", "LEFT_EYE_LOWER"))
    within = inside_eye("RIGHT_EYE_UPPER") + inside_eye("LEFT_EYE_UPPER")
    crease = top0 - band
    floor = bottom0 + 0.5 * band
    fades = torch.stack([
        _smoothstep(0.0, 0.5, (ey - crease) / band),
        _smoothstep(0.0, 0.5, (floor - ey) / (floor - bottom0)),
    ])  # fmt: skip
    # The portrait pixel of (x, src_y) is origin + (x + cx) * axes[0] + (src_y + cy) * axes[1]:
    # its src_y = 0 part, in `_sample`'s units.
    origin, axes_px = torch.from_numpy(rig.origin_px), torch.from_numpy(rig.axes_px)
    pixel0 = origin.view(2, 1) + (ex + cx) * axes_px[0].view(2, 1) + cy * axes_px[1].view(2, 1)
    grid0 = pixel0 * (2.0 / size) + (1.0 / size - 1.0)
    eye_rest = torch.cat([
        torch.stack([top0, within, crease, floor, floor - bottom0,
                     (bottom0 - top0).clamp(min=1e-3)]),
        grid0,
    ])  # fmt: skip
    return {
        "mouth_columns": torch.cat([cavity * depth, lower_teeth]).numpy(),
        "mouth_upper": torch.cat([upper_teeth, 1.0 - upper_mask[None]]).numpy(),
        "eye_rest": eye_rest.numpy(),
        "eye_fades": fades.numpy(),
    }


# The layers' window moves with the head from frame to frame: cropping to it and padding back
# take its box from a tensor. Slicing and F.pad take Python ints, which the ONNX tracer would
# freeze into the graph, so these two export as ONNX Slice and Pad with tensor inputs.


class _Crop(torch.autograd.Function):
    """``x[:, :, y0:y1, x0:x1]`` of (B, C, H, W) for a box (x0, y0, x1, y1), int64 (4,)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        x0, y0, x1, y1 = box.tolist()
        return x[:, :, y0:y1, x0:x1]

    @staticmethod
    def symbolic(g, x, box):
        def pick(*i: int):
            return g.op("Gather", box, g.op("Constant", value_t=torch.tensor(i)))

        axes = g.op("Constant", value_t=torch.tensor([2, 3]))
        return g.op("Slice", x, pick(1, 0), pick(3, 2), axes)


class _Pad(torch.autograd.Function):
    """Zero padding of (B, C, h, w) by amounts in ONNX's order: int64 (8,), the beginnings of
    the 4 axes, then their ends."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pads: torch.Tensor) -> torch.Tensor:
        p = pads.tolist()
        return F.pad(x, (p[3], p[7], p[2], p[6]))

    @staticmethod
    def symbolic(g, x, pads):
        return g.op("Pad", x, pads, mode_s="constant")


class Renderer(nn.Module):
    """Renders (B, 58) motion frames of one portrait to (B, 3, size, size) RGB in [0, 1]."""

    def __init__(self, config: RendererConfig | None = None):
        super().__init__()
        self.config = config or RendererConfig()
        size, g, p, r = self.config.size, self.config.grid, self.config.patch, self.config.eye_rows
        # The inverse warp's positions: on the grid it runs at, and scaled for the output's.
        lin = torch.linspace(-1.0, 1.0, g)
        grid = torch.stack(torch.meshgrid(lin, lin, indexing="xy")).unsqueeze(0)  # (1, 2, g, g)
        self.register_buffer("warp_at", grid * _border(g))
        self.register_buffer("frame_at", grid * _border(size))
        # Layer patch units ([-1, 1] across a patch) to `_sample` positions in the atlas: the
        # mouth's P rows on top of the eyes' R rows, both P columns wide.
        rows = p + r
        atlas_scale = [(p - 1) / p, (p - 1) / rows, (p - 1) / p, (r - 1) / rows]
        atlas_offset = [0.0, p / rows - 1.0, 0.0, (2 * p + r) / rows - 1.0]
        self.register_buffer("atlas_scale", torch.tensor(atlas_scale).view(4, 1, 1))
        self.register_buffer("atlas_offset", torch.tensor(atlas_offset).view(4, 1, 1))
        corners = [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]
        self.register_buffer("unit_corners", torch.tensor(corners))  # of a patch, its units
        for name, axis in _patch_axes(self.config).items():
            self.register_buffer(name, axis)
        self.register_buffer("lip_upper", _contour("LIP_INNER_UPPER"))
        self.register_buffer("lip_lower", _contour("LIP_INNER_LOWER"))
        self.register_buffer("right_upper", _contour("RIGHT_EYE_UPPER"))
        self.register_buffer("left_upper", _contour("LEFT_EYE_UPPER"))

    def forward(self, motion: torch.Tensor, *avatar: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(RENDER_INPUT_NAMES, avatar, strict=True))
        weights, pose = motion[:, :NUM_BLENDSHAPES], motion[:, NUM_BLENDSHAPES:]
        rot = rotation_matrix(pose[:, 0], pose[:, 1], pose[:, 2])
        points = deform(weights, inputs)  # (B, N, 3) face frame
        posed_px = project(points, pose, inputs, rot)  # (B, N, 2) image pixels
        face = self._warp_portrait(posed_px - inputs["points0_px"], inputs)
        iod_px = inputs["axes_px"][0].norm()
        mouth = self._mouth(weights, points, iod_px, inputs)
        lids = self._eyelids(points, iod_px, inputs)
        layer, box = self._layers_in_window(torch.cat([mouth, lids], 2), pose, rot, inputs)
        # Composite in the layers' window; the rest of the frame is the warped portrait.
        change = layer[:, :3] - layer[:, 3:4] * _Crop.apply(face, box)
        size, zero = self.config.size, torch.zeros_like(box[0])
        pads = torch.stack([zero, zero, box[1], box[0], zero, zero, size - box[3], size - box[2]])
        return (face + _Pad.apply(change, pads)).contiguous()

    # ---- the warp ------------------------------------------------------------------------

    def _warp_portrait(self, disp_px: torch.Tensor, inputs: dict[str, torch.Tensor]):
        """The portrait warped by the control points' displacements (B, N, 2), in pixels.

        Positions are channels first, (B, 2, H, W), and in `_sample`'s units: a grid of
        n points spans [-b, b] with b = `_border`(n), so the same point of the picture has
        different coordinates on the warp grid and on the output; the field is kept in the
        warp grid's units, negated (the inverse's first guess), and scaled once at the end."""
        size, g = self.config.size, self.config.grid
        b_warp, b_frame = _border(g), _border(size)
        disp = disp_px.transpose(1, 2) * (-b_warp * 2.0 / (size - 1))  # (B, 2, N)
        # (gather, not indexing: ONNX Runtime's GatherElements is 3x faster here than Gather)
        index = inputs["tri_index"].view(1, 1, -1).expand(disp.shape[0], 2, -1)
        corners = torch.gather(disp, 2, index).unflatten(2, (3, g * g))  # (B, 2, 3, g*g)
        field = (corners * inputs["tri_bary"]).sum(2).unflatten(2, (g, g))  # -f on the grid

        # Invert: the output pixel x shows the rest point s with s + f(s) = x.
        backward = field
        for _ in range(self.config.inverse_iterations):
            at = (self.warp_at + backward).clamp(-b_warp, b_warp)  # the border repeats
            backward = _sample(field, at)
        at = self.frame_at + backward * (b_frame / b_warp)
        at = F.interpolate(at, size=(size, size), mode="bilinear", align_corners=True)
        return _sample_shared(inputs["image"], at.clamp(-b_frame, b_frame), size, size)

    # ---- the mouth -------------------------------------------------------------------------

    def _mouth(self, weights, points, iod_px, inputs):
        """Premultiplied RGB and alpha (B, 4, P, P) of the mouth interior, on its patch.

        Drawn on a patch in face-frame units around the rest seam centre: x across the
        mouth, y down; patch rows are y, columns x, so most terms are 1-D and broadcast.
        What does not move (the cavity's shading, the upper teeth) comes with the avatar."""
        geometry = inputs["mouth_geometry"]
        seam_x, seam_y, teeth_z, half_w = geometry[0], geometry[1], geometry[2], geometry[3]
        b, p = weights.shape[0], self.config.patch
        x = self.patch_x.view(1, 1, p)  # columns
        y = self.patch_y.view(1, p, 1)  # rows

        # The jaw carries the lower teeth and tongue: where did the lower incisors go?
        angle = weights[:, BLENDSHAPE_INDEX["jawOpen"]] * JAW_MAX_ANGLE
        dy0, dz0 = seam_y - HINGE[1], teeth_z - HINGE[2]
        jaw_dy = (torch.cos(angle) * dy0 - torch.sin(angle) * dz0 - dy0).view(b, 1, 1)
        jaw_dx = 0.12 * (
            weights[:, BLENDSHAPE_INDEX["jawLeft"]] - weights[:, BLENDSHAPE_INDEX["jawRight"]]
        ).view(b, 1, 1)
        tongue_out = weights[:, BLENDSHAPE_INDEX["tongueOut"]].view(b, 1, 1)
        xj, yj = x - jaw_dx, y - jaw_dy  # (B, 1, P), (B, P, 1)

        # Where the lips part: between the deformed inner-lip contours, column by column.
        centre = torch.stack([seam_x, seam_y])
        top = contour_at(self.patch_x, points[:, self.lip_upper, :2] - centre).unsqueeze(1)
        bottom = contour_at(self.patch_x, points[:, self.lip_lower, :2] - centre).unsqueeze(1)
        depth_in = torch.minimum(y - top, bottom - y)  # (B, P, P), > 0 inside, face units
        alpha = (depth_in * iod_px).clamp(0.0, 1.0)  # a closed mouth leaves no line
        occlusion = 0.55 + 0.45 * _smoothstep(0.0, 0.06, depth_in)

        tongue_mask = _smoothstep(
            1.0, 0.8,
            (xj / (0.62 * half_w)) ** 2
            + ((yj - 0.17 + 0.14 * tongue_out) / (0.09 + 0.07 * tongue_out)) ** 2,
        )  # fmt: skip
        tongue_shade = 0.8 + 0.2 * _smoothstep(0.25, 0.05, yj)
        lower_edge = -0.03 + 0.3 * xj * xj
        lower_mask = (
            _smoothstep(lower_edge - 0.01, lower_edge + 0.01, yj)
            * _smoothstep(lower_edge + 0.13, lower_edge + 0.11, yj)
            * _smoothstep(0.8 * half_w, 0.7 * half_w, xj.abs())
            * (1.0 - tongue_mask * tongue_out)
        )

        # Colours, channels first: the cavity, the tongue over it, the lower teeth over that,
        # the upper teeth (premultiplied, with what they let through) over everything.
        columns = inputs["mouth_columns"].unsqueeze(1)  # (6, 1, P)
        cavity, lower_teeth = columns[:3], columns[3:]
        upper = inputs["mouth_upper"]  # (4, P, P)
        tongue = inputs["palette"][2].view(3, 1, 1) * tongue_shade.unsqueeze(1)  # (B, 3, P, 1)
        colour = _lerp(cavity, tongue, tongue_mask.unsqueeze(1))
        colour = _lerp(colour, lower_teeth, lower_mask.unsqueeze(1))
        colour = colour * upper[3:] + upper[:3]
        alpha = alpha.unsqueeze(1)
        return torch.cat([colour * (occlusion.unsqueeze(1) * alpha), alpha], 1)

    # ---- the eyelids -----------------------------------------------------------------------

    def _eyelids(self, points, iod_px, inputs):
        """Premultiplied RGB and alpha (B, 4, rows, P) of the upper lids, on the eye patch.

        A lid that comes down stretches the band of skin above its lash line down to the
        lid's new edge. The warp alone cannot show that on a blink: it squeezes the whole
        eye opening into a line, and its inverse smears the iris over the lid; this layer
        draws the stretched skin with a crisp lash line instead. At rest it is transparent.
        The lids at rest (`EYE_REST`) and the fades of the stretched bands come with the
        avatar."""
        eyes = inputs["eye_geometry"]
        cx, cy, band = eyes[0], eyes[1], eyes[3]
        rest = dict(zip(EYE_REST, inputs["eye_rest"].unsqueeze(1), strict=True))  # each (1, P)
        fade_upper, fade_lower = inputs["eye_fades"]  # (rows, P) each
        top0, crease, floor = rest["top0"], rest["crease"], rest["floor"]
        y = self.eye_y.view(1, -1, 1)  # rows

        moved = points[..., :2] - torch.stack([cx, cy])
        top = (
            contour_at(self.eye_x, moved[:, self.right_upper])
            + contour_at(self.eye_x, moved[:, self.left_upper])
        ).unsqueeze(1)  # (B, 1, P): each lid's height at every column, 0 beyond the corners
        descent = (top - top0).clamp(min=0.0)  # how far each lid came down
        edge = ((top - y) * iod_px + 0.5).clamp(0.0, 1.0)  # 1 above the lash line, 1 px soft

        # Above the lash line: the band [crease, top0] of lid skin, stretched to [crease, top].
        src_upper = crease + (y - crease) * band / (band + descent)
        alpha_upper = edge * fade_upper * _smoothstep(0.004, 0.03, descent)
        # Below it, once the eye is nearly shut: the lower lid's skin, squeezed up to meet the
        # upper lid (the warp would smear the squeezed iris there).
        closure = descent / rest["gap"]
        src_lower = floor - (floor - y) * rest["floor_depth"] / (floor - top).clamp(min=1e-3)
        alpha_lower = (1.0 - edge) * fade_lower * _smoothstep(0.55, 0.9, closure)
        src_y = torch.where(y < top, src_upper, src_lower)
        alpha = ((alpha_upper + alpha_lower) * rest["within"]).unsqueeze(1)

        # The skin at face point (x, src_y): its portrait position is affine in src_y.
        size, rows, p = self.config.size, self.config.eye_rows, self.config.patch
        step = inputs["axes_px"][1] * (2.0 / size)
        at = torch.stack([rest["grid_x"] + src_y * step[0], rest["grid_y"] + src_y * step[1]], 1)
        skin = _sample_shared(inputs["image"], at.clamp(-_border(size), _border(size)), rows, p)
        return torch.cat([skin * alpha, alpha], 1)

    # ---- the layers in output pixels ------------------------------------------------------

    def _layers_in_window(self, atlas, pose, rot, inputs):
        """Both layer patches, stacked into one atlas, sampled where they can cover the frame:
        premultiplied RGB and alpha (B, 4, h, w) in a window, and the window's box
        (x0, y0, x1, y1), int64 (4,).

        Each output pixel takes its coordinates in the patch it falls in (the mouth's and the
        eyes' never overlap), mapped to that patch's rows of the atlas; pixels in neither
        sample outside it (0). Only a window of the frame is sampled: the box around both
        patches' corners (the union over the batch), a small part of the frame; the layer is 0
        elsewhere. Coordinates are planes (B, 4, h, w), not (..., 2) tensors: per-pixel
        arithmetic on a trailing axis of 2 is slow in ONNX Runtime."""
        mouth, eyes = inputs["mouth_geometry"], inputs["eye_geometry"]
        to_patch = torch.cat([
            self._pixels_to_patch(pose, rot, mouth[0], mouth[1], mouth[2], MOUTH_EXTENT, inputs),
            self._pixels_to_patch(pose, rot, eyes[0], eyes[1], eyes[2], EYES_EXTENT, inputs),
        ], 1)  # fmt: skip  # (B, 4, 3): mouth x, y, eyes x, y from output pixels (x, y, 1)

        start, end = self._window(to_patch)
        # (integer ranges: TensorRT takes a floating-point Range only between constants)
        xs = torch.arange(start[0], end[0]).to(pose.dtype).view(1, 1, 1, -1)
        ys = torch.arange(start[1], end[1]).to(pose.dtype).view(1, 1, -1, 1)

        coeff = to_patch.unsqueeze(-1).unsqueeze(-1)  # (B, 4, 3, 1, 1)
        unit = coeff[:, :, 0] * xs + coeff[:, :, 2] + coeff[:, :, 1] * ys  # (B, 4, h, w)
        covers = unit.abs().unflatten(1, (2, 2)).amax(2) <= 1.0  # (B, 2, h, w): mouth, eyes
        at = unit * self.atlas_scale + self.atlas_offset
        at = torch.where(covers[:, 1:], at[:, 2:], torch.where(covers[:, :1], at[:, :2], -2.0))
        return _sample(atlas, at), torch.cat([start, end])

    def _window(self, to_patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The box of output pixels that either patch can cover in any frame of the batch: its
        first pixel (x, y) and one past its last, int64. From the patches' corners in output
        pixels (each patch's map inverted), with a pixel of margin for rounding, in the frame."""
        size = self.config.size
        linear = to_patch[..., :2].unflatten(1, (2, 2))  # (B, 2, 2, 2)
        shift = to_patch[..., 2].unflatten(1, (2, 2)).unsqueeze(2)  # (B, 2, 1, 2)
        corners = (self.unit_corners - shift) @ _inverse_2x2(linear).transpose(-1, -2)
        start = (corners.amin((0, 1, 2)).floor() - 1.0).clamp(0.0, size - 1.0)
        end = torch.maximum(corners.amax((0, 1, 2)).ceil() + 2.0, start + 1.0).clamp(max=size)
        return start.to(torch.int64), end.to(torch.int64)

    def _pixels_to_patch(self, pose, rot, centre_x, centre_y, plane_z, extent, inputs):
        """(B, 2, 3): an output pixel (x, y, 1) to its patch coordinates, [-1, 1] across it.

        A face point (x, y, plane_z) lands at pixel = origin + (A @ [x, y] + c) @ axes_px,
        where A and c come from the head pose (mouth points have head weight 1, as in
        `project`); its inverse is one affine map per frame."""
        scale = (1.0 + pose[:, 5]).clamp(0.5, 2.0)
        pivot = torch.tensor(PIVOT, dtype=pose.dtype, device=pose.device)
        a = rot[:, :2, :2] * scale[:, None, None]
        c = (
            scale[:, None] * (rot[:, :2, :2] @ (-pivot[:2]).unsqueeze(-1)).squeeze(-1)
            + scale[:, None] * rot[:, :2, 2] * (plane_z - pivot[2])
            + pivot[:2]
            + pose[:, 3:5]
        )
        # Row vectors: xy = ((pixel - origin) @ axes^-1 - c) @ A^-T, then to patch [-1, 1].
        x0, x1, y0, y1 = extent
        to_unit = torch.tensor([2.0 / (x1 - x0), 2.0 / (y1 - y0)], dtype=pose.dtype)
        offset = torch.stack([-centre_x - x0, -centre_y - y0]) * to_unit - 1.0
        a_inv_t = _inverse_2x2(a).transpose(1, 2)
        m = _inverse_2x2(inputs["axes_px"]) @ a_inv_t * to_unit  # (B, 2, 2)
        t = (
            -(inputs["origin_px"].view(1, 1, 2) @ m) - (c.unsqueeze(1) @ a_inv_t) * to_unit
        ) + offset  # (B, 1, 2)
        return torch.cat([m, t], 1).transpose(1, 2)


def _inverse_2x2(m: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of (..., 2, 2) matrices (ONNX has no general inverse op)."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    return (
        torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[..., None, None]
    )


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8."""
    return (frames.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
