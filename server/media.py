"""Media on the session clock: the outbound audio buffer and the tracks aiortc sends.

Every session has one clock: frame ``n`` of the engine's timeline is shown, and audio sample
``s`` (16 kHz timeline) is played, at ``t0 + n / 25 + delay`` and ``t0 + s / 16000 + delay``
(`Session.t0`, `Session.playout_delay`). aiortc's senders do no pacing (they send whatever
`recv` returns, as fast as it returns), so each track sleeps until its next frame is due:
video and audio leave on that one wall clock, and a viewer that joins later starts at the
frame due when it joins.

Each peer connection gets its own `AvatarVideoTrack` / `AvatarAudioTrack`, reading the
session's shared `FrameStore` and `PlayoutBuffer`: one conversion to yuv420p per frame, and
every encoder gets its own `VideoFrame` (several encoder threads converting one shared frame
can crash the process). Stopping the session stops them all.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from engine.timebase import FPS, SAMPLE_RATE

log = logging.getLogger(__name__)

OUT_RATE = 48000  # what WebRTC audio runs at (Opus)
OUT_PER_IN = OUT_RATE // SAMPLE_RATE  # 48 kHz samples per 16 kHz timeline sample
AUDIO_CHUNK = OUT_RATE // 50  # 20 ms, the Opus frame
VIDEO_CLOCK = 90000
MAX_LATE_S = 0.2  # a track that fell this far behind its clock skips ahead instead


class PlayoutBuffer:
    """The audio to play back, mono int16 at 48 kHz, indexed on the session timeline.

    Written where the engine placed the audio (`PushResult.start_sample` x 3), read by any
    number of tracks at their clock position; silence where nothing was written. Audio before
    `trim` is forgotten, so the buffer holds only what is still to be played.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base = 0  # 48 kHz sample index of the first sample held
        self._buf = np.zeros(OUT_RATE, np.int16)  # held: _buf[_head : _head + _len]
        self._head = 0
        self._len = 0

    @property
    def end(self) -> int:
        return self._base + self._len

    def write(self, position: int, samples: np.ndarray) -> None:
        with self._lock:
            start = position - self._base
            if start < 0:  # already played: keep only the rest
                samples, start = samples[-start:], 0
            stop = start + len(samples)
            if self._head + stop > len(self._buf):
                # move what is held to the front (trim only advances _head) and grow by
                # doubling: each sample is copied a bounded number of times, not per write
                held = self._buf[self._head : self._head + self._len].copy()
                size = max(len(self._buf), 2 * stop)
                self._buf = np.zeros(size, np.int16)
                self._buf[: self._len] = held
                self._head = 0
            h = self._head
            if start > self._len:  # a gap after what is held is silence, not stale samples
                self._buf[h + self._len : h + start] = 0
            self._buf[h + start : h + stop] = samples
            self._len = max(self._len, stop)

    def read(self, position: int, count: int) -> np.ndarray:
        out = np.zeros(count, np.int16)
        with self._lock:
            lo = max(position, self._base)
            hi = min(position + count, self.end)
            if hi > lo:
                a = self._head + lo - self._base
                out[lo - position : hi - position] = self._buf[a : a + hi - lo]
        return out

    def truncate(self, position: int) -> None:
        """Forget everything from ``position`` on (an interrupt's cut)."""
        with self._lock:
            self._len = min(self._len, max(0, position - self._base))

    def trim(self, position: int) -> None:
        """Forget everything before ``position`` (already played); called every 20 ms, so it
        moves an index instead of copying what is left."""
        with self._lock:
            drop = min(max(0, position - self._base), self._len)
            self._head += drop
            self._base += drop
            self._len -= drop


