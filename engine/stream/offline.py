"""The streaming code path over a whole utterance, without threads: what `dreamtalk render`
should call so that a file and a live stream give the same motion.

`render_motion` pushes the audio into a `SessionCore` in one piece, runs every block and
returns exactly one motion frame per 40 ms of audio (the last one partial). Because the core is
chunk-invariant, this equals a live session fed the same audio in any chunks, with the same
seed, frame for frame.
"""

from __future__ import annotations

import numpy as np

from engine.blendshapes import MOTION_DIM
from engine.motion_model import MotionModels
from engine.stream.audio_input import PolyphaseResampler, check_rate, to_mono_float
from engine.stream.config import StreamConfig
from engine.stream.core import MotionFrame, SessionCore
from engine.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME


def render_motion(
    models: MotionModels,
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    emotion: str | int = "neutral",
    intensity: int = 2,
    seed: int = 0,
    config: StreamConfig | None = None,
    style_clip: np.ndarray | None = None,
    frames_out: list[MotionFrame] | None = None,
) -> np.ndarray:
    """Motion (ceil(len / 640 at 16 kHz), 58) of a whole utterance, through the live path.

    ``frames_out``, when given, receives the `MotionFrame` records (speech weight, ...)."""
    cfg = config or StreamConfig()
    x, _ = to_mono_float(audio)
    rate = check_rate(sample_rate)
    if rate != SAMPLE_RATE:
        rs = PolyphaseResampler(rate)
        x = np.concatenate([rs.process(x), rs.finish()])
    if style_clip is not None:
        style = models.style_from_clip(style_clip)
    else:
        style = models.style_from_emotion(emotion, intensity)
    core = SessionCore(models, cfg, style, seed)
    core.push(x)
    core.finish_input()
    n = -(-len(x) // SAMPLES_PER_FRAME)
    frames: list[MotionFrame] = []
    while core.next_emit < n:
        frames.extend(core.step())
    frames = frames[:n]
    if frames_out is not None:
        frames_out.extend(frames)
    if not frames:
        return np.zeros((0, MOTION_DIM), np.float32)
    return np.stack([f.motion for f in frames])
