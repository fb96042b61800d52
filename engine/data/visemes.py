"""Mouth and jaw curves from timed phonemes, with coarticulation; and what "lips closed" means.

Coarticulation follows Cohen and Massaro's dominance model: every phone has, per articulatory
parameter, a target and a dominance that is full over the phone and decays outside it, with
separate anticipatory and carry-over time constants. A parameter's value at time t is the
dominance-weighted mean of the targets. Phones that do not care about a parameter (the lips
in t, k, h) have little dominance over it and take their neighbours' value, so rounding
spreads from "oo" over the consonants before it; rounding's long anticipatory constant makes
it start about 100 ms before its vowel, the way speakers do. Bilabials have overwhelming,
short-reaching dominance over lip closure, so the lips close hard on p, b and m whatever
surrounds them.

The articulatory parameters map to ARKit blendshapes in `mouth_blendshapes`; emotion offsets
are added afterwards (engine.data.expression) and `apply_lip_closure` runs last, so that a
smile or a surprised jaw cannot hold the lips apart on a bilabial.

`lip_opening` gives the gap between the lips, in inter-ocular distances at the lip centre,
as the project's face rig (engine.face_rig) renders a motion frame; `LIPS_CLOSED_IOD` is the
gap under which the lips count as closed, and `bilabial_closure_rate` is the lip-sync check
that evaluation reuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.blendshapes import MOTION_DIM, MOTION_INDEX
from engine.data.phonemes import Viseme, is_bilabial, viseme_class, vowel_shape
from engine.timebase import FPS

PARAMS: tuple[str, ...] = (
    "jaw", "close", "press", "round", "funnel", "spread", "labiodental", "tongue",
)  # fmt: skip
P = {name: i for i, name in enumerate(PARAMS)}
NP = len(PARAMS)

# Dominance decay, seconds: (before the phone = anticipation, after it = carry-over).
TAU_BEFORE = np.array([0.060, 0.010, 0.012, 0.100, 0.080, 0.060, 0.025, 0.030])
TAU_AFTER = np.array([0.050, 0.010, 0.012, 0.060, 0.050, 0.050, 0.020, 0.030])
REST_DOMINANCE = 0.02  # a weak pull towards the rest pose, so silence relaxes the mouth
# Vowel heights (engine.data.phonemes) are relative; conversational speech rarely opens the
# jaw past about half of ARKit's range.
VOWEL_JAW_SCALE = 0.75

# Lips close a little before a bilabial's acoustic onset (the closure is silent in a stop's
# first part, and the lips must be together before the nasal murmur starts) and open just
# before the release burst at its end.
BILABIAL_LEAD = 0.015
BILABIAL_RELEASE = 0.005
JAW_AT_CLOSURE = 0.15  # the most jaw opening mouthClose can seal (see `lip_opening`)


@dataclass(frozen=True)
class Timed:
    """A phone as the coarticulation model sees it: a span and its symbol."""

    symbol: str
    start: float
    end: float


def _gesture(symbol: str, duration: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(targets, dominances, share of the phone's span) for each part of one phone."""
    t = np.zeros(NP)
    a = np.full(NP, 0.1)  # "don't care": neighbours decide
    a[P["close"]] = 1.5
    a[P["press"]] = 1.5
    a[P["labiodental"]] = 0.5
    a[P["tongue"]] = 0.5
    cls = viseme_class(symbol)

    def set_(name: str, target: float, dominance: float) -> None:
        t[P[name]] = target
        a[P[name]] = dominance

    if cls is Viseme.VOWEL:
        parts = []
        shape = vowel_shape(symbol)
        segments = [(shape.start, 1.0)] if shape.end is None else [(shape.start, 0.55),
                                                                    (shape.end, 0.45)]  # fmt: skip
        for s, share in segments:
            tt, aa = t.copy(), a.copy()
            tt[P["jaw"]], aa[P["jaw"]] = VOWEL_JAW_SCALE * s.jaw, 1.5
            tt[P["round"]], aa[P["round"]] = s.round, 2.5 if s.round > 0.5 else 1.5
            tt[P["funnel"]], aa[P["funnel"]] = 0.45 * s.round * min(1.0, s.jaw * 3), 1.0
            tt[P["spread"]], aa[P["spread"]] = s.spread, 1.0
            aa[P["close"]] = aa[P["press"]] = 3.0
            aa[P["labiodental"]] = aa[P["tongue"]] = 1.0
            parts.append((tt, aa, share))
        return parts
    if cls is Viseme.SILENCE:
        # Long pauses relax the mouth to rest; a short break barely interrupts the flow.
        weight = 0.8 * min(1.0, duration / 0.25)
        a[:] = 0.05 + weight
        return [(t, a, 1.0)]
    if cls is Viseme.MODIFIER:
        return [(t, np.zeros(NP), 1.0)]
    if cls is Viseme.BILABIAL:
        set_("jaw", 0.03, 1.2)
        set_("close", 1.0, 10.0)
        set_("press", 0.25 if symbol.startswith("m") else 0.45, 10.0)
        a[P["round"]] = 0.3  # lips keep some of a rounded neighbour's protrusion
        a[P["spread"]] = 0.2
        set_("labiodental", 0.0, 5.0)
        set_("funnel", 0.0, 2.0)
    elif cls is Viseme.LABIODENTAL:
        set_("jaw", 0.06, 1.2)
        set_("labiodental", 1.0, 12.0)
        set_("close", 0.0, 3.0)
        set_("funnel", 0.0, 1.5)
        a[P["round"]] = 0.3
    elif cls is Viseme.DENTAL:
        set_("jaw", 0.10, 0.8)
        set_("tongue", 1.0, 6.0)
        set_("close", 0.0, 3.0)
    elif cls is Viseme.ALVEOLAR:
        set_("jaw", 0.12, 0.6)
        set_("close", 0.0, 1.5)
    elif cls is Viseme.SIBILANT:
        set_("jaw", 0.05, 1.2)
        set_("spread", 0.25, 0.3)
        set_("close", 0.0, 2.0)
    elif cls is Viseme.POSTALVEOLAR:
        set_("jaw", 0.08, 1.0)
        set_("round", 0.45, 1.5)
        set_("funnel", 0.6, 2.0)
        set_("close", 0.0, 2.0)
    elif cls is Viseme.VELAR:
        set_("jaw", 0.16, 0.4)
        set_("close", 0.0, 1.0)
    elif cls is Viseme.GLOTTAL:
        a[:] = 0.05
        a[P["close"]] = 1.0
    elif cls is Viseme.RHOTIC:
        set_("jaw", 0.12, 0.6)
        set_("round", 0.35, 0.8)
        set_("funnel", 0.25, 0.6)
        set_("close", 0.0, 1.5)
    elif cls is Viseme.LABIOVELAR:
        set_("jaw", 0.06, 0.8)
        set_("round", 1.0, 3.0)
        set_("funnel", 0.3, 1.0)
        set_("close", 0.0, 2.0)
        set_("spread", 0.0, 1.0)
    elif cls is Viseme.PALATAL:
        set_("jaw", 0.08, 0.7)
        set_("spread", 0.5, 0.8)
        set_("close", 0.0, 1.5)
    return [(t, a, 1.0)]


