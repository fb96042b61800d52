"""One avatar session on the server: an engine session, its media, its peers and its events.

A `LiveSession` owns:

- the engine's `Session` (audio in, frames out; `engine.stream`), opened off the event loop;
- a `FrameStore` and a `PlayoutBuffer` on one `SessionClock` (`server.media`), from which
  every peer's tracks read;
- its peer connections: the publisher (WHIP: sends the speech, gets the avatar back) and any
  number of viewers (WHEP);
- utterances and state for the assistant API: ``playback_started`` / ``playback_finished``
  when an utterance's first / last audio is played out, ``session`` on state changes.

Everything here runs on the event loop except `_on_frames`, which the engine's worker thread
calls when frames are ready (it converts them to yuv420p there, off the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from engine.emotions import check_intensity, emotion_index
from engine.stream.session import PushResult, Session
from engine.stream.worker import StreamEngine
from engine.timebase import FPS, SAMPLE_RATE
from server.media import (
    OUT_PER_IN,
    OUT_RATE,
    AvatarAudioTrack,
    AvatarVideoTrack,
    FrameStore,
    PlayoutBuffer,
    SessionClock,
)
from server.metrics import Metrics
from server.rtc import IceServer, MediaLine, make_peer_connection, prefer_codec

log = logging.getLogger(__name__)

INPUT_RATES = (16000, 24000, 48000)  # the assistant API's PCM16 rates
TICK_S = 0.02
_peer_ids = itertools.count(1)


@dataclass
class Utterance:
    number: int
    start_s: float  # on the session timeline
    end_s: float | None = None  # known after speak_end or interrupt
    interrupted: bool = False
    started: bool = False  # playback_started sent


@dataclass
class Peer:
    id: str
    role: str  # "publisher" | "viewer"
    pc: RTCPeerConnection
    tracks: list[MediaStreamTrack] = field(default_factory=list)


class AudioInput:
    """Speech from one source (a WebRTC track, the WebSocket) as 16 kHz mono for the engine
    and 48 kHz mono for playout, with PyAV's resampler (it keeps state across chunks)."""

    def __init__(self) -> None:
        self._to_engine = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._to_playout = av.AudioResampler(format="s16", layout="mono", rate=OUT_RATE)

    def convert(self, frame: av.AudioFrame) -> tuple[np.ndarray, np.ndarray]:
        frame.pts = None  # the resamplers count samples themselves
        return _samples(self._to_engine.resample(frame)), _samples(self._to_playout.resample(frame))


def _samples(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.int16)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


def pcm16_frame(pcm: bytes, rate: int) -> av.AudioFrame:
    """An `av.AudioFrame` of mono PCM16 little-endian bytes; ValueError names what is wrong."""
    if rate not in INPUT_RATES:
        raise ValueError(f"sample_rate {rate} is not supported (use one of {INPUT_RATES})")
    if len(pcm) % 2:
        raise ValueError(f"PCM16 audio must have an even number of bytes, got {len(pcm)}")
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
    frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
    frame.sample_rate = rate
    return frame


