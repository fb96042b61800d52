"""Fit ARKit blendshapes and head pose to tracked face-mesh landmarks, against the face rig.

The inverse of the renderer's first step: given MediaPipe's 478 landmarks per frame (image
pixels), find the motion frames (`engine.blendshapes`) whose rig deformation
(`engine.face_rig.deform`) and head pose (`project`) put the rig's landmark points where the
tracker saw them.

The rig comes from a *reference*: landmarks of a neutral face of the same person
(`reference_landmarks` picks and averages the most neutral frames; `build_reference_rig`).
Blendshape weights and head rotations are relative to that reference, so a reference that
smiles makes smiles read as 0; head translation and scale are relative to the clip's own
most neutral frame (`normalise_tracks`), so framing is not read as motion.

Solver: one bounded least-squares problem over all frames of a clip at once, by projected
gradient descent (Adam steps, each followed by clamping the weights to [0, 1]) in torch:

    minimise  sum_t sum_i c_i |project(deform(w_t), p_t)_i - y_ti|^2 / (sigma IOD)^2
              + l1 sum w + l2 sum w^2                         sparsity: few shapes at once
              + translation_prior sum (Tx^2 + Ty^2)           heads turn more than slide
              + smooth_weights sum_t |w_t+1 - w_t|^2
              + smooth_pose sum_t |p_t+1 - p_t|^2
              + smooth_translation sum_t |T_t+1 - T_t|^2      temporal smoothing

first over the pose alone (weights at 0; roll, shift and scale start from a per-frame 2-D
similarity of rigid points), then over both. Projected Adam rather than L-BFGS or
Gauss-Newton: the rig clamps weights and keeps contours from crossing (not smooth
everywhere), and the box constraint is then a clamp. Cost: about one second of one CPU core
per second of 25 fps video.

Some blendshapes cannot be seen in 2-D landmarks and stay at 0 (`UNOBSERVED`): tongueOut
(the tongue has no landmark), jawForward (mostly depth in the rig), cheekPuff (a puff is
depth; the rig's sideways bulge would only pick up silhouette noise). eyeLook* are fitted
from the iris landmarks; mouthClose only shows while the jaw is open.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine import face_topology as topo
from engine.blendshapes import BLENDSHAPE_INDEX, NUM_BLENDSHAPES, NUM_POSE
from engine.face_rig import PIVOT, FaceRig, build_rig, deform, project

log = logging.getLogger(__name__)

NUM_LANDMARKS = topo.NUM_LANDMARKS

UNOBSERVED: tuple[str, ...] = ("tongueOut", "jawForward", "cheekPuff")

# Points whose position does not depend on expression much: the 2-D similarity that
# starts the pose fit, and the alignment of frames and clips, use them.
STABLE_POINTS: tuple[int, ...] = (
    33, 133, 362, 263,  # eye corners
    168, 6, 197, 195, 5, 4, 1,  # nose bridge and tip
    98, 327, 2,  # nostrils, below the nose
    10, 151, 9, 8,  # forehead midline
    234, 454, 127, 356,  # temples
)  # fmt: skip

_RIG_LANDMARK_FIELDS = (
    "points0", "rest", "jaw_weight", "close_lower", "close_upper", "head_weight",
)  # fmt: skip


@dataclass(frozen=True)
class FitConfig:
    """Weights of the fitting objective and the solver's schedule.

    Units: residuals are in inter-ocular distances (IOD) divided by ``sigma``, the tracker's
    per-point noise, so the data term of one frame is about the number of points when the fit
    is as good as the tracker; the priors are in the same units.
    """

    sigma: float = 0.01  # tracker noise, IOD (MediaPipe jitters ~0.01 IOD per point)
    oval_weight: float = 0.2  # weight of the face outline's points (see _point_weights)
    l1: float = 30.0  # sparsity, per unit of weight
    l2: float = 10.0
    smooth_weights: float = 20.0  # per squared change of a weight between frames
    smooth_pose: float = 200.0  # per squared change of a pose value (rad or IOD) per frame
    # Heads turn about the neck far more, and faster, than they slide: in 2-D a yaw and a
    # sideways shift (a pitch and a vertical one) differ only by the parallax of the face's
    # relief, so without these the fit splits one motion between them.
    translation_prior: float = 2e4  # per squared IOD of headTx, headTy
    smooth_translation: float = 2e5  # per squared change of headTx, headTy per frame
    pose_steps: int = 100
    steps: int = 300
    lr: float = 0.06
    lr_final: float = 0.002


@dataclass
class FitResult:
    motion: np.ndarray  # (T, MOTION_DIM) float32: blendshape weights then pose
    rms: np.ndarray  # (T,) float32 residual per point, IOD, after the fit


def _landmark_rig(rig: FaceRig) -> dict[str, torch.Tensor]:
    """The rig's tensors restricted to the 478 landmarks: the auxiliary points (hair, neck,
    border) are never tracked, and dropping them halves the work."""
    t = rig.tensors()
    n = NUM_LANDMARKS
    out = {k: t[k][:n].float() for k in _RIG_LANDMARK_FIELDS}
    out["basis"] = t["basis"][:, :n].float()
    for k in ("order_upper", "order_lower", "origin_px", "axes_px"):
        out[k] = t[k]
    return out


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares 2-D similarity dst ~ scale * src @ rot.T + shift (Umeyama, no reflection).

    ``src``, ``dst``: (..., P, 2) batches of matching points. Returns (scale, rot, shift)
    with shapes (...), (..., 2, 2), (..., 2)."""
    mu_s, mu_d = src.mean(-2, keepdims=True), dst.mean(-2, keepdims=True)
    a, b = src - mu_s, dst - mu_d
    cov = np.swapaxes(b, -1, -2) @ a / src.shape[-2]  # (..., 2, 2)
    u, s, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.ones(s.shape)
    fix[..., -1] = d
    rot = u @ (fix[..., :, None] * vt)
    var = (a**2).sum((-1, -2)) / src.shape[-2]
    scale = (s * fix).sum(-1) / np.maximum(var, 1e-12)
    shift = mu_d[..., 0, :] - scale[..., None] * (mu_s @ np.swapaxes(rot, -1, -2))[..., 0, :]
    return scale, rot, shift


