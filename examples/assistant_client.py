"""A voice-assistant backend driving a dreamtalk avatar over the assistant WebSocket.

Run a server (``dreamtalk serve``), then::

    python examples/assistant_client.py [SPEECH.wav] [--url http://127.0.0.1:8080] [--wait 5]

and open the page URL it prints to watch the avatar. It plays one conversation turn:

1. the user speaks: ``listening`` on, then off (the avatar listens);
2. the assistant answers: TTS-like PCM16 at 24 kHz, streamed at the pace it plays, with a
   switch to a happy face half-way (``set_emotion``), then ``speak_end``;
3. it starts a second answer and the user barges in: ``interrupt`` cuts it at once.

Every event the server sends is printed. Standalone: aiohttp and the standard library only
(the speech is a 16-bit PCM WAV, or a synthetic voice-like buzz when none is given). The
protocol is documented in docs/server.md.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import sys
import time
import wave

import aiohttp

RATE = 24000  # what many TTS engines produce; the server also takes 16000 and 48000
CHUNK_S = 0.1  # send 100 ms per message, as a streaming TTS would


# ---- audio: PCM16 mono at 24 kHz -------------------------------------------------------------
def read_wav(path: str) -> bytes:
    """A 16-bit PCM WAV as mono PCM16 at RATE (channels averaged, linear resampling)."""
    try:
        with wave.open(path, "rb") as wav:
            if wav.getsampwidth() != 2:
                raise SystemExit(f"{path}: need 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
            channels, rate = wav.getnchannels(), wav.getframerate()
            samples = array.array("h", wav.readframes(wav.getnframes()))
    except (OSError, EOFError, wave.Error) as err:
        raise SystemExit(f"{path}: not a readable WAV file ({err})") from None
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian
    mono = [sum(samples[i : i + channels]) / channels for i in range(0, len(samples), channels)]
    out = array.array("h")
    for k in range(int(len(mono) * RATE / rate)):
        x = k * rate / RATE
        i = int(x)
        nxt = mono[min(i + 1, len(mono) - 1)]
        out.append(round(mono[i] + (nxt - mono[i]) * (x - i)))
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def synthetic_speech(seconds: float) -> bytes:
    """A voice-like buzz: a 120 Hz tone with harmonics, in 4 'syllables' a second."""
    out = array.array("h")
    for n in range(int(seconds * RATE)):
        t = n / RATE
        envelope = max(0.0, math.sin(2 * math.pi * 2 * t)) ** 0.5  # syllables
        voice = sum(math.sin(2 * math.pi * 120 * h * t) / h for h in range(1, 6))
        out.append(int(6000 * envelope * voice))
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


# ---- the assistant ---------------------------------------------------------------------------
class Avatar:
    """One assistant WebSocket: send messages, print every event, wait for a given one."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:  # ends when the socket closes
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(msg.data)
                print("  <-", json.dumps(event), flush=True)
                await self.events.put(event)

    async def send(self, **message) -> None:
        print("  ->", json.dumps(message), flush=True)
        await self.ws.send_json(message)

    async def wait_for(self, kind: str, timeout: float = 30.0) -> dict:
        """Skip events until one of type ``kind`` arrives."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event["type"] == kind:
                    return event

    async def stream(self, pcm: bytes, on_progress=None) -> None:
        """Send PCM16 as binary messages at the pace it plays (a TTS streaming its output);
        ``on_progress(seconds sent)`` runs after each chunk."""
        step = int(RATE * CHUNK_S) * 2  # bytes per chunk
        start = time.monotonic()
        for k, lo in enumerate(range(0, len(pcm), step)):
            await self.ws.send_bytes(pcm[lo : lo + step])
            if on_progress is not None:
                await on_progress((k + 1) * CHUNK_S)
            await asyncio.sleep(max(0.0, start + (k + 1) * CHUNK_S - time.monotonic()))


async def conversation(url: str, speech: bytes, wait_s: float) -> None:
    async with aiohttp.ClientSession() as http:
        # A new session per socket; it ends when the socket closes. Query options:
        # emotion, intensity (1-3), avatar (an uploaded portrait's id).
        async with http.ws_connect(f"{url}/ws", params={"emotion": "neutral"}) as ws:
            avatar = Avatar(ws)
            hello = await avatar.wait_for("session")  # always the first event
            print(f"\nwatch the avatar: {url}/?session={hello['id']}")
            print(f"(or any WHEP player: {url}{hello['whep']})\n", flush=True)
            await asyncio.sleep(wait_s)  # time to open the page

            print("1. the user speaks: the avatar listens")
            await avatar.send(type="listening", on=True)
            await asyncio.sleep(1.5)
            await avatar.send(type="listening", on=False)

            print("2. the assistant answers, and cheers up half-way")
            await avatar.send(type="audio_format", sample_rate=RATE)  # binary frames' rate
            half = len(speech) / 2 / RATE / 2  # seconds

            async def cheer_up(sent_s: float) -> None:
                if abs(sent_s - half) < CHUNK_S / 2:
                    await avatar.send(type="set_emotion", emotion="happy", intensity=2)

            await avatar.stream(speech, cheer_up)
            await avatar.send(type="speak_end")  # the utterance is complete
            done = await avatar.wait_for("playback_finished")
            print(f"   played {done['position_s']} s of it")

            print("3. a second answer, and the user barges in")
            await avatar.send(type="set_emotion", emotion="neutral")
            barge_in = asyncio.ensure_future(avatar.stream(speech))
            await avatar.wait_for("playback_started")
            await asyncio.sleep(1.0)  # the user starts talking over the avatar...
            barge_in.cancel()  # ...so the TTS stops,
            await avatar.send(type="interrupt")  # the queued speech is dropped,
            await avatar.send(type="listening", on=True)  # and the avatar listens
            cut = await avatar.wait_for("playback_finished")
            print(f"   interrupted: {cut['interrupted']} after {cut['position_s']} s")
            await asyncio.sleep(1.0)
            await avatar.send(type="listening", on=False)

            await avatar.send(type="ping")  # keep-alive
            await avatar.wait_for("pong")
        await avatar.reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", nargs="?", help="16-bit PCM WAV of speech (default: synthetic)")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to open the page")
    args = parser.parse_args()
    speech = read_wav(args.wav) if args.wav else synthetic_speech(3.0)
    try:
        asyncio.run(conversation(args.url.rstrip("/"), speech, args.wait))
    except aiohttp.ClientError as err:
        raise SystemExit(f"cannot talk to the server at {args.url}: {err}") from None


if __name__ == "__main__":
    main()
