"""Everything in a motion target except the articulation: emotion, prosody, blinks, gaze, head.

An emotion is a distribution, not a pose: `EmotionProfile` holds a mean expression at full
intensity, alternative modes (an open or a closed smile, a pout or a downcast sad face), head
pose offsets, and dynamics (how much the head moves, how often the eyes blink and glance,
how strongly stressed syllables are marked with nods and brow raises). `draw_style` samples one
take from it: per-channel offsets jittered around the mean, scaled by intensity (1: ~0.4,
2: ~0.7, 3: 1.0), with a slight left/right asymmetry (contempt: strongly one-sided, on a random
side). `expression_motion` then plays the take over time: the expression builds up or is
already held, drifts slowly, swells on stressed syllables; the head sways with breathing, nods
on accents and follows the pitch; blinks come at the emotion's rate; the gaze jumps between
fixations and counter-rotates against the head.

The same sentence under the same emotion thus gets a different, equally valid motion each time,
which is the variety diffusion is meant to learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.blendshapes import MOTION_DIM, MOTION_INDEX, NUM_BLENDSHAPES
from engine.data.phonemes import is_silence, is_vowel
from engine.emotions import EMOTIONS
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

# ---- Emotion profiles --------------------------------------------------------------------------
# Channel keys: an ARKit name, a name without its Left/Right suffix (both sides), or a name
# ending in ":side" / ":other" (contempt's one-sided expression; the side is drawn per take).
# Values are weights at intensity 3; head values in radians and face units.


@dataclass(frozen=True)
class EmotionProfile:
    face: dict[str, float]
    modes: tuple[tuple[float, dict[str, float]], ...] = ()
    head: dict[str, float] = field(default_factory=dict)  # "yaw"/"roll" get a random sign
    blinks_per_min: float = 17.0
    nod_gain: float = 1.0
    nod_time: float = 0.2  # s, rise time of a nod: short = sharp
    brow_prob: float = 0.25  # chance a pitch accent gets a brow raise
    accent_face: dict[str, float] = field(default_factory=dict)  # swell on stressed syllables
    articulation: tuple[float, float, float] = (1.0, 1.0, 1.0)  # jaw, round, spread gains
    head_motion: float = 1.0
    slowness: float = 1.0  # > 1: slower drifts
    gaze_rate: float = 1.0
    gaze_bias: tuple[float, float] = (0.0, 0.0)  # (x to the subject's left, y down)
    tremor: float = 0.0


PROFILES: dict[str, EmotionProfile] = {
    "neutral": EmotionProfile(
        face={},
        modes=((0.6, {}), (0.4, {"browInnerUp": 0.05, "mouthPress": 0.05})),
        accent_face={"browInnerUp": 0.05},
    ),
    "happy": EmotionProfile(
        face={"mouthSmile": 0.7, "cheekSquint": 0.5, "eyeSquint": 0.3, "mouthDimple": 0.2,
              "browOuterUp": 0.05},
        modes=((0.5, {}), (0.5, {"jawOpen": 0.06, "mouthUpperUp": 0.12, "cheekSquint": 0.15,
                                 "mouthSmile": 0.1})),
        head={"headPitch": -0.04, "roll": 0.05},
        blinks_per_min=15.0, nod_gain=1.6, brow_prob=0.4,
        accent_face={"mouthSmile": 0.15, "cheekSquint": 0.1, "browOuterUp": 0.05},
        articulation=(1.05, 0.7, 1.3), head_motion=1.3,
    ),
    "sad": EmotionProfile(
        face={"mouthFrown": 0.7, "browInnerUp": 0.8, "browDown": 0.15, "mouthShrugLower": 0.2,
              "mouthPress": 0.15, "eyeLookDown": 0.2, "eyeBlink": 0.2},
        modes=((0.5, {"mouthShrugLower": 0.25, "mouthPucker": 0.1}),
               (0.5, {"eyeLookDown": 0.2, "mouthFrown": 0.15})),
        head={"headPitch": 0.15, "headTy": 0.04},
        blinks_per_min=12.0, nod_gain=0.5, nod_time=0.3, brow_prob=0.3,
        accent_face={"browInnerUp": 0.12},
        articulation=(0.75, 1.0, 0.8), head_motion=0.6, slowness=1.6, gaze_rate=0.6,
        gaze_bias=(0.0, 0.5),
    ),
    "angry": EmotionProfile(
        face={"browDown": 0.9, "eyeSquint": 0.4, "mouthPress": 0.5, "noseSneer": 0.3,
              "mouthFrown": 0.2, "eyeWide": 0.1, "jawForward": 0.05},
        modes=((0.55, {"mouthPress": 0.2, "mouthRollLower": 0.15}),
               (0.45, {"mouthUpperUp": 0.25, "noseSneer": 0.2, "eyeWide": 0.2})),
        head={"headPitch": 0.07, "headTz": 0.04},
        blinks_per_min=14.0, nod_gain=1.4, nod_time=0.12, brow_prob=0.35,
        accent_face={"browDown": 0.2, "noseSneer": 0.1},
        articulation=(1.0, 0.9, 1.1), head_motion=1.2, slowness=0.8, gaze_rate=0.7,
    ),
    "surprised": EmotionProfile(
        face={"browInnerUp": 0.8, "browOuterUp": 0.85, "eyeWide": 0.8, "jawOpen": 0.06},
        modes=((0.5, {"jawOpen": 0.08, "mouthFunnel": 0.1}), (0.5, {})),
        head={"headPitch": -0.08, "headTz": -0.03},
        blinks_per_min=8.0, nod_gain=0.9, brow_prob=0.5,
        accent_face={"browInnerUp": 0.15, "browOuterUp": 0.15, "eyeWide": 0.1},
        articulation=(1.15, 1.1, 1.0), head_motion=1.1, gaze_rate=0.8, gaze_bias=(0.0, -0.2),
    ),
    "fearful": EmotionProfile(
        face={"browInnerUp": 0.8, "browOuterUp": 0.3, "browDown": 0.2, "eyeWide": 0.7,
              "mouthStretch": 0.6, "mouthFrown": 0.15},
        modes=((0.5, {"mouthStretch": 0.2, "jawOpen": 0.05}),
               (0.5, {"mouthPress": 0.2, "eyeLookDown": 0.15})),
        head={"headPitch": 0.05, "headTz": -0.05, "yaw": 0.05},
        blinks_per_min=24.0, nod_gain=0.6, nod_time=0.15, brow_prob=0.35,
        accent_face={"browInnerUp": 0.12, "eyeWide": 0.1},
        articulation=(0.9, 0.9, 1.2), head_motion=0.8, slowness=0.7, gaze_rate=2.0, tremor=1.0,
    ),
    "disgusted": EmotionProfile(
        face={"noseSneer": 0.75, "mouthUpperUp": 0.45, "browDown": 0.55, "eyeSquint": 0.45,
              "cheekSquint": 0.35, "mouthFrown": 0.3, "mouthShrugUpper": 0.25},
        modes=((0.5, {"noseSneer": 0.15, "mouthUpperUp": 0.1}),
               (0.5, {"mouthShrugLower": 0.25, "mouthRollLower": 0.15})),
        head={"headPitch": -0.03, "headTz": -0.04, "yaw": 0.07, "roll": 0.04},
        blinks_per_min=18.0, nod_gain=0.8, brow_prob=0.2,
        accent_face={"noseSneer": 0.12, "mouthUpperUp": 0.08},
        articulation=(0.85, 0.9, 1.0), head_motion=0.9,
    ),
    "contempt": EmotionProfile(
        face={"mouthSmile:side": 0.6, "mouthDimple:side": 0.5, "cheekSquint:side": 0.2,
              "mouthPress:side": 0.15, "eyeSquint": 0.15, "browOuterUp:side": 0.15,
              "mouth:side": 0.15},
        modes=((0.5, {"eyeLookUp": 0.12}), (0.5, {"browDown:other": 0.15})),
        head={"headPitch": -0.07, "roll": 0.05, "yaw": 0.05},
        blinks_per_min=15.0, nod_gain=0.7, nod_time=0.25, brow_prob=0.2,
        accent_face={"mouthSmile:side": 0.1},
        articulation=(0.85, 0.9, 1.0), head_motion=0.8, slowness=1.2,
    ),
}  # fmt: skip
assert tuple(PROFILES) == EMOTIONS

INTENSITY_SCALE = {1: 0.4, 2: 0.7, 3: 1.0}


def _sides(key: str, side: str) -> list[tuple[str, float]]:
    """ARKit channels (and a share) a profile key stands for."""
    name, _, which = key.partition(":")
    if which:
        s = side if which == "side" else ("Right" if side == "Left" else "Left")
        return [(name + s, 1.0)]
    if name in MOTION_INDEX:
        return [(name, 1.0)]
    return [(name + "Left", 1.0), (name + "Right", 1.0)]


@dataclass
class ExpressionStyle:
    """One take of an emotion: what `expression_motion` plays over time."""

    emotion: str
    intensity: int
    face: np.ndarray  # (MOTION_DIM,) expression offsets held through the take
    accent_face: np.ndarray  # (MOTION_DIM,) swell per stressed syllable
    head: np.ndarray  # (MOTION_DIM,) head pose offsets (pose channels only)
    articulation: tuple[float, float, float]
    blinks_per_min: float
    nod_gain: float
    nod_time: float
    brow_prob: float
    head_motion: float
    slowness: float
    gaze_rate: float
    gaze_bias: tuple[float, float]
    tremor: float
    onset: float  # 0: expression already held at the start; else seconds to build up
    onset_from: float  # share of the expression at the start when it builds up
    drift: float  # relative amplitude of slow expression drift
    side: str  # contempt's side


def draw_style(rng: np.random.Generator, emotion: str, intensity: int) -> ExpressionStyle:
    """Sample one take of ``emotion`` at ``intensity`` (1-3)."""
    prof = PROFILES[emotion]
    scale = INTENSITY_SCALE[intensity] * float(np.clip(rng.normal(1.0, 0.1), 0.75, 1.25))
    side = "Left" if rng.random() < 0.5 else "Right"
    mode_p = np.array([p for p, _ in prof.modes]) if prof.modes else None
    mode = prof.modes[int(rng.choice(len(prof.modes), p=mode_p / mode_p.sum()))][1] if (
        prof.modes) else {}  # fmt: skip

    face = np.zeros(MOTION_DIM, np.float32)
    for table in (prof.face, mode):
        for key, value in table.items():
            jitter = float(np.exp(rng.normal(0.0, 0.2)))
            for name, share in _sides(key, side):
                # Faces are never quite symmetric: a few percent between the two sides.
                asym = 1.0 + (rng.normal(0.0, 0.07) if ":" not in key else 0.0)
                face[MOTION_INDEX[name]] += value * share * jitter * asym * scale
    # A personal resting face, the same whatever the emotion: small, random.
    for name in ("browInnerUp", "browDownLeft", "browDownRight", "mouthPressLeft",
                 "mouthPressRight", "mouthSmileLeft", "mouthSmileRight", "eyeSquintLeft",
                 "eyeSquintRight", "mouthFrownLeft", "mouthFrownRight"):  # fmt: skip
        face[MOTION_INDEX[name]] += max(0.0, rng.normal(0.0, 0.025))

    accent = np.zeros(MOTION_DIM, np.float32)
    for key, value in prof.accent_face.items():
        for name, share in _sides(key, side):
            accent[MOTION_INDEX[name]] += value * share * scale * float(rng.uniform(0.6, 1.4))

    head = np.zeros(MOTION_DIM, np.float32)
    for key, value in prof.head.items():
        jitter = float(np.exp(rng.normal(0.0, 0.25)))
        if key in ("yaw", "roll"):
            name = "headYaw" if key == "yaw" else "headRoll"
            sign = 1.0 if side == "Left" else -1.0  # contempt tilts towards its smirk
            if emotion != "contempt":
                sign = 1.0 if rng.random() < 0.5 else -1.0
            head[MOTION_INDEX[name]] += sign * value * jitter * scale
        else:
            head[MOTION_INDEX[key]] += value * jitter * scale

    gain = [float(1.0 + (g - 1.0) * scale) for g in prof.articulation]
    if emotion == "angry" and mode.get("mouthUpperUp"):
        gain[0] *= 1.2  # the shouting mode opens wide; the tight one keeps the jaw in
    held = rng.random() < 0.5
    return ExpressionStyle(
        emotion=emotion,
        intensity=intensity,
        face=face,
        accent_face=accent,
        head=head,
        articulation=(gain[0], gain[1], gain[2]),
        blinks_per_min=float(
            np.clip(prof.blinks_per_min * np.exp(rng.normal(0.0, 0.25)), 6.0, 32.0)
        ),
        nod_gain=prof.nod_gain * (1 + (scale - 0.7) * 0.5) * float(rng.uniform(0.6, 1.4)),
        nod_time=prof.nod_time * float(rng.uniform(0.8, 1.25)),
        brow_prob=float(np.clip(prof.brow_prob * rng.uniform(0.5, 1.5), 0.0, 0.9)),
        head_motion=prof.head_motion * float(rng.uniform(0.6, 1.4)),
        slowness=prof.slowness * float(rng.uniform(0.8, 1.25)),
        gaze_rate=prof.gaze_rate * float(rng.uniform(0.6, 1.5)),
        gaze_bias=prof.gaze_bias,
        tremor=prof.tremor * scale,
        onset=0.0 if held else float(rng.uniform(0.4, 1.5)),
        onset_from=float(rng.uniform(0.2, 0.7)),
        drift=float(rng.uniform(0.08, 0.25)),
        side=side,
    )


# ---- Prosody -------------------------------------------------------------------------------------


@dataclass
class Accent:
    time: float  # s, onset of the stressed vowel
    strength: float  # about 0.3..1.5
    pitch_peak: bool  # the vowel carries a high pitch (brow raises go there)


@dataclass
class Prosody:
    energy_db: np.ndarray  # (T,) frame energy, dB
    f0: np.ndarray  # (T,) Hz, 0 where unvoiced
    f0_z: np.ndarray  # (T,) pitch z-scored over the take's voiced frames, 0 where unvoiced
    speaking: np.ndarray  # (T,) 1 inside speech, 0 in pauses and silence, smoothed
    accents: list[Accent]
    prominence: np.ndarray  # (P,) per phone (0 for consonants and pauses)
    pauses: list[float]  # s, ends of phrases (long pauses): blinks like to go there


def _frames_of(audio: np.ndarray, num_frames: int, width: int) -> np.ndarray:
    """(T, width) windows centred on the frame centres, zero outside the audio."""
    centres = np.arange(num_frames) * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME // 2
    pad = width // 2
    padded = np.zeros(num_frames * SAMPLES_PER_FRAME + 2 * pad, np.float32)
    body = audio[: num_frames * SAMPLES_PER_FRAME]
    padded[pad : pad + len(body)] = body
    idx = centres[:, None] + np.arange(width)[None]
    return padded[idx]


def pitch_track(audio: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(energy dB, f0 Hz) per motion frame by normalised autocorrelation, 60-400 Hz."""
    width = 1024
    frames = _frames_of(np.asarray(audio, np.float32), num_frames, width)
    win = np.hanning(width).astype(np.float32)
    x = frames * win
    energy = 10 * np.log10(np.mean(x**2, axis=1) + 1e-10)
    spec = np.fft.rfft(x, n=2 * width)
    ac = np.fft.irfft(spec.real**2 + spec.imag**2, n=2 * width)[:, :width]
    win_ac = np.correlate(win, win, "full")[width - 1 :]  # corrects the window's taper
    ac = ac / np.maximum(win_ac[None], 1e-3) / np.maximum(ac[:, :1] / win_ac[0], 1e-12)
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    peak = ac[np.arange(num_frames), lag]
    voiced = (peak > 0.45) & (energy > energy.max() - 35.0)
    f0 = np.where(voiced, SAMPLE_RATE / lag, 0.0)
    return energy.astype(np.float32), f0.astype(np.float32)