class FrameStore:
    """The latest rendered frames of a session as yuv420p planes, by frame index."""

    def __init__(self, keep: int = 50):
        self._lock = threading.Lock()
        self._frames: OrderedDict[int, tuple[np.ndarray, int, int]] = OrderedDict()
        self._keep = keep
        self.newest = -1

    def put(self, index: int, rgb: np.ndarray) -> None:
        """Convert once (the caller's thread) and keep; oldest forgotten."""
        yuv = VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        planes = yuv.to_ndarray()
        with self._lock:
            self._frames[index] = (planes, rgb.shape[1], rgb.shape[0])
            self.newest = max(self.newest, index)
            while len(self._frames) > self._keep:
                self._frames.popitem(last=False)

    def get(self, index: int) -> tuple[int, VideoFrame] | None:
        """The frame ``index`` or, when it is missing (dropped, late), the newest before it:
        a new `VideoFrame` each call, owned by the caller."""
        with self._lock:
            found = None
            for i in reversed(self._frames):
                if i <= index:
                    found = i
                    break
            if found is None:
                return None
            planes, _, _ = self._frames[found]
        return found, VideoFrame.from_ndarray(planes, format="yuv420p")


class SessionClock:
    """``t0`` and ``delay`` of a session on `time.monotonic` (the engine's live clock)."""

    def __init__(self, t0: float, delay: float, now: Callable[[], float] = time.monotonic):
        self.t0 = t0
        self.delay = delay
        self.now = now

    def play_time(self) -> float:
        """Seconds of the timeline being played now (negative before it starts)."""
        return self.now() - self.t0 - self.delay

    async def sleep_until(self, timeline_s: float) -> None:
        wait = self.t0 + self.delay + timeline_s - self.now()
        if wait > 0:
            await asyncio.sleep(wait)


class _PacedTrack(MediaStreamTrack):
    """A track that emits frame ``k`` at timeline time ``k * period``."""

    def __init__(self, clock: SessionClock, period: float, on_stop: Callable | None = None):
        super().__init__()
        self.clock = clock
        self.period = period
        self._next: int | None = None
        self._on_stop = on_stop

    async def _tick(self) -> int:
        if self.readyState != "live":
            raise MediaStreamError
        now_k = int(np.floor(self.clock.play_time() / self.period))
        if self._next is None or now_k - self._next > MAX_LATE_S / self.period:
            self._next = max(0, now_k + 1)  # start (or resync) at the next one due
        k = self._next
        self._next += 1
        await self.clock.sleep_until(k * self.period)
        if self.readyState != "live":
            raise MediaStreamError
        return k

    def stop(self) -> None:
        if self.readyState == "live" and self._on_stop is not None:
            self._on_stop(self)
        super().stop()


class AvatarVideoTrack(_PacedTrack):
    """The avatar's video for one peer: frame ``n`` of the session at its due time. A frame the
    engine dropped (late) is replaced by the one before it, so the stream stays at 25 fps."""

    kind = "video"

    def __init__(
        self,
        clock: SessionClock,
        frames: FrameStore,
        on_sent: Callable[[bool], None],
        on_stop: Callable | None = None,
    ):
        super().__init__(clock, 1.0 / FPS, on_stop)
        self.frames = frames
        self.on_sent = on_sent  # (repeated) -> None, for the counters

    async def recv(self) -> VideoFrame:
        while True:
            n = await self._tick()
            got = self.frames.get(n)
            if got is not None:
                break
        index, frame = got
        frame.pts = n * (VIDEO_CLOCK // FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.on_sent(index != n)
        return frame


class AvatarAudioTrack(_PacedTrack):
    """The speaker's audio for one peer, delayed onto the session clock (20 ms frames)."""

    kind = "audio"

    def __init__(self, clock: SessionClock, audio: PlayoutBuffer, on_stop: Callable | None = None):
        super().__init__(clock, AUDIO_CHUNK / OUT_RATE, on_stop)
        self.audio = audio

    async def recv(self) -> AudioFrame:
        k = await self._tick()
        samples = self.audio.read(k * AUDIO_CHUNK, AUDIO_CHUNK)
        frame = AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = k * AUDIO_CHUNK
        frame.time_base = fractions.Fraction(1, OUT_RATE)
        return frame
