"""The server end to end: WHIP/WHEP, the assistant WebSocket, uploads, bad input and limits.

Every test talks to a real server (`create_app` on an aiohttp `AppRunner`, on a free loopback
port) over real sockets: aiortc peer connections, aiohttp HTTP and WebSocket clients, and
client processes that are killed. The server runs on an event loop in a background thread;
each test drives its clients with ``asyncio.run``. The engine runs tiny random models (the
server's mechanics do not need trained weights), and every server of this module shares one
avatar folder, so the default portrait is registered once.

Nothing is timed beyond generous "within N seconds" waits (the machine is small and shared).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import socket
import sys
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiortc.mediastreams import MediaStreamError
from multidict import CIMultiDictProxy
from PIL import Image

from dreamtalk.bench_stream import random_models, speech_audio
from dreamtalk.cli import main
from dreamtalk.cmd_say import nearest_rate
from engine.stream.worker import StreamEngine
from server.app import create_app
from server.client import PcmTrack, WhipClient
from server.config import ServerConfig
from server.rtc import make_peer_connection

REPO = Path(__file__).resolve().parent.parent
UPLOAD_LIMIT = 512 * 1024  # the shared server's max_upload_bytes (the default is 10 MiB)
MEDIA_TIMEOUT_S = 1.5  # the vanishing-clients server: no audio this long, the client is gone
GONE_WITHIN_S = 8.0  # a vanished client's session is freed within this
MAX_GAP_S = 2.0  # a bystander never waits longer than this for its next video frame
PTS_STEP = 3600  # 90 kHz video clock / 25 fps


# ---- a live server in a background thread ----------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`create_app` served on 127.0.0.1 by an event loop in its own thread."""

    def __init__(self, avatar_dir: Path, **options: Any):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = ServerConfig(port=self.port, avatar_dir=avatar_dir, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner = self._call(self._start())

    async def _start(self) -> web.AppRunner:
        engine = StreamEngine(random_models(tiny=True), workers=1)
        runner = web.AppRunner(create_app(self.config, engine=engine), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def avatar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("avatars")


@pytest.fixture(scope="module")
def server(avatar_dir: Path, one_thread: None) -> Iterator[LiveServer]:
    """The server most tests share (each test ends its own sessions)."""
    live = LiveServer(avatar_dir, max_upload_bytes=UPLOAD_LIMIT)
    yield live
    live.close()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 2 s of 16 kHz float32 speech (espeak-ng; a synthetic signal without it)."""
    audio, _ = speech_audio(2.0)
    return audio


@pytest.fixture(scope="module")
def offer(server: LiveServer) -> str:
    """A valid WHIP offer (sendrecv audio, recvonly video) to break in the bad-input tests."""
    return asyncio.run(make_offer())


# ---- client helpers --------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


async def request(method: str, url: str, **kwargs: Any) -> Reply:
    async with aiohttp.ClientSession() as http, http.request(method, url, **kwargs) as resp:
        body = await resp.read()
        return Reply(resp.status, resp.headers, body.decode("utf-8", errors="replace"))


def call(method: str, url: str, **kwargs: Any) -> Reply:
    return asyncio.run(request(method, url, **kwargs))


async def session_count(url: str) -> int:
    return (await request("GET", f"{url}/healthz")).json()["sessions"]


async def eventually(
    check: Callable[[], Coroutine[Any, Any, bool]], within: float, what: str
) -> None:
    """Wait until ``check()`` is true; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.1)


async def sessions_drop_to(url: str, n: int, within: float = GONE_WITHIN_S) -> None:
    async def done() -> bool:
        return await session_count(url) == n

    await eventually(done, within, f"/healthz shows {n} sessions")


async def make_offer(audio: str = "sendrecv", video: bool = True) -> str:
    """An aiortc offer with all candidates gathered (the peer connection is closed again)."""
    pc = make_peer_connection([])
    pc.addTransceiver("audio", direction=audio)
    if video:
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    await pc.close()
    return pc.localDescription.sdp


def pcm16(audio: np.ndarray, rate: int = 16000) -> bytes:
    """16 kHz float audio as PCM16 little-endian at ``rate`` (linear interpolation)."""
    if rate != 16000:
        n = round(len(audio) * rate / 16000)
        audio = np.interp(np.arange(n) * 16000 / rate, np.arange(len(audio)), audio)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def noise_png(side: int, seed: int = 0) -> bytes:
    """A photo with no face in it."""
    rng = np.random.default_rng(seed)
    return png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


class Receiver:
    """Reads a WebRTC client's avatar tracks in the background: when each video frame came,
    its pts, and the loudest audio sample."""

    def __init__(self, client: WhipClient):
        self.client = client
        self.times: list[float] = []
        self.pts: list[int] = []
        self.audio_peak = 0
        self.ended = asyncio.Event()  # the video track ended: the server let go of us
        self._tasks = [asyncio.ensure_future(self._video())]
        if client.audio is not None:
            self._tasks.append(asyncio.ensure_future(self._audio()))

    async def _video(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self.client.video.recv()
                self.times.append(time.monotonic())
                self.pts.append(frame.pts)
        self.ended.set()

    async def _audio(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self.client.audio.recv()
                peak = int(np.abs(frame.to_ndarray().astype(np.int32)).max())
                self.audio_peak = max(self.audio_peak, peak)

    async def frames(self, n: int, within: float = 10.0) -> None:
        """Wait until ``n`` frames came in all."""

        async def enough() -> bool:
            return len(self.pts) >= n

        await eventually(enough, within, f"{n} video frames (got {len(self.pts)})")

    def longest_gap(self, since: float) -> float:
        times = [since] + [t for t in self.times if t > since] + [time.monotonic()]
        return float(max(np.diff(times)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def bystander(url: str, speech: np.ndarray) -> AsyncIterator[Receiver]:
    """A live WHIP session beside the test's: it must never notice what the test does. On
    exit: it got frames all along (no long gap), still gets them, and its session is open."""
    async with WhipClient(url, PcmTrack(speech, 16000, loop=True)) as client:
        watch = Receiver(client)
        try:
            await watch.frames(5)
            start = time.monotonic()
            yield watch
            await watch.frames(len(watch.pts) + 25)  # a second more, after it all
            assert not watch.ended.is_set()
            gap = watch.longest_gap(start)
            assert gap < MAX_GAP_S, f"the bystander waited {gap:.1f} s for a frame"
            state = (await request("GET", f"{url}{client.location}")).json()
            assert state["state"] != "closed" and state["publisher"]
        finally:
            await watch.stop()


@dataclass
class Socket:
    ws: aiohttp.ClientWebSocketResponse
    hello: dict

    @property
    def id(self) -> str:
        return self.hello["id"]

    async def send(self, **message: Any) -> None:
        await self.ws.send_json(message)

    async def expect(self, kind: str, within: float = 10.0, **fields: Any) -> dict:
        """The next event of type ``kind`` with these fields (others are skipped)."""
        return (await self.until(kind, within, **fields))[-1]

    async def until(self, kind: str, within: float = 10.0, **fields: Any) -> list[dict]:
        """The events up to and including the next one of type ``kind`` with these fields."""
        events = []
        async with asyncio.timeout(within):
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"socket ended waiting for {kind} {fields}: {msg}")
                events.append(json.loads(msg.data))
                if events[-1]["type"] == kind and fields.items() <= events[-1].items():
                    return events

    async def collect(self, *kinds: str, within: float = 10.0) -> dict[str, dict]:
        """The first event of each of ``kinds``, in whatever order they come (a reply and
        an event it causes can cross on the wire)."""
        got: dict[str, dict] = {}
        async with asyncio.timeout(within):
            while not set(kinds) <= got.keys():
                event = await self.ws.receive_json()
                got.setdefault(event["type"], event)
        return got


@contextlib.asynccontextmanager
async def assistant(url: str, path: str = "/ws", **query: str) -> AsyncIterator[Socket]:
    """An assistant WebSocket; its first event (``session``) is in ``hello``."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url + path, params=query) as ws:
        yield Socket(ws, await ws.receive_json(timeout=10))


async def state_of(url: str, session_id: str) -> dict:
    reply = await request("GET", f"{url}/sessions/{session_id}")
    assert reply.status == 200, reply.text
    return reply.json()


# ---- the basics ------------------------------------------------------------------------------
def test_page_health_config_and_metrics(server: LiveServer) -> None:
    page = call("GET", server.url + "/")
    assert page.status == 200 and "<html" in page.text.lower()
    health = call("GET", server.url + "/healthz").json()
    assert health["ok"] and health["sessions"] == 0 and health["max_sessions"] == 4
    config = call("GET", server.url + "/config").json()
    assert "happy" in config["emotions"] and config["video_codecs"] == ["vp8", "h264"]
    assert config["max_upload_bytes"] == UPLOAD_LIMIT
    metrics = call("GET", server.url + "/metrics")
    assert "dreamtalk_sessions 0" in metrics.text
    avatars = call("GET", server.url + "/avatars").json()["avatars"]
    assert {"id": "default", "status": "ready"}.items() <= avatars[0].items()
    image = call("GET", server.url + "/avatars/default/image")
    assert image.status == 200 and image.headers["Content-Type"] == "image/png"


# ---- WHIP ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["sendrecv", "split"])
def test_whip_streams_video_and_audio_back_then_delete_ends_it(
    server: LiveServer, speech: np.ndarray, shape: str
) -> None:
    async def scenario() -> None:
        client = WhipClient(server.url, PcmTrack(speech, 16000), shape=shape)
        await client.connect()
        assert client.location is not None and client.location.startswith("/sessions/")
        watch = Receiver(client)
        try:
            await watch.frames(30)
            steps = np.diff(watch.pts)
            assert np.all(steps > 0) and np.all(steps % PTS_STEP == 0), steps
            assert np.median(steps) == PTS_STEP
            state = (await request("GET", server.url + client.location)).json()
            assert state["publisher"] and state["emotion"] == "neutral"

            async def heard() -> bool:  # the speech comes back, delayed onto the video
                return watch.audio_peak > 1000

            await eventually(heard, 5.0, "the speaker's audio back")

            ended = await request("DELETE", server.url + client.location)
            assert ended.status == 200
            assert await session_count(server.url) == 0
            gone = await request("GET", server.url + client.location)
            assert gone.status == 404 and "no session" in gone.text
            assert (await request("DELETE", server.url + client.location)).status == 404
            await asyncio.wait_for(watch.ended.wait(), 10)  # the server hung up on us
        finally:
            await watch.stop()
            await client.close(delete=False)

    asyncio.run(scenario())


def test_whip_query_options_apply(server: LiveServer, speech: np.ndarray) -> None:
    async def scenario() -> None:
        query = {"emotion": "angry", "intensity": "3", "video_codec": "h264"}
        async with WhipClient(server.url, PcmTrack(speech, 16000), query=query) as client:
            state = (await request("GET", server.url + client.location)).json()
            assert (state["emotion"], state["intensity"]) == ("angry", 3)
            watch = Receiver(client)
            await watch.frames(3)
            await watch.stop()
        await sessions_drop_to(server.url, 0)

    asyncio.run(scenario())


# ---- bad offers ------------------------------------------------------------------------------
def edit_media(sdp: str, kind: str, edit: Callable[[str], str | None]) -> str:
    """``sdp`` with ``edit`` applied to each m-section of ``kind`` (None: drop it)."""
    head, *sections = sdp.split("\r\nm=")
    kept = [head]
    for section in sections:
        if section.startswith(kind + " "):
            section = edit(section)
        if section is not None:
            kept.append(section)
    return "\r\nm=".join(kept)


def drop_lines(sdp: str, *prefixes: str) -> str:
    return "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith(prefixes))


def rename(*pairs: tuple[str, str]) -> Callable[[str], str]:
    def edit(section: str) -> str:
        for old, new in pairs:
            section = section.replace(old, new)
        return section

    return edit


# (id, the offer from a valid one, query, status, what the message says)
BAD_OFFERS: list[tuple[str, Callable[[str], str | bytes], dict, int, str]] = [
    ("not-sdp", lambda o: "hello", {}, 400, "not an SDP offer"),
    ("not-utf8", lambda o: b"\xff\xfe\x00" * 20, {}, 400, "not an SDP offer"),
    ("malformed", lambda o: "v=0\r\nm=audio x\r\n", {}, 400, "malformed SDP offer"),
    ("no-media", lambda o: o.split("\r\nm=")[0] + "\r\n", {}, 400, "no media lines"),
    (
        "no-audio",
        lambda o: edit_media(o, "audio", lambda s: None),
        {},
        400,
        "sends no audio",
    ),
    (
        "audio-recvonly",
        lambda o: edit_media(o, "audio", rename(("a=sendrecv", "a=recvonly"))),
        {},
        400,
        "sends no audio",
    ),
    (
        "no-audio-codec",
        lambda o: edit_media(
            o, "audio", rename(("opus/", "SILK/"), ("PCMU/", "G729/"), ("PCMA/", "G723/"))
        ),
        {},
        400,
        "no supported audio codec in the offer (got SILK, G722, G729, G723; supported: opus,",
    ),
    (
        "no-video-codec",
        lambda o: edit_media(o, "video", rename(("VP8/", "AV1X/"), ("H264/", "H265/"))),
        {},
        400,
        "no supported video codec",
    ),
    (
        "no-ice",
        lambda o: drop_lines(o, "a=ice-", "a=candidate"),
        {},
        400,
        "no ICE credentials",
    ),
    ("no-fingerprint", lambda o: drop_lines(o, "a=fingerprint"), {}, 400, "no DTLS fingerprint"),
    # aiortc refuses these: the session opened for the offer is closed again
    (
        "no-ice-password",
        lambda o: drop_lines(o, "a=ice-pwd"),
        {},
        400,
        "cannot answer this offer: ICE username fragment or password is missing",
    ),
    (
        "no-rtcp-mux",
        lambda o: drop_lines(o, "a=rtcp-mux"),
        {},
        400,
        "cannot answer this offer: RTCP mux is not enabled",
    ),
    ("too-large", lambda o: o + "a=x-pad:" + "x" * 70_000 + "\r\n", {}, 413, "larger than"),
    ("bad-emotion", lambda o: o, {"emotion": "furious"}, 400, "unknown emotion 'furious'"),
    ("bad-intensity", lambda o: o, {"intensity": "7"}, 400, "intensity must be 1, 2 or 3"),
    ("word-intensity", lambda o: o, {"intensity": "loud"}, 400, "intensity must be 1, 2 or 3"),
    ("bad-codec", lambda o: o, {"video_codec": "av1"}, 400, "video_codec must be one of"),
    ("unknown-avatar", lambda o: o, {"avatar": "nobody"}, 404, "unknown avatar 'nobody'"),
]


async def post_offer(url: str, body: str | bytes, query: dict | None = None, **kw: Any) -> Reply:
    headers = {"Content-Type": kw.pop("content_type", "application/sdp")}
    return await request("POST", f"{url}/whip", data=body, params=query or {}, headers=headers)


@pytest.mark.parametrize(
    ("make", "query", "status", "says"),
    [case[1:] for case in BAD_OFFERS],
    ids=[case[0] for case in BAD_OFFERS],
)
def test_bad_offer_is_refused_with_a_clear_message(
    server: LiveServer,
    offer: str,
    make: Callable[[str], str | bytes],
    query: dict,
    status: int,
    says: str,
) -> None:
    async def scenario() -> None:
        reply = await post_offer(server.url, make(offer), query)
        assert reply.status == status, reply.text
        assert says in reply.text
        assert reply.headers["Content-Type"].startswith("text/plain")
        assert await session_count(server.url) == 0  # nothing was left open

    asyncio.run(scenario())


def test_offer_content_type_and_streamed_oversize(server: LiveServer, offer: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the server must count
        for _ in range(20):
            yield b"a=x-pad:" + b"x" * 8000 + b"\r\n"

    async def scenario() -> None:
        wrong = await post_offer(server.url, offer, content_type="text/plain")
        assert wrong.status == 415 and "application/sdp" in wrong.text
        huge = await post_offer(server.url, chunks())
        assert huge.status == 413 and "larger than 65536 bytes" in huge.text
        assert await session_count(server.url) == 0

    asyncio.run(scenario())


def test_trickle_ice_is_refused(server: LiveServer) -> None:
    reply = call("PATCH", server.url + "/sessions/anything", data="a=candidate:1")
    assert reply.status == 405 and "trickle ICE is not supported" in reply.text


# ---- WHEP ------------------------------------------------------------------------------------
def test_whep_viewer_of_an_assistant_session(server: LiveServer, speech: np.ndarray) -> None:
    async def scenario() -> None:
        async with assistant(server.url) as talk:
            assert talk.hello["whep"] == f"/sessions/{talk.id}/whep"
            viewer = WhipClient(server.url, None, session=f"/sessions/{talk.id}")
            await viewer.connect()
            watch = Receiver(viewer)
            try:
                assert viewer.location.startswith(f"/sessions/{talk.id}/viewers/")
                assert (await state_of(server.url, talk.id))["viewers"] == 1
                await watch.frames(10)
                await talk.ws.send_bytes(pcm16(speech))
                await talk.send(type="speak_end")

                async def heard() -> bool:
                    return watch.audio_peak > 1000

                await eventually(heard, 8.0, "the viewer hears the speech")
                steps = np.diff(watch.pts)
                assert np.all(steps > 0) and np.all(steps % PTS_STEP == 0)

                ended = await request("DELETE", server.url + viewer.location)
                assert ended.status == 200
                assert (await state_of(server.url, talk.id))["viewers"] == 0
                again = await request("DELETE", server.url + viewer.location)
                assert again.status == 404 and "no viewer" in again.text
                await talk.send(type="ping")  # the session goes on without its viewer
                await talk.expect("pong")
            finally:
                await watch.stop()
                await viewer.close(delete=False)
        await sessions_drop_to(server.url, 0)  # the socket made the session: it ends with it

    asyncio.run(scenario())


def test_whep_errors(server: LiveServer) -> None:
    async def scenario() -> None:
        recv_offer = await make_offer(audio="recvonly")
        unknown = await request(
            "POST",
            f"{server.url}/sessions/nope/whep",
            data=recv_offer,
            headers={"Content-Type": "application/sdp"},
        )
        assert unknown.status == 404 and "no session 'nope'" in unknown.text
        async with assistant(server.url) as talk:
            send_only = await make_offer(audio="sendonly", video=False)
            reply = await request(
                "POST",
                f"{server.url}/sessions/{talk.id}/whep",
                data=send_only,
                headers={"Content-Type": "application/sdp"},
            )
            assert reply.status == 400 and "receives neither audio nor video" in reply.text
            gone = await request("DELETE", f"{server.url}/sessions/{talk.id}/viewers/v999")
            assert gone.status == 404
            assert (await state_of(server.url, talk.id))["viewers"] == 0

    asyncio.run(scenario())


# ---- the assistant WebSocket -----------------------------------------------------------------
def test_socket_hello_ping_and_close(server: LiveServer) -> None:
    async def scenario() -> None:
        async with assistant(server.url, emotion="sad", intensity="1") as talk:
            hello = talk.hello
            assert hello["type"] == "session" and hello["state"] == "idle"
            assert hello["sample_rate"] == 16000 and hello["whep"] == f"/sessions/{talk.id}/whep"
            assert (hello["emotion"], hello["intensity"]) == ("sad", 1)
            assert (await state_of(server.url, talk.id))["id"] == talk.id
            await talk.send(type="ping")
            assert await talk.expect("pong") == {"type": "pong"}
            assert await session_count(server.url) == 1
        await sessions_drop_to(server.url, 0)

    asyncio.run(scenario())


def test_socket_set_emotion_is_live(server: LiveServer) -> None:
    async def scenario() -> None:
        async with assistant(server.url) as talk:
            await talk.send(type="set_emotion", emotion="happy", intensity=3)
            got = await talk.collect("emotion_set", "session")
            reply, event = got["emotion_set"], got["session"]
            assert (reply["emotion"], reply["intensity"]) == ("happy", 3) and reply["pts"] >= 0
            assert (event["emotion"], event["intensity"]) == ("happy", 3)
            state = await state_of(server.url, talk.id)
            assert (state["emotion"], state["intensity"]) == ("happy", 3)
            await talk.send(type="set_emotion", emotion="surprised")  # intensity defaults to 2
            await talk.expect("emotion_set", emotion="surprised", intensity=2)

    asyncio.run(scenario())


def test_socket_listening_on_and_off(server: LiveServer) -> None:
    async def scenario() -> None:
        async with assistant(server.url) as talk:
            await talk.send(type="listening", on=True)
            await talk.expect("session", state="listening")
            assert (await state_of(server.url, talk.id))["listening"] is True
            await talk.send(type="listening", on=False)
            await talk.expect("session", state="idle")
            state = await state_of(server.url, talk.id)
            assert state["listening"] is False and state["state"] == "idle"

    asyncio.run(scenario())


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_socket_utterance_plays_out(server: LiveServer, speech: np.ndarray, rate: int) -> None:
    """Binary frames after ``audio_format`` (and base64 JSON for the second half), then
    ``speak_end``: playback_started, the session speaks, playback_finished, back to idle."""
    pcm = pcm16(speech[:16000], rate)  # 1 s
    half = len(pcm) // 4 * 2

    async def scenario() -> None:
        async with assistant(server.url) as talk:
            await talk.send(type="audio_format", sample_rate=rate)
            assert (await talk.expect("audio_format"))["sample_rate"] == rate
            for lo in range(0, half, rate // 5):  # 100 ms binary chunks
                await talk.ws.send_bytes(pcm[lo : min(lo + rate // 5, half)])
            data = base64.b64encode(pcm[half:]).decode()
            await talk.send(type="audio", data=data, sample_rate=rate)
            await talk.send(type="speak_end")
            events = await talk.until("playback_finished")
            kinds = [e["type"] for e in events]
            assert "error" not in kinds, events
            started = events[kinds.index("playback_started")]
            assert started["utterance"] == 1 and started["pts"] >= 0
            assert any(e["type"] == "session" and e["state"] == "speaking" for e in events)
            finished = events[-1]
            assert finished["utterance"] == 1 and finished["interrupted"] is False
            assert abs(finished["position_s"] - 1.0) < 0.15, finished
            await talk.expect("session", state="idle")

    asyncio.run(scenario())


def test_socket_interrupt_cuts_the_utterance(server: LiveServer, speech: np.ndarray) -> None:
    async def scenario() -> None:
        async with assistant(server.url) as talk:
            await talk.ws.send_bytes(pcm16(np.tile(speech, 3)))  # ~6 s queued at once
            await talk.expect("playback_started", utterance=1)
            await talk.send(type="interrupt")
            got = await talk.collect("interrupted", "playback_finished", within=5.0)
            finished = got["playback_finished"]
            assert finished["utterance"] == 1 and finished["interrupted"] is True
            assert finished["position_s"] < 3.0 and got["interrupted"]["pts"] >= 0
            await talk.expect("session", state="idle")
            # the next utterance plays normally; "clear" is an alias of interrupt
            await talk.ws.send_bytes(pcm16(speech[:8000]))
            await talk.send(type="speak_end")
            done = await talk.expect("playback_finished")
            assert done["utterance"] == 2 and done["interrupted"] is False
            await talk.send(type="clear")
            await talk.expect("interrupted")

    asyncio.run(scenario())


def test_http_control_messages(server: LiveServer) -> None:
    async def scenario() -> None:
        async with assistant(server.url) as talk:
            control = f"{server.url}/sessions/{talk.id}/control"
            pong = await request("POST", control, json={"type": "ping"})
            assert pong.status == 200 and pong.json() == {"ok": True, "type": "pong"}
            emotion = await request(
                "POST", control, json={"type": "set_emotion", "emotion": "fear", "intensity": 1}
            )
            assert emotion.status == 200 and emotion.json()["emotion"] == "fear"
            assert (await state_of(server.url, talk.id))["emotion"] == "fear"
            audio = base64.b64encode(b"\0\0" * 1600).decode()
            pushed = await request("POST", control, json={"type": "audio", "data": audio})
            assert pushed.status == 200
            bad = await request("POST", control, data="{nope")
            assert bad.status == 400 and bad.json()["code"] == "bad_json"
            unknown = await request("POST", f"{server.url}/sessions/nope/control", json={})
            assert unknown.status == 404

    asyncio.run(scenario())


async def send_raw(ws: aiohttp.ClientWebSocketResponse, message: str | bytes) -> None:
    if isinstance(message, bytes):
        await ws.send_bytes(message)
    else:
        await ws.send_str(message)


# (id, what the client sends, the error code, what the message says)
BAD_MESSAGES: list[tuple[str, str | bytes, str, str]] = [
    ("not-json", "{type: ping", "bad_json", "not valid JSON"),
    ("not-an-object", "[1, 2]", "bad_json", "must be a JSON object"),
    ("no-type", '{"kind": "ping"}', "bad_message", "needs a 'type'"),
    ("unknown-type", '{"type": "dance"}', "unknown_type", "unknown message type 'dance'"),
    ("rate-44100", '{"type": "audio_format", "sample_rate": 44100}', "bad_rate", "44100"),
    ("rate-missing", '{"type": "audio_format"}', "bad_rate", "is not supported"),
    (
        "audio-rate-22050",
        '{"type": "audio", "data": "AAAA", "sample_rate": 22050}',
        "bad_rate",
        "sample_rate 22050 is not supported (use one of (16000, 24000, 48000))",
    ),
    (
        "audio-rate-text",
        '{"type": "audio", "data": "AAAA", "sample_rate": "16k"}',
        "bad_rate",
        "must be an integer",
    ),
    ("audio-no-data", '{"type": "audio"}', "bad_audio", "needs 'data'"),
    ("audio-not-base64", '{"type": "audio", "data": "@@@"}', "bad_audio", "not valid base64"),
    ("odd-pcm-bytes", b"\x01\x02\x03", "bad_audio", "even number of bytes"),
    (
        "unknown-emotion",
        '{"type": "set_emotion", "emotion": "furious"}',
        "bad_emotion",
        "unknown emotion 'furious'",
    ),
    ("no-emotion", '{"type": "set_emotion"}', "bad_emotion", "set_emotion needs 'emotion'"),
    (
        "number-emotion",
        '{"type": "set_emotion", "emotion": 3}',
        "bad_emotion",
        "set_emotion needs 'emotion'",
    ),
    (
        "bad-intensity",
        '{"type": "set_emotion", "emotion": "happy", "intensity": 9}',
        "bad_emotion",
        "intensity must be 1, 2 or 3",
    ),
    ("listening-text", '{"type": "listening", "on": "yes"}', "bad_value", "true or false"),
]


@pytest.mark.parametrize(
    ("message", "code", "says"),
    [case[1:] for case in BAD_MESSAGES],
    ids=[case[0] for case in BAD_MESSAGES],
)
def test_bad_socket_message_gets_an_error_and_the_session_goes_on(
    server: LiveServer, message: str | bytes, code: str, says: str
) -> None:
    async def scenario() -> None:
        async with assistant(server.url) as talk:
            await send_raw(talk.ws, message)
            error = await talk.expect("error")
            assert error["code"] == code and says in error["message"], error
            await talk.send(type="ping")
            await talk.expect("pong")
            assert (await state_of(server.url, talk.id))["state"] != "closed"

    asyncio.run(scenario())


def test_socket_errors_at_the_handshake(server: LiveServer) -> None:
    async def scenario() -> None:
        with pytest.raises(aiohttp.WSServerHandshakeError) as unknown:
            async with assistant(server.url, "/sessions/nope/ws"):
                pass
        assert unknown.value.status == 404
        with pytest.raises(aiohttp.WSServerHandshakeError) as bad:
            async with assistant(server.url, emotion="furious"):
                pass
        assert bad.value.status == 400
        plain = await request("GET", server.url + "/ws")  # not a WebSocket request at all
        assert plain.status == 400 and "upgrade request" in plain.text
        assert await session_count(server.url) == 0  # none of them left a session behind

    asyncio.run(scenario())


def test_oversized_socket_message_ends_the_socket_cleanly(server: LiveServer) -> None:
    async def scenario() -> None:
        async with assistant(server.url) as talk:
            with contextlib.suppress(ConnectionError):  # the server hangs up as it reads
                await talk.ws.send_bytes(b"\0" * (4 * 1024 * 1024 + 2))
            msg = await talk.ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE, msg
            assert msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await sessions_drop_to(server.url, 0)

    asyncio.run(scenario())


def test_second_socket_on_an_existing_session(server: LiveServer) -> None:
    """``GET /sessions/<id>/ws`` sees the session's events; closing it leaves the session."""

    async def scenario() -> None:
        async with assistant(server.url) as owner:
            async with assistant(server.url, f"/sessions/{owner.id}/ws") as second:
                assert second.id == owner.id
                await owner.send(type="set_emotion", emotion="angry", intensity=1)
                await second.expect("session", emotion="angry")
            await owner.send(type="ping")
            await owner.expect("pong")
            assert await session_count(server.url) == 1
        await sessions_drop_to(server.url, 0)

    asyncio.run(scenario())


# ---- portraits -------------------------------------------------------------------------------
def test_upload_without_a_face_fails_registration_clearly(
    server: LiveServer, avatar_dir: Path, offer: str
) -> None:
    photo = noise_png(300)  # ~270 kB: several reads of the request body
    assert 64 * 1024 < len(photo) < UPLOAD_LIMIT

    async def scenario() -> None:
        raw = await request(
            "POST", server.url + "/avatars", data=photo, headers={"Content-Type": "image/png"}
        )
        assert raw.status == 202, raw.text
        entry = raw.json()
        assert entry["status"] == "registering" and entry["error"] is None
        form = aiohttp.FormData()
        form.add_field("image", noise_png(64, seed=1), filename="b.png", content_type="image/png")
        multipart = await request("POST", server.url + "/avatars", data=form)
        assert multipart.status == 202, multipart.text
        for avatar_id in (entry["id"], multipart.json()["id"]):
            url = f"{server.url}/avatars/{avatar_id}"

            async def settled(url: str = url) -> bool:
                return (await request("GET", url)).json()["status"] != "registering"

            await eventually(settled, 30.0, f"avatar {avatar_id} registered or failed")
            final = (await request("GET", url)).json()
            assert final["status"] == "failed"
            assert final["error"].startswith("no face found in the photo"), final
            assert str(avatar_dir) not in final["error"]  # no server paths in messages
            image = await request("GET", url + "/image")
            assert image.status == 200 and image.headers["Content-Type"] == "image/png"
        refused = await post_offer(server.url, offer, {"avatar": entry["id"]})
        assert refused.status == 409 and "no face found in the photo" in refused.text
        assert await session_count(server.url) == 0

    asyncio.run(scenario())


def gif() -> bytes:
    return png(np.zeros((8, 8), np.uint8), fmt="GIF")


def huge_pixels() -> bytes:  # 8000 x 8000 bilevel: 64 Mpx in a few kB
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, format="PNG")
    return buffer.getvalue()


# (id, the body, status, what the message says)
BAD_UPLOADS: list[tuple[str, Callable[[], bytes], int, str]] = [
    ("empty", lambda: b"", 400, "the upload is empty"),
    ("text", lambda: b"hello, this is not a picture", 415, "not an image"),
    ("gif", gif, 415, "GIF images are not supported"),
    ("truncated-png", lambda: noise_png(100)[:40], 415, "not an image"),
    ("one-byte-over", lambda: b"\x89PNG" + b"\0" * UPLOAD_LIMIT, 413, "the limit is"),
    ("far-over", lambda: b"\0" * (UPLOAD_LIMIT + 200_000), 413, "larger than"),
    ("too-many-pixels", huge_pixels, 413, "at most 40000000 pixels"),
]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [case[1:] for case in BAD_UPLOADS],
    ids=[case[0] for case in BAD_UPLOADS],
)
def test_bad_upload_is_refused(
    server: LiveServer, body: Callable[[], bytes], status: int, says: str
) -> None:
    data = body()
    reply = call("POST", server.url + "/avatars", data=data, headers={"Content-Type": "image/png"})
    assert reply.status == status, reply.text
    assert says in reply.text


def test_upload_forms_and_unknown_avatars(server: LiveServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length
        for _ in range(10):
            yield b"\0" * 100_000

    async def scenario() -> None:
        form = aiohttp.FormData()
        form.add_field("photo", b"abc", filename="a.png", content_type="image/png")
        no_field = await request("POST", server.url + "/avatars", data=form)
        assert no_field.status == 400 and "no 'image' field" in no_field.text
        streamed = await request(
            "POST", server.url + "/avatars", data=chunks(), headers={"Content-Type": "image/png"}
        )
        assert streamed.status == 413 and "the limit is" in streamed.text
        big_form = aiohttp.FormData()
        big_form.add_field("image", chunks(), content_type="image/png")
        too_big = await request("POST", server.url + "/avatars", data=big_form)
        assert too_big.status == 413
        for path in ("/avatars/nope", "/avatars/nope/image"):
            missing = await request("GET", server.url + path)
            assert missing.status == 404 and "unknown avatar 'nope'" in missing.text

    asyncio.run(scenario())


# ---- bad input while another session streams ------------------------------------------------
def test_bad_input_never_disturbs_a_live_session(
    server: LiveServer, offer: str, speech: np.ndarray
) -> None:
    async def scenario() -> None:
        async with bystander(server.url, speech):
            for _, make, query, _, _ in BAD_OFFERS:
                await post_offer(server.url, make(offer), query)
            for _, body, _, _ in BAD_UPLOADS:
                headers = {"Content-Type": "image/png"}
                await request("POST", server.url + "/avatars", data=body(), headers=headers)
            faceless = await request(
                "POST", server.url + "/avatars", data=noise_png(200, seed=2), headers=headers
            )  # registering it (CPU-heavy) runs beside the session
            async with assistant(server.url) as talk:
                for _, message, _, _ in BAD_MESSAGES:
                    await send_raw(talk.ws, message)
                with contextlib.suppress(ConnectionError):
                    await talk.ws.send_bytes(b"\0" * (4 * 1024 * 1024 + 2))
            await sessions_drop_to(server.url, 1)  # the bystander's

            async def settled() -> bool:
                reply = await request("GET", f"{server.url}/avatars/{faceless.json()['id']}")
                return reply.json()["status"] == "failed"

            await eventually(settled, 30.0, "the faceless upload fails")
        await sessions_drop_to(server.url, 0)

    asyncio.run(scenario())


# ---- `dreamtalk say` and the example client -------------------------------------------------
def write_wav(path: Path, audio: np.ndarray, rate: int, channels: int = 1) -> Path:
    """16 kHz float ``audio`` as a PCM16 WAV at ``rate`` with ``channels`` (all the same)."""
    pcm = np.frombuffer(pcm16(audio, rate), "<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(pcm, channels).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize(
    ("source", "sent"),
    [(8000, 16000), (16000, 16000), (20000, 24000), (22050, 24000), (44100, 48000), (96000, 48000)],
)
def test_say_sends_at_the_nearest_api_rate(source: int, sent: int) -> None:
    assert nearest_rate(source) == sent


def test_say_streams_a_wav_file(
    server: LiveServer,
    speech: np.ndarray,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dreamtalk")
    wav = write_wav(tmp_path / "speech.wav", speech, 22050, channels=2)
    argv = ["say", str(wav), "--url", server.url, "--emotion", "happy", "--chunk-ms", "200"]
    assert main([*argv, "--no-realtime"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    hello, finished = events[0], events[-1]
    assert hello["type"] == "session"
    assert {"type": "audio_format", "sample_rate": 24000} in events
    assert any(e["type"] == "emotion_set" and e["emotion"] == "happy" for e in events)
    assert finished["type"] == "playback_finished" and finished["interrupted"] is False
    assert abs(finished["position_s"] - len(speech) / 16000) < 0.15
    assert f"{server.url}/?session={hello['id']}" in caplog.text  # where to watch it
    assert f"{server.url}/sessions/{hello['id']}/whep" in caplog.text
    asyncio.run(sessions_drop_to(server.url, 0))  # the session ends with the command


def test_say_errors_are_one_clear_line(
    server: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    wav = write_wav(tmp_path / "speech.wav", np.zeros(1600, np.float32), 16000)
    nobody = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["say", str(tmp_path / "missing.wav")], "missing.wav: no such file"),
        (["say", str(text)], "not decodable audio"),
        (["say", str(wav), "--url", nobody], "cannot reach the server"),
        (["say", str(wav), "--url", "localhost:8080"], "--url must be like"),
        (["say", str(wav), "--url", server.url, "--emotion", "furious"], "unknown emotion"),
        (["say", str(wav), "--url", server.url + "/nothing"], "refused the session: HTTP 404"),
    ]
    for argv, says in cases:
        caplog.clear()
        assert main(argv) == 2, argv
        assert says in caplog.text, (argv, caplog.text)


def test_example_assistant_client_runs(
    server: LiveServer, speech: np.ndarray, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "speech.wav", speech, 24000)
    example = REPO / "examples" / "assistant_client.py"

    async def scenario() -> tuple[int, str]:
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(example), str(wav), "--url", server.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(child.communicate(), 60)
        return child.returncode, out.decode()

    code, out = asyncio.run(scenario())
    assert code == 0, out
    assert f"{server.url}/?session=" in out
    assert "interrupted: True" in out and '"type": "pong"' in out
    assert '"emotion": "happy"' in out and '"state": "listening"' in out
    asyncio.run(sessions_drop_to(server.url, 0))


# ---- limits: --max-sessions ------------------------------------------------------------------
def test_max_sessions_gives_503_with_retry_after(
    avatar_dir: Path,
    one_thread: None,
    offer: str,
    speech: np.ndarray,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = LiveServer(avatar_dir, max_sessions=2, retry_after_s=7)
    wav = write_wav(tmp_path / "speech.wav", speech, 16000)

    async def upgrade_request() -> Reply:  # a WebSocket handshake, read as plain HTTP
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
            "Sec-WebSocket-Version": "13",
        }
        return await request("GET", full.url + "/ws", headers=headers)

    async def scenario() -> None:
        async with assistant(full.url) as first, assistant(full.url) as second:
            for refused in (await upgrade_request(), await post_offer(full.url, offer)):
                assert refused.status == 503
                assert refused.headers["Retry-After"] == "7"
                assert "all 2 sessions are in use; try again later" in refused.text
            with pytest.raises(aiohttp.WSServerHandshakeError) as ws_refused:
                async with assistant(full.url):
                    pass
            assert ws_refused.value.status == 503
            say = ["say", str(wav), "--url", full.url, "--no-realtime"]
            assert await asyncio.to_thread(main, say) == 2
            assert "refused the session: HTTP 503; try again in 7 s" in caplog.text
            metrics = (await request("GET", full.url + "/metrics")).text
            assert "dreamtalk_sessions_rejected_total 4" in metrics
            for talk in (first, second):  # the open sessions did not notice
                await talk.send(type="ping")
                await talk.expect("pong")
            assert await session_count(full.url) == 2
            await first.ws.close()
            await sessions_drop_to(full.url, 1)
            async with assistant(full.url) as third:  # a slot is free again
                assert third.hello["state"] == "idle"

    try:
        asyncio.run(scenario())
    finally:
        full.close()


# ---- clients that vanish ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def fragile(avatar_dir: Path, one_thread: None) -> Iterator[LiveServer]:
    """A server that gives up on silent publishers and unconnected peers quickly."""
    live = LiveServer(
        avatar_dir, max_sessions=6, media_timeout_s=MEDIA_TIMEOUT_S, connect_timeout_s=3.0
    )
    yield live
    live.close()


def closed_reasons(caplog: pytest.LogCaptureFixture, session_path: str) -> list[str]:
    sid = session_path.rsplit("/", 1)[-1]
    return [r.getMessage() for r in caplog.records if f"session {sid}: closed" in r.getMessage()]


def test_publisher_that_stops_sending_audio(
    fragile: LiveServer, speech: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server")

    async def scenario() -> None:
        async with bystander(fragile.url, speech):
            track = PcmTrack(speech, 16000, loop=True)
            async with WhipClient(fragile.url, track) as client:
                watch = Receiver(client)
                await watch.frames(5)
                track.stop()  # no more RTP, but ICE and DTLS stay up
                await sessions_drop_to(fragile.url, 1)
                await asyncio.wait_for(watch.ended.wait(), 10)  # the server hung up
                await watch.stop()
        await sessions_drop_to(fragile.url, 0)
        reasons = " ".join(closed_reasons(caplog, client.location))
        assert f"no audio from the publisher for {MEDIA_TIMEOUT_S} s" in reasons

    asyncio.run(scenario())


def test_publisher_that_closes_without_delete(fragile: LiveServer, speech: np.ndarray) -> None:
    async def scenario() -> None:
        async with bystander(fragile.url, speech):
            client = WhipClient(fragile.url, PcmTrack(speech, 16000, loop=True))
            await client.connect()
            watch = Receiver(client)
            await watch.frames(5)
            await watch.stop()
            await client.close(delete=False)
            await sessions_drop_to(fragile.url, 1)
        await sessions_drop_to(fragile.url, 0)

    asyncio.run(scenario())


def test_publisher_that_never_connects(fragile: LiveServer, speech: np.ndarray) -> None:
    async def scenario() -> None:
        async with bystander(fragile.url, speech):
            reply = await post_offer(fragile.url, await make_offer())  # its peer is gone
            assert reply.status == 201
            assert await session_count(fragile.url) == 2
            await sessions_drop_to(fragile.url, 1)
        await sessions_drop_to(fragile.url, 0)

    asyncio.run(scenario())


def test_viewer_that_closes_without_delete(fragile: LiveServer, speech: np.ndarray) -> None:
    async def scenario() -> None:
        async with bystander(fragile.url, speech) as watched:
            path = watched.client.location
            viewer = WhipClient(fragile.url, None, session=path)
            await viewer.connect()
            watch = Receiver(viewer)
            await watch.frames(5)
            await watch.stop()
            assert (await request("GET", fragile.url + path)).json()["viewers"] == 1
            await viewer.close(delete=False)

            async def left() -> bool:
                return (await request("GET", fragile.url + path)).json()["viewers"] == 0

            await eventually(left, GONE_WITHIN_S, "the viewer is dropped")
            assert await session_count(fragile.url) == 1  # the session itself goes on
        await sessions_drop_to(fragile.url, 0)

    asyncio.run(scenario())


def test_viewer_that_never_connects(
    fragile: LiveServer, speech: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server")

    async def scenario() -> None:
        async with bystander(fragile.url, speech) as watched:
            path = watched.client.location
            offer = await make_offer(audio="recvonly")  # its peer connection is already gone
            headers = {"Content-Type": "application/sdp"}
            reply = await request("POST", f"{fragile.url}{path}/whep", data=offer, headers=headers)
            assert reply.status == 201
            assert (await request("GET", fragile.url + path)).json()["viewers"] == 1

            async def dropped() -> bool:
                return (await request("GET", fragile.url + path)).json()["viewers"] == 0

            await eventually(dropped, GONE_WITHIN_S, "the unconnected viewer is dropped")
        await sessions_drop_to(fragile.url, 0)
        assert "left (not connected after 3 s)" in caplog.text

    asyncio.run(scenario())


# Clients in a process of their own, killed (SIGKILL) mid-stream: no goodbye of any kind.
WS_CLIENT = """
import asyncio, sys, aiohttp
async def main():
    async with aiohttp.ClientSession() as http, http.ws_connect(sys.argv[1] + "/ws") as ws:
        print((await ws.receive_json())["id"], flush=True)
        while True:
            await ws.send_bytes(b"\\x10\\x00" * 1600)
            await asyncio.sleep(0.1)
asyncio.run(main())
"""

WHIP_CLIENT = """
import asyncio, sys
import numpy as np
from server.client import PcmTrack, WhipClient
from server.rtc import setup_aiortc
async def main():
    setup_aiortc([], "127.0.0.1")
    tone = np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.3
    async with WhipClient(sys.argv[1], PcmTrack(tone, 16000, loop=True)) as client:
        await client.video.recv()
        print(client.location, flush=True)
        while True:
            await client.video.recv()
asyncio.run(main())
"""


@pytest.mark.parametrize("code", [WS_CLIENT, WHIP_CLIENT], ids=["websocket", "whip"])
def test_client_process_killed_mid_stream(
    fragile: LiveServer, speech: np.ndarray, code: str
) -> None:
    async def scenario() -> None:
        async with bystander(fragile.url, speech):
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, fragile.url, cwd=REPO, stdout=asyncio.subprocess.PIPE
            )
            try:
                line = await asyncio.wait_for(child.stdout.readline(), 30)
                assert line.strip(), "the client process did not connect"
                assert await session_count(fragile.url) == 2
                await asyncio.sleep(0.5)  # mid-stream
            finally:
                child.kill()
                await child.wait()
            await sessions_drop_to(fragile.url, 1)
        await sessions_drop_to(fragile.url, 0)

    asyncio.run(scenario())