def _smooth(x: np.ndarray, sigma_frames: float) -> np.ndarray:
    if sigma_frames <= 0 or len(x) == 0:
        return x
    r = int(np.ceil(3 * sigma_frames))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_frames) ** 2)
    k /= k.sum()
    padded = np.pad(x, (r, r), mode="edge")
    return np.convolve(padded, k, mode="valid")


def analyze_prosody(audio: np.ndarray, phones: Sequence, num_frames: int) -> Prosody:
    """Prosody of the clean speech: energy, pitch, where speech is, which syllables stand out.

    A vowel's prominence combines its duration, loudness and pitch, each z-scored over the
    take (espeak lengthens, louds and raises stressed vowels, and emphasis more so); accents
    are the prominent vowels, at least 250 ms apart.
    """
    energy, f0 = pitch_track(audio, num_frames)
    voiced = f0 > 0
    f0_z = np.zeros(num_frames, np.float32)
    if voiced.sum() > 3:
        logf = np.log(f0[voiced])
        f0_z[voiced] = (logf - logf.mean()) / (logf.std() + 1e-6)

    speaking = np.zeros(num_frames, np.float32)
    pauses = []
    t = (np.arange(num_frames) + 0.5) / FPS
    for ph in phones:
        if is_silence(ph.symbol):
            if ph.end - ph.start > 0.2:
                pauses.append(ph.start)
            continue
        speaking[(t >= ph.start) & (t < ph.end)] = 1.0
    speaking = np.clip(_smooth(speaking, 3.0), 0.0, 1.0).astype(np.float32)

    prominence = np.zeros(len(phones), np.float32)
    vowels = [k for k, ph in enumerate(phones) if is_vowel(ph.symbol)]
    accents: list[Accent] = []
    if vowels:
        feats = []
        for k in vowels:
            ph = phones[k]
            f = np.flatnonzero((t >= ph.start) & (t < ph.end))
            if len(f) == 0:
                f = np.array([min(int(0.5 * (ph.start + ph.end) * FPS), num_frames - 1)])
            feats.append(
                (np.log(ph.end - ph.start + 1e-3), energy[f].max(), f0_z[f].max(), ph.start)
            )
        a = np.asarray(feats)
        z = (a[:, :3] - a[:, :3].mean(0)) / (a[:, :3].std(0) + 1e-6)
        prom = 0.4 * z[:, 0] + 0.35 * z[:, 1] + 0.25 * z[:, 2]
        prominence[vowels] = prom
        order = np.argsort(-prom)
        taken: list[float] = []
        for i in order:
            if prom[i] < 0.25:
                break
            when = float(a[i, 3])
            if all(abs(when - w) >= 0.25 for w in taken):
                taken.append(when)
                accents.append(
                    Accent(when, float(np.clip(0.5 + 0.5 * prom[i], 0.3, 1.5)), bool(z[i, 2] > 0.5))
                )
        accents.sort(key=lambda ac: ac.time)
    return Prosody(energy, f0, f0_z, speaking, accents, prominence, pauses)