def interocular(landmarks: np.ndarray) -> np.ndarray:
    """Distance between the eye centres (mean of each eye's contour), (...,) in pixels."""
    eye_r = landmarks[..., list(topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER), :2].mean(-2)
    eye_l = landmarks[..., list(topo.LEFT_EYE_UPPER + topo.LEFT_EYE_LOWER), :2].mean(-2)
    return np.linalg.norm(eye_l - eye_r, axis=-1)


def align_to(landmarks: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(..., 478, 3) landmarks moved by the 2-D similarity of their stable points onto
    ``target``'s (478, 2+); depth is scaled along."""
    idx = list(STABLE_POINTS)
    scale, rot, shift = similarity(landmarks[..., idx, :2], np.broadcast_to(
        target[idx, :2], landmarks[..., idx, :2].shape))  # fmt: skip
    out = np.array(landmarks, dtype=np.float64, copy=True)
    out[..., :2] = scale[..., None, None] * (landmarks[..., :2] @ np.swapaxes(rot, -1, -2))
    out[..., :2] += shift[..., None, :]
    out[..., 2] = landmarks[..., 2] * scale[..., None]
    return out


def expression_scores(landmarks: np.ndarray) -> np.ndarray:
    """(T,) how far each frame is from a neutral, frontal, eyes-open, mouth-closed face.

    Lower is more neutral. Parted lips count in full; the rest count as deviations from
    the median of the given frames (people differ in brow height, mouth width or how
    symmetric their face is, so only the change is expression or pose), eyes only when less
    open than usual (a blink, a squint)."""
    lm = np.asarray(landmarks, dtype=np.float64)[..., :2]
    iod = interocular(lm)
    eye_r = lm[:, list(topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER)].mean(1)
    eye_l = lm[:, list(topo.LEFT_EYE_UPPER + topo.LEFT_EYE_LOWER)].mean(1)
    x_axis = (eye_l - eye_r) / iod[:, None]
    axes = np.stack([x_axis, np.stack([-x_axis[:, 1], x_axis[:, 0]], -1)], -1)  # columns
    # Face-frame coordinates in IOD: origin between the eyes, x along the eye line.
    f = (lm - ((eye_l + eye_r) / 2)[:, None]) @ axes / iod[:, None, None]

    lip_gap = np.maximum(
        f[:, list(topo.LIP_INNER_LOWER[1:-1]), 1] - f[:, list(topo.LIP_INNER_UPPER[1:-1]), 1], 0
    ).mean(1)
    lids = np.concatenate(
        [
            f[:, list(lower[1:-1]), 1] - f[:, list(upper[1:-1]), 1]
            for upper, lower in (
                (topo.RIGHT_EYE_UPPER, topo.RIGHT_EYE_LOWER),
                (topo.LEFT_EYE_UPPER, topo.LEFT_EYE_LOWER),
            )
        ],
        1,
    ).mean(1)
    nose = f[:, topo.NOSE_TIP]
    brows = f[:, list(topo.RIGHT_BROW_LOWER + topo.LEFT_BROW_LOWER), 1].mean(1)
    corners = f[:, [topo.MOUTH_CORNER_RIGHT, topo.MOUTH_CORNER_LEFT]]
    mouth_w = corners[:, 1, 0] - corners[:, 0, 0]
    mouth_y = corners[..., 1].mean(1)

    def dev(v: np.ndarray) -> np.ndarray:
        return np.abs(v - np.median(v))

    return (
        lip_gap
        + 2.0 * np.maximum(np.median(lids) - lids, 0.0)
        + dev(nose[:, 0])  # yaw (relative: faces and photos are not symmetric)
        + dev(nose[:, 1])  # pitch
        + dev(brows)
        + dev(mouth_w)
        + dev(mouth_y)
    )


def reference_landmarks(
    landmarks: np.ndarray, top_k: int = 8, max_spread: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """The neutral reference face from (T, 478, 3) landmarks: the most neutral frame, averaged
    with those of the next ``top_k - 1`` most neutral frames that, aligned onto it, differ from
    it by under ``max_spread`` IOD RMS. Averaging cancels the tracker's jitter, which the rig
    would otherwise bake into every frame; the spread test keeps a turned head or a
    half-smile out of the average. Returns (landmarks (478, 3), indices averaged)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (NUM_LANDMARKS, 3) or len(lm) == 0:
        raise ValueError(f"expected (T, {NUM_LANDMARKS}, 3) landmarks, got {lm.shape}")
    order = np.argsort(expression_scores(lm), kind="stable")[:top_k]
    best = lm[order[0]]
    aligned = align_to(lm[order], best)
    spread = np.sqrt(((aligned[..., :2] - best[:, :2]) ** 2).sum(-1).mean(-1)) / interocular(best)
    keep = spread <= max_spread
    return aligned[keep].mean(0).astype(np.float32), order[keep]


def build_reference_rig(reference: np.ndarray, image_size: int) -> FaceRig:
    """The rig of a reference face (landmarks in image pixels), as the fit uses it.

    Two changes from the renderer's rig, both because here the rig must predict where the
    tracker sees the landmarks rather than draw a picture:
    - no rest offset: it closes a portrait's parted lips, but the reference *is* the rest
      state as the tracker sees it (MediaPipe puts the inner lips of a closed mouth ~0.1-0.2
      IOD apart), and closing it would make every frame look like an open mouth;
    - the landmarks' own depth, not the bas-relief: the renderer flattens depth towards the
      outline so its warp never folds, but the tracker reports a face turning as a rigid
      3-D head, and a flattened rig would read a turn as part turn, part sideways slide."""
    lm = np.asarray(reference, dtype=np.float32)
    rig = build_rig(lm, int(image_size))
    eyes = list(topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER + topo.LEFT_EYE_UPPER)
    eyes += list(topo.LEFT_EYE_LOWER)
    points0 = rig.points0.copy()
    iod = float(np.linalg.norm(rig.axes_px[0]))
    points0[:NUM_LANDMARKS, 2] = (lm[:, 2] - lm[eyes, 2].mean()) / iod
    return dataclasses.replace(rig, points0=points0, rest=np.zeros_like(rig.rest))


def normalise_tracks(
    tracks: np.ndarray, reference: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """Move a clip's (T, 478, 3) landmarks by one scale and shift (no rotation) so that its
    most neutral frame's stable points sit on the reference's.

    Framing differs between videos (and the reference may come from another clip): this
    makes pose 0 the clip's own neutral position and size, so headTx/Ty/Tz are motion, not
    framing. Rotation is left alone: an in-plane tilt relative to the reference is a real
    headRoll. Returns the moved tracks and {"scale", "shift", "frame"}."""
    lm = np.asarray(tracks, dtype=np.float64)
    best = int(np.argmin(expression_scores(lm)))
    idx = list(STABLE_POINTS)
    src, dst = lm[best, idx, :2], np.asarray(reference, np.float64)[idx, :2]
    a, b = src - src.mean(0), dst - dst.mean(0)
    scale = float((a * b).sum() / max((a * a).sum(), 1e-12))
    shift = dst.mean(0) - scale * src.mean(0)
    out = lm.copy()
    out[..., :2] = scale * lm[..., :2] + shift
    out[..., 2] = scale * lm[..., 2]
    return out, {"scale": scale, "shift": shift.tolist(), "frame": best}


def _point_weights(rig: FaceRig, config: FitConfig) -> torch.Tensor:
    """Per-landmark weight of the data term: ``oval_weight`` on the face outline, rising to
    1 half an IOD inside it.

    The tracker puts outline points on the face's silhouette, which is not the same skin
    from one head pose to the next (a turn slides them along the cheek), and its depth
    there is least reliable; the inner face carries the expression anyway."""
    xy = rig.points0[:NUM_LANDMARKS, :2].astype(np.float64)
    oval = xy[list(topo.FACE_OVAL)]
    to_outline = np.sqrt(((xy[:, None] - oval[None]) ** 2).sum(-1)).min(1)
    t = np.clip(to_outline / 0.5, 0.0, 1.0)
    inner = t * t * (3.0 - 2.0 * t)
    c = config.oval_weight + (1.0 - config.oval_weight) * inner
    return torch.from_numpy(c.astype(np.float32))


def _initial_pose(tracks: np.ndarray, rig: FaceRig) -> np.ndarray:
    """Per-frame roll, translation and scale from the 2-D similarity of the stable points
    (face-frame units); pitch and yaw start at 0."""
    axes = rig.axes_px.astype(np.float64)
    # Tracked pixels into face-frame units, where project's pose acts.
    u = (tracks[..., :2] - rig.origin_px) @ np.linalg.inv(axes)
    v = (rig.points0[:NUM_LANDMARKS, :2] + rig.rest[:NUM_LANDMARKS, :2]).astype(np.float64)

    pivot = np.asarray(PIVOT[:2])
    idx = list(STABLE_POINTS)
    scale, rot, shift = similarity(
        np.broadcast_to(v[idx] - pivot, u[:, idx].shape), u[:, idx]
    )  # u ~ s R (v - P) + shift  => translation = shift - P
    pose = np.zeros((len(tracks), NUM_POSE))
    pose[:, 2] = np.arctan2(rot[:, 1, 0], rot[:, 0, 0])
    pose[:, 3:5] = shift - pivot
    pose[:, 5] = scale - 1.0
    return pose


def fit_motion(tracks: np.ndarray, rig: FaceRig, config: FitConfig | None = None) -> FitResult:
    """Blendshape weights and head pose of every frame of (T, 478, 2+) tracked landmarks
    (pixels, same image space as the rig's reference)."""
    cfg = config or FitConfig()
    tracks = np.asarray(tracks, dtype=np.float64)
    if tracks.ndim != 3 or tracks.shape[1] != NUM_LANDMARKS or len(tracks) == 0:
        raise ValueError(f"expected (T, {NUM_LANDMARKS}, 2+) tracks, got {tracks.shape}")
    if not np.isfinite(tracks[..., :2]).all():
        raise ValueError("tracks contain NaN or inf: fill or drop untracked frames first")
    num_frames = len(tracks)
    rt = _landmark_rig(rig)
    iod = float(np.linalg.norm(rig.axes_px[0]))
    target = torch.from_numpy(tracks[..., :2]).float()
    c = _point_weights(rig, cfg)[None, :] / (cfg.sigma**2 * iod**2)

    free = torch.ones(NUM_BLENDSHAPES, dtype=torch.bool)
    for name in UNOBSERVED:
        free[BLENDSHAPE_INDEX[name]] = False
    weights = torch.zeros(num_frames, NUM_BLENDSHAPES, requires_grad=True)
    pose = torch.from_numpy(_initial_pose(tracks, rig)).float().requires_grad_(True)
    mask = free.float()[None]

    def loss_fn(with_weights: bool) -> tuple[torch.Tensor, torch.Tensor]:
        w = weights * mask if with_weights else torch.zeros_like(weights)
        xy = project(deform(w, rt), pose, rt)
        sq = ((xy - target) ** 2).sum(-1)  # (T, N) px^2
        data = (sq * c).sum()
        total = data + cfg.smooth_pose * ((pose[1:] - pose[:-1]) ** 2).sum()
        total = total + cfg.translation_prior * (pose[:, 3:5] ** 2).sum()
        total = total + cfg.smooth_translation * ((pose[1:, 3:5] - pose[:-1, 3:5]) ** 2).sum()
        if with_weights:
            total = total + cfg.l1 * w.sum() + cfg.l2 * (w**2).sum()
            total = total + cfg.smooth_weights * ((w[1:] - w[:-1]) ** 2).sum()
        return total / num_frames, sq

    def run(params: list[torch.Tensor], steps: int, with_weights: bool) -> None:
        opt = torch.optim.Adam(params, lr=cfg.lr)
        for step in range(steps):
            # Cosine decay: big steps to find the basin, small ones to settle in it.
            frac = step / max(steps - 1, 1)
            for group in opt.param_groups:
                group["lr"] = cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (
                    1 + math.cos(math.pi * frac)
                )
            opt.zero_grad(set_to_none=True)
            loss, _ = loss_fn(with_weights)
            loss.backward()
            opt.step()
            with torch.no_grad():
                weights.clamp_(0.0, 1.0)
                pose[:, 5].clamp_(-0.45, 0.9)  # project clamps the scale to [0.5, 2]

    threads = torch.get_num_threads()
    # Tensors this small are faster on one thread; more only fight over the cores.
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            run([pose], cfg.pose_steps, with_weights=False)
            run([weights, pose], cfg.steps, with_weights=True)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        _, sq = loss_fn(True)
        rms = (sq.mean(1).sqrt() / iod).numpy().astype(np.float32)
        motion = torch.cat([weights * mask, pose], 1).numpy().astype(np.float32)
    return FitResult(motion=motion, rms=rms)
