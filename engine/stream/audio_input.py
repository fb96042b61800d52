"""Live audio in: sample formats, resampling to 16 kHz, the session's audio timeline, VAD.

Everything here is chunk-invariant: pushing the same audio in 10 ms or in 30 s pieces gives the
same 16 kHz samples, bit for bit, and the same speech decisions. That is what lets a session
produce the same frames whatever the network did to the chunk boundaries.

- `to_mono_float`: int16 / int32 / uint8 / float input, mono or interleaved channels, to mono
  float32 in [-1, 1]. Non-finite samples become silence (counted, logged), float audio at
  integer scale is refused with a message that says so.
- `PolyphaseResampler`: a Kaiser-windowed sinc resampler for any rational rate ratio. Output
  sample ``k`` is a fixed dot product of fixed input samples (the filter phase and taps depend
  on ``k`` only), computed row by row, so its value cannot depend on where chunks started.
  (Stateful FFmpeg resamplers stream fine but make no such promise.)
- `AudioTimeline`: the session's 16 kHz samples at absolute positions (sample 0 = pts 0), with
  silence filled in where the engine had to go on without audio.
- `VoiceActivity`: webrtcvad over the timeline in fixed 10/20/30 ms frames, plus a level floor,
  reduced to one speech flag per 40 ms video frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from math import gcd

import numpy as np
import webrtcvad

from engine.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 4_000, 384_000
MAX_CHANNELS = 16
# Float input peaking above this is integer PCM passed as float, not a loud signal.
FLOAT_PEAK_LIMIT = 4.0


def to_mono_float(
    samples: np.ndarray | bytes | bytearray | memoryview, channels: int = 1
) -> tuple[np.ndarray, int]:
    """Audio in any common layout -> (mono float32 in [-1, 1], count of non-finite samples).

    ``samples``: a 1-D array (mono, or interleaved when ``channels`` > 1), a 2-D array of shape
    (samples, channels), or raw bytes of little-endian int16 PCM (interleaved ``channels``).
    Integer arrays are scaled by their type's full range; float arrays must already be in
    [-1, 1] (a little overshoot is clipped). Channels are averaged, as `engine.audio_io` does.
    Non-finite float samples are replaced by 0 and counted, so one corrupt packet does not end
    a live session. Raises ValueError, saying why, for anything else.
    """
    if isinstance(samples, bytes | bytearray | memoryview):
        raw = bytes(samples)
        if len(raw) % 2:
            raise ValueError(f"PCM bytes must be int16 (an even byte count), got {len(raw)}")
        arr = np.frombuffer(raw, dtype="<i2")
    else:
        arr = np.asarray(samples)
    if channels < 1 or channels > MAX_CHANNELS:
        raise ValueError(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
    if arr.ndim == 1:
        if channels > 1:
            if arr.size % channels:
                raise ValueError(f"{arr.size} interleaved samples do not split into {channels}")
            arr = arr.reshape(-1, channels)
    elif arr.ndim == 2:
        if arr.shape[1] > MAX_CHANNELS:
            raise ValueError(
                f"audio of shape {arr.shape}: expected (samples, channels) with at most "
                f"{MAX_CHANNELS} channels; transpose a (channels, samples) array first"
            )
    else:
        raise ValueError(f"audio must be 1-D or (samples, channels), got shape {arr.shape}")

    kind = arr.dtype.kind
    if kind == "i":
        scale = float(2 ** (8 * arr.dtype.itemsize - 1))
        out = arr.astype(np.float32) / np.float32(scale)
    elif kind == "u":
        half = float(2 ** (8 * arr.dtype.itemsize - 1))
        out = (arr.astype(np.float32) - np.float32(half)) / np.float32(half)
    elif kind == "f":
        out = arr.astype(np.float32)
    elif kind == "b":
        raise ValueError("boolean arrays are not audio")
    else:
        raise ValueError(f"audio samples must be integer or float, got dtype {arr.dtype}")

    bad = 0
    if kind == "f":
        finite = np.isfinite(out)
        bad = int(out.size - np.count_nonzero(finite))
        if bad:
            out = np.where(finite, out, np.float32(0.0))
        peak = float(np.abs(out).max()) if out.size else 0.0
        if peak > FLOAT_PEAK_LIMIT:
            raise ValueError(
                f"float audio must be in [-1, 1], got a peak of {peak:.1f}: integer PCM should "
                "be passed with its integer dtype (e.g. int16), not cast to float"
            )
        np.clip(out, -1.0, 1.0, out=out)
    if out.ndim == 2:
        out = out.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(out, dtype=np.float32), bad


def check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate:
        raise ValueError(f"sample_rate must be an integer number of Hz, got {sample_rate!r}")
    rate = int(sample_rate)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"sample_rate must be {MIN_RATE}..{MAX_RATE} Hz, got {rate}")
    return rate


# ---- resampling -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ResamplerDesign:
    zero_crossings: int = 16  # sinc lobes each side: the transition band's sharpness
    rolloff: float = 0.92  # cutoff as a fraction of the lower Nyquist frequency
    beta: float = 8.0  # Kaiser window: ~80 dB stop band


@lru_cache(maxsize=16)
def _filter_bank(up: int, down: int, design: ResamplerDesign) -> tuple[np.ndarray, int]:
    """Taps of every phase: out[k] = sum_j bank[phase(k), j] * x[base(k) - half + 1 + j].

    Output k sits at input position k * down / up = base + phase / up. The prototype is a
    windowed sinc with cutoff ``rolloff * min(1, up / down)`` of the input's Nyquist frequency;
    each phase is normalised to unit DC gain so silence stays silence and levels are exact."""
    s = design.rolloff * min(1.0, up / down)
    half = int(np.ceil(design.zero_crossings / s))
    j = np.arange(-half + 1, half + 1, dtype=np.float64)
    frac = np.arange(up, dtype=np.float64)[:, None] / up
    t = frac - j[None]  # distance (input samples) from output position to each tap
    # the Kaiser window evaluated at the (fractional) tap distances
    ratio = np.clip(t / half, -1.0, 1.0)
    w = np.i0(design.beta * np.sqrt(1.0 - ratio**2)) / np.i0(design.beta)
    bank = s * np.sinc(s * t) * w
    bank /= bank.sum(axis=1, keepdims=True)
    return bank.astype(np.float32), half


class PolyphaseResampler:
    """Streaming rational-ratio resampler whose output does not depend on chunk boundaries.

    `process` returns every output sample whose taps are all available; `finish` treats the
    input as ended (silence after it) and returns the rest, ``ceil(n_in * up / down)`` samples
    in all. The delay is ``half`` input samples (16 zero crossings: about 1 ms at 44.1 kHz)."""

    def __init__(
        self, rate_in: int, rate_out: int = SAMPLE_RATE, design: ResamplerDesign | None = None
    ):
        design = design or ResamplerDesign()
        g = gcd(rate_in, rate_out)
        self.rate_in, self.rate_out = rate_in, rate_out
        self.up, self.down = rate_out // g, rate_in // g
        self.identity = self.up == self.down
        if not self.identity:
            self.bank, self.half = _filter_bank(self.up, self.down, design)
        self._buf = np.zeros(0, np.float32)  # input from absolute index _buf_start on
        self._buf_start = 0
        self._n_in = 0
        self._k = 0  # next output index

    @property
    def pending_input(self) -> int:
        """Input samples received whose output has not been produced yet (for bookkeeping)."""
        return 0 if self.identity else self._n_in - (self._k * self.down) // self.up

    def available(self, n_in: int) -> int:
        """Output samples `process` has produced once ``n_in`` input samples went in."""
        if self.identity:
            return n_in
        last_base = n_in - 1 - self.half
        return 0 if last_base < 0 else (last_base * self.up) // self.down + 1

    def total(self, n_in: int) -> int:
        """Output samples of ``n_in`` input samples once the stream is finished."""
        return n_in if self.identity else -(-n_in * self.up // self.down)

    def process(self, x: np.ndarray) -> np.ndarray:
        if self.identity:
            return x
        self._buf = np.concatenate([self._buf, x]) if len(self._buf) else x.copy()
        self._n_in += len(x)
        # out k needs input up to base(k) + half, i.e. base(k) <= n_in - 1 - half
        return self._emit(self.available(self._n_in))

    def finish(self) -> np.ndarray:
        """Flush: the output of the remaining input, with silence after it; then reset."""
        if self.identity:
            return np.zeros(0, np.float32)
        out = self._emit(self.total(self._n_in))
        self._buf, self._buf_start, self._n_in, self._k = np.zeros(0, np.float32), 0, 0, 0
        return out

    def _emit(self, k_end: int, slice_len: int = 8192) -> np.ndarray:
        if k_end <= self._k:
            return np.zeros(0, np.float32)
        if k_end - self._k > slice_len:  # bounded temporaries for a 30 s chunk
            parts = []
            while self._k < k_end:
                parts.append(self._emit(min(k_end, self._k + slice_len), slice_len))
            return np.concatenate(parts)
        k = np.arange(self._k, k_end, dtype=np.int64)
        pos = k * self.down
        base, phase = pos // self.up, pos % self.up
        idx = base[:, None] + np.arange(-self.half + 1, self.half + 1)[None] - self._buf_start
        # taps before the stream start or past its end read silence
        padded = np.concatenate([np.zeros(1, np.float32), self._buf])
        valid = (idx >= 0) & (idx < len(self._buf))
        taps = padded[np.where(valid, idx + 1, 0)]
        # one row per output sample, the same row whatever the chunking: a row sum along the
        # contiguous axis is computed the same way however many rows there are
        out = (taps * self.bank[phase]).sum(axis=1, dtype=np.float32)
        self._k = k_end
        # keep only the input the next outputs can still reach
        keep_from = (self._k * self.down) // self.up - self.half + 1
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return out.astype(np.float32, copy=False)


# ---- the timeline ---------------------------------------------------------------------------
class AudioTimeline:
    """16 kHz mono samples at absolute positions; reads outside what exists return silence.

    Only the recent past is kept (`trim_before`), so a 10-minute session holds seconds."""

    def __init__(self) -> None:
        self._buf = np.zeros(0, np.float32)
        self._start = 0  # absolute index of _buf[0]
        self.end = 0  # absolute index one past the last sample placed
        self.filled: list[tuple[int, int]] = []  # [a, b) spans of silence the engine put in

    def append(self, x: np.ndarray) -> int:
        """Place samples at the end; returns the absolute index of the first one."""
        at = self.end
        if len(x):
            self._buf = np.concatenate([self._buf, x.astype(np.float32, copy=False)])
            self.end += len(x)
        return at

    def pad_to(self, pos: int) -> int:
        """Fill silence up to absolute index ``pos`` (no-op if the timeline is longer);
        returns how many samples were added."""
        n = pos - self.end
        if n > 0:
            self.filled.append((self.end, pos))
            self.append(np.zeros(n, np.float32))
            return n
        return 0

    def is_filled(self, a: int, b: int) -> bool:
        """Whether [a, b) overlaps silence the engine filled in (nothing was pushed there)."""
        return any(lo < b and a < hi for lo, hi in self.filled) or b > self.end

    def read(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) as float32, silence wherever nothing was placed (or was trimmed)."""
        out = np.zeros(max(0, b - a), np.float32)
        lo, hi = max(a, self._start), min(b, self.end)
        if hi > lo:
            out[lo - a : hi - a] = self._buf[lo - self._start : hi - self._start]
        return out

    def truncate(self, pos: int) -> int:
        """Drop everything from absolute index ``pos`` on; returns the samples dropped."""
        if pos >= self.end:
            return 0
        dropped = self.end - pos
        self.filled = [(lo, min(hi, pos)) for lo, hi in self.filled if lo < pos]
        keep = max(0, pos - self._start)
        self._buf = self._buf[:keep]
        self.end = max(pos, self._start)
        return dropped

    def trim_before(self, pos: int) -> None:
        self.filled = [(lo, hi) for lo, hi in self.filled if hi > pos]
        drop = min(pos, self.end) - self._start
        if drop > 0:
            self._buf = self._buf[drop:].copy()
            self._start += drop

    @property
    def held(self) -> int:
        return len(self._buf)