def silent_prosody(num_frames: int) -> Prosody:
    """Prosody of a listening take: no speech at all."""
    z = np.zeros(num_frames, np.float32)
    return Prosody(z - 100.0, z.copy(), z.copy(), z.copy(), [], np.zeros(0, np.float32), [])


# ---- Time functions ------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, num_frames: int, timescale: float, n: int = 1):
    """(T, n) Gaussian-smoothed noise with unit standard deviation, correlated over
    ``timescale`` seconds: slow drifts of the head, the gaze, the expression."""
    sigma = max(timescale * FPS / 2.0, 0.5)
    r = int(np.ceil(3 * sigma))
    white = rng.standard_normal((num_frames + 2 * r, n))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= np.sqrt((k**2).sum())  # unit variance out
    out = np.stack([np.convolve(white[:, j], k, mode="valid") for j in range(n)], axis=1)
    return out[:num_frames].astype(np.float32)


def _bump(t: np.ndarray, at: float, rise: float) -> np.ndarray:
    """A gamma-shaped pulse starting at ``at``, peaking (at 1) ``rise`` s later."""
    x = np.maximum(t - at, 0.0) / rise
    return x * np.exp(1.0 - x)


def _blink_curve(t: np.ndarray, at: float, close: float, hold: float, opening: float):
    """Lid closure (0..1) of one blink starting at ``at``: fast down, short hold, slower up."""
    x = t - at
    down = np.clip(x / close, 0.0, 1.0)
    up = np.clip(1.0 - (x - close - hold) / opening, 0.0, 1.0)
    return np.where(x < close, np.sin(0.5 * np.pi * down) ** 2, np.where(x < close + hold, 1.0, up))


