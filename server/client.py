"""Python clients of the server: a WHIP publisher / WHEP viewer on aiortc, and the assistant
WebSocket. Used by `dreamtalk say`, the tests and the benchmarks; also an example of the
protocols for anyone integrating the server from Python.

::

    async with WhipClient("http://127.0.0.1:8080", PcmTrack(samples, 16000)) as client:
        frame = await client.video.recv()      # the avatar, av.VideoFrame
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from urllib.parse import urlencode

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from server.rtc import make_peer_connection

CHUNK_S = 0.02


class PcmTrack(MediaStreamTrack):
    """Mono audio (int16 or float in [-1, 1]) sent in real time, 20 ms per frame; silence
    after it (``loop=True``: again from the start)."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, rate: int, loop: bool = False):
        super().__init__()
        if samples.dtype != np.int16:
            samples = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        self.samples = samples
        self.rate = rate
        self.loop = loop
        self.chunk = int(rate * CHUNK_S)
        self._k = 0
        self._start: float | None = None
        self.started_at: float | None = None  # time.monotonic() of the first sample

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = self.started_at = time.monotonic()
        wait = self._start + self._k * CHUNK_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        lo = self._k * self.chunk
        if self.loop and len(self.samples):
            lo %= len(self.samples)
        piece = self.samples[lo : lo + self.chunk]
        piece = np.pad(piece, (0, self.chunk - len(piece)))
        frame = AudioFrame.from_ndarray(piece[None, :], format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._k * self.chunk
        frame.time_base = fractions.Fraction(1, self.rate)
        self._k += 1
        return frame


class WhipClient:
    """Publish audio with WHIP and receive the avatar on the same connection (``audio``:
    our track, or None for a WHEP viewer of ``session_url``). ``shape``: ``"sendrecv"`` (one
    audio m-line both ways) or ``"split"`` (sendonly + recvonly audio m-lines)."""

    def __init__(
        self,
        base_url: str,
        audio: MediaStreamTrack | None,
        query: dict | None = None,
        shape: str = "sendrecv",
        video: bool = True,
        session: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.audio_out = audio
        self.query = query or {}
        self.shape = shape
        self.want_video = video
        self.session_path = session  # WHEP: /sessions/<id>
        self.pc: RTCPeerConnection | None = None
        self.location: str | None = None
        self.video: MediaStreamTrack | None = None
        self.audio: MediaStreamTrack | None = None
        self._tracks: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> WhipClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self, timeout: float = 10.0) -> None:
        self.pc = pc = make_peer_connection([])
        pc.on("track", self._tracks.put_nowait)
        if self.audio_out is not None:
            if self.shape == "sendrecv":
                pc.addTransceiver(self.audio_out, direction="sendrecv")
            else:
                pc.addTransceiver(self.audio_out, direction="sendonly")
                pc.addTransceiver("audio", direction="recvonly")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        if self.want_video:
            pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        path = f"{self.session_path}/whep" if self.session_path else "/whip"
        url = f"{self.base_url}{path}"
        if self.query:
            url += "?" + urlencode(self.query)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            ) as resp:
                body = await resp.text()
                if resp.status != 201:
                    await pc.close()
                    raise ConnectionError(f"{path} answered {resp.status}: {body}")
                self.location = resp.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        for _ in range(1 + int(self.want_video)):
            track = await asyncio.wait_for(self._tracks.get(), timeout)
            if track.kind == "video":
                self.video = track
            else:
                self.audio = track

    async def close(self, delete: bool = True) -> None:
        if delete and self.location:
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as http:
                    await http.delete(f"{self.base_url}{self.location}")
        if self.pc is not None:
            await self.pc.close()


async def say(
    base_url: str,
    pcm: bytes,
    rate: int,
    chunk_s: float = 0.1,
    emotion: str | None = None,
    realtime: bool = True,
    log=None,
) -> list[dict]:
    """Stream PCM16 mono over the assistant WebSocket (``/ws``, a new session) as a TTS
    would, send ``speak_end`` and wait for ``playback_finished``. Returns the events."""
    events: list[dict] = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url.rstrip('/')}/ws") as ws:
            hello = await ws.receive_json()
            events.append(hello)
            if log:
                log(hello)
            await ws.send_json({"type": "audio_format", "sample_rate": rate})
            if emotion:
                await ws.send_json({"type": "set_emotion", "emotion": emotion, "intensity": 2})
            step = int(rate * chunk_s) * 2
            start = time.monotonic()
            for k, lo in enumerate(range(0, len(pcm), step)):
                await ws.send_bytes(pcm[lo : lo + step])
                if realtime:
                    await asyncio.sleep(max(0.0, start + (k + 1) * chunk_s - time.monotonic()))
            await ws.send_json({"type": "speak_end"})
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                event = msg.json()
                events.append(event)
                if log:
                    log(event)
                if event.get("type") == "playback_finished":
                    break
    return events
