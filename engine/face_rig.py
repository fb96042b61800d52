"""A parametric face rig on MediaPipe's face mesh, driven by ARKit blendshapes and head pose.

Built once per portrait (`build_rig`, numpy), then deformed per frame (`deform`, `project`,
torch, fixed shapes, ONNX-exportable).

The rig works in a *face frame*: origin between the eye centres, x along the eye line towards
the subject's left (the image's right), y down, z away from the camera, one unit = the
inter-ocular distance (IOD). Control points are the 478 landmarks plus auxiliary points around
the head (hair, neck) and the image border, so that a dense warp can be interpolated between
them.

A frame's control points are:
    V = V0 + rest + sum_b w_b * D_b        (linear blendshapes)
        + jaw rotation about the hinge      (jawOpen rotates; mouthClose cancels it on the lips)
        then lid and lip contours are kept from crossing,
and the head pose rotates V about the neck pivot, weighted per point so the body stays still.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from engine import face_topology as topo
from engine.blendshapes import BLENDSHAPE_INDEX, NUM_BLENDSHAPES, NUM_POSE

log = logging.getLogger(__name__)

JAW_MAX_ANGLE = 0.38  # radians at jawOpen = 1 (about 22 degrees): lower lip drops ~0.4 IOD
PIVOT = (0.0, 0.9, 1.0)  # neck pivot in the face frame: mouth level, one IOD behind the face
HINGE = (0.0, 0.45, 0.9)  # jaw hinge axis (parallel to x): in front of the ears


@dataclass
class FaceRig:
    """Everything the per-frame deformation needs, as float32/int64 numpy arrays."""

    points0: np.ndarray  # (N, 3) control points at rest, face frame
    rest: np.ndarray  # (N, 3) offset applied always (closes a photo's open mouth)
    basis: np.ndarray  # (NUM_BLENDSHAPES, N, 3) linear blendshape displacements
    jaw_weight: np.ndarray  # (N,) how much each point follows the jaw rotation
    close_lower: np.ndarray  # (N,) share of the jaw motion mouthClose cancels (lower lip)
    close_upper: np.ndarray  # (N,) share of the jaw gap mouthClose brings down (upper lip)
    head_weight: np.ndarray  # (N,) 1 = moves with the head, 0 = still (background, body)
    order_upper: np.ndarray  # (K,) int64: point that must stay above ...
    order_lower: np.ndarray  # (K,) int64: ... this one (lids, lips)
    origin_px: np.ndarray  # (2,) face-frame origin in image pixels
    axes_px: np.ndarray  # (2, 2) face-frame unit x and y axes in image pixels (rows)
    triangles: np.ndarray  # (T, 3) int64: the warp mesh over the points (see rig_mesh)
    num_landmarks: int = topo.NUM_LANDMARKS

    @property
    def num_points(self) -> int:
        return int(self.points0.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The arrays as torch tensors, keyed by field name."""
        return {
            f.name: torch.from_numpy(np.asarray(getattr(self, f.name)))
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }


# --------------------------------------------------------------------------------------
# Building the rig from landmarks
# --------------------------------------------------------------------------------------