def blink_times(
    rng: np.random.Generator, duration: float, per_min: float, pauses: Sequence[float]
) -> list[float]:
    """Blink onsets: a renewal process at ``per_min`` (gamma intervals, never closer than
    0.4 s) with a pull towards phrase ends, where people like to blink."""
    times: list[float] = []
    mean = 60.0 / per_min
    t = float(rng.uniform(0.0, mean))
    while t < duration:
        near = [p for p in pauses if 0 < p - t < 0.6]
        if near and rng.random() < 0.5:
            t = near[0] + float(rng.uniform(0.0, 0.15))
        times.append(t)
        if rng.random() < 0.08:  # an occasional double blink
            times.append(t + float(rng.uniform(0.3, 0.45)))
        t = times[-1] + max(0.4, float(rng.gamma(3.0, mean / 3.0)))
    return [b for b in times if b < duration]


def _frame_mean(fn, num_frames: int, sub: int = 4) -> np.ndarray:
    """Average of a continuous curve over each frame's 40 ms, as a camera's exposure sees it."""
    ts = (np.arange(num_frames)[:, None] + (np.arange(sub)[None] + 0.5) / sub) / FPS
    return fn(ts.reshape(-1)).reshape(num_frames, sub).mean(1)


# ---- Playing a take ------------------------------------------------------------------------------


