"""The session core: a deterministic step function over a session's audio timeline.

No threads, no clock. `SessionCore` holds everything one live session has computed so far and
turns audio into motion one block of H frames at a time. What a block produces depends only on
the timeline's samples (and the seed, the style, and the calls made at block boundaries), never
on how the audio was chunked or when it arrived; the threaded runner (`engine.stream.worker`)
decides *when* a block runs, and the offline renderer (`engine.stream.offline`) runs the very
same blocks over a whole file.

One block, frames [b, b + H) (H = hop, E = EmoDiff's hop, a multiple of H, L = audio look-ahead,
O = known frames, S = seq_len)::

    ready when the timeline holds samples up to 640 (b + H + L) + 120 (the mel window's reach)
    mel     rows of frames [.., b + H + L), computed once per frame and cached
    feats   encoder over mel [b - left, b + H + L_model): features of [b, b + H) (and the
            lip refiner's own encoder over the same mel, when it has one)
            (when L < the encoder's own look-ahead, the frames past b + H + L read silence)
    window  only when EmoDiff has not generated [b, b + H) yet (every E / H-th block): EmoDiff
            over frames [b + E - S, b + E): the first O frames known (raw EmoDiff output already
            produced: the initial state; by default all S - E of them), the rest sampled; with
            O < S - E, the S - E - O before b re-estimate frames already emitted, and the last E
            are new. The E - H features past the block are provisional, encoded with the last
            mel frame held where the audio has not come, and serve this window only
    blend   the new frames are offset onto the emitted ones (the window's own estimate of frame
            b - 1 moved onto the emitted frame b - 1, fading out over C frames): no seam
    refine  the causal lip refiner over [b - context, b + H) (EmoDiff's raw output, before the
            refiner, as offline); keep the last H frames: exactly what refining the whole
            utterance gives
    post    per frame: mouth gate (VAD), idle layer, emitted in order

Before frame 0 the session has a *pre-roll*: one window generated from silence with nothing
known, so the first block already has a full initial state, every block has the same shape,
and a session starts from a face that is idling in its emotion.

EmoDiff is conditioned on its own raw output (what `MotionModels.generate` does offline too);
the gate and idle layer are applied after, per frame, so they never feed back into the model.

The block runs in phases: per-session work (mel and VAD; features cached and the window's
inputs; blend and the refiner's inputs; post) around the three network calls (audio encoders,
EmoDiff window, lip refiner). `run_blocks` runs the blocks of several sessions together, each
network called once for all of them (cross-session batching); `SessionCore.step` is a batch of
one, so the offline renderer, the tests and the live engine share one code path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine.blendshapes import MOTION_DIM, NUM_BLENDSHAPES
from engine.features import MEL, MEL_LOOKAHEAD_SAMPLES, MELS_PER_FRAME, log_mel
from engine.models.audio_encoder import SILENCE_LOG_MEL
from engine.motion_model import MotionModels
from engine.stream.audio_input import AudioTimeline, VoiceActivity
from engine.stream.config import StreamConfig
from engine.stream.idle import MOUTH, IdleMotion, MouthGate, add_idle, smoothstep
from engine.timebase import FPS, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

NOT_MOUTH = np.setdiff1d(np.arange(MOTION_DIM), MOUTH)


class Smoother:
    """One-pole low-pass of every channel but the mouth's, frame by frame in order
    (`StreamConfig.smooth_ms`; 0 passes frames through)."""

    def __init__(self, smooth_ms: float):
        self.alpha = 1.0 - math.exp(-1000.0 / (FPS * smooth_ms)) if smooth_ms > 0 else 1.0
        self.state: np.ndarray | None = None

    def step(self, motion: np.ndarray) -> np.ndarray:
        x = motion[NOT_MOUTH].astype(np.float64)
        if self.state is None:
            self.state = x
        else:
            self.state += self.alpha * (x - self.state)
        out = motion.copy()
        out[NOT_MOUTH] = self.state
        return out

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """A whole (N, MOTION_DIM) sequence from a fresh state."""
        return np.stack([self.step(f) for f in frames]) if len(frames) else frames


class FrameRing:
    """Rows indexed by absolute frame number, kept for a recent span [start, end)."""

    def __init__(self, row_shape: tuple[int, ...], fill: float = 0.0):
        self.row_shape = row_shape
        self.fill = fill
        self.start = 0
        self.data = np.zeros((0, *row_shape), np.float32)

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def reset(self, start: int) -> None:
        self.start, self.data = start, np.zeros((0, *self.row_shape), np.float32)

    def append(self, a: int, rows: np.ndarray) -> None:
        if not len(self.data):
            self.start = a
        elif a != self.end:
            raise RuntimeError(f"append at frame {a}, ring ends at {self.end}")
        self.data = np.concatenate([self.data, rows.astype(np.float32, copy=False)])

    def get(self, a: int, b: int) -> np.ndarray:
        out = np.full((b - a, *self.row_shape), self.fill, np.float32)
        lo, hi = max(a, self.start), min(b, self.end)
        if hi > lo:
            out[lo - a : hi - a] = self.data[lo - self.start : hi - self.start]
        return out

    def truncate(self, a: int) -> None:
        if a <= self.start:
            self.reset(a)
        elif a < self.end:
            self.data = self.data[: a - self.start]

    def trim(self, a: int) -> None:
        drop = min(a, self.end) - self.start
        if drop > 0:
            self.data = self.data[drop:].copy()
            self.start += drop


@dataclass
class MotionFrame:
    """One emitted frame of motion, before rendering."""

    index: int
    motion: np.ndarray  # (MOTION_DIM,) raw: blendshapes in [0, 1], pose
    speech: float  # the mouth gate's weight: 1 talking, 0 silent
    filled: bool  # its audio is (partly) silence the engine filled in: none was pushed


class SessionCore:
    """One session's state and its step function (module docstring). Not thread-safe: one
    runner drives it (the engine's workers take a session's blocks one at a time)."""

    def __init__(
        self,
        models: MotionModels,
        cfg: StreamConfig,
        style: torch.Tensor,
        seed: int,
    ):
        self.models, self.cfg, self.seed = models, cfg, seed
        self.S = models.seq_len
        self.H = cfg.hop_frames
        self.E = cfg.motion_hop
        if self.E >= self.S:
            raise ValueError(f"motion_hop_frames must be below the window's {self.S} frames")
        # at most the overlap: a long hop leaves room for fewer known frames
        overlap = self.S - self.E
        self.O = overlap if cfg.known_frames is None else min(cfg.known_frames, overlap)
        # Look-ahead: EmoDiff's encoder reads L_emo frames of future audio, the lip refiner's
        # L_lip (its own encoder may look further: the mouth needs the coming audio most); a
        # block waits for the larger, L_model, or for L when the configuration asks for less
        # (the missing future then reads silence).
        self.L_emo, self.L_lip = models.lookahead, models.lip_lookahead
        self.L_model = models.audio_lookahead
        self.L = self.L_model if cfg.lookahead_frames is None else cfg.lookahead_frames
        if self.L > self.L_model:
            raise ValueError(f"the audio encoders look {self.L_model} frames ahead, not {self.L}")
        self.left = models.left_context
        self.left_lip = models.lip_left_context
        ctx = cfg.refine_context_frames
        self.R = models.refiner_context if ctx is None else ctx
        self.ramp = max(1, round(cfg.emotion_ramp_ms * FPS / 1000.0))
        self.timeline = AudioTimeline()
        self.vad = VoiceActivity(cfg.vad)
        self.gate = MouthGate(cfg.gate, self.L)
        self.idle = IdleMotion(cfg.idle, seed)
        self.smoother = Smoother(cfg.smooth_ms)
        self.generator = torch.Generator().manual_seed(seed)
        self.mel = FrameRing((MELS_PER_FRAME, MEL.n_mels), fill=SILENCE_LOG_MEL)
        self.feats = FrameRing((models.emodiff.cfg.audio.dim,))  # EmoDiff's audio features
        # the lip refiner's, when it has its own audio encoder (else it reads EmoDiff's)
        shared = models.lip_features_shared
        self.lip_feats = self.feats if shared else FrameRing((models.lip_feature_dim,))
        self.raw = FrameRing((MOTION_DIM,))
        self.style_from = self.style_to = style
        self.ramp_start = 0
        self.next_block = 0  # first frame of the next EmoDiff block
        self.next_emit = 0  # next frame to emit
        self.input_done_to = 0  # flush(): frames up to here are owed even without audio
        self._preroll()

    # ---- style ----------------------------------------------------------------------------
    def style_at(self, frame: int) -> torch.Tensor:
        a = smoothstep((frame - self.ramp_start + 1) / self.ramp)
        if a >= 1.0:
            return self.style_to
        return self.style_from + a * (self.style_to - self.style_from)

    def set_style(self, style: torch.Tensor) -> int:
        """Ramp to ``style`` from the next block on; returns that frame."""
        at = self.next_block
        self.style_from = self.style_at(at - 1)
        self.style_to = style
        self.ramp_start = at
        return at

    def set_listening(self, on: bool) -> int:
        """The user is speaking (or not): the idle layer shows it from the next frame
        emitted; returns that frame."""
        self.idle.listening = bool(on)
        return self.next_emit

    # ---- timeline -------------------------------------------------------------------------
    def need_samples(self, block: int | None = None) -> int:
        """Timeline length a block needs (the default: the next one)."""
        b = self.next_block if block is None else block
        return SAMPLES_PER_FRAME * (b + self.H + self.L) + MEL_LOOKAHEAD_SAMPLES

    def ready(self) -> bool:
        return self.timeline.end >= self.need_samples() or self.next_emit < self.input_done_to

    def push(self, audio: np.ndarray) -> int:
        """Append 16 kHz audio at the timeline's end; returns where it starts."""
        return self.timeline.append(audio)

    def finish_input(self) -> None:
        """Owe every frame that the audio so far covers: the runner will generate them, with
        silence after the audio, and silence is committed to the timeline as they are."""
        last = -(-self.timeline.end // SAMPLES_PER_FRAME)  # frames [0, last) hold audio
        self.input_done_to = max(self.input_done_to, last)

    def force_silence(self) -> int:
        """Commit silence up to what the next block reads (the audio is late, or over);
        returns the samples of silence added."""
        return self.timeline.pad_to(self.need_samples())

    def interrupt(self) -> tuple[int, int]:
        """Drop all audio from the next block on and ramp the mouth closed from there.
        Returns (cut frame, samples dropped)."""
        cut = self.next_block
        dropped = self.timeline.truncate(cut * SAMPLES_PER_FRAME)
        # cached mel rows that read past the cut (the frame before reads 120 samples into it)
        self.mel.truncate(cut - 1)
        self.vad.rewind(cut)
        self.gate.interrupt(cut)
        self.input_done_to = min(self.input_done_to, cut)
        return cut, dropped

    # ---- the block ------------------------------------------------------------------------
    def _preroll(self) -> None:
        """Frames [-S, 0): one window over silence, nothing known (never emitted)."""
        m = self.models

        def silence(frames: int) -> np.ndarray:  # the mel of one feature's span of silence
            return np.full((1, MELS_PER_FRAME * frames, MEL.n_mels), SILENCE_LOG_MEL, np.float32)

        # the same for every silent frame
        feat = m.encode_audio(silence(self.left + 1 + self.L_emo))[0, 0].numpy()
        self.silence_feat = self.lip_silence_feat = feat
        feats = np.broadcast_to(feat, (self.S, len(feat)))
        self.feats.append(-self.S, feats)
        if self.lip_feats is not self.feats:
            lip_silence = silence(self.left_lip + 1 + self.L_lip)
            self.lip_silence_feat = m.encode_lip_audio(lip_silence)[0, 0].numpy()
            lip = np.broadcast_to(self.lip_silence_feat, (self.S, len(self.lip_silence_feat)))
            self.lip_feats.append(-self.S, lip)
        window = m.sample_window(
            torch.from_numpy(np.ascontiguousarray(feats))[None],
            self.style_at(-1),
            None,
            self.cfg.steps,
            self.cfg.guidance,
            self.generator,
        )
        self.raw.append(-self.S, window[0].numpy())

    def _mel_upto(self, end_frame: int) -> None:
        """Cache mel rows of frames [mel.end, end_frame) (the timeline covers them)."""
        a = self.mel.end
        if end_frame <= a:
            return
        # log_mel frames a segment as if it started the signal: start one frame early, so the
        # first kept frame has its real left context, and drop the extra frame's rows
        s0 = (a - 1) * SAMPLES_PER_FRAME
        audio = self.timeline.read(s0, end_frame * SAMPLES_PER_FRAME + MEL_LOOKAHEAD_SAMPLES)
        rows = log_mel(audio, end_frame - a + 1)[MELS_PER_FRAME:]
        self.mel.append(a, rows.reshape(-1, MELS_PER_FRAME, MEL.n_mels))

    # The block in phases: per-session work (`_begin`, `_take_features`, `_take_window`,
    # `_finish`) around the network calls, which `run_blocks` makes once for a whole batch of
    # sessions. `step` is a batch of one.
    def step(self) -> list[MotionFrame]:
        """Run the next block (the caller checked `ready()`, or forced silence); returns the
        frames it completes, in order (none while the refiner's delay fills)."""
        (frames,) = run_blocks([self])
        if isinstance(frames, Exception):
            raise frames
        return frames

    def _begin(self) -> Block:
        """The block's mel spans (the encoders' inputs), its VAD flags; silence committed
        first if the caller forced the block (no-op unless the audio is late or over)."""
        b, H = self.next_block, self.H
        self.force_silence()
        # A block that calls EmoDiff encodes all E frames it generates. The audio of those
        # past the block's look-ahead has not come: their features are provisional (EmoDiff's
        # window only) and read the last mel frame held; silence there would tell EmoDiff that
        # the speech stops (measured: Frechet distance 36 against 30, docs/streaming.md).
        generates = self.raw.end < b + H
        full_end = b + H + self.L_model  # the mel the block's own H features read, at most
        real_end = b + H + self.L  # frames past this read silence (reduced look-ahead)
        emo = (b - self.left, b + H + self.L_emo + (self.E - H if generates else 0))
        lip = (b - self.left_lip, b + H + self.L_lip)
        lo, hi = min(emo[0], lip[0]), max(emo[1], lip[1])
        self._mel_upto(real_end)
        mel = self.mel.get(lo, hi)
        if real_end < full_end:
            mel[real_end - lo : full_end - lo] = SILENCE_LOG_MEL
        mel[full_end - lo :] = mel[full_end - lo - 1]
        self.vad.advance(self.timeline, b + H + self.L)

        def rows(span: tuple[int, int]) -> torch.Tensor:
            part = mel[span[0] - lo : span[1] - lo]
            return torch.from_numpy(np.ascontiguousarray(part).reshape(1, -1, MEL.n_mels))

        return Block(self, b, rows(emo), rows(lip), generates)

    def _take_features(
        self, block: Block, feats: torch.Tensor, lip_feats: torch.Tensor | None
    ) -> None:
        """Features of frames [b, b + H) into the cache; when the block generates, the EmoDiff
        window's inputs: window [b + E - S, b + E), the first O frames known, noise from this
        session's generator."""
        b, H, S, E = block.b, self.H, self.S, self.E
        self.feats.append(b, feats[0, :H].numpy())
        if lip_feats is not None:
            self.lip_feats.append(b, lip_feats[0, :H].numpy())
        if not block.generates:
            return
        w0 = b + E - S
        ahead = feats[0, H:E].numpy()  # the provisional features, for this window only
        block.window = WindowInputs(
            feats=torch.from_numpy(np.concatenate([self.feats.get(w0, b + H), ahead]))[None],
            known=torch.from_numpy(self.raw.get(w0, w0 + self.O))[None] if self.O else None,
            style=self.style_at(b + E - 1),
            noise=self.models.window_noise(self.generator),
        )

    def _take_window(self, block: Block, window: torch.Tensor | None) -> None:
        """EmoDiff's window (1, S, MOTION_DIM), when the block generated one: its E new frames,
        blended onto the emitted ones; the lip refiner's inputs, frames [b - R, b + H)."""
        b, H, S, E = block.b, self.H, self.S, self.E
        if window is not None:
            out = window[0].numpy()
            new = out[S - E :].copy()
            if self.cfg.crossfade_frames:
                # with fewer known frames than the overlap, the window re-estimated the last
                # emitted frame too: its new frames continue *that* one
                regen = out[S - E - 1] if self.O < S - E else None
                new = self._crossfade(b, new, regen)
            self.raw.append(b, new)
        self.next_block = b + H
        lo = b - self.R
        block.refine = RefineInputs(
            feats=torch.from_numpy(self._lip_feats_or_silence(lo, b + H))[None],
            motion=torch.from_numpy(self._raw_or_first(lo, b + H))[None],
            style=self.style_at(b + H - 1),
        )

    def _finish(self, block: Block, refined: torch.Tensor) -> list[MotionFrame]:
        """The refined frames [b, b + H), post-processed frame by frame."""
        b, H = block.b, self.H
        refined = refined[0].numpy()[self.R :]
        frames = []
        for i, n in enumerate(range(b, b + H)):
            motion = self.smoother.step(refined[i])
            weight = self.gate.step(n, self.vad)
            if self.cfg.gate.enabled:
                motion = self.gate.apply(motion, weight)
            if self.cfg.idle.enabled:
                motion = add_idle(motion, self.idle.next(), 1.0 - weight)
            span = (n * SAMPLES_PER_FRAME, (n + 1) * SAMPLES_PER_FRAME)
            filled = self.timeline.is_filled(*span)
            frames.append(MotionFrame(n, motion.astype(np.float32), weight, filled))
            self.next_emit = n + 1
        self._trim()
        return frames

    def _raw_or_first(self, a: int, b: int) -> np.ndarray:
        """Raw motion [a, b); before the pre-roll, its first frame (the refiner's own padding
        replicates the first frame it is given)."""
        out = self.raw.get(a, b)
        before = min(b, self.raw.start) - a
        if before > 0:
            out[:before] = self.raw.data[0]
        return out

    def _lip_feats_or_silence(self, a: int, b: int) -> np.ndarray:
        """The refiner's audio features [a, b)."""
        out = self.lip_feats.get(a, b)
        before = min(b, self.lip_feats.start) - a
        if before > 0:  # frames before the pre-roll: silence, as the pre-roll assumed
            out[:before] = self.lip_silence_feat
        return out

    def _crossfade(self, b: int, new: np.ndarray, regen: np.ndarray | None) -> np.ndarray:
        """Decaying offset that joins the new frames to the last emitted one.

        When the window re-estimated the last emitted frame (fewer known frames than the
        overlap), its new frames continue its own estimate: the offset moves that estimate onto
        the emitted frame and fades out over ``crossfade_frames`` (smoothstep), so the output
        converges to the fresh trajectory without a step. Otherwise the offset closes the gap
        between the first new frame and a linear extrapolation of the last two emitted ones.
        (Matching velocity as well was measured to accumulate: more jitter, not less.)"""
        prev = self.raw.get(b - 2, b)
        if regen is not None:
            delta = prev[1] - regen
        else:
            delta = prev[1] + (prev[1] - prev[0]) - new[0]
        delta[MOUTH] = 0.0  # the mouth follows the audio (and the refiner redoes it)
        c = self.cfg.crossfade_frames
        fade = np.array([1.0 - smoothstep((j + 1.0) / (c + 1.0)) for j in range(len(new))])
        out = new + fade[:, None].astype(np.float32) * delta[None]
        np.clip(out[:, :NUM_BLENDSHAPES], 0.0, 1.0, out=out[:, :NUM_BLENDSHAPES])
        return out

    def _trim(self) -> None:
        b = self.next_block
        keep = max(self.S, self.R + self.H) + 2
        self.raw.trim(b - keep)
        self.feats.trim(b - keep)
        if self.lip_feats is not self.feats:
            self.lip_feats.trim(b - keep)
        self.mel.trim(b - max(self.left, self.left_lip) - 2)
        self.timeline.trim_before((b - 2) * SAMPLES_PER_FRAME - MEL_LOOKAHEAD_SAMPLES)
        self.vad.forget_before(b - self.gate.hang - self.gate.MAX_RUN - 2)


# ---- a batch of blocks ------------------------------------------------------------------------
@dataclass
class WindowInputs:
    """One session's EmoDiff window (`MotionModels.sample_window`), a batch axis of 1."""

    feats: torch.Tensor  # (1, S, feature dim)
    known: torch.Tensor | None  # (1, O, MOTION_DIM) raw motion already produced; None: O = 0
    style: torch.Tensor  # (1, style dim), the ramp's value at the window's last new frame
    noise: torch.Tensor  # (1, S, MOTION_DIM) from the session's own generator


@dataclass
class RefineInputs:
    """One session's lip refiner call over frames [b - R, b + H), a batch axis of 1."""

    feats: torch.Tensor  # (1, R + H, lip feature dim)
    motion: torch.Tensor  # (1, R + H, MOTION_DIM) EmoDiff's raw output
    style: torch.Tensor  # (1, style dim)


@dataclass
class Block:
    """One session's block on its way through the phases of `run_blocks`."""

    core: SessionCore
    b: int  # its first frame
    mel: torch.Tensor  # (1, mel rows, n_mels): EmoDiff's audio encoder's input
    lip_mel: torch.Tensor  # (1, mel rows, n_mels): the lip refiner's own encoder's input
    generates: bool = True  # it calls EmoDiff (else its frames were generated before)
    window: WindowInputs | None = None
    refine: RefineInputs | None = None


def run_blocks(
    cores: Sequence[SessionCore], blocks_out: list[Block] | None = None
) -> list[list[MotionFrame] | Exception]:
    """The next block of each core (each ready, or forced by its caller), with every network
    called once per phase for all of them (cross-session batching):

    1. per session: mel span, VAD                      (`SessionCore._begin`)
    2. the audio encoders over all the mel spans       (one call each: the spans are equal)
    3. per session: features cached, window inputs     (noise from the session's generator)
    4. EmoDiff over the windows of the blocks that generate (`MotionModels.sample_window`)
    5. per session: seam blend, refiner inputs
    6. the lip refiner over all the spans              (equal spans)
    7. per session: gate, idle, smoothing              (`SessionCore._finish`)

    Rows that cannot share a call (other shapes, steps or guidance) go in calls of their own.
    A session's result is what `SessionCore.step` alone gives, up to float rounding of the
    batched calls (bit for bit for a batch of one); each row keeps its own noise, drawn in
    the order an unbatched session draws it. Returns each core's frames, or the exception
    that stopped it: one session's failure does not stop the others (a batched call that
    fails is retried row by row). ``blocks_out``, when given, receives the blocks that ran,
    with each network's inputs (benchmarks replay them)."""
    if not cores:
        return []
    models = cores[0].models
    if any(core.models is not models for core in cores):
        raise ValueError("the sessions of one batch must share their MotionModels")
    out: dict[int, list[MotionFrame] | Exception] = {}
    blocks = _each(out, dict(enumerate(cores)), lambda i, core: core._begin())

    def mel(blk: Block) -> tuple[tuple, Row]:
        return (), (blk.mel,)

    def lip_mel(blk: Block) -> tuple[tuple, Row]:
        return (), (blk.lip_mel,)

    feats = call_batched(out, blocks, mel, lambda _, m: models.encode_audio(m))
    lip: dict[int, torch.Tensor] = {}
    if not models.lip_features_shared:
        lip = call_batched(out, blocks, lip_mel, lambda _, m: models.encode_lip_audio(m))
    _each(out, blocks, lambda i, blk: blk.core._take_features(blk, feats[i], lip.get(i)))

    def window(blk: Block) -> tuple[tuple, Row]:
        w, cfg = blk.window, blk.core.cfg
        return (cfg.steps, cfg.guidance), (w.feats, w.known, w.style, w.noise)

    def sample(key: tuple, feats: Tensor, known: Tensor | None, style: Tensor, noise: Tensor):
        return models.sample_window(feats, style, known, *key, noise=noise)

    generating = {i: blk for i, blk in blocks.items() if blk.generates}
    windows = call_batched(out, generating, window, sample)
    for i in [i for i in blocks if i in out]:  # their EmoDiff call failed
        del blocks[i]
    _each(out, blocks, lambda i, blk: blk.core._take_window(blk, windows.get(i)))

    def spans(blk: Block) -> tuple[tuple, Row]:
        r = blk.refine
        return (), (r.feats, r.motion, r.style)

    refined = call_batched(out, blocks, spans, lambda _, *x: models.refine_lips(*x))
    for i, frames in _each(out, blocks, lambda i, blk: blk.core._finish(blk, refined[i])).items():
        out[i] = frames
    if blocks_out is not None:
        blocks_out.extend(blocks.values())
    return [out[i] for i in range(len(cores))]


Row = tuple[Tensor | None, ...]  # one session's inputs to a network call, batch axis of 1


def _each(out: dict, items: dict, fn: Callable) -> dict:
    """``fn(i, item)`` for every item; an item whose call raises is recorded in ``out`` and
    removed from ``items``. Returns the results of the others."""
    results = {}
    for i, item in list(items.items()):
        try:
            results[i] = fn(i, item)
        except Exception as err:  # one session's failure must not stop the others
            out[i] = err
            del items[i]
    return results


def call_batched(out: dict, items: dict, row_of: Callable, call: Callable) -> dict[int, Tensor]:
    """``call(key, *stacked rows)`` once per group of items whose rows agree in key and
    shapes (``row_of(item) -> (key, row)``: the call's options and its tensors, each with a
    batch axis of 1, None where absent); returns each item's row of the output (a batch axis
    of 1). A group's call that raises is retried row by row, so that only the rows that fail
    alone fail: their exception goes in ``out`` and they leave ``items``."""
    groups: dict[tuple, list] = {}
    rows: dict = {}
    for i, item in list(items.items()):
        try:
            key, rows[i] = row_of(item)
        except Exception as err:
            out[i] = err
            del items[i]
            continue
        shapes = tuple(None if t is None else tuple(t.shape) for t in rows[i])
        groups.setdefault((key, shapes), []).append(i)
    result: dict = {}
    for (key, _), idx in groups.items():
        if len(idx) > 1:
            stacked = [None if t is None else torch.cat([rows[i][k] for i in idx])
                       for k, t in enumerate(rows[idx[0]])]  # fmt: skip
            try:
                y = call(key, *stacked)
            except Exception as err:
                log.warning("a batched call of %d rows failed (%s): one row at a time",
                            len(idx), err)  # fmt: skip
            else:
                result.update({i: y[j : j + 1] for j, i in enumerate(idx)})
                continue
        for i in idx:
            try:
                result[i] = call(key, *rows[i])
            except Exception as err:
                out[i] = err
                del items[i]
    return result