# ---- voice activity -------------------------------------------------------------------------
@dataclass(frozen=True)
class VadConfig:
    mode: int = 3  # webrtcvad aggressiveness 0..3; 3 lets the least noise through as speech
    frame_ms: int = 20  # webrtcvad's 10, 20 or 30 ms
    level_dbfs: float = -48.0  # a video frame quieter than this is never speech (room noise)
    min_ratio: float = 0.5  # share of a video frame's VAD frames that must be speech
    # Normalised autocorrelation peak (pitch 80-400 Hz) above which a frame is voiced. Speech
    # runs need a voiced frame: breaths and noise bursts that webrtcvad flags are unvoiced
    # (they peak below 0.45), vowels reach 0.7-1.0.
    voicing: float = 0.6

    def __post_init__(self) -> None:
        if self.mode not in (0, 1, 2, 3):
            raise ValueError(f"VAD mode must be 0..3, got {self.mode}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"webrtcvad frames are 10, 20 or 30 ms, got {self.frame_ms}")


class VoiceActivity:
    """One speech flag per video frame from webrtcvad, computed in timeline order.

    VAD frame ``j`` covers samples [jF, (j + 1) F) and counts for the video frame its last
    sample falls in, so a video frame's flag needs no audio past the frame's own end (with 30 ms
    frames, some VAD frames straddle two video frames). A video frame is speech when at least
    ``min_ratio`` of its VAD frames are and its RMS level is above ``level_dbfs`` (webrtcvad at
    mode 3 still flags some quiet clicks). It is also marked *voiced* when it has a pitch
    (`voicing_strength`): webrtcvad flags breaths and noise bursts too, and those are unvoiced,
    so the mouth gate only opens for a run of speech that contains voicing."""

    def __init__(self, cfg: VadConfig = VadConfig()):
        self.cfg = cfg
        self._vad = webrtcvad.Vad(cfg.mode)
        self.frame = SAMPLE_RATE * cfg.frame_ms // 1000
        self._next_vad = 0  # next VAD frame index to run
        self.flags: dict[int, bool] = {}  # video frame -> speech
        self.voiced: dict[int, bool] = {}  # video frame -> has a pitch
        self._votes: dict[int, list[int]] = {}  # video frame -> [speech votes, VAD frames]
        self.done_frames = 0  # video frames [0, done_frames) have their final flag

    def advance(self, timeline: AudioTimeline, upto_frame: int) -> None:
        """Decide every video frame below ``upto_frame`` (the timeline must reach its end)."""
        if upto_frame <= self.done_frames:
            return
        end_sample = upto_frame * SAMPLES_PER_FRAME
        j_end = end_sample // self.frame  # VAD frames fully inside [0, end_sample)
        if j_end > self._next_vad:
            a = self._next_vad * self.frame
            audio = timeline.read(a, j_end * self.frame)
            pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
            for i in range(j_end - self._next_vad):
                chunk = pcm[i * self.frame : (i + 1) * self.frame]
                speech = self._vad.is_speech(chunk.tobytes(), SAMPLE_RATE) if chunk.any() else False
                j = self._next_vad + i
                video = ((j + 1) * self.frame - 1) // SAMPLES_PER_FRAME
                votes = self._votes.setdefault(video, [0, 0])
                votes[0] += int(speech)
                votes[1] += 1
            self._next_vad = j_end
        level = timeline.read(self.done_frames * SAMPLES_PER_FRAME, end_sample)
        level = level.reshape(-1, SAMPLES_PER_FRAME)
        rms = np.sqrt(np.mean(np.square(level, dtype=np.float64), axis=1) + 1e-20)
        db = 20.0 * np.log10(rms)
        strength = voicing_strength(level)
        for i, n in enumerate(range(self.done_frames, upto_frame)):
            speech, total = self._votes.pop(n, [0, 0])
            loud = bool(db[i] >= self.cfg.level_dbfs)
            self.flags[n] = loud and total > 0 and speech >= self.cfg.min_ratio * total
            self.voiced[n] = self.flags[n] and bool(strength[i] >= self.cfg.voicing)
        self.done_frames = upto_frame

    def rewind(self, frame: int) -> None:
        """Forget decisions from video frame ``frame`` on (the audio there was replaced)."""
        if frame >= self.done_frames and self._next_vad * self.frame <= frame * SAMPLES_PER_FRAME:
            return
        for n in [n for n in self.flags if n >= frame]:
            del self.flags[n]
            self.voiced.pop(n, None)
        self._votes = {n: v for n, v in self._votes.items() if n < frame}
        self.done_frames = min(self.done_frames, frame)
        # restart on the VAD grid at or before the frame's start; votes of the straddling VAD
        # frame (30 ms) that belonged to the previous video frame are already final
        self._next_vad = min(self._next_vad, frame * SAMPLES_PER_FRAME // self.frame)

    def flag(self, n: int) -> bool:
        return self.flags.get(n, False)

    def is_voiced(self, n: int) -> bool:
        return self.voiced.get(n, False)

    def forget_before(self, frame: int) -> None:
        for n in [n for n in self.flags if n < frame]:
            del self.flags[n]
            self.voiced.pop(n, None)


def voicing_strength(frames: np.ndarray, min_lag: int = 40, max_lag: int = 200) -> np.ndarray:
    """Peak of the normalised (unbiased) autocorrelation of each row of ``frames`` over lags
    ``min_lag..max_lag`` samples (pitch 400-80 Hz at 16 kHz): ~1 for a vowel, < 0.45 for noise."""
    x = frames - frames.mean(axis=1, keepdims=True)
    n = x.shape[1]
    spec = np.fft.rfft(x, 2 * n, axis=1)
    ac = np.fft.irfft(spec.real**2 + spec.imag**2, axis=1)[:, : max_lag + 1]
    energy = ac[:, :1]
    unbiased = n / (n - np.arange(max_lag + 1))
    norm = ac * unbiased / np.maximum(energy, 1e-12)
    out = norm[:, min_lag:].max(axis=1)
    return np.where(energy[:, 0] > 1e-9, out, 0.0)