class LiveSession:
    """See the module docstring. Made by `LiveSession.open`; ended by `close`."""

    def __init__(
        self,
        engine: StreamEngine,
        metrics: Metrics,
        ice_servers: list[IceServer],
        avatar_id: str,
        on_closed: Callable[[LiveSession], None],
    ):
        self.id = secrets.token_urlsafe(9)
        self.engine = engine
        self.metrics = metrics
        self.ice_servers = ice_servers
        self.avatar_id = avatar_id
        self.emotion = "neutral"
        self.intensity = 2
        self.listening = False
        self.state = "idle"
        self.created = time.time()
        self.core: Session | None = None
        self.clock: SessionClock | None = None
        self.frames = FrameStore()
        self.audio = PlayoutBuffer()
        self.peers: dict[str, Peer] = {}
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task] = set()
        self._subscribers: list[asyncio.Queue] = []
        self._utterances: deque[Utterance] = deque()
        self._utterance_numbers = itertools.count(1)
        self._open_utterance: Utterance | None = None
        self._write_end = 0  # 48 kHz position after the last playout write
        self._speech: deque[tuple[int, float]] = deque(maxlen=64)  # (frame, mouth gate)
        self._frames_dropped_seen = 0
        self._last_push_end = 0.0
        self.http_input = None  # the assistant API's audio input for POST .../control

    # ---- life cycle -----------------------------------------------------------------------
    @classmethod
    async def open(
        cls, engine: StreamEngine, avatar, emotion: str, intensity: int, **kwargs
    ) -> LiveSession:
        """Open the engine session (registration is cached; the pre-roll takes a few ms) off
        the event loop and start the session's clock tick."""
        self = cls(engine, **kwargs)
        self.emotion, self.intensity = emotion, intensity
        core = await asyncio.to_thread(
            engine.open_session, avatar, emotion, intensity, on_frames=self._on_frames
        )
        self.core = core
        self.clock = SessionClock(core.t0, core.playout_delay, engine.now)
        self._spawn(self._tick(), "tick")
        self._on_frames()  # frames delivered before `core` was set
        log.info(
            "session %s: open (avatar %s, %s %d, playout delay %.0f ms)",
            self.id,
            self.avatar_id,
            emotion,
            intensity,
            core.playout_delay * 1000,
        )
        return self

    async def close(self, reason: str) -> None:
        """End the session: peers, tracks, tasks and the engine session. Idempotent."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.close_reason = reason
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        for peer in list(self.peers.values()):
            await self._drop_peer(peer)
        if self.core is not None:
            self._count_dropped()
            await asyncio.to_thread(self.core.close)  # the last close joins worker threads
        self.state = "closed"
        self._emit({"type": "session", **self.describe()})
        stats = self.core.stats if self.core is not None else None
        log.info(
            "session %s: closed (%s) after %.1f s; %s frames, %s dropped",
            self.id,
            reason,
            time.time() - self.created,
            stats.frames if stats else 0,
            stats.dropped_frames if stats else 0,
        )
        self._on_closed(self)

    def _spawn(self, coro: Awaitable, name: str) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        task.set_name(f"session {self.id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: %s failed", self.id, task.get_name(), exc_info=task.exception())
            asyncio.ensure_future(self.close(f"{task.get_name()} failed: {task.exception()!r}"))

    # ---- frames (engine worker thread) ----------------------------------------------------
    def _on_frames(self) -> None:
        core = self.core
        if core is None or self.closed.is_set():
            return
        try:
            frames = core.pull_frames()
        except RuntimeError:
            log.exception("session %s: engine failed", self.id)
            self._loop.call_soon_threadsafe(
                lambda: asyncio.ensure_future(self.close("engine failed"))
            )
            return
        for f in frames:
            if f.image is not None:
                self.frames.put(f.index, f.image)
            self._speech.append((f.index, f.speech))
            if not f.filled:
                self.metrics.observe_latency(f.ready_time - (core.t0 + f.pts))

    def _count_dropped(self) -> None:
        dropped = self.core.stats.dropped_frames
        self.metrics.frames_dropped += dropped - self._frames_dropped_seen
        self._frames_dropped_seen = dropped

    # ---- audio in -------------------------------------------------------------------------
    def push_audio(self, source: AudioInput, frame: av.AudioFrame, utterance: bool) -> PushResult:
        """Speech in: to the engine (16 kHz) and to the playout buffer at the place the engine
        put it. ``utterance``: track it for playback events (the assistant API)."""
        if self.closed.is_set():
            raise RuntimeError("the session is closed")
        to_engine, to_playout = source.convert(frame)
        result = self.core.push_audio(to_engine, SAMPLE_RATE)
        position = result.start_sample * OUT_PER_IN
        if abs(position - self._write_end) > OUT_RATE // 100:  # a gap: the engine moved it
            self._write_end = position
        self.audio.write(self._write_end, to_playout)
        self._write_end += len(to_playout)
        self.metrics.audio_in_seconds += len(to_engine) / SAMPLE_RATE
        if utterance and result.num_samples:
            current = self._open_utterance
            if current is None:
                current = Utterance(next(self._utterance_numbers), result.pts)
                self._open_utterance = current
                self._utterances.append(current)
            current.end_s = None
            self._last_push_end = (result.start_sample + result.num_samples) / SAMPLE_RATE
        return result

    async def consume(self, track: MediaStreamTrack, timeout: float) -> None:
        """Feed a WebRTC audio track into the session until it ends; no audio for ``timeout``
        seconds means the client is gone. Frames that queued up while we were busy are
        dropped so the speech stays live."""
        source = AudioInput()
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), timeout)
            except (TimeoutError, MediaStreamError) as err:
                reason = (
                    "publisher's audio ended"
                    if isinstance(err, MediaStreamError)
                    else (f"no audio from the publisher for {timeout:g} s")
                )
                await self.close(reason)
                return
            queue = getattr(track, "_queue", None)
            if queue is not None and queue.qsize() > 25:  # > 0.5 s behind: skip to the newest
                while queue.qsize() > 1:
                    queue.get_nowait()
                log.warning("session %s: inbound audio was late, skipped ahead", self.id)
            self.push_audio(source, frame, utterance=False)

    # ---- control (assistant API, page) ----------------------------------------------------
    def set_emotion(self, emotion: str, intensity: int) -> float:
        emotion_index(emotion)  # ValueError names the valid ones
        check_intensity(intensity)
        pts = self.core.set_emotion(emotion, intensity)
        self.emotion, self.intensity = emotion, intensity
        self._emit({"type": "session", **self.describe()})
        return pts

    def speak_end(self) -> None:
        """The utterance is complete: play it out, then idle."""
        self.core.flush()
        current = self._open_utterance
        if current is not None:
            current.end_s = self._last_push_end
            self._open_utterance = None

    def interrupt(self) -> float:
        """Barge-in: queued speech goes, the mouth closes; returns where the audio stops."""
        cut = self.core.interrupt()
        self.audio.truncate(round(cut * OUT_RATE))
        self._write_end = min(self._write_end, round(cut * OUT_RATE))
        for utt in self._utterances:
            if utt.end_s is None or utt.end_s > cut:
                utt.end_s = max(utt.start_s, cut)
                utt.interrupted = True
        self._open_utterance = None
        return cut

    def set_listening(self, on: bool) -> None:
        self.listening = bool(on)
        self.core.set_listening(self.listening)

    # ---- events ---------------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        if queue in self._subscribers:
            self._subscribers.remove(queue)

    def _emit(self, event: dict) -> None:
        for queue in self._subscribers:
            if queue.full():  # a subscriber that does not read loses the oldest events
                queue.get_nowait()
            queue.put_nowait(event)

    def describe(self) -> dict:
        stats = self.core.stats if self.core is not None else None
        return {
            "id": self.id,
            "state": self.state,
            "avatar": self.avatar_id,
            "emotion": self.emotion,
            "intensity": self.intensity,
            "listening": self.listening,
            "sample_rate": SAMPLE_RATE,
            "whep": f"/sessions/{self.id}/whep",
            "viewers": sum(p.role == "viewer" for p in self.peers.values()),
            "publisher": any(p.role == "publisher" for p in self.peers.values()),
            "frames": stats.frames if stats else 0,
            "frames_dropped": stats.dropped_frames if stats else 0,
            "playout_delay_ms": round(self.clock.delay * 1000, 1) if self.clock else None,
            "uptime_s": round(time.time() - self.created, 2),
        }

    async def _tick(self) -> None:
        """Every 20 ms: playback events, the session state, forgetting played audio."""
        while True:
            await asyncio.sleep(TICK_S)
            now = self.clock.play_time()
            while self._utterances:
                utt = self._utterances[0]
                if not utt.started and now >= utt.start_s:
                    utt.started = True
                    self._emit(
                        {
                            "type": "playback_started",
                            "utterance": utt.number,
                            "pts": round(utt.start_s, 3),
                        }
                    )
                if utt.end_s is None or now < utt.end_s:
                    break
                if not utt.started:  # cut before it was ever heard
                    utt.started = True
                    self._emit(
                        {
                            "type": "playback_started",
                            "utterance": utt.number,
                            "pts": round(utt.start_s, 3),
                        }
                    )
                self._emit(
                    {
                        "type": "playback_finished",
                        "utterance": utt.number,
                        "position_s": round(utt.end_s - utt.start_s, 3),
                        "interrupted": utt.interrupted,
                    }
                )
                self._utterances.popleft()
            state = self._current_state(now)
            if state != self.state:
                self.state = state
                self._emit({"type": "session", **self.describe()})
            self.audio.trim(int((now - 1.0) * OUT_RATE))
            self._count_dropped()

    def _current_state(self, now: float) -> str:
        playing = any(u.started and (u.end_s is None or now < u.end_s) for u in self._utterances)
        shown = int(np.floor(now * FPS))  # int() would show frame 0 before it is due
        talking = any(i <= shown and s >= 0.5 for i, s in self._speech if i >= shown - 2)
        if playing or talking:
            return "speaking"
        return "listening" if self.listening else "idle"

    # ---- peers ----------------------------------------------------------------------------
    async def connect(
        self,
        role: str,
        offer_sdp: str,
        lines: list[MediaLine],
        video_codec: str,
        media_timeout: float,
        connect_timeout: float,
    ) -> tuple[str, str]:
        """Answer an offer: the avatar's video and delayed audio go on the m-lines that
        receive; a publisher's audio m-line that sends is consumed into the session. Both
        audio shapes work: one sendrecv m-line, or sendonly + recvonly. Returns (peer id,
        answer SDP)."""
        pc = make_peer_connection(self.ice_servers)
        peer = Peer(f"{role[0]}{next(_peer_ids)}", role, pc)
        self.peers[peer.id] = peer
        consuming = False

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            nonlocal consuming
            if role == "publisher" and track.kind == "audio" and not consuming:
                consuming = True
                self._spawn(self.consume(track, media_timeout), f"{peer.id} audio in")
            else:  # always consume inbound media, even what we do not use
                self._spawn(_discard(track), f"{peer.id} discard {track.kind}")

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("session %s: %s %s", self.id, peer.id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self._peer_gone(peer, pc.connectionState)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            self._attach_tracks(peer, lines, video_codec)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await self._drop_peer(peer)
            raise
        self._spawn(self._expect_connection(peer, connect_timeout), f"{peer.id} connect")
        log.info("session %s: %s joined", self.id, peer.id)
        return peer.id, pc.localDescription.sdp

    def _attach_tracks(self, peer: Peer, lines: list[MediaLine], video_codec: str) -> None:
        media = [m for m in lines if m.kind in ("audio", "video")]
        sent = set()
        for transceiver, line in zip(peer.pc.getTransceivers(), media, strict=False):
            kind = transceiver.kind
            if line.receives and kind not in sent:
                if kind == "video":
                    track = AvatarVideoTrack(
                        self.clock, self.frames, self._frame_sent, self._track_stopped
                    )
                    prefer_codec(transceiver, video_codec)
                else:
                    track = AvatarAudioTrack(self.clock, self.audio, self._track_stopped)
                transceiver.sender.replaceTrack(track)
                peer.tracks.append(track)
                transceiver.direction = "sendrecv" if line.sends else "sendonly"
                sent.add(kind)
            else:
                transceiver.direction = "recvonly" if line.sends else "inactive"

    def _frame_sent(self, repeated: bool) -> None:
        self.metrics.frames_sent += 1
        self.metrics.frames_repeated += int(repeated)

    def _track_stopped(self, track: MediaStreamTrack) -> None:
        log.debug("session %s: %s track stopped", self.id, track.kind)

    async def _expect_connection(self, peer: Peer, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while peer.pc.connectionState != "connected":
            if time.monotonic() > deadline:
                await self._peer_gone(peer, f"not connected after {timeout:g} s")
                return
            await asyncio.sleep(0.1)

    async def _peer_gone(self, peer: Peer, why: str) -> None:
        if peer.id not in self.peers:
            return
        if peer.role == "publisher":
            await self.close(f"publisher {why}")
        else:
            await self._drop_peer(peer)
            log.info("session %s: viewer %s left (%s)", self.id, peer.id, why)

    async def remove_viewer(self, peer_id: str) -> bool:
        peer = self.peers.get(peer_id)
        if peer is None or peer.role != "viewer":
            return False
        await self._drop_peer(peer)
        return True

    async def _drop_peer(self, peer: Peer) -> None:
        self.peers.pop(peer.id, None)
        for track in peer.tracks:
            track.stop()
        with contextlib.suppress(Exception):
            await peer.pc.close()


async def _discard(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
