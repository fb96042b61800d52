"""What the face does when nobody is speaking: a procedural idle layer and the mouth gate.

The models keep running in silence (the emotion is held by the style; the next utterance starts
from a face that was already moving), and two small, seeded, per-frame processes sit on top:

- `IdleMotion`: blinks (gamma-distributed intervals, an asymmetric close/open curve), a
  breathing sway of the head (two slow incommensurate sines, so it never loops visibly) and
  glances (the eyes jump to a small new target every few seconds, the head follows a little,
  slowly). Its output is an *offset* added to the motion, weighted by how silent it is.
- `MouthGate`: the speech envelope from the VAD flags, and what the mouth does without speech.
  Mouth channels that open the mouth or articulate go to rest (closed, still); the ones that
  carry the emotion (smile, frown, dimple, stretch, press) hold a slow average of what the
  model gives, so a happy face stays smiling with its lips closed. Speech needs a run of
  ``min_run`` flagged frames with a voiced one among them (a click is too short; a breath or
  a noise burst, which webrtcvad may flag, has no pitch), is seen ``pre`` frames early (the
  audio look-ahead pays for it) and held ``hangover`` frames after (word endings).

Both are deterministic functions of their frame index and seed, so they are chunk-invariant
like everything else in the session core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.blendshapes import MOTION_DIM, MOTION_INDEX, MOUTH_NAMES, NUM_BLENDSHAPES
from engine.timebase import FPS

# Mouth channels that hold the emotion through silence; every other mouth channel closes.
HOLD_NAMES: tuple[str, ...] = (
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthPressLeft", "mouthPressRight",
)  # fmt: skip
HOLD = np.array([MOTION_INDEX[n] for n in HOLD_NAMES])
CLOSE = np.array([MOTION_INDEX[n] for n in MOUTH_NAMES if n not in HOLD_NAMES])
MOUTH = np.array([MOTION_INDEX[n] for n in MOUTH_NAMES])


def frames(ms: float) -> int:
    return max(1, round(ms * FPS / 1000.0))


def smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class IdleConfig:
    enabled: bool = True  # False: no procedural layer (the models alone, for comparisons)
    blink_interval_s: float = 3.5  # mean time between blinks
    blink_min_s: float = 1.2
    blink_close_frames: int = 2  # 80 ms down, 40 ms shut, 120 ms up: a natural blink
    blink_hold_frames: int = 1
    blink_open_frames: int = 3
    breath_period_s: float = 4.2
    breath_pitch: float = 0.012  # radians
    breath_ty: float = 0.006  # face units
    sway_yaw: float = 0.015  # radians, the slower second sine
    glance_interval_s: float = 3.0
    glance_eyes: float = 0.22  # eyeLook* weight at the widest glance
    glance_head_yaw: float = 0.04  # radians the head follows at the widest glance
    glance_frames: int = 3  # an eye saccade (120 ms)
    head_follow_s: float = 0.6  # the head's lag behind the eyes
    # listening (the user speaks; `IdleMotion.listening`): eye contact, small nods, a head
    # tilt and raised inner brows, faded in and out over ``listen_ramp_s``
    listen_ramp_s: float = 0.4
    listen_glance_scale: float = 0.25  # glances shrink to this: the eyes stay on the user
    listen_nod_pitch: float = 0.05  # radians, down and back up
    listen_nod_s: float = 0.7
    listen_nod_interval_s: float = 2.6  # mean time between nods
    listen_tilt_roll: float = 0.035  # radians
    listen_brow: float = 0.18  # browInnerUp weight


class IdleMotion:
    """Seeded idle layer: `next()` gives the offset of the next frame (MOTION_DIM,)."""

    def __init__(self, cfg: IdleConfig, seed: int):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.n = 0
        self.phase = self.rng.uniform(0, 2 * math.pi, 2)
        self.next_blink = self._blink_gap()
        self.blink_start = -100
        self.next_glance = int(self.rng.uniform(0.5, 1.5) * cfg.glance_interval_s * FPS)
        self.gaze_from = np.zeros(2)  # (x: + looks to image right, y: + looks up)
        self.gaze_to = np.zeros(2)
        self.glance_start = -100
        self.head_yaw = 0.0
        self.head_pitch = 0.0
        self.listening = False
        self.attend = 0.0  # 0..1, follows `listening`
        # its own stream, so that a session that never listens idles exactly as before
        self.listen_rng = np.random.default_rng([seed, 1])
        self.next_nod = 0
        self.nod_start = -100

    def _blink_gap(self) -> int:
        c = self.cfg
        gap = max(c.blink_min_s, self.rng.gamma(4.0, c.blink_interval_s / 4.0))
        return int(gap * FPS)

    def _blink(self, n: int) -> float:
        c = self.cfg
        if n >= self.next_blink:
            self.blink_start, self.next_blink = n, n + self._blink_gap()
        k = n - self.blink_start
        if k < c.blink_close_frames:
            return smoothstep((k + 1) / c.blink_close_frames)
        k -= c.blink_close_frames
        if k < c.blink_hold_frames:
            return 1.0
        k -= c.blink_hold_frames
        if k < c.blink_open_frames:
            return 1.0 - smoothstep((k + 1) / c.blink_open_frames)
        return 0.0

    def _gaze(self, n: int) -> np.ndarray:
        c = self.cfg
        if n >= self.next_glance:
            self.gaze_from = self._gaze_at(n)
            # half the glances come back to the camera
            if self.rng.random() < 0.5 and np.abs(self.gaze_to).sum() > 0:
                self.gaze_to = np.zeros(2)
            else:
                self.gaze_to = self.rng.uniform(-1.0, 1.0, 2) * np.array([1.0, 0.5])
            self.glance_start = n
            self.next_glance = n + int(self.rng.uniform(0.4, 1.6) * c.glance_interval_s * FPS)
        return self._gaze_at(n)

    def _gaze_at(self, n: int) -> np.ndarray:
        a = smoothstep((n - self.glance_start + 1) / self.cfg.glance_frames)
        return self.gaze_from + a * (self.gaze_to - self.gaze_from)

    def _nod(self, n: int) -> float:
        """0..1 along the current nod (only while listening)."""
        c = self.cfg
        if self.listening and n >= self.next_nod:
            self.nod_start = n
            gap = self.listen_rng.uniform(0.6, 1.4) * c.listen_nod_interval_s
            self.next_nod = n + int(gap * FPS)
        k = (n - self.nod_start) / max(1.0, c.listen_nod_s * FPS)
        return math.sin(math.pi * k) ** 2 if 0 <= k < 1 else 0.0

    def next(self) -> np.ndarray:
        c, n = self.cfg, self.n
        self.n += 1
        out = np.zeros(MOTION_DIM, np.float32)
        blink = self._blink(n)
        out[MOTION_INDEX["eyeBlinkLeft"]] = out[MOTION_INDEX["eyeBlinkRight"]] = blink
        target = 1.0 if self.listening else 0.0
        self.attend += (target - self.attend) * (1.0 - math.exp(-1.0 / (c.listen_ramp_s * FPS)))
        a = self.attend
        gx, gy = self._gaze(n) * c.glance_eyes * (1.0 - (1.0 - c.listen_glance_scale) * a)
        # looking to the image's right: the left eye looks out, the right eye looks in
        out[MOTION_INDEX["eyeLookOutLeft"]] = max(gx, 0.0)
        out[MOTION_INDEX["eyeLookInRight"]] = max(gx, 0.0)
        out[MOTION_INDEX["eyeLookInLeft"]] = max(-gx, 0.0)
        out[MOTION_INDEX["eyeLookOutRight"]] = max(-gx, 0.0)
        out[MOTION_INDEX["eyeLookUpLeft"]] = out[MOTION_INDEX["eyeLookUpRight"]] = max(gy, 0.0)
        down = max(-gy, 0.0)
        out[MOTION_INDEX["eyeLookDownLeft"]] = out[MOTION_INDEX["eyeLookDownRight"]] = down
        follow = 1.0 - math.exp(-1.0 / (c.head_follow_s * FPS))
        target_yaw = gx / max(c.glance_eyes, 1e-6) * c.glance_head_yaw
        target_pitch = -gy / max(c.glance_eyes, 1e-6) * c.glance_head_yaw * 0.5
        self.head_yaw += follow * (target_yaw - self.head_yaw)
        self.head_pitch += follow * (target_pitch - self.head_pitch)
        t = n / FPS
        breath = math.sin(2 * math.pi * t / c.breath_period_s + self.phase[0])
        sway = math.sin(2 * math.pi * t / (c.breath_period_s * 2.618) + self.phase[1])
        out[MOTION_INDEX["headPitch"]] = c.breath_pitch * breath + self.head_pitch
        out[MOTION_INDEX["headTy"]] = c.breath_ty * breath
        out[MOTION_INDEX["headYaw"]] = c.sway_yaw * sway + self.head_yaw
        if a > 1e-3 or self.listening:
            out[MOTION_INDEX["headPitch"]] += a * c.listen_nod_pitch * self._nod(n)
            out[MOTION_INDEX["headRoll"]] += a * c.listen_tilt_roll
            out[MOTION_INDEX["browInnerUp"]] += a * c.listen_brow
        return out


@dataclass(frozen=True)
class GateConfig:
    enabled: bool = True  # False: the mouth always follows the model (for comparisons)
    pre_frames: int = 1  # open the mouth this early before speech (the look-ahead sees it)
    min_run: int = 2  # flagged frames in a row that count as speech (80 ms)
    hangover_ms: float = 200.0  # keep articulating after the last speech frame
    attack_ms: float = 80.0  # silence -> speech ramp
    release_ms: float = 160.0  # speech -> silence ramp, after the hangover
    interrupt_ms: float = 200.0  # ramp to a closed mouth after `interrupt()`
    hold_tau_ms: float = 400.0  # per stage of the two-stage low-pass of the held mouth shape


class MouthGate:
    """Speech envelope per frame and the silent mouth it blends towards.

    ``speech(n)``: some flagged frame in [n - hangover, n + pre] belongs to a run of flagged
    frames that is at least ``min_run`` long and contains a voiced frame, looking no further
    than n + lookahead (the audio frame n may read) and at most `MAX_RUN` frames back."""

    MAX_RUN = 50  # frames a run is followed back (2 s): bounds the per-frame work

    def __init__(self, cfg: GateConfig, lookahead: int):
        self.cfg = cfg
        self.lookahead = lookahead
        self.pre = min(cfg.pre_frames, lookahead)
        self.min_run = max(1, min(cfg.min_run, lookahead - self.pre + 1))
        self.hang = frames(cfg.hangover_ms) if cfg.hangover_ms > 0 else 0
        self.attack = 1.0 / frames(cfg.attack_ms)
        self.release = 1.0 / frames(cfg.release_ms)
        self.interrupt_release = 1.0 / frames(cfg.interrupt_ms)
        self.hold_alpha = 1.0 - math.exp(-1000.0 / (FPS * cfg.hold_tau_ms))
        self.env = 0.0
        self.hold: np.ndarray | None = None  # two cascaded one-pole stages, (2, len(HOLD))
        self.cut: int | None = None  # last interrupt: flags before it are ignored after it
        self.resumed = True

    @property
    def reach(self) -> int:
        """Frames past n that speech(n) reads flags of."""
        return self.lookahead

    def speech(self, n: int, vad) -> bool:
        """``vad``: has ``flag(m)`` and ``is_voiced(m)`` for frames up to n + lookahead."""
        floor = self.cut if self.cut is not None and n >= self.cut else None
        lo, hi = n - self.hang, n + self.pre
        if floor is not None:
            lo = max(lo, floor)
        if hi < lo:
            return False
        first = lo - self.MAX_RUN if floor is None else max(lo - self.MAX_RUN, floor)
        last = n + self.lookahead
        flags = [vad.flag(m) for m in range(first, last + 1)]
        voiced = [vad.is_voiced(m) for m in range(first, last + 1)]
        i = 0
        while i < len(flags):  # each run of flags once
            if not flags[i]:
                i += 1
                continue
            j = i
            while j < len(flags) and flags[j]:
                j += 1
            a, b = first + i, first + j - 1  # run [a, b]
            if b >= lo and a <= hi and j - i >= self.min_run and any(voiced[i:j]):
                return True
            i = j
        return False

    def interrupt(self, frame: int) -> None:
        self.cut = frame
        self.resumed = False

    def step(self, n: int, vad) -> float:
        """Advance the envelope to frame n; returns the blend weight of speech (0..1)."""
        target = 1.0 if self.speech(n, vad) else 0.0
        interrupted = self.cut is not None and n >= self.cut and not self.resumed
        if target > 0 and interrupted:
            self.resumed = True
        down = self.interrupt_release if interrupted else self.release
        self.env += min(max(target - self.env, -down), self.attack)
        return smoothstep(self.env)

    def apply(self, motion: np.ndarray, weight: float) -> np.ndarray:
        """The frame's mouth: ``weight`` of the model's, the rest the silent mouth."""
        # two one-pole stages: frame-to-frame chatter is attenuated far more than by one stage
        # of the same overall lag, while an emotion change still comes through in ~1 s
        x = motion[HOLD].astype(np.float64)
        if self.hold is None:
            self.hold = np.stack([x, x])
        else:
            self.hold[0] += self.hold_alpha * (x - self.hold[0])
            self.hold[1] += self.hold_alpha * (self.hold[0] - self.hold[1])
        out = motion.copy()
        out[CLOSE] = weight * motion[CLOSE]
        out[HOLD] = weight * motion[HOLD] + (1.0 - weight) * self.hold[1]
        return out


def add_idle(motion: np.ndarray, offset: np.ndarray, weight: float) -> np.ndarray:
    """motion + weight * offset, blendshapes kept in [0, 1]."""
    out = motion + np.float32(weight) * offset
    np.clip(out[:NUM_BLENDSHAPES], 0.0, 1.0, out=out[:NUM_BLENDSHAPES])
    return out
