"""The assistant API: a voice-assistant backend pushes its speech and steers the avatar.

One message schema for the WebSocket (`GET /ws`, `GET /sessions/<id>/ws`) and for
``POST /sessions/<id>/control``; docs/server.md lists every message. Audio is PCM16 mono at
16, 24 or 48 kHz, as binary WebSocket frames (at the rate set by ``audio_format``) or base64
in JSON. A bad message gets an ``error`` event and the session goes on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging

from aiohttp import WSMsgType, web

from server.live_session import AudioInput, LiveSession, pcm16_frame

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # 4 MiB: ~2 min of 16 kHz PCM16 in one message


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class AssistantInput:
    """The API's audio input state of one session: the binary-frame rate and a resampler
    per rate (each keeps its filter state between chunks)."""

    def __init__(self) -> None:
        self.rate = 16000
        self._inputs: dict[int, AudioInput] = {}

    def push(self, session: LiveSession, pcm: bytes, rate: int | None = None) -> dict | None:
        rate = self.rate if rate is None else rate
        try:
            frame = pcm16_frame(pcm, rate)
        except ValueError as err:
            code = "bad_rate" if "sample_rate" in str(err) else "bad_audio"
            raise ProtocolError(code, str(err)) from err
        if not len(pcm):
            return None
        try:
            result = session.push_audio(self._inputs.setdefault(rate, AudioInput()), frame, True)
        except ValueError as err:  # more queued than the engine accepts
            raise ProtocolError("buffer_full", str(err)) from err
        return {"pts": round(result.pts, 3)}


def handle(session: LiveSession, api: AssistantInput, message: dict) -> dict | None:
    """Apply one control message; returns the reply (None: nothing to say)."""
    kind = message.get("type")
    if kind == "audio":
        data = message.get("data")
        if not isinstance(data, str):
            raise ProtocolError("bad_audio", "audio needs 'data': base64 PCM16 mono")
        try:
            pcm = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ProtocolError("bad_audio", f"audio 'data' is not valid base64: {err}") from err
        rate = message.get("sample_rate")
        if rate is not None and not isinstance(rate, int):
            raise ProtocolError("bad_rate", f"sample_rate must be an integer, got {rate!r}")
        api.push(session, pcm, rate)
        return None
    if kind == "audio_format":
        rate = message.get("sample_rate")
        try:
            pcm16_frame(b"", rate)  # validates the rate
        except ValueError as err:
            raise ProtocolError("bad_rate", str(err)) from err
        api.rate = rate
        return {"type": "audio_format", "sample_rate": rate}
    if kind == "set_emotion":
        if not isinstance(message.get("emotion"), str):
            raise ProtocolError("bad_emotion", "set_emotion needs 'emotion': an emotion's name")
        try:
            pts = session.set_emotion(message.get("emotion"), message.get("intensity", 2))
        except (ValueError, TypeError) as err:
            raise ProtocolError("bad_emotion", str(err)) from err
        return {
            "type": "emotion_set",
            "emotion": session.emotion,
            "intensity": session.intensity,
            "pts": round(pts, 3),
        }
    if kind == "speak_end":
        session.speak_end()
        return None
    if kind in ("interrupt", "clear"):
        cut = session.interrupt()
        return {"type": "interrupted", "pts": round(cut, 3)}
    if kind == "listening":
        on = message.get("on", True)
        if not isinstance(on, bool):
            raise ProtocolError("bad_value", f"listening 'on' must be true or false, got {on!r}")
        session.set_listening(on)
        return None
    if kind == "ping":
        return {"type": "pong"}
    if kind is None:
        raise ProtocolError("bad_message", "a message needs a 'type'")
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}")


def parse(text: str) -> dict:
    try:
        message = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProtocolError("bad_json", f"not valid JSON: {err}") from err
    if not isinstance(message, dict):
        raise ProtocolError("bad_json", "a message must be a JSON object")
    return message


def error_event(err: ProtocolError) -> dict:
    return {"type": "error", "code": err.code, "message": str(err)}


async def serve_socket(
    request: web.Request, session: LiveSession, owns: bool
) -> web.StreamResponse:
    """Run one assistant WebSocket on ``session``. ``owns``: the socket made the session,
    which ends when the socket closes."""
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    events = session.subscribe()
    api = AssistantInput()

    async def forward_events() -> None:
        while True:
            await ws.send_json(await events.get())

    async def end_with_session() -> None:
        await session.closed.wait()
        await asyncio.sleep(0.1)  # let the "closed" state event go out first
        await ws.close(code=1001, message=f"session ended: {session.close_reason}"[:120].encode())

    helpers = [asyncio.ensure_future(forward_events()), asyncio.ensure_future(end_with_session())]
    log.info("session %s: assistant socket open", session.id)
    try:
        await ws.send_json({"type": "session", **session.describe()})
        async for msg in ws:
            if session.closed.is_set():
                break
            try:
                if msg.type == WSMsgType.BINARY:
                    api.push(session, msg.data)
                    continue
                if msg.type != WSMsgType.TEXT:
                    continue
                reply = handle(session, api, parse(msg.data))
            except ProtocolError as err:
                reply = error_event(err)
            except Exception as err:  # our bug: say so, keep the session
                log.exception("session %s: message failed", session.id)
                reply = {"type": "error", "code": "internal", "message": f"server error: {err!r}"}
            if reply is not None:
                await ws.send_json(reply)
    finally:
        for task in helpers:
            task.cancel()
        session.unsubscribe(events)
        log.info("session %s: assistant socket closed (%s)", session.id, ws.close_code)
        if owns:
            with contextlib.suppress(Exception):
                await session.close("assistant socket closed")
    return ws