def _smoothstep(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _polygon_contains(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon for (P, 2) points against a closed (K, 2) polygon."""
    x, y = pts[:, 0:1], pts[:, 1:2]
    x0, y0 = poly[:, 0][None], poly[:, 1][None]
    x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < x_at)).sum(axis=1) % 2 == 1


class _Sculptor:
    """Writes displacement fields over the control points: drivers get exact displacements,
    their neighbours a Gaussian falloff of them, except points that are frozen."""

    def __init__(self, points: np.ndarray):
        self.points = points

    def spread(
        self,
        drivers: np.ndarray | list[int] | tuple[int, ...],
        disp: np.ndarray,
        sigma: float,
        frozen: np.ndarray | None = None,
    ) -> np.ndarray:
        drivers = np.asarray(drivers, dtype=np.int64)
        disp = np.broadcast_to(np.asarray(disp, dtype=np.float64), (len(drivers), 3))
        d2 = ((self.points[:, None, :2] - self.points[drivers][None, :, :2]) ** 2).sum(-1)
        w = np.exp(-d2 / (2.0 * sigma**2))  # (N, drivers)
        falloff = w.max(axis=1, keepdims=True)
        out = (w @ disp) / np.maximum(w.sum(axis=1, keepdims=True), 1e-12) * falloff
        if frozen is not None:
            out[frozen] = 0.0
        out[drivers] = disp
        return out


def _aux_points(face_xy: np.ndarray, center: np.ndarray, image_corners: np.ndarray):
    """Rings around the face (hair, neck), then static points on the image border.

    Returns (points (A, 3), head_weight (A,), jaw_follow (A,), oval_of (A,)): a ring point
    follows the jaw by jaw_follow times its oval point's jaw weight (oval_of; -1 = none)."""
    oval = face_xy[list(topo.FACE_OVAL)]
    chin_y = face_xy[topo.CHIN, 1]
    pts, head_w, jaw_w, oval_of = [], [], [], []
    # (scale, depth): the first ring hugs the face, the last is background.
    for scale, depth in ((1.22, 0.4), (1.6, 0.6), (2.7, 0.8)):
        ring = center + (oval - center) * scale
        below = _smoothstep(chin_y - 0.6, chin_y + 0.4, ring[:, 1])  # 0 above the jaw, 1 below
        if scale < 1.3:
            hw = 1.0 - 0.45 * below  # neck skin under the chin follows the head partly
            jw = np.full(len(ring), 0.75)
        elif scale < 2.5:
            hw = 1.0 - 0.85 * below  # hair moves with the head; shoulders stay
            jw = np.full(len(ring), 0.25)
        else:
            hw = np.zeros(len(ring))
            jw = np.zeros(len(ring))
        pts.append(np.c_[ring, np.full(len(ring), depth)])
        head_w.append(hw)
        jaw_w.append(jw)
        oval_of.append(np.asarray(topo.FACE_OVAL))
    # Static frame: points along the image border, so the warp is defined everywhere.
    border = []
    for a, b in zip(image_corners, np.roll(image_corners, -1, axis=0), strict=True):
        for t in np.linspace(0.0, 1.0, 8, endpoint=False):
            border.append(a + (b - a) * t)
    border = np.asarray(border)
    pts.append(np.c_[border, np.full(len(border), 1.0)])
    head_w.append(np.zeros(len(border)))
    jaw_w.append(np.zeros(len(border)))
    oval_of.append(np.full(len(border), -1))
    return (
        np.concatenate(pts),
        np.concatenate(head_w),
        np.concatenate(jaw_w),
        np.concatenate(oval_of),
    )


def refine_lip_opening(image: np.ndarray, landmarks_px: np.ndarray) -> np.ndarray:
    """Widen the inner-lip contour to cover the teeth or mouth cavity visible in the photo.

    MediaPipe's inner-lip points often sit inside a smile's visible teeth; the rig closes the
    mouth at rest by collapsing the inner-lip polygon, so whatever lies outside it would stay
    visible. Teeth and cavity are less red (r / (r + g + b)) than lips: along each
    upper/lower inner-lip pair, take the run of such pixels between the outer lip contours."""
    lm = np.array(landmarks_px, dtype=np.float64, copy=True)
    rgb = image.astype(np.float64)
    redness = rgb[..., 0] / (rgb.sum(-1) + 1e-6)
    value = rgb.max(-1) / 255.0
    h, w = redness.shape
    pairs = zip(
        topo.LIP_INNER_UPPER[1:-1],
        topo.LIP_INNER_LOWER[1:-1],
        topo.LIP_OUTER_UPPER[1:-1],
        topo.LIP_OUTER_LOWER[1:-1],
        strict=True,
    )
    for iu, il, ou, ol in pairs:
        x = int(round((lm[iu, 0] + lm[il, 0]) / 2.0))
        y0, y1 = int(np.floor(lm[ou, 1])), int(np.ceil(lm[ol, 1]))
        if not (0 <= x < w and 0 <= y0 < y1 < h) or y1 - y0 < 4:
            continue
        col_red, col_val = redness[y0 : y1 + 1, x], value[y0 : y1 + 1, x]
        lip_red = np.percentile(col_red, 75)
        not_lip = (col_red < lip_red - 0.03) | (col_val < 0.25)
        seam = int(round((lm[iu, 1] + lm[il, 1]) / 2.0)) - y0
        if not (0 <= seam < len(not_lip)) or not not_lip[seam]:
            continue
        top = seam
        while top > 0 and not_lip[top - 1]:
            top -= 1
        bottom = seam
        while bottom < len(not_lip) - 1 and not_lip[bottom + 1]:
            bottom += 1
        lm[iu, 1] = min(lm[iu, 1], y0 + top - 0.5)
        lm[il, 1] = max(lm[il, 1], y0 + bottom + 0.5)
    return lm.astype(np.float32)


def build_rig(landmarks_px: np.ndarray, image_size: int) -> FaceRig:
    """Build the rig of one portrait from its (478, 3) landmarks in image pixels."""
    lm = np.asarray(landmarks_px, dtype=np.float64)
    if lm.shape != (topo.NUM_LANDMARKS, 3):
        raise ValueError(f"expected ({topo.NUM_LANDMARKS}, 3) landmarks, got {lm.shape}")

    # Face frame from the eyes: the subject's right eye is on the image's left.
    eye_r = lm[list(topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER)].mean(0)
    eye_l = lm[list(topo.LEFT_EYE_UPPER + topo.LEFT_EYE_LOWER)].mean(0)
    iod = float(np.linalg.norm(eye_l[:2] - eye_r[:2]))
    x_axis = (eye_l[:2] - eye_r[:2]) / iod
    y_axis = np.array([-x_axis[1], x_axis[0]])
    origin = (eye_l[:2] + eye_r[:2]) / 2.0
    axes = np.stack([x_axis, y_axis])  # rows: face x and y in image pixels per unit
    face_xy = (lm[:, :2] - origin) @ axes.T / iod
    face_z = (lm[:, 2] - (eye_l[2] + eye_r[2]) / 2.0) / iod
    # Bas-relief: MediaPipe's depth is steep at the outline, where a rotated point would pass
    # its neighbour (a fold). Fade depth to the outline's mean depth near the outline.
    oval_xy = face_xy[list(topo.FACE_OVAL)]
    to_outline = np.sqrt(((face_xy[:, None] - oval_xy[None]) ** 2).sum(-1)).min(1)
    outline_z = face_z[list(topo.FACE_OVAL)].mean()
    face_z = outline_z + (face_z - outline_z) * _smoothstep(0.0, 0.5, to_outline)
    face = np.c_[face_xy, face_z]

    corners_px = np.array(
        [[0, 0], [image_size - 1, 0], [image_size - 1, image_size - 1], [0, image_size - 1]],
        dtype=np.float64,
    )
    corners = (corners_px - origin) @ axes.T / iod
    center = face_xy[list(topo.FACE_OVAL)].mean(0)
    aux, aux_head, aux_jaw_follow, aux_oval = _aux_points(face_xy, center, corners)
    points = np.concatenate([face, aux])
    n = len(points)
    nl = topo.NUM_LANDMARKS
    sculpt = _Sculptor(points)

    # ---- Lips: which points belong to the upper lip and which to the lower (jaw) side.
    inner_u, inner_l = list(topo.LIP_INNER_UPPER), list(topo.LIP_INNER_LOWER)
    outer_u, outer_l = list(topo.LIP_OUTER_UPPER), list(topo.LIP_OUTER_LOWER)
    seam_pts = (points[inner_u, :2] + points[inner_l, :2]) / 2.0
    seam_x, seam_y = seam_pts[:, 0], seam_pts[:, 1]
    order = np.argsort(seam_x)

    def seam_at(x: np.ndarray) -> np.ndarray:
        return np.interp(x, seam_x[order], seam_y[order])

    mouth_half = (
        float(
            np.linalg.norm(points[topo.MOUTH_CORNER_LEFT, :2] - points[topo.MOUTH_CORNER_RIGHT, :2])
        )
        / 2.0
    )
    mouth_c = points[[topo.MOUTH_CORNER_LEFT, topo.MOUTH_CORNER_RIGHT], :2].mean(0)
    lip_poly = points[outer_u + outer_l[::-1], :2]
    grow = mouth_c + (lip_poly - mouth_c) * 1.08  # catch the points on the outer contour
    is_lip = np.zeros(n, bool)
    is_lip[:nl] = _polygon_contains(grow, points[:nl, :2])
    below_seam = points[:, 1] > seam_at(points[:, 0])
    upper_lip = is_lip & ~below_seam
    lower_lip = is_lip & below_seam
    upper_lip[inner_u + outer_u] = True
    lower_lip[inner_l + outer_l] = True
    corners_idx = [61, 291, 78, 308]
    upper_lip[corners_idx] = False
    lower_lip[corners_idx] = False

    # ---- Jaw weights: the lower lip and chin rotate fully, the skin boundary runs from
    # just below the mouth corners up towards the hinge in front of the ears.
    x, y = points[:, 0], points[:, 1]
    line = seam_at(np.clip(x, seam_x.min(), seam_x.max())) + 0.08
    line = line - 1.1 * np.maximum(np.abs(x) - mouth_half, 0.0)
    jaw = _smoothstep(line - 0.05, line + 0.3, y)
    jaw[nl:] = aux_jaw_follow * np.where(aux_oval >= 0, jaw[np.maximum(aux_oval, 0)], 0.0)
    # Lips split at the seam in the middle but meet at 0.5 in the corners, so the corner
    # stretches instead of tearing.
    centre_ness = _smoothstep(1.05, 0.55, np.abs(x - mouth_c[0]) / max(mouth_half, 1e-6))
    jaw[upper_lip] = 0.5 - 0.5 * centre_ness[upper_lip]
    jaw[lower_lip] = 0.5 + 0.5 * centre_ness[lower_lip]
    jaw[corners_idx] = 0.5
    nose_and_up = y < seam_at(np.clip(x, seam_x.min(), seam_x.max())) - 0.12
    jaw[:nl][nose_and_up[:nl] & (np.abs(x[:nl]) < mouth_half * 1.2)] = 0.0

    close_lower = np.where(lower_lip, 1.0, 0.0)
    close_lower[[78, 308, 61, 291]] = 0.5
    close_upper = np.where(upper_lip, 1.0, 0.0)

    # ---- Rest offset: a photo with parted lips is closed to a neutral mouth.
    rest = np.zeros((n, 3))
    gap = points[inner_l, 1] - points[inner_u, 1]
    half = np.maximum(gap, 0.0)[1:-1] / 2.0
    if half.max() > 0.005:
        frozen_up = np.where(lower_lip)[0]
        frozen_lo = np.where(upper_lip)[0]
        d_up = np.zeros((len(half), 3))
        d_up[:, 1] = half
        rest += sculpt.spread(inner_u[1:-1], d_up, 0.06, frozen=frozen_up)
        rest += sculpt.spread(inner_l[1:-1], -d_up, 0.06, frozen=frozen_lo)
        log.info("portrait has parted lips (gap %.3f IOD): closing them at rest", gap.max())

    z_mid = (points[inner_u, 2] + points[inner_l, 2]) / 2.0
    rest[inner_u, 2] += z_mid - points[inner_u, 2]
    rest[inner_l, 2] += z_mid - points[inner_l, 2]

    # ---- The blendshape basis.
    basis = np.zeros((NUM_BLENDSHAPES, n, 3))
    frozen_upper = np.where(upper_lip)[0]
    frozen_lower = np.where(lower_lip)[0]

    def put(name: str, field: np.ndarray) -> None:
        basis[BLENDSHAPE_INDEX[name]] += field

    # Eyes. Side "Left" is the subject's left, on the image's right (+x).
    iris = {}
    for c in topo.IRIS_CENTERS:
        iris["Left" if points[c, 0] > 0 else "Right"] = c
    eyes = {
        "Left": (list(topo.LEFT_EYE_UPPER), list(topo.LEFT_EYE_LOWER), 1.0),
        "Right": (list(topo.RIGHT_EYE_UPPER), list(topo.RIGHT_EYE_LOWER), -1.0),
    }
    brows = {
        "Left": (list(topo.LEFT_BROW_UPPER), list(topo.LEFT_BROW_LOWER)),
        "Right": (list(topo.RIGHT_BROW_UPPER), list(topo.RIGHT_BROW_LOWER)),
    }
    for side, (upper, lower, outward) in eyes.items():
        up_mid, lo_mid = upper[1:-1], lower[1:-1]
        lid_gap = points[lo_mid, 1] - points[up_mid, 1]
        eye_h = float(max(lid_gap.max(), 0.05))
        eye_pts = np.array(upper + lower)
        lid_zone_up = np.where(
            (y < points[up_mid, 1].min()) & (np.abs(x - points[upper, 0].mean()) < 0.35)
        )[0]
        not_above = np.setdiff1d(np.arange(n), lid_zone_up)
        ic = iris[side]
        f_iris = np.clip((points[ic, 1] - points[up_mid, 1].mean()) / eye_h, 0.0, 1.0)

        # Blink: the upper lid comes down to meet the lower lid, which rises a little.
        d = np.zeros((len(up_mid), 3))
        d[:, 1] = 0.85 * lid_gap
        blink = sculpt.spread(up_mid, d, 0.07, frozen=np.r_[lo_mid, not_above])
        d_lo = np.zeros((len(lo_mid), 3))
        d_lo[:, 1] = -0.15 * lid_gap
        blink += sculpt.spread(lo_mid, d_lo, 0.05, frozen=np.r_[up_mid, lid_zone_up])
        blink[ic] = [0.0, (1 - f_iris) * 0.85 * eye_h - f_iris * 0.15 * eye_h, 0.0]
        put(f"eyeBlink{side}", blink)

        d = np.zeros((len(lo_mid), 3))
        d[:, 1] = -0.35 * lid_gap
        squint = sculpt.spread(lo_mid, d, 0.08, frozen=np.r_[up_mid, lid_zone_up])
        d = np.zeros((len(up_mid), 3))
        d[:, 1] = 0.1 * lid_gap
        squint += sculpt.spread(up_mid, d, 0.05, frozen=np.r_[lo_mid, not_above])
        put(f"eyeSquint{side}", squint)

        d = np.zeros((len(up_mid), 3))
        d[:, 1] = -0.45 * eye_h * np.sin(np.linspace(0.3, np.pi - 0.3, len(up_mid)))
        wide = sculpt.spread(up_mid, d, 0.08, frozen=np.r_[lo_mid, not_above])
        wide[ic, 1] = -0.1 * eye_h
        put(f"eyeWide{side}", wide)

        # Gaze: the iris moves inside the eye opening; the lids follow vertical gaze a little.
        half_w = float(np.ptp(points[eye_pts, 0])) / 2.0
        for name, vec in (
            ("Up", (0.0, -0.28 * eye_h)),
            ("Down", (0.0, 0.25 * eye_h)),
            ("In", (-outward * 0.38 * half_w, 0.0)),
            ("Out", (outward * 0.38 * half_w, 0.0)),
        ):
            g = np.zeros((n, 3))
            g[ic, :2] = vec
            if name in ("Up", "Down"):
                d = np.zeros((len(up_mid), 3))
                d[:, 1] = vec[1] * 0.5
                g += sculpt.spread(up_mid, d, 0.06, frozen=np.r_[lo_mid, not_above])
                g[ic, :2] = vec
            put(f"eyeLook{name}{side}", g)

        # Brows.
        b_up, b_lo = brows[side]
        brow = np.array(b_up + b_lo)
        inner_end = np.array([b_up[-1], b_up[-2], b_lo[-1], b_lo[-2]])
        outer_end = np.array([b_up[0], b_up[1], b_lo[0], b_lo[1]])
        keep = np.r_[up_mid, lo_mid, eye_pts]
        d = np.zeros((len(brow), 3))
        d[:, 1] = 0.09
        d[:, 0] = -outward * 0.035
        put(f"browDown{side}", sculpt.spread(brow, d, 0.14, frozen=np.r_[lo_mid, lower]))
        d = np.zeros((len(outer_end), 3))
        d[:, 1] = -0.1
        put(f"browOuterUp{side}", sculpt.spread(outer_end, d, 0.15, frozen=keep))
        d = np.zeros((len(inner_end), 3))
        d[:, 1] = -0.11
        d[:, 0] = outward * 0.01
        put("browInnerUp", 0.5 * sculpt.spread(inner_end, d * 2.0, 0.15, frozen=keep))

        # Cheek squint and nose sneer.
        cheek_pts = np.where((np.abs(x - outward * 0.45) < 0.22) & (y > 0.25) & (y < 0.75))[0]
        cheek_pts = cheek_pts[cheek_pts < nl]
        d = np.zeros((len(cheek_pts), 3))
        d[:, 1] = -0.06
        put(f"cheekSquint{side}", sculpt.spread(cheek_pts, d, 0.1, frozen=np.r_[up_mid, brow]))
        ala = list(topo.NOSE_ALA_LEFT if side == "Left" else topo.NOSE_ALA_RIGHT)
        d = np.zeros((len(ala), 3))
        d[:, 1] = -0.06
        sneer = sculpt.spread(ala, d, 0.1, frozen=np.r_[up_mid, lo_mid, brow])
        put(f"noseSneer{side}", sneer)

    # Mouth shapes, per side: the side's corner and lip points, weighted towards that corner.
    corner = {"Left": topo.MOUTH_CORNER_LEFT, "Right": topo.MOUTH_CORNER_RIGHT}
    outward = {"Left": 1.0, "Right": -1.0}
    lip_idx = np.where(upper_lip | lower_lip)[0]
    lip_idx = np.r_[lip_idx, corners_idx]
    around_mouth = np.where(
        (np.abs(x - mouth_c[0]) < mouth_half * 1.6) & (np.abs(y - mouth_c[1]) < 0.5)
    )[0]
    for side in ("Left", "Right"):
        s = outward[side]
        side_w = _smoothstep(-0.6 * mouth_half, mouth_half, s * (x - mouth_c[0]))
        c = corner[side]

        def corner_move(dx: float, dy: float, sigma: float, _s=s, _c=c, _w=side_w) -> np.ndarray:
            """Move the corner and drag the lips on its side and the skin around."""
            field = sculpt.spread(
                [_c, 78 if _c == 61 else 308], np.array([dx * _s, dy, 0.0]), sigma
            )
            lips = np.zeros((n, 3))
            lips[lip_idx] = np.array([dx * _s, dy, 0.0]) * _w[lip_idx, None] ** 1.5
            return np.where(np.isin(np.arange(n), lip_idx)[:, None], lips, field)

        put(f"mouthSmile{side}", corner_move(0.07, -0.13, 0.22))
        put(f"mouthFrown{side}", corner_move(0.02, 0.1, 0.2))
        put(f"mouthDimple{side}", corner_move(0.06, -0.01, 0.15))
        put(f"mouthStretch{side}", corner_move(0.1, 0.04, 0.2))

        side_lo = np.array([i for i in inner_l[1:-1] + outer_l[1:-1]])
        d = np.zeros((len(side_lo), 3))
        d[:, 1] = 0.16 * side_w[side_lo]
        put(f"mouthLowerDown{side}", sculpt.spread(side_lo, d, 0.12, frozen=frozen_upper))
        side_up = np.array([i for i in inner_u[1:-1] + outer_u[1:-1]])
        d = np.zeros((len(side_up), 3))
        d[:, 1] = -0.1 * side_w[side_up]
        put(f"mouthUpperUp{side}", sculpt.spread(side_up, d, 0.1, frozen=frozen_lower))

        # Press: the lips on this side thin towards the seam.
        press = np.zeros((n, 3))
        thick_u = points[inner_u, 1] - points[outer_u, 1]
        thick_l = points[outer_l, 1] - points[inner_l, 1]
        press[outer_u, 1] = 0.35 * thick_u * side_w[outer_u]
        press[outer_l, 1] = -0.35 * thick_l * side_w[outer_l]
        put(f"mouthPress{side}", press)

        d = np.zeros((len(around_mouth), 3))
        d[:, 0] = s * 0.13
        shift = sculpt.spread(around_mouth, d, 0.2)
        shift[around_mouth] *= (
            _smoothstep(0.55, 0.2, np.abs(y[around_mouth] - mouth_c[1]))[:, None]
            * _smoothstep(mouth_half * 1.6, mouth_half * 0.8, np.abs(x[around_mouth] - mouth_c[0]))[
                :, None
            ]
        )
        put(f"mouth{side}", shift)

        # Jaw sideways: the whole jaw region shifts.
        put(f"jaw{side}", np.c_[jaw * s * 0.12, np.zeros(n), np.zeros(n)])

    # Symmetric mouth shapes.
    rel_x = (x - mouth_c[0]) / max(mouth_half, 1e-6)
    toward_center = np.zeros((n, 3))
    toward_center[lip_idx, 0] = -0.16 * mouth_half * np.clip(rel_x[lip_idx], -1.2, 1.2)
    toward_center[lip_idx, 2] = -0.08
    pucker = toward_center.copy()
    pucker[outer_u, 1] -= 0.02
    pucker[outer_l, 1] += 0.02
    skin = sculpt.spread(lip_idx, pucker[lip_idx], 0.15)
    skin[lip_idx] = pucker[lip_idx]
    put("mouthPucker", skin)

    funnel = toward_center * 0.7
    bulge = np.sin(np.linspace(0.0, np.pi, len(inner_u)))
    funnel[inner_u, 1] -= 0.05 * bulge
    funnel[inner_l, 1] += 0.05 * bulge
    funnel[outer_u, 1] -= 0.03 * bulge
    funnel[outer_l, 1] += 0.03 * bulge
    skin = sculpt.spread(lip_idx, funnel[lip_idx], 0.15)
    skin[lip_idx] = funnel[lip_idx]
    put("mouthFunnel", skin)

    roll = np.zeros((n, 3))
    thick_l = points[outer_l, 1] - points[inner_l, 1]
    thick_u = points[inner_u, 1] - points[outer_u, 1]
    roll[outer_l, 1] = -0.6 * thick_l
    put("mouthRollLower", roll)
    roll = np.zeros((n, 3))
    roll[outer_u, 1] = 0.6 * thick_u
    put("mouthRollUpper", roll)

    shrug_lo = np.where(
        lower_lip | ((jaw > 0.5) & (np.abs(rel_x) < 1.0) & (y < mouth_c[1] + 0.45))
    )[0]
    d = np.zeros((len(shrug_lo), 3))
    d[:, 1] = -0.07
    put("mouthShrugLower", sculpt.spread(shrug_lo, d, 0.12, frozen=frozen_upper))
    d = np.zeros((len(outer_u) - 2, 3))
    d[:, 1] = -0.05
    put("mouthShrugUpper", sculpt.spread(outer_u[1:-1], d, 0.1, frozen=frozen_lower))

    puff_pts = np.where(
        (np.abs(x) > mouth_half * 0.9) & (np.abs(x) < 0.85) & (y > 0.55) & (y < 1.35)
    )[0]
    puff_pts = puff_pts[puff_pts < nl]
    d = np.zeros((len(puff_pts), 3))
    d[:, 0] = np.sign(x[puff_pts]) * 0.07
    put("cheekPuff", sculpt.spread(puff_pts, d, 0.15))

    put("jawForward", np.c_[np.zeros(n), jaw * 0.015, jaw * -0.08])
    # mouthClose and tongueOut are not linear: see `deform` and the renderer's mouth.

    head = np.r_[np.ones(nl), aux_head]

    # Contours that must not cross: (upper point, lower point) pairs.
    pairs = []
    for upper, lower in (
        (topo.RIGHT_EYE_UPPER, topo.RIGHT_EYE_LOWER),
        (topo.LEFT_EYE_UPPER, topo.LEFT_EYE_LOWER),
        (topo.LIP_INNER_UPPER, topo.LIP_INNER_LOWER),
        (topo.LIP_OUTER_UPPER, topo.LIP_INNER_UPPER),
        (topo.LIP_INNER_LOWER, topo.LIP_OUTER_LOWER),
    ):
        pairs += list(zip(upper[1:-1], lower[1:-1], strict=True))
    pairs_a = np.asarray(pairs, dtype=np.int64)

    f32 = np.float32
    rig = FaceRig(
        points0=points.astype(f32),
        rest=rest.astype(f32),
        basis=basis.astype(f32),
        jaw_weight=jaw.astype(f32),
        close_lower=close_lower.astype(f32),
        close_upper=close_upper.astype(f32),
        head_weight=head.astype(f32),
        order_upper=pairs_a[:, 0],
        order_lower=pairs_a[:, 1],
        origin_px=origin.astype(f32),
        axes_px=(axes * iod).astype(f32),
        # On the very pixel positions the renderer interpolates over (float32, as it has
        # them): a mesh of slightly different coordinates may hold slivers that flip.
        triangles=rig_mesh(
            origin.astype(f32) + points[:, :2].astype(f32) @ (axes * iod).astype(f32)
        ).astype(np.int64),
    )
    return remove_folds(rig)


# --------------------------------------------------------------------------------------
# The mesh and fold removal
# --------------------------------------------------------------------------------------

# Contours the warp mesh must keep as edges: a triangle across the lips or the lids would
# fold as soon as they move apart.
MESH_CONTOURS = (
    topo.LIP_INNER_UPPER, topo.LIP_INNER_LOWER, topo.LIP_OUTER_UPPER, topo.LIP_OUTER_LOWER,
    topo.RIGHT_EYE_UPPER, topo.RIGHT_EYE_LOWER, topo.LEFT_EYE_UPPER, topo.LEFT_EYE_LOWER,
)  # fmt: skip


def rig_mesh(points_xy: np.ndarray) -> np.ndarray:
    """Triangles (T, 3) over the control points: constrained Delaunay keeping MESH_CONTOURS.

    The renderer interpolates the warp on these triangles; the rig keeps them from folding.
    Pass pixel positions: the static points on the image border are exactly collinear
    there (in the rotated face frame they are not quite, and slivers appear).

    Iris outlines are left out: they often poke under the lids and would fold on a blink.
    Where a landmark fit makes two contours cross (the outer and inner lip at a corner, say),
    the later contour's crossing segment is dropped: a constrained mesh needs no new
    vertices, and the earlier contours (inner lips first) matter most."""
    import triangle

    control = np.setdiff1d(np.arange(len(points_xy)), np.concatenate(topo.IRIS_RINGS))
    local = {int(i): k for k, i in enumerate(control)}
    segments: list[tuple[int, int]] = []
    for contour in MESH_CONTOURS:
        for a, b in zip(contour[:-1], contour[1:], strict=True):
            if not any(_segments_cross(points_xy, (a, b), kept) for kept in segments):
                segments.append((a, b))
    dropped = sum(len(c) - 1 for c in MESH_CONTOURS) - len(segments)
    if dropped:
        log.info("warp mesh: %d contour segments cross earlier ones and are left free", dropped)
    vertices = points_xy[control].astype(np.float64)
    local_segments = np.array([(local[a], local[b]) for a, b in segments])
    mesh = triangle.triangulate({"vertices": vertices, "segments": local_segments}, "pcQ")
    if len(mesh["vertices"]) != len(control):
        # A landmark lying on a contour would need a new vertex: drop the constraints.
        log.warning("lip/eye contours touch in this portrait: warp mesh without constraints")
        mesh = triangle.triangulate({"vertices": vertices}, "Q")
    return control[mesh["triangles"]]


def _segments_cross(points: np.ndarray, s: tuple[int, int], t: tuple[int, int]) -> bool:
    """Whether two segments between landmarks cross at a point inside both (not at an end)."""
    if set(s) & set(t):
        return False
    p, r = points[s[0]], points[s[1]] - points[s[0]]
    q, u = points[t[0]], points[t[1]] - points[t[0]]
    den = r[0] * u[1] - r[1] * u[0]
    if abs(den) < 1e-12:
        return False
    w = q - p
    a = (w[0] * u[1] - w[1] * u[0]) / den
    b = (w[0] * r[1] - w[1] * r[0]) / den
    return bool(0.0 < a < 1.0 and 0.0 < b < 1.0)


# Head rotations the rig must survive without a fold: 20 degrees in any direction.
_DIAGONAL = 0.247  # pitch and yaw together: a 20-degree turn
FOLD_FREE_POSES = (
    (0.35, 0.0), (-0.35, 0.0), (0.0, 0.35), (0.0, -0.35),
    (_DIAGONAL, _DIAGONAL), (_DIAGONAL, -_DIAGONAL),
    (-_DIAGONAL, _DIAGONAL), (-_DIAGONAL, -_DIAGONAL),
)  # fmt: skip
TURNING_SHAPES = (
    "jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthFunnel", "mouthPucker",
    "mouthSmileLeft", "mouthSmileRight",
)  # fmt: skip
# A blendshape may squeeze a triangle to this share of its rest area, not below; a rotation
# may foreshorten one to nothing (the side of the nose turning away) but not flip it.
MIN_AREA_RATIO = 0.05


def collapsible_triangles(triangles: np.ndarray) -> np.ndarray:
    """(T,) bool: triangles with every corner on one opening (the lips' or an eye's inner
    contour). Those close up by design when the mouth or an eye shuts; the renderer's layers
    cover them."""
    iris = set(topo.IRIS_CENTERS)  # inside the eye opening: a closing lid passes over it
    openings = [
        set(topo.LIP_INNER_UPPER) | set(topo.LIP_INNER_LOWER),
        set(topo.RIGHT_EYE_UPPER) | set(topo.RIGHT_EYE_LOWER) | iris,
        set(topo.LEFT_EYE_UPPER) | set(topo.LEFT_EYE_LOWER) | iris,
    ]
    return np.array([any(set(t) <= o for o in openings) for t in triangles.tolist()])


def sliver_triangles(points_px: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T,) bool: triangles smaller than one pixel. Where contours nearly touch (a mouth
    corner) or points are collinear (the image border), the mesh has slivers that cover no
    picture: whether one flips cannot be seen, and relaxing them would fight over nothing."""
    return np.abs(signed_areas(points_px, triangles)) < 1.0


def signed_areas(points_xy: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Signed areas (..., T) of triangles over points (..., N, 2)."""
    a, b, c = (points_xy[..., triangles[:, k], :] for k in range(3))
    ab, ac = b - a, c - a
    return 0.5 * (ab[..., 0] * ac[..., 1] - ab[..., 1] * ac[..., 0])


def _folded(
    points_xy: np.ndarray, triangles: np.ndarray, area0: np.ndarray, min_ratio: float
) -> np.ndarray:
    """Indices of triangles that shrank below ``min_ratio`` of their rest area (or flipped)."""
    return np.nonzero(signed_areas(points_xy, triangles) / area0 < min_ratio)[0]


def _toward_triangle_means(values: np.ndarray, triangles: np.ndarray, rate: float) -> np.ndarray:
    """Correction (N, C) moving each corner of the given triangles towards its triangle's mean
    value: a triangle whose corners move alike cannot fold."""
    corner = values[triangles]  # (T, 3, C)
    pull = (corner.mean(1, keepdims=True) - corner) * rate
    total = np.zeros_like(values)
    count = np.zeros(len(values))
    np.add.at(total, triangles.ravel(), pull.reshape(-1, values.shape[1]))
    np.add.at(count, triangles.ravel(), 1.0)
    return total / np.maximum(count, 1.0)[:, None]


def remove_folds(rig: FaceRig, max_iterations: int = 60) -> FaceRig:
    """Smooth the rig where it would fold: at rest, for every blendshape at 1, and for head
    rotations in FOLD_FREE_POSES.

    A fold (a triangle of the warp mesh turning over) makes the warp non-invertible: the
    picture would tear or show a mirrored patch. Displacement fields are sculpted with
    Gaussian falloffs, which can move a point past its neighbour near a contour; depth is
    steep at the nostrils, so a rotation can do the same. Each fold is relaxed where it
    happens: the displacements (or depths) of the folded triangle's corners are pulled
    towards their mean until no triangle folds. Background points never move."""
    tri = rig.triangles
    xy0 = rig.points0[:, :2].astype(np.float64)
    px0 = rig.origin_px + xy0 @ rig.axes_px
    tri = tri[~collapsible_triangles(tri) & ~sliver_triangles(px0, tri)]
    area0 = signed_areas(xy0, tri)
    movable = rig.head_weight > 0
    rest, basis, points0 = rig.rest.copy(), rig.basis.copy(), rig.points0.copy()

    def deformed_xy(weights: np.ndarray) -> np.ndarray:
        tensors = replace(rig, rest=rest, basis=basis, points0=points0).tensors()
        with torch.no_grad():
            v = deform(torch.from_numpy(weights[None].astype(np.float32)), tensors)
        return v[0, :, :2].double().numpy()

    def relax(field: np.ndarray, weights: np.ndarray, label: str, min_ratio: float) -> None:
        for _ in range(max_iterations):
            xy = deformed_xy(weights)
            bad = _folded(xy, tri, area0, min_ratio)
            if len(bad) == 0:
                return
            step = _toward_triangle_means(xy - xy0, tri[bad], 0.5)
            field[movable, :2] += step[movable]
        log.warning(
            "rig: %s still folds %d triangles",
            label,
            len(_folded(deformed_xy(weights), tri, area0, min_ratio)),
        )

    def relax_blendshapes() -> None:
        for name, b in BLENDSHAPE_INDEX.items():
            weights = np.zeros(NUM_BLENDSHAPES)
            weights[b] = 1.0
            relax(basis[b], weights, name, MIN_AREA_RATIO)

    # At rest no triangle may be nearly flat: a head rotation would flip it.
    relax(rest, np.zeros(NUM_BLENDSHAPES), "rest", 0.3)
    relax_blendshapes()

    # Rotations: relax depth, and the rest positions where depth is not the cause. Relaxing
    # for one pose can undo another, so go round them all until none folds.
    # The shapes that move most are checked under every turn too; a fold there relaxes the
    # shape's own field.
    for _ in range(max_iterations):
        folds = 0
        for (pitch, yaw), shape in itertools.product(FOLD_FREE_POSES, (None, *TURNING_SHAPES)):
            weights = np.zeros(NUM_BLENDSHAPES)
            if shape is not None:
                weights[BLENDSHAPE_INDEX[shape]] = 1.0
            pose = torch.tensor([[pitch, yaw, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float32)
            tensors = replace(rig, rest=rest, basis=basis, points0=points0).tensors()
            with torch.no_grad():
                v = deform(torch.from_numpy(weights[None].astype(np.float32)), tensors)
                px = project(v, pose, tensors)[0].double().numpy()
            xy = (px - rig.origin_px) @ np.linalg.inv(rig.axes_px)
            bad = _folded(xy, tri, area0, 0.0)
            folds += len(bad)
            if len(bad) == 0:
                continue
            # Steep depth flips a triangle under rotation; a triangle squeezed flat at rest
            # (a mouth corner closing a photo's open lips) needs room too.
            step = _toward_triangle_means(points0[:, 2:3].astype(np.float64), tri[bad], 0.5)
            points0[movable, 2] += step[movable, 0]
            field = rest if shape is None else basis[BLENDSHAPE_INDEX[shape]]
            step = _toward_triangle_means(deformed_xy(weights) - xy0, tri[bad], 0.25)
            field[movable, :2] += step[movable]
        if folds == 0:
            break
    else:
        log.warning("rig: head rotations still fold %d triangles", folds)
    relax_blendshapes()  # again: the rotations may have moved the rest positions
    return replace(rig, rest=rest, basis=basis, points0=points0)


# --------------------------------------------------------------------------------------
# Per-frame deformation (torch; fixed shapes, exports to ONNX)
# --------------------------------------------------------------------------------------


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotation R = Rz(roll) @ Ry(yaw) @ Rx(pitch) in the face frame (y down, z away).

    Signs follow engine.blendshapes: pitch > 0 moves the nose tip down, yaw > 0 moves it
    to the image's right, roll > 0 tilts the head clockwise."""
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cr, sr = torch.cos(roll), torch.sin(roll)
    one, zero = torch.ones_like(pitch), torch.zeros_like(pitch)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, -sy, zero, one, zero, sy, zero, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def deform(weights: torch.Tensor, rig: dict[str, torch.Tensor]) -> torch.Tensor:
    """Control points in the face frame, (B, N, 3), for blendshape weights (B, 52)."""
    w = weights.clamp(0.0, 1.0)
    b, n = w.shape[0], rig["points0"].shape[0]
    base = rig["points0"] + rig["rest"]
    v = base.unsqueeze(0) + (w @ rig["basis"].reshape(NUM_BLENDSHAPES, n * 3)).view(b, n, 3)

    # Jaw: rotate about the hinge axis (parallel to x) by jawOpen, weighted per point.
    angle = w[:, BLENDSHAPE_INDEX["jawOpen"]] * JAW_MAX_ANGLE
    ca, sa = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    hinge_y, hinge_z = HINGE[1], HINGE[2]
    dy, dz = v[..., 1] - hinge_y, v[..., 2] - hinge_z
    jaw_dy = (ca * dy - sa * dz) - dy
    jaw_dz = (sa * dy + ca * dz) - dz
    jaw_w = rig["jaw_weight"].unsqueeze(0)
    # mouthClose keeps the lips together while the jaw opens: cancel most of the jaw's
    # drop on the lower lip, and bring the upper lip down to meet it.
    close = w[:, BLENDSHAPE_INDEX["mouthClose"], None]
    keep = 1.0 - close * 0.75 * rig["close_lower"].unsqueeze(0)
    jaw_dy = jaw_dy * jaw_w * keep
    jaw_dz = jaw_dz * jaw_w * keep
    lower_lip_drop = (jaw_dy * rig["close_lower"]).amax(dim=1, keepdim=True)
    upper_dy = close * 0.35 * lower_lip_drop * rig["close_upper"].unsqueeze(0)
    zeros = torch.zeros_like(jaw_dy)
    v = v + torch.stack([zeros, jaw_dy + upper_dy, jaw_dz], -1)
    return keep_order(v, rig["order_upper"], rig["order_lower"])


def keep_order(v: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """Meet halfway where an upper contour point went below its lower partner (no folds)."""
    yu = v[:, upper, 1]
    yl = v[:, lower, 1]
    overlap = torch.relu(yu - yl) * 0.5
    n = v.shape[1]
    # One-hot scatter as a matmul: cheap here and exports to any ONNX runtime.
    points = torch.arange(n, device=v.device).unsqueeze(1)
    push = (points == lower.unsqueeze(0)).to(v.dtype) - (points == upper.unsqueeze(0)).to(v.dtype)
    dy = overlap @ push.T  # (B, N)
    return v + torch.stack([torch.zeros_like(dy), dy, torch.zeros_like(dy)], -1)


def project(
    v: torch.Tensor,
    pose: torch.Tensor,
    rig: dict[str, torch.Tensor],
    rot: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image pixel positions (B, N, 2) of face-frame points (B, N, 3) under head pose (B, 6).
    ``rot``: the pose's `rotation_matrix`, when the caller has it already."""
    assert pose.shape[-1] == NUM_POSE
    if rot is None:
        rot = rotation_matrix(pose[:, 0], pose[:, 1], pose[:, 2])
    pivot = torch.tensor(PIVOT, dtype=v.dtype, device=v.device)
    scale = (1.0 + pose[:, 5]).clamp(0.5, 2.0)[:, None, None]
    moved = (v - pivot) @ rot.transpose(1, 2) * scale + pivot
    moved_xy = moved[..., :2] + pose[:, None, 3:5]
    head_w = rig["head_weight"][None, :, None]
    xy = v[..., :2] + head_w * (moved_xy - v[..., :2])
    return rig["origin_px"] + xy @ rig["axes_px"]