@dataclass
class ArticulationStyle:
    """One speaker-take's articulation: how wide, how round, how early, how precise."""

    jaw_gain: float = 1.0
    round_gain: float = 1.0
    spread_gain: float = 1.0
    press_gain: float = 1.0
    anticipation: float = 1.0  # scales the anticipatory time constants
    close_level: float = 0.95  # mouthClose on a bilabial
    timing_jitter: float = 0.008  # s, per phone edge (never on bilabial closures)
    target_jitter: float = 0.12  # relative, per phone jaw target
    rest_jaw: float = 0.0  # lips parted a little at rest (mouth breathing)
    puff: float = 0.0  # cheeks puffed by the air held behind a p or b

    @classmethod
    def draw(cls, rng: np.random.Generator) -> ArticulationStyle:
        return cls(
            jaw_gain=float(rng.uniform(0.75, 1.25)),
            round_gain=float(rng.uniform(0.7, 1.3)),
            spread_gain=float(rng.uniform(0.6, 1.4)),
            press_gain=float(rng.uniform(0.6, 1.4)),
            anticipation=float(rng.uniform(0.75, 1.3)),
            close_level=float(rng.uniform(0.85, 1.0)),
            timing_jitter=float(rng.uniform(0.0, 0.012)),
            target_jitter=float(rng.uniform(0.05, 0.18)),
            rest_jaw=float(rng.choice([0.0, rng.uniform(0.0, 0.05)])),
            puff=float(rng.uniform(0.0, 0.3)),
        )


