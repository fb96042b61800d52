"""Streaming configuration: windows, look-ahead, gating, idle, live clock. One dataclass.

The window defaults were chosen by measurement (docs/streaming.md has the table and the
command that made it); in short, for EmoDiff windows of S = 16 frames:

- ``hop_frames`` H = 1 (40 ms): every block emits 1 frame, its mouth refined from the audio.
  A block waits for its frame's audio and the look-ahead: the lip refiner's own encoder looks
  3 frames ahead (EmoDiff's 2), so each frame waits (1 + 3) x 40 ms, what the first frame of a
  2-frame block waited behind a 2-frame look-ahead: the same p95 latency (176 ms at 256 px),
  and the refiner hears 40 ms more of what comes (jawOpen r 0.868 -> 0.883, mouth-opening r
  0.833 -> 0.842 on 96 test utterances; docs/streaming.md). H = 2 with that look-ahead would
  add 40 ms, over the 200 ms budget; H = 1 with a 2-frame look-ahead saves 40 ms and keeps the
  old lip-sync.
- ``motion_hop_frames`` E = 4 (None: the smallest multiple of H of at least 4 frames): EmoDiff
  runs on every fourth block and generates 4 frames; the blocks between take the ones it left.
  Through the live loop each call's sampling error adds to the expression's drift, so fewer
  calls drift less (E = 4 against 2: Frechet distance 40 -> 30, the full sampler's 30;
  intensity accuracy up; `dreamtalk eval`, docs/streaming.md), and EmoDiff costs a quarter of
  the compute of a call per frame. The audio of the frames past the block's look-ahead has not
  come: their features read the last mel frame held. The mouth keeps H's latency: the lip
  refiner runs on every block with the real audio.
- ``known_frames`` O = S - E = 12: the window is conditioned on every emitted frame it overlaps
  and generates only the E new ones. With EmoDiff's K = 8 instead (the re-estimated 6 frames
  after them already emitted, not shown again), each block continues a fresh estimate of the
  recent past rather than what was shown: the mouth steps at every seam (raw jerk 7.7x the
  targets') and the face's statistics drift (Frechet distance 310 against 58, emotion accuracy
  79% against 100%, `dreamtalk eval`, docs/eval.md). Fewer known frames remain a knob.
- ``crossfade_frames`` C = 4: the blend across the seam, on every channel but the mouth. With
  the whole overlap known, an offset closes the gap between the first new frame and the linear
  extrapolation of the last two emitted ones and fades out over C frames (smoothstep); with
  fewer known frames it moves the window's own estimate of the last emitted frame onto it.
  Measured with the committed weights: C = 4 gives a seam jerk ratio of 1.02, C = 0 0.99 but a
  Frechet distance of 70 against 58.
- ``lookahead_frames`` L: what a block waits for; None: the larger of the two encoders' own
  (3 frames, 120 ms, the lip refiner's). Less is allowed (the missing future is taken as
  silence) and costs lip-sync.
- ``refine_context_frames``: the frames before the new ones that the (causal) lip refiner is
  given; None takes the refiner's receptive field (32), which makes it exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.stream.audio_input import VadConfig
from engine.stream.idle import GateConfig, IdleConfig
from engine.timebase import FPS

MIN_MOTION_HOP = 4  # frames: EmoDiff runs at most every 160 ms unless asked otherwise


@dataclass(frozen=True)
class StreamConfig:
    # ---- windows --------------------------------------------------------------------------
    hop_frames: int = 1  # H: frames per block (the mouth's latency: the refiner runs every block)
    # E: frames each EmoDiff call generates, a multiple of H (None: the smallest multiple of H
    # of at least 4 frames); the blocks between two calls take frames already generated. See
    # the module docstring.
    motion_hop_frames: int | None = None
    known_frames: int | None = None  # O: initial-state frames (None: the whole overlap, S - E)
    crossfade_frames: int = 4  # the seam offset's fade, frames (0: no offset)
    lookahead_frames: int | None = None  # audio look-ahead (None: the encoder's own)
    refine_context_frames: int | None = None  # None: the refiner's receptive field - 1
    steps: int | None = None  # sampler steps (None: the model's default)
    guidance: float | None = None  # classifier-free guidance (None: the model's default)
    emotion_ramp_ms: float = 480.0  # style crossfade after set_emotion
    # One-pole low-pass on every channel but the mouth's (expression, eyes, head pose), per
    # emitted frame: each block's 2 new frames come from a fresh sample, and the sample-to-sample
    # spread shows as jitter at 12.5 Hz that no face has. The mouth is the refiner's (smooth,
    # and it must stay on time). 0: off.
    smooth_ms: float = 60.0
    # ---- silence --------------------------------------------------------------------------
    vad: VadConfig = field(default_factory=VadConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)
    # ---- live clock -----------------------------------------------------------------------
    # How late audio may be (network jitter) before the engine goes on without it, generating
    # silence; also the tolerance before audio that arrives after a gap is placed at "now".
    jitter_ms: float = 60.0
    # Frames are generated at most this far ahead of the clock (bursty TTS input): bounds the
    # memory of queued frames and how much already-generated speech an interrupt has to wait out.
    max_lead_ms: float = 240.0
    # A frame is due this long after its pts on the session clock; one not rendered by then is
    # dropped (counted). The server plays frame n and its audio at t0 + n / 25 + playout_delay.
    playout_delay_ms: float | None = None  # None: look-ahead + hop + jitter + compute margin
    compute_margin_ms: float = 40.0  # the part of the default playout delay left for compute
    max_queued_frames: int = 250  # unpulled frames kept (live: oldest dropped; offline: waits)
    max_buffered_s: float = 600.0  # audio accepted ahead of generation before refusing more

    def __post_init__(self) -> None:
        if self.hop_frames < 1:
            raise ValueError(f"hop_frames must be at least 1, got {self.hop_frames}")
        e = self.motion_hop
        if e < self.hop_frames or e % self.hop_frames:
            raise ValueError(
                f"motion_hop_frames must be a multiple of hop_frames ({self.hop_frames}), got {e}"
            )
        if self.known_frames is not None and self.known_frames < 0:
            raise ValueError(f"known_frames must be >= 0, got {self.known_frames}")
        if self.smooth_ms < 0:
            raise ValueError(f"smooth_ms must be >= 0, got {self.smooth_ms}")
        if self.crossfade_frames < 0:
            raise ValueError(f"crossfade_frames must be >= 0, got {self.crossfade_frames}")
        if self.refine_context_frames is not None and self.refine_context_frames < 0:
            raise ValueError(f"refine_context_frames must be >= 0: {self.refine_context_frames}")
        if self.lookahead_frames is not None and self.lookahead_frames < 0:
            raise ValueError(f"lookahead_frames must be >= 0, got {self.lookahead_frames}")
        if self.jitter_ms < 0 or self.max_lead_ms < 0 or self.compute_margin_ms < 0:
            raise ValueError("jitter_ms, max_lead_ms and compute_margin_ms must be >= 0")
        if self.playout_delay_ms is not None and self.playout_delay_ms < 0:
            raise ValueError(f"playout_delay_ms must be >= 0, got {self.playout_delay_ms}")
        if self.max_queued_frames < 1:
            raise ValueError("max_queued_frames must be at least 1")

    @property
    def motion_hop(self) -> int:
        """E: frames per EmoDiff call."""
        if self.motion_hop_frames is not None:
            return self.motion_hop_frames
        return self.hop_frames * -(-MIN_MOTION_HOP // self.hop_frames)

    def playout_delay_s(self, lookahead: int) -> float:
        if self.playout_delay_ms is not None:
            return self.playout_delay_ms / 1000.0
        frames = lookahead + self.hop_frames
        return frames / FPS + 0.0075 + (self.jitter_ms + self.compute_margin_ms) / 1000.0
