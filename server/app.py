"""The aiohttp application: routes, the session registry, start-up and shutdown.

Handlers validate, then hand over to `LiveSession` (media, peers, events), `AvatarStore`
(portraits) and `server.assistant` (the WebSocket protocol). docs/server.md documents every
route; errors are text/plain with a message that says what was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from engine.emotions import EMOTIONS, check_intensity, emotion_index
from engine.motion_model import MotionModels
from engine.stream.worker import StreamEngine
from server import assistant
from server.avatars import AvatarStore, UploadError
from server.config import ServerConfig
from server.live_session import LiveSession
from server.metrics import Metrics
from server.rtc import MAX_SDP_BYTES, VIDEO_CODECS, OfferError, parse_offer, setup_aiortc

log = logging.getLogger(__name__)

WEB_CLIENT = Path(__file__).resolve().parent.parent / "web_client"


class ServerState:
    """What the handlers share: config, engine, avatars, sessions, metrics."""

    def __init__(self, config: ServerConfig, engine: StreamEngine):
        self.config = config
        self.engine = engine
        self.metrics = Metrics()
        self.avatars = AvatarStore(config.avatar_dir, config.size, config.max_upload_bytes)
        self.sessions: dict[str, LiveSession] = {}
        self._opening = 0  # sessions being opened (they count against the limit)
        self.started = time.time()

    async def open_session(self, avatar_id: str, emotion: str, intensity: int) -> LiveSession:
        if len(self.sessions) + self._opening >= self.config.max_sessions:
            self.metrics.sessions_rejected += 1
            raise web.HTTPServiceUnavailable(
                text=f"all {self.config.max_sessions} sessions are in use; try again later",
                headers={"Retry-After": str(self.config.retry_after_s)},
            )
        try:
            avatar = self.avatars.ready(avatar_id)
        except KeyError:
            raise web.HTTPNotFound(text=f"unknown avatar {avatar_id!r}") from None
        except UploadError as err:
            raise web.HTTPConflict(text=str(err)) from None
        self._opening += 1
        try:
            session = await LiveSession.open(
                self.engine,
                avatar,
                emotion,
                intensity,
                metrics=self.metrics,
                ice_servers=self.config.ice_servers,
                avatar_id=avatar_id,
                on_closed=self._closed,
            )
        finally:
            self._opening -= 1
        self.sessions[session.id] = session
        self.metrics.sessions_total += 1
        self.metrics.sessions_open = len(self.sessions)
        return session

    def _closed(self, session: LiveSession) -> None:
        self.sessions.pop(session.id, None)
        self.metrics.sessions_open = len(self.sessions)

    def session(self, request: web.Request) -> LiveSession:
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            raise web.HTTPNotFound(text=f"no session {request.match_info['sid']!r}")
        return session


STATE = web.AppKey("state", ServerState)


# ---- helpers ---------------------------------------------------------------------------------
def _start_options(request: web.Request, config: ServerConfig) -> tuple[str, int, str, str]:
    q = request.query
    emotion = q.get("emotion", "neutral")
    raw = q.get("intensity", "2")
    try:
        emotion_index(emotion)
        intensity = check_intensity(int(raw) if raw.isascii() and raw.isdigit() else raw)
    except ValueError as err:
        raise web.HTTPBadRequest(text=str(err)) from None
    codec = q.get("video_codec", config.video_codec).lower()
    if codec not in VIDEO_CODECS:
        raise web.HTTPBadRequest(text=f"video_codec must be one of {', '.join(VIDEO_CODECS)}")
    return emotion, intensity, q.get("avatar", "default"), codec


async def _read_at_most(read: Callable[[int], Awaitable[bytes]], limit: int) -> bytes:
    """The body, or its first ``limit + 1`` bytes when it is longer (the caller refuses it).
    One ``read(n)`` returns what has arrived so far, often less than n: loop to the end."""
    body = bytearray()
    while len(body) <= limit:
        chunk = await read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def _read_offer(request: web.Request, need_audio_in: bool):
    if request.content_type != "application/sdp":
        raise web.HTTPUnsupportedMediaType(
            text=f"the offer must be Content-Type application/sdp, got {request.content_type!r}"
        )
    if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            MAX_SDP_BYTES,
            request.content_length,
            text=f"SDP offer larger than {MAX_SDP_BYTES} bytes",
        )
    body = await _read_at_most(request.content.read, MAX_SDP_BYTES)
    if len(body) > MAX_SDP_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            MAX_SDP_BYTES, len(body), text=f"SDP offer larger than {MAX_SDP_BYTES} bytes"
        )
    sdp = body.decode("utf-8", errors="replace")
    try:
        return sdp, parse_offer(sdp, need_audio_in)
    except OfferError as err:
        raise web.HTTPBadRequest(text=str(err)) from None


def _answer(location: str, sdp: str) -> web.Response:
    return web.Response(
        status=201, text=sdp, content_type="application/sdp", headers={"Location": location}
    )


# ---- routes ----------------------------------------------------------------------------------
routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_CLIENT / "index.html")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "ok": True,
            "sessions": len(state.sessions),
            "max_sessions": state.config.max_sessions,
            "uptime_s": round(time.time() - state.started, 1),
        }
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[STATE].metrics.render(), content_type="text/plain", charset="utf-8"
    )


@routes.get("/config")
async def client_config(request: web.Request) -> web.Response:
    config = request.app[STATE].config
    return web.json_response(
        {
            "emotions": list(EMOTIONS),
            "intensities": [1, 2, 3],
            "ice_servers": [server.for_browser() for server in config.ice_servers],
            "video_codecs": list(VIDEO_CODECS),
            "default_avatar": "default",
            "max_upload_bytes": config.max_upload_bytes,
            "size": config.size,
        }
    )


@routes.get("/avatars")
async def list_avatars(request: web.Request) -> web.Response:
    entries = request.app[STATE].avatars.entries.values()
    return web.json_response({"avatars": [e.describe() for e in entries]})


@routes.post("/avatars")
async def upload_avatar(request: web.Request) -> web.Response:
    store = request.app[STATE].avatars
    limit = store.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise web.HTTPRequestEntityTooLarge(
            limit, request.content_length, text=f"the upload is larger than {limit} bytes"
        )
    if request.content_type.startswith("multipart/"):
        data = None
        async for part in await request.multipart():
            if part.name == "image":
                data = await _read_at_most(part.read_chunk, limit)
                break
        if data is None:
            raise web.HTTPBadRequest(text="the multipart form has no 'image' field")
    else:
        data = await _read_at_most(request.content.read, limit)
    try:
        entry = store.upload(bytes(data))
    except UploadError as err:
        log.info("POST /avatars -> %d %s", err.status, err)
        return web.Response(status=err.status, text=str(err))
    return web.json_response(entry.describe(), status=202)


@routes.get("/avatars/{aid}")
async def get_avatar(request: web.Request) -> web.Response:
    entry = request.app[STATE].avatars.entries.get(request.match_info["aid"])
    if entry is None:
        raise web.HTTPNotFound(text=f"unknown avatar {request.match_info['aid']!r}")
    return web.json_response(entry.describe())


@routes.get("/avatars/{aid}/image")
async def avatar_image(request: web.Request) -> web.Response:
    store = request.app[STATE].avatars
    aid = request.match_info["aid"]
    if aid not in store.entries:
        raise web.HTTPNotFound(text=f"unknown avatar {aid!r}")
    png = await asyncio.to_thread(store.image_png, aid)
    return web.Response(body=png, content_type="image/png")


@routes.post("/whip")
async def whip(request: web.Request) -> web.Response:
    state = request.app[STATE]
    config = state.config
    emotion, intensity, avatar_id, codec = _start_options(request, config)
    sdp, lines = await _read_offer(request, need_audio_in=True)
    session = await state.open_session(avatar_id, emotion, intensity)
    try:
        _, answer = await session.connect(
            "publisher", sdp, lines, codec, config.media_timeout_s, config.connect_timeout_s
        )
    except Exception as err:
        await session.close(f"negotiation failed: {err!r}")
        log.warning("WHIP negotiation failed: %r", err)
        raise web.HTTPBadRequest(text=f"cannot answer this offer: {err}") from None
    return _answer(f"/sessions/{session.id}", answer)


@routes.post("/sessions/{sid}/whep")
async def whep(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session = state.session(request)
    _, _, _, codec = _start_options(request, state.config)
    sdp, lines = await _read_offer(request, need_audio_in=False)
    try:
        peer_id, answer = await session.connect(
            "viewer",
            sdp,
            lines,
            codec,
            state.config.media_timeout_s,
            state.config.connect_timeout_s,
        )
    except Exception as err:
        log.warning("WHEP negotiation failed: %r", err)
        raise web.HTTPBadRequest(text=f"cannot answer this offer: {err}") from None
    return _answer(f"/sessions/{session.id}/viewers/{peer_id}", answer)


@routes.patch("/sessions/{sid}")
@routes.patch("/sessions/{sid}/viewers/{vid}")
async def trickle(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(
        "PATCH",
        ["GET", "DELETE"],
        text="trickle ICE is not supported: send the offer with all candidates gathered",
    )


@routes.get("/sessions/{sid}")
async def get_session(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].session(request).describe())


@routes.delete("/sessions/{sid}")
async def delete_session(request: web.Request) -> web.Response:
    session = request.app[STATE].session(request)
    await session.close("ended by DELETE")
    return web.Response(text="session ended")


@routes.delete("/sessions/{sid}/viewers/{vid}")
async def delete_viewer(request: web.Request) -> web.Response:
    session = request.app[STATE].session(request)
    if not await session.remove_viewer(request.match_info["vid"]):
        raise web.HTTPNotFound(text=f"no viewer {request.match_info['vid']!r} in this session")
    return web.Response(text="viewer ended")


@routes.post("/sessions/{sid}/control")
async def control(request: web.Request) -> web.Response:
    session = request.app[STATE].session(request)
    if session.http_input is None:
        session.http_input = assistant.AssistantInput()
    api = session.http_input
    try:
        message = assistant.parse(await request.text())
        reply = assistant.handle(session, api, message)
    except assistant.ProtocolError as err:
        return web.json_response(assistant.error_event(err), status=400)
    return web.json_response({"ok": True, **(reply or {})})


@routes.get("/ws")
async def new_session_socket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    emotion, intensity, avatar_id, _ = _start_options(request, state.config)
    if not web.WebSocketResponse().can_prepare(request).ok:  # else the session would leak
        raise web.HTTPBadRequest(text="GET /ws is a WebSocket: send an upgrade request")
    session = await state.open_session(avatar_id, emotion, intensity)
    return await assistant.serve_socket(request, session, owns=True)


@routes.get("/sessions/{sid}/ws")
async def session_socket(request: web.Request) -> web.StreamResponse:
    session = request.app[STATE].session(request)
    return await assistant.serve_socket(request, session, owns=False)


# ---- the application -------------------------------------------------------------------------
@web.middleware
async def plain_errors(request: web.Request, handler):
    """Log every refused request with its reason (the body already says it to the client)."""
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status >= 400:
            log.info("%s %s -> %d %s", request.method, request.path, err.status, err.text)
        raise


def create_app(config: ServerConfig, engine: StreamEngine | None = None) -> web.Application:
    """The application; the engine is built from ``config.weights`` when not given."""
    if engine is None:
        models = (
            MotionModels.load_default(config.weights)
            if config.weights
            else (MotionModels.load_default())
        )
        # before serving: a stale or missing export (a TensorRT build) happens now, not when
        # the first session opens; one intra-op thread per call, as the engine runs PyTorch
        models.use_backend(
            config.backend, engine_dir=config.engine_dir, threads=1, fp16=config.fp16,
            sizes=(config.size,), max_batch=max(8, config.max_batch),
        )  # fmt: skip
        engine = StreamEngine(models, config.stream, workers=config.workers,
                              max_batch=config.max_batch)  # fmt: skip
    state = ServerState(config, engine)
    app = web.Application(
        middlewares=[plain_errors], client_max_size=config.max_upload_bytes + 65536
    )
    app[STATE] = state
    app.add_routes(routes)
    app.router.add_static("/static", WEB_CLIENT)

    async def startup(app: web.Application) -> None:
        setup_aiortc(config.ice_hosts, config.host, state.metrics.observe_encode)
        await state.avatars.add_default(config.avatar)

    async def shutdown(app: web.Application) -> None:
        for session in list(state.sessions.values()):
            with contextlib.suppress(Exception):
                await session.close("server shutting down")
        state.engine.close()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return app


def run(config: ServerConfig) -> None:
    """Serve until interrupted (`dreamtalk serve`)."""
    app = create_app(config)
    log.info("serving on http://%s:%d/", config.host, config.port)
    web.run_app(app, host=config.host, port=config.port, print=None, access_log=None)
