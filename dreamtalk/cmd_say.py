"""`dreamtalk say`: stream a speech file to a running server's assistant WebSocket, as a
voice assistant's TTS would, and print the server's events as JSON lines.

The audio (any file PyAV decodes, at any rate, mono or not) is sent as PCM16 mono at the
assistant API's rate nearest to the file's (16, 24 or 48 kHz), in ``--chunk-ms`` pieces at
the pace it plays (or all at once with ``--no-realtime``), then ``speak_end``; the command
ends when the server reports ``playback_finished``. The session lives as long as the
command: watch it at ``http://HOST:PORT/?session=<id>`` (the page) or over WHEP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

from engine.emotions import EMOTIONS

log = logging.getLogger(__name__)

API_RATES = (16000, 24000, 48000)  # what the assistant API takes (docs/server.md)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "say",
        help="stream a speech file to a running server (the assistant WebSocket)",
        description="Stream AUDIO (WAV or anything PyAV decodes, any rate) to `dreamtalk "
        "serve` over the assistant WebSocket, as a TTS would; print the server's events as "
        "JSON lines and where to watch the avatar.",
    )
    p.add_argument("audio", metavar="AUDIO", help="speech file (WAV, MP3, FLAC, ...)")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the server's base URL")
    p.add_argument("--emotion", default=None, help=f"one of {', '.join(EMOTIONS)}")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per message (10-1000 ms)")
    p.add_argument(
        "--no-realtime",
        dest="realtime",
        action="store_false",
        help="send the audio as fast as possible instead of at the pace it plays",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.emotions import emotion_index

    # Cheap checks first: a typo should not wait for the audio to decode.
    url = base_url(args.url)
    if args.emotion is not None:
        emotion_index(args.emotion)
    if not 10 <= args.chunk_ms <= 1000:
        raise ValueError(f"--chunk-ms must be 10-1000, got {args.chunk_ms}")
    pcm, rate = read_speech(args.audio)
    log.info("%s: %.1f s of speech, sent as PCM16 at %d Hz", args.audio, len(pcm) / 2 / rate, rate)
    events = asyncio.run(stream(url, pcm, rate, args.chunk_ms / 1000, args.emotion, args.realtime))
    if not events or events[-1].get("type") != "playback_finished":
        raise ConnectionError("the server ended the session before the speech was played out")
    return 0


def base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url must be like http://127.0.0.1:8080, got {url!r}")
    return url.rstrip("/")


def nearest_rate(rate: int) -> int:
    """The API rate to send at: ``rate`` itself when the API takes it, else the nearest one
    (the higher on a tie)."""
    return min(API_RATES, key=lambda r: (abs(r - rate), -r))


def read_speech(path: str | Path) -> tuple[bytes, int]:
    """(PCM16 mono little-endian bytes, their rate) of a speech file; AudioError (a
    ValueError) names a missing, undecodable or silent file."""
    import av
    import numpy as np

    from engine.audio_io import load_audio

    source_rate = 16000
    try:  # the file's rate, to pick ours; load_audio below says what is wrong with a bad file
        with av.open(str(path)) as container:
            if container.streams.audio:
                source_rate = container.streams.audio[0].rate or source_rate
    except (av.error.FFmpegError, OSError):
        pass
    rate = nearest_rate(source_rate)
    audio = load_audio(path, rate)
    if not len(audio):
        raise ValueError(f"{path}: no audio samples")
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes(), rate


async def stream(
    url: str, pcm: bytes, rate: int, chunk_s: float, emotion: str | None, realtime: bool
) -> list[dict]:
    """`server.client.say`, printing each event as a JSON line and, first, where to watch."""
    import aiohttp

    from server.client import say

    told = False

    def show(event: dict) -> None:
        nonlocal told
        if event.get("type") == "session" and "whep" in event and not told:
            told = True
            log.info("watch it: %s/?session=%s (WHEP: %s%s)", url, event["id"], url, event["whep"])
        print(json.dumps(event), flush=True)

    try:
        return await say(url, pcm, rate, chunk_s, emotion, realtime, log=show)
    except aiohttp.WSServerHandshakeError as err:  # 503 (full), 404...
        retry = (err.headers or {}).get("Retry-After")
        hint = f"; try again in {retry} s" if retry else ""
        raise ConnectionError(f"{url}/ws refused the session: HTTP {err.status}{hint}") from err
    except aiohttp.ClientError as err:
        raise ConnectionError(
            f"cannot reach the server at {url} ({err}); is `dreamtalk serve` running?"
        ) from err