def frame_times(num_frames: int) -> np.ndarray:
    """Centre of each motion frame, seconds (frame i shows audio [i/25, (i+1)/25))."""
    return (np.arange(num_frames) + 0.5) / FPS


def articulation(
    phones: Sequence[Timed],
    num_frames: int,
    style: ArticulationStyle | None = None,
    rng: np.random.Generator | None = None,
    prominence: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Articulatory parameters at the frame centres, (T, len(PARAMS)), and the lip closure.

    ``prominence`` (per phone, about -1..2) opens stressed vowels wider. The closure (T,) is
    1 where a bilabial holds the lips together; every bilabial reaches it on at least the frame
    nearest its middle, so no closure falls between two frames.
    """
    style = style or ArticulationStyle()
    rng = rng or np.random.default_rng(0)
    t = frame_times(num_frames)
    spans, targets, doms = [], [], []
    for k, ph in enumerate(phones):
        dur = ph.end - ph.start
        if dur <= 0:
            continue
        bilabial = is_bilabial(ph.symbol)
        start, end = ph.start, ph.end
        if bilabial:
            start, end = start - BILABIAL_LEAD, max(end - BILABIAL_RELEASE, start + 0.01)
        elif style.timing_jitter > 0:
            start += rng.normal(0, style.timing_jitter)
            end = max(start + 0.005, end + rng.normal(0, style.timing_jitter))
        gain = 1.0
        if prominence is not None:
            gain += 0.15 * float(np.clip(prominence[k], -1.0, 2.0))
        gain *= float(np.exp(rng.normal(0, style.target_jitter)))
        pos = start
        for tgt, dom, share in _gesture(ph.symbol, dur):
            tgt = tgt.copy()
            if viseme_class(ph.symbol) is Viseme.VOWEL:
                tgt[P["jaw"]] *= gain
            seg_end = pos + share * (end - start)
            spans.append((pos, seg_end))
            targets.append(tgt)
            doms.append(dom)
            pos = seg_end
    if not spans:
        params = np.zeros((num_frames, NP))
        params[:, P["jaw"]] = style.rest_jaw
        return params.astype(np.float32), np.zeros(num_frames, np.float32)

    span = np.asarray(spans)  # (N, 2)
    tg = np.asarray(targets)  # (N, NP)
    dm = np.asarray(doms)  # (N, NP)
    before = np.maximum(span[:, :1] - t[None], 0.0)  # (N, T): time until the phone starts
    after = np.maximum(t[None] - span[:, 1:], 0.0)  # time since it ended
    tau_b = TAU_BEFORE.copy()
    tau_b[[P["round"], P["funnel"]]] *= style.anticipation
    # (N, T, NP): full dominance inside the phone, exponential decay outside.
    decay = np.exp(-before[..., None] / tau_b - after[..., None] / TAU_AFTER)
    d = dm[:, None, :] * decay
    rest = np.zeros(NP)
    rest[P["jaw"]] = style.rest_jaw
    num = (d * tg[:, None, :]).sum(0) + REST_DOMINANCE * rest
    den = d.sum(0) + REST_DOMINANCE
    params = num / den

    closure = params[:, P["close"]].copy()
    for ph in phones:
        if is_bilabial(ph.symbol) and ph.end > ph.start and ph.start * FPS < num_frames:
            frames = bilabial_frames(ph.start, ph.end, num_frames)
            closure[frames] = 1.0
            params[frames, P["press"]] = np.maximum(params[frames, P["press"]], 0.25)
    params[:, P["close"]] = closure

    params[:, P["jaw"]] *= style.jaw_gain
    params[:, P["round"]] *= style.round_gain
    params[:, P["funnel"]] *= style.round_gain
    params[:, P["spread"]] *= style.spread_gain
    params[:, P["press"]] *= style.press_gain
    return np.clip(params, 0.0, 1.0).astype(np.float32), np.clip(closure, 0, 1).astype(np.float32)


def _both(name: str) -> list[int]:
    return [MOTION_INDEX[name + "Left"], MOTION_INDEX[name + "Right"]]


def mouth_blendshapes(params: np.ndarray, style: ArticulationStyle | None = None) -> np.ndarray:
    """ARKit mouth and jaw weights (T, MOTION_DIM) for articulatory parameters (T, PARAMS)."""
    style = style or ArticulationStyle()
    p = {name: params[:, i] for i, name in enumerate(PARAMS)}
    out = np.zeros((len(params), MOTION_DIM), np.float32)
    jaw = p["jaw"]
    out[:, MOTION_INDEX["jawOpen"]] = jaw
    for i in _both("mouthLowerDown"):
        out[:, i] = 0.35 * jaw * (1.0 + 0.6 * p["spread"])
    for i in _both("mouthUpperUp"):
        out[:, i] = 0.12 * p["spread"] + 0.25 * p["labiodental"]
    for i in _both("mouthStretch"):
        out[:, i] = 0.3 * p["spread"]
    for i in _both("mouthDimple"):
        out[:, i] = 0.08 * p["spread"]
    for i in _both("mouthPress"):
        out[:, i] = p["press"]
    out[:, MOTION_INDEX["mouthPucker"]] = 0.85 * p["round"]
    out[:, MOTION_INDEX["mouthFunnel"]] = 0.6 * p["funnel"]
    out[:, MOTION_INDEX["mouthRollLower"]] = 0.6 * p["labiodental"]
    out[:, MOTION_INDEX["mouthRollUpper"]] = 0.3 * p["press"]
    out[:, MOTION_INDEX["mouthShrugUpper"]] = 0.1 * p["labiodental"]
    out[:, MOTION_INDEX["tongueOut"]] = 0.3 * p["tongue"]
    out[:, MOTION_INDEX["cheekPuff"]] = style.puff * p["press"]
    out[:, MOTION_INDEX["mouthClose"]] = p["close"] * style.close_level
    return out


# Channels that part the lips in the rig (see `lip_opening`); a closure scales them away.
_GAP_CHANNELS = [
    *_both("mouthLowerDown"), *_both("mouthUpperUp"), MOTION_INDEX["mouthFunnel"],
    MOTION_INDEX["mouthShrugUpper"], MOTION_INDEX["jawForward"], MOTION_INDEX["tongueOut"],
]  # fmt: skip


def apply_lip_closure(motion: np.ndarray, closure: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Bring the lips together where ``closure`` is 1, whatever else the mouth is doing.

    Run after emotion offsets: a smile's raised upper lip or a surprised open jaw are scaled
    away in proportion to the closure, the jaw rises (to half its opening, at most
    `JAW_AT_CLOSURE`), and mouthClose seals the rest.
    """
    out = motion.copy()
    c = np.clip(closure, 0.0, 1.0)[:, None]
    out[:, _GAP_CHANNELS] *= 1.0 - c
    jaw = MOTION_INDEX["jawOpen"]
    closed_jaw = np.minimum(0.5 * out[:, jaw], JAW_AT_CLOSURE)
    out[:, jaw] = (1.0 - c[:, 0]) * out[:, jaw] + c[:, 0] * closed_jaw
    close = MOTION_INDEX["mouthClose"]
    out[:, close] = np.maximum(out[:, close], c[:, 0] * level)
    return out


# ---- What "lips closed" means --------------------------------------------------------------

# Calibrated on engine.face_rig with the default portrait (tests/test_data_synth.py checks it):
# the gap between the inner lip contours at the centre, in inter-ocular distances (IOD).
JAW_GAP = (0.38, -0.05)  # gap = 0.38 j - 0.05 j^2 for jawOpen j alone
CHANNEL_GAP = {
    "mouthLowerDown": 0.10,  # both sides at 1 (mean of Left and Right)
    "mouthUpperUp": 0.063,
    "mouthFunnel": 0.10,
    "mouthShrugUpper": 0.039,
    "jawForward": 0.015,
}
LIPS_CLOSED_IOD = 0.02  # about one pixel at 256 px: lips touching


def lip_opening(motion: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Gap between the lips at their centre, in IOD, for motion frames (..., MOTION_DIM).

    jawOpen opens the gap; mouthClose cancels most of the jaw's drop on the lower lip and
    brings the upper lip down (the rig keeps (1 - 0.75 c)(1 - 0.35 c) of it); mouthLowerDown,
    mouthUpperUp, mouthFunnel, mouthShrugUpper and jawForward add their own gap; pucker, press,
    smile, stretch and frown move the lips without parting them. A torch tensor in gives a
    differentiable tensor out (the lip refiner trains on it).
    """
    is_tensor = isinstance(motion, torch.Tensor)
    m = motion if is_tensor else np.asarray(motion, dtype=np.float64)
    w = m[..., : MOTION_INDEX["headPitch"]].clip(0.0, 1.0)

    def ch(name: str):
        if name in MOTION_INDEX:
            return w[..., MOTION_INDEX[name]]
        return 0.5 * (w[..., MOTION_INDEX[name + "Left"]] + w[..., MOTION_INDEX[name + "Right"]])

    j, c = ch("jawOpen"), ch("mouthClose")
    gap = (JAW_GAP[0] * j + JAW_GAP[1] * j**2) * (1 - 0.75 * c) * (1 - 0.35 * c)
    for name, k in CHANNEL_GAP.items():
        gap = gap + k * ch(name)
    return gap.clamp(min=0.0) if is_tensor else np.maximum(gap, 0.0)


def lips_closed(motion: np.ndarray, threshold: float = LIPS_CLOSED_IOD) -> np.ndarray:
    return lip_opening(motion) < threshold


def bilabial_frames(start: float, end: float, num_frames: int) -> np.ndarray:
    """Frames that show a bilabial spanning [start, end) s: those whose centre lies inside,
    or the one nearest its middle when it is shorter than a frame."""
    t = frame_times(num_frames)
    inside = np.flatnonzero((t >= start) & (t < end))
    if len(inside):
        return inside
    return np.array([int(np.clip(np.floor(0.5 * (start + end) * FPS), 0, num_frames - 1))])


def _span(ph: object) -> tuple[str, float, float]:
    if isinstance(ph, tuple):
        return ph  # type: ignore[return-value]
    return ph.symbol, ph.start, ph.end  # type: ignore[attr-defined]


def bilabial_closure_rate(
    motion: np.ndarray, phones: Sequence[object], threshold: float = LIPS_CLOSED_IOD
) -> tuple[float, int]:
    """(share of bilabials whose lips close on some frame that shows them, how many there are).

    ``phones``: anything with ``symbol``, ``start``, ``end`` (seconds), e.g. corpus `Phone`s,
    or (symbol, start, end) tuples. A bilabial counts as closed when `lip_opening` drops under
    ``threshold`` on any of its `bilabial_frames`. Returns (nan, 0) when there is no bilabial.
    """
    opening = lip_opening(motion)
    closed = total = 0
    for ph in phones:
        symbol, start, end = _span(ph)
        if not is_bilabial(symbol) or end <= start or start * FPS >= len(motion):
            continue
        total += 1
        closed += bool(opening[bilabial_frames(start, end, len(motion))].min() < threshold)
    return (closed / total if total else float("nan")), total