def _idx(*names: str) -> list[int]:
    return [MOTION_INDEX[n] for n in names]


_BROWS = _idx("browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight")
_EYES = _idx("eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "cheekSquintLeft",
             "cheekSquintRight", "noseSneerLeft", "noseSneerRight")  # fmt: skip
_POSE = _idx("headPitch", "headYaw", "headRoll", "headTx", "headTy", "headTz")


def expression_motion(
    style: ExpressionStyle, prosody: Prosody, num_frames: int, rng: np.random.Generator
) -> np.ndarray:
    """Motion (T, MOTION_DIM) of everything but articulation for one take."""
    T = num_frames
    t = (np.arange(T) + 0.5) / FPS
    out = np.zeros((T, MOTION_DIM), np.float32)
    speaking = prosody.speaking
    listening = not prosody.accents and float(speaking.max(initial=0.0)) == 0.0

    # The held expression: building up or already there, drifting slowly, a little livelier
    # while speaking; brows, eyes and mouth drift apart from each other.
    env = np.ones(T, np.float32)
    if style.onset > 0:
        start = float(rng.uniform(0.0, 0.8))
        ramp = np.clip((t - start) / style.onset, 0.0, 1.0)
        env = style.onset_from + (1.0 - style.onset_from) * (ramp * ramp * (3 - 2 * ramp))
    drift = 1.0 + style.drift * smooth_noise(rng, T, 1.5 * style.slowness, 3)
    group = np.ones((T, MOTION_DIM), np.float32)
    group[:, _BROWS] = drift[:, :1]
    group[:, _EYES] = drift[:, 1:2]
    mouth = [i for i in range(NUM_BLENDSHAPES) if i not in _BROWS and i not in _EYES]
    group[:, mouth] = drift[:, 2:3]
    lively = (1.0 + 0.1 * speaking)[:, None]
    out += style.face[None] * env[:, None] * group * lively

    # Head pose: the emotion's posture, slow drift (more while speaking), breathing sway.
    head_amp = np.array([0.025, 0.05, 0.02, 0.02, 0.015, 0.015], np.float32) * style.head_motion
    activity = (0.45 + 0.55 * speaking)[:, None]
    out[:, _POSE] += style.head[_POSE][None] * env[:, None]
    out[:, _POSE] += smooth_noise(rng, T, 2.0 * style.slowness, 6) * head_amp * activity
    breath_rate = float(rng.uniform(0.2, 0.33))  # 12-20 breaths a minute
    breath = np.sin(2 * np.pi * breath_rate * t + rng.uniform(0, 2 * np.pi))
    out[:, MOTION_INDEX["headTy"]] += float(rng.uniform(0.004, 0.01)) * breath
    out[:, MOTION_INDEX["headPitch"]] += float(rng.uniform(0.002, 0.006)) * breath
    if style.tremor > 0:
        shake = smooth_noise(rng, T, 0.12, 2) * 0.004 * style.tremor
        out[:, MOTION_INDEX["headYaw"]] += shake[:, 0]
        out[:, MOTION_INDEX["headPitch"]] += shake[:, 1]
    # Higher pitch lifts the chin a little (negative pitch is up).
    pitch_follow = float(rng.uniform(0.005, 0.02)) * style.head_motion
    out[:, MOTION_INDEX["headPitch"]] -= pitch_follow * _smooth(prosody.f0_z, 2.0)

    # Accents: a nod (down, sometimes up for surprise), the emotion's swell, maybe a brow raise.
    up_nod = -1.0 if style.emotion == "surprised" else 1.0
    for ac in prosody.accents:
        lead = float(rng.uniform(0.03, 0.1))  # the head moves slightly before the voice
        bump = _bump(t, ac.time - lead, style.nod_time)
        sign = up_nod if rng.random() < 0.85 else -up_nod
        nod = sign * float(rng.uniform(0.015, 0.045)) * style.nod_gain * ac.strength
        out[:, MOTION_INDEX["headPitch"]] += nod * bump
        out[:, MOTION_INDEX["headYaw"]] += float(rng.normal(0, 0.3)) * abs(nod) * bump
        swell = _bump(t, ac.time - 0.05, 0.25)
        out += style.accent_face[None] * (ac.strength * swell)[:, None]
        if ac.pitch_peak and rng.random() < style.brow_prob:
            raise_ = _bump(t, ac.time - 0.08, float(rng.uniform(0.15, 0.3)))
            amp = float(rng.uniform(0.1, 0.3)) * ac.strength
            out[:, MOTION_INDEX["browInnerUp"]] += amp * raise_
            out[:, _idx("browOuterUpLeft", "browOuterUpRight")] += 0.8 * amp * raise_[:, None]
    if listening:
        # Backchannel nods while listening: slow, small, now and then.
        for when in np.cumsum(rng.exponential(2.5, size=int(T / FPS / 1.5) + 2)):
            if when < T / FPS and rng.random() < 0.5:
                out[:, MOTION_INDEX["headPitch"]] += float(rng.uniform(0.01, 0.03)) * _bump(
                    t, float(when), 0.3
                )

    # Nobody articulates quite symmetrically: the mouth and jaw wander sideways while talking.
    side = smooth_noise(rng, T, 0.8, 2) * speaking[:, None]
    side *= np.array([rng.uniform(0.02, 0.1), rng.uniform(0.0, 0.04)], np.float32)
    for k, name in enumerate(("mouth", "jaw")):
        out[:, MOTION_INDEX[name + "Left"]] += np.maximum(side[:, k], 0.0)
        out[:, MOTION_INDEX[name + "Right"]] += np.maximum(-side[:, k], 0.0)

    # Gaze: fixations that jump (saccades), biased by emotion, counter-rotating with the head.
    gaze = np.zeros((T, 2), np.float32)
    when, k = 0.0, 0
    while when < T / FPS:
        dur = float(rng.gamma(2.0, 0.6 / style.gaze_rate)) + 0.2
        target = np.array(style.gaze_bias) * 0.4 + rng.normal(0.0, [0.25, 0.15])
        if k == 0 or rng.random() < 0.35:
            target *= 0.3  # back to the listener
        gaze[(t >= when) & (t < when + dur)] = target
        when += dur
        k += 1
    gaze[:, 0] -= 0.8 * out[:, MOTION_INDEX["headYaw"]] / 0.35  # the eyes hold the target
    gaze[:, 1] += 0.8 * out[:, MOTION_INDEX["headPitch"]] / 0.35
    gx, gy = np.clip(gaze[:, 0], -1, 1), np.clip(gaze[:, 1], -1, 1)
    # +x looks to the subject's left: the left eye looks out, the right eye in.
    out[:, MOTION_INDEX["eyeLookOutLeft"]] += np.maximum(gx, 0)
    out[:, MOTION_INDEX["eyeLookInRight"]] += np.maximum(gx, 0)
    out[:, MOTION_INDEX["eyeLookInLeft"]] += np.maximum(-gx, 0)
    out[:, MOTION_INDEX["eyeLookOutRight"]] += np.maximum(-gx, 0)
    out[:, _idx("eyeLookDownLeft", "eyeLookDownRight")] += np.maximum(gy, 0)[:, None]
    out[:, _idx("eyeLookUpLeft", "eyeLookUpRight")] += np.maximum(-gy, 0)[:, None]

    # Blinks on top of whatever the lids hold; wide eyes give way to the blink.
    duration = T / FPS
    lids = np.zeros(T, np.float32)
    for b in blink_times(rng, duration, style.blinks_per_min, prosody.pauses):
        close, hold = float(rng.uniform(0.06, 0.1)), float(rng.uniform(0.02, 0.06))
        opening = float(rng.uniform(0.12, 0.22)) * (1.4 if style.emotion == "sad" else 1.0)
        depth = 1.0 if rng.random() > 0.1 else float(rng.uniform(0.5, 0.8))  # half blinks

        def curve(ts, b=b, c=close, h=hold, o=opening):
            return _blink_curve(ts, b, c, h, o)

        lids = np.maximum(lids, depth * _frame_mean(curve, T))
    for side in ("Left", "Right"):
        blink = MOTION_INDEX["eyeBlink" + side]
        base = np.clip(out[:, blink], 0.0, 1.0)
        out[:, blink] = base + (1.0 - base) * lids
        out[:, MOTION_INDEX["eyeWide" + side]] *= 1.0 - lids
    return out
