"""The portrait renderer: motion frames in, RGB frames out, as one fixed-shape nn.Module.

Per frame:
1. the face rig deforms the control points (`engine.face_rig.deform`) and the head pose
   projects them to image pixels (`project`);
2. their displacements are interpolated over a coarse grid (barycentric weights on a
   constrained Delaunay mesh of the rest positions that keeps lip and eye contours,
   precomputed per portrait): the *forward* warp, rest -> posed;
3. the forward warp is inverted by fixed-point iteration, b(x) = -f(x + b(x)), which
   converges wherever the warp is a smooth bijection (|grad f| < 1), so every output pixel
   knows where to sample the portrait: one `grid_sample` at full resolution;
4. the mouth interior (cavity, upper teeth on the skull, lower teeth and tongue on the jaw)
   is drawn on a small patch in face-frame coordinates, masked by the signed distance to the
   deformed inner-lip contour, and composited over the warped portrait through the head
   pose's affine map. Where the lips part, the warp's tear is covered by the mouth.

Everything is tensor ops (gather, matmul, grid_sample): it exports to ONNX as it is.
The portrait-specific tensors are inputs, not buffers, so one exported engine serves every
avatar; `RENDER_INPUT_NAMES` fixes their order.
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
)  # fmt: skip
RENDER_INPUT_NAMES = RIG_INPUT_NAMES + WARP_INPUT_NAMES

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
    """Per-portrait arrays of the renderer (everything but the rig's own)."""
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
        "tri_index": tri_index.astype(np.int64),
        "tri_bary": bary.astype(np.float32),
        "mouth_geometry": geometry,
        "eye_geometry": eye_geometry,
        "palette": palette,
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


def _smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


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


class Renderer(nn.Module):
    """Renders (B, 58) motion frames of one portrait to (B, 3, size, size) RGB in [0, 1]."""

    def __init__(self, config: RendererConfig | None = None):
        super().__init__()
        self.config = config or RendererConfig()
        size, g, p = self.config.size, self.config.grid, self.config.patch
        lin = torch.linspace(-1.0, 1.0, size)
        self.register_buffer("out_grid", torch.stack(torch.meshgrid(lin, lin, indexing="xy"), -1))
        glin = torch.linspace(-1.0, 1.0, g)
        self.register_buffer(
            "warp_grid", torch.stack(torch.meshgrid(glin, glin, indexing="xy"), -1)
        )
        px = torch.arange(size, dtype=torch.float32)
        self.register_buffer("out_px", torch.stack(torch.meshgrid(px, px, indexing="xy"), -1))
        x0, x1, y0, y1 = MOUTH_EXTENT
        self.register_buffer("patch_x", torch.linspace(x0, x1, p))
        self.register_buffer("patch_y", torch.linspace(y0, y1, p))
        x0, x1, y0, y1 = EYES_EXTENT
        self.register_buffer("eye_x", torch.linspace(x0, x1, p))
        self.register_buffer("eye_y", torch.linspace(y0, y1, self.config.eye_rows))
        self.register_buffer("lip_upper", torch.tensor(topo.LIP_INNER_UPPER, dtype=torch.int64))
        self.register_buffer("lip_lower", torch.tensor(topo.LIP_INNER_LOWER, dtype=torch.int64))
        for side in ("RIGHT", "LEFT"):
            for lid in ("UPPER", "LOWER"):
                contour = getattr(topo, f"{side}_EYE_{lid}")
                self.register_buffer(
                    f"{side.lower()}_{lid.lower()}", torch.tensor(contour, dtype=torch.int64)
                )

    def forward(self, motion: torch.Tensor, *avatar: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(RENDER_INPUT_NAMES, avatar, strict=True))
        weights, pose = motion[:, :NUM_BLENDSHAPES], motion[:, NUM_BLENDSHAPES:]
        points = deform(weights, inputs)  # (B, N, 3) face frame
        posed_px = project(points, pose, inputs)  # (B, N, 2) image pixels
        face = self._warp_portrait(posed_px - inputs["points0_px"], inputs)
        mouth = self._mouth(weights, points, inputs)
        lids = self._eyelids(points, inputs)
        layer = self._layers_to_pixels(mouth, lids, pose, inputs)
        return face * (1.0 - layer[:, 3:4]) + layer[:, :3]

    # ---- the warp ------------------------------------------------------------------------

    def _warp_portrait(self, disp_px: torch.Tensor, inputs: dict[str, torch.Tensor]):
        size, g = self.config.size, self.config.grid
        b = disp_px.shape[0]
        disp = disp_px * (2.0 / (size - 1))  # to grid_sample's normalised units
        index = inputs["tri_index"].reshape(-1)
        corners = disp.index_select(1, index).view(b, g * g, 3, 2)
        forward = (corners * inputs["tri_bary"].unsqueeze(-1)).sum(2)  # (B, g*g, 2)
        forward = forward.view(b, g, g, 2).permute(0, 3, 1, 2)  # (B, 2, g, g)

        # Invert: the output pixel x shows the rest point s with s + f(s) = x.
        backward = -forward
        base = self.warp_grid.unsqueeze(0)
        for _ in range(self.config.inverse_iterations):
            at = base + backward.permute(0, 2, 3, 1)
            backward = -F.grid_sample(forward, at, align_corners=True, padding_mode="border")
        full = F.interpolate(backward, size=(size, size), mode="bilinear", align_corners=True)
        sample_at = self.out_grid.unsqueeze(0) + full.permute(0, 2, 3, 1)
        image = inputs["image"].unsqueeze(0).expand(b, -1, -1, -1)
        return F.grid_sample(image, sample_at, align_corners=True, padding_mode="border")

    # ---- the mouth -------------------------------------------------------------------------

    def _mouth(self, weights, points, inputs):
        """Premultiplied RGB and alpha (B, 4, P, P) of the mouth interior, on its patch.

        Drawn on a patch in face-frame units around the rest seam centre: x across the
        mouth, y down; patch rows are y, columns x, so most terms are 1-D and broadcast."""
        geometry, palette = inputs["mouth_geometry"], inputs["palette"]
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
        iod_px = inputs["axes_px"][0].norm()
        alpha = (depth_in * iod_px).clamp(0.0, 1.0)  # a closed mouth leaves no line
        occlusion = 0.55 + 0.45 * _smoothstep(0.0, 0.06, depth_in)

        cavity, teeth, tongue = palette[0], palette[1], palette[2]
        depth = 0.75 + 0.25 * (x / half_w).abs().clamp(max=1.0)
        colour = cavity * depth.unsqueeze(-1)  # (1, 1, P, 3)

        tongue_mask = _smoothstep(
            1.0, 0.8,
            (xj / (0.62 * half_w)) ** 2
            + ((yj - 0.17 + 0.14 * tongue_out) / (0.09 + 0.07 * tongue_out)) ** 2,
        )  # fmt: skip
        tongue_shade = 0.8 + 0.2 * _smoothstep(0.25, 0.05, yj)
        colour = torch.lerp(colour, tongue * tongue_shade.unsqueeze(-1), tongue_mask.unsqueeze(-1))

        gaps = 0.86 + 0.14 * _smoothstep(0.0, 0.35, torch.sin(x * (torch.pi / 0.085)).abs())
        side_shade = 1.0 - 0.55 * (x / (0.95 * half_w)).clamp(-1.0, 1.0) ** 2
        lower_edge = -0.03 + 0.3 * xj * xj
        lower_mask = (
            _smoothstep(lower_edge - 0.01, lower_edge + 0.01, yj)
            * _smoothstep(lower_edge + 0.13, lower_edge + 0.11, yj)
            * _smoothstep(0.8 * half_w, 0.7 * half_w, xj.abs())
            * (1.0 - tongue_mask * tongue_out)
        )
        colour = torch.lerp(
            colour, teeth * (0.85 * gaps * side_shade).unsqueeze(-1), lower_mask.unsqueeze(-1)
        )
        upper_edge = 0.06 - 0.32 * x * x
        upper_mask = (
            _smoothstep(upper_edge + 0.01, upper_edge - 0.01, y)
            * _smoothstep(upper_edge - 0.17, upper_edge - 0.15, y)
            * _smoothstep(0.9 * half_w, 0.8 * half_w, x.abs())
        )
        colour = torch.lerp(
            colour, teeth * (gaps * side_shade).unsqueeze(-1), upper_mask.unsqueeze(-1)
        )
        colour = colour * (occlusion * alpha).unsqueeze(-1)
        return torch.cat([colour, alpha.unsqueeze(-1)], -1).permute(0, 3, 1, 2)

    # ---- the eyelids -----------------------------------------------------------------------

    def _eyelids(self, points, inputs):
        """Premultiplied RGB and alpha (B, 4, rows, P) of the upper lids, on the eye patch.

        A lid that comes down stretches the band of skin above its lash line down to the
        lid's new edge. The warp alone cannot show that on a blink: it squeezes the whole
        eye opening into a line, and its inverse smears the iris over the lid; this layer
        draws the stretched skin with a crisp lash line instead. At rest it is transparent."""
        cx, cy, band = (
            inputs["eye_geometry"][0],
            inputs["eye_geometry"][1],
            inputs["eye_geometry"][3],
        )
        x = self.eye_x.view(1, 1, -1)  # columns
        y = self.eye_y.view(1, -1, 1)  # rows
        centre = torch.stack([cx, cy])
        rest = (inputs["points0"] + inputs["rest"])[:, :2].unsqueeze(0) - centre

        def lid(pts, contour):  # height of a lid at every column, 0 beyond the eye corners
            return contour_at(self.eye_x, pts[:, contour]).unsqueeze(1)  # (B, 1, P)

        def inside_eye(pts, contour):  # 1 between the eye's corners, soft at the ends
            xs = pts[:, contour, 0]
            lo = torch.minimum(xs[:, :1], xs[:, -1:]).unsqueeze(-1)
            hi = torch.maximum(xs[:, :1], xs[:, -1:]).unsqueeze(-1)
            return _smoothstep(0.0, 0.04, x - lo) * _smoothstep(0.0, 0.04, hi - x)

        moved = points[..., :2] - centre
        top = lid(moved, self.right_upper) + lid(moved, self.left_upper)
        top0 = lid(rest, self.right_upper) + lid(rest, self.left_upper)
        within = inside_eye(rest, self.right_upper) + inside_eye(rest, self.left_upper)

        descent = (top - top0).clamp(min=0.0)  # (B, 1, P): how far each lid came down
        iod_px = inputs["axes_px"][0].norm()
        edge = ((top - y) * iod_px + 0.5).clamp(0.0, 1.0)  # 1 above the lash line, 1 px soft

        # Above the lash line: the band [crease, top0] of lid skin, stretched to [crease, top].
        crease = top0 - band
        src_upper = crease + (y - crease) * band / (band + descent)
        alpha_upper = (
            edge * _smoothstep(0.0, 0.5, (y - crease) / band) * _smoothstep(0.004, 0.03, descent)
        )
        # Below it, once the eye is nearly shut: the lower lid's skin, squeezed up to meet the
        # upper lid (the warp would smear the squeezed iris there).
        bottom0 = lid(rest, self.right_lower) + lid(rest, self.left_lower)
        closure = descent / (bottom0 - top0).clamp(min=1e-3)
        floor = bottom0 + 0.5 * band
        src_lower = floor - (floor - y) * (floor - bottom0) / (floor - top).clamp(min=1e-3)
        alpha_lower = (
            (1.0 - edge)
            * _smoothstep(0.0, 0.5, (floor - y) / (floor - bottom0))
            * _smoothstep(0.55, 0.9, closure)
        )
        src_y = torch.where(y < top, src_upper, src_lower)
        alpha = (alpha_upper + alpha_lower) * within

        src = torch.stack([x.expand_as(src_y), src_y], -1) + centre  # (B, rows, P, 2) face
        pixel = inputs["origin_px"] + src @ inputs["axes_px"]
        size = self.config.size
        image = inputs["image"].unsqueeze(0).expand(points.shape[0], -1, -1, -1)
        skin = F.grid_sample(
            image, pixel * (2.0 / (size - 1)) - 1.0, align_corners=True, padding_mode="border"
        )
        return torch.cat([skin * alpha.unsqueeze(1), alpha.unsqueeze(1)], 1)

    # ---- layers to output pixels ---------------------------------------------------------

    def _layers_to_pixels(self, mouth, lids, pose, inputs):
        """Both layer patches, stacked into one atlas, sampled at every output pixel at once.

        One full-resolution grid_sample instead of one per layer: each output pixel takes
        its coordinates in the patch it falls in (the mouth's and the eyes' never overlap),
        mapped to that patch's rows of the atlas; pixels in neither sample outside it (0)."""
        geometry, eyes = inputs["mouth_geometry"], inputs["eye_geometry"]
        at_mouth = self._pixels_to_patch(pose, geometry[0], geometry[1], geometry[2],
                                         MOUTH_EXTENT, inputs)  # fmt: skip
        at_eyes = self._pixels_to_patch(pose, eyes[0], eyes[1], eyes[2], EYES_EXTENT, inputs)
        atlas = torch.cat([mouth, lids], 2)
        rows_m, rows = mouth.shape[2], atlas.shape[2]

        def to_atlas(at, first_row, num_rows):
            row = first_row + (at[..., 1:] + 1.0) * (0.5 * (num_rows - 1))
            return torch.cat([at[..., :1], row * (2.0 / (rows - 1)) - 1.0], -1)

        def covers(at):
            return (at.abs() <= 1.0).all(-1, keepdim=True)

        outside = torch.full_like(at_mouth, -2.0)
        sample_at = torch.where(
            covers(at_eyes),
            to_atlas(at_eyes, rows_m, lids.shape[2]),
            torch.where(covers(at_mouth), to_atlas(at_mouth, 0, rows_m), outside),
        )
        return F.grid_sample(atlas, sample_at, align_corners=True, padding_mode="zeros")

    def _pixels_to_patch(self, pose, centre_x, centre_y, plane_z, extent, inputs):
        """grid_sample coordinates (B, H, W, 2) into a layer patch for every output pixel.

        A face point (x, y, plane_z) lands at pixel = origin + (A @ [x, y] + c) @ axes_px,
        where A and c come from the head pose (mouth points have head weight 1, as in
        `project`); its inverse is one affine map per frame, applied with one baddbmm."""
        rot = rotation_matrix(pose[:, 0], pose[:, 1], pose[:, 2])
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
        m = _inverse_2x2(inputs["axes_px"]) @ _inverse_2x2(a).transpose(1, 2)  # (B, 2, 2)
        m = m * to_unit
        t = (
            -(inputs["origin_px"].view(1, 1, 2) @ m)
            - (c.unsqueeze(1) @ _inverse_2x2(a).transpose(1, 2)) * to_unit
        ) + offset  # (B, 1, 2)
        size = self.config.size
        pixels = self.out_px.view(1, size * size, 2).expand(pose.shape[0], -1, -1)
        return torch.baddbmm(t, pixels, m).view(-1, size, size, 2)


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
