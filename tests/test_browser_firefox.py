"""The page in Firefox: Debian's firefox-esr, driven over WebDriver BiDi, against a real
`dreamtalk serve` with trained weights.

Playwright cannot drive firefox-esr (its BiDi mode needs emulation commands that ESR lacks),
but Firefox speaks WebDriver BiDi natively (``--remote-debugging-port``): the small client
below sends commands over one WebSocket. The microphone is Firefox's fake device (a tone),
allowed without a prompt by the profile's prefs.

Weights: ``$DREAMTALK_E2E_WEIGHTS`` or ``weights/``, as in test_browser_e2e.py; the tests skip
when the folder has no ``emodiff_student.pt``, and when ``/usr/bin/firefox-esr`` is missing
(``apt-get install firefox-esr``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from dreamtalk.bench_e2e import free_port, serve

log = logging.getLogger(__name__)
FIREFOX = "/usr/bin/firefox-esr"
MIN_FPS = 20.0  # as for Chromium (test_browser_e2e.py); the server sends 25 fps
VIDEO_SIZE = 256
EMOTIONS = 8

PREFS = {
    "media.navigator.streams.fake": True,  # a fake microphone (a tone)
    "media.navigator.permission.disabled": True,  # no permission prompt
    "media.autoplay.default": 0,  # allow audible autoplay
    # The server is on 127.0.0.1 and this machine may have no other interface: Firefox must
    # offer plain host candidates (not mDNS names) and pair loopback ones.
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
}

T = TypeVar("T")


class BiDiError(RuntimeError):
    """An error answer to a BiDi command, or an exception thrown by evaluated script."""


class BiDi:
    """A minimal synchronous WebDriver BiDi client: one session, the first browsing context.

    aiohttp's WebSocket runs on a private event loop; each command waits for the answer with
    its id (no events are subscribed to, so nothing else arrives)."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._next_id = 0
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            self._run(self._connect(url))
            self.call("session.new", capabilities={})
            self.context: str = self.call("browsingContext.getTree")["contexts"][0]["context"]
        except BaseException:
            self.close()
            raise

    async def _connect(self, url: str) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout_s))

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        await self._ws.send_json({"id": self._next_id, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json()
            if message.get("id") != self._next_id:
                continue
            if message.get("type") == "error":
                raise BiDiError(f"{method}: {message.get('error')}: {message.get('message')}")
            return message["result"]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (BiDiError on an error answer or none)."""
        try:
            return self._run(self._call(method, params))
        except TimeoutError:
            raise BiDiError(f"{method}: no answer within {self.timeout_s:.0f} s") from None

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page, awaited if it is a promise, as
        JSON (None for undefined); BiDiError with the message if it throws or rejects."""
        reply = self.call(
            "script.evaluate",
            expression=f"(async () => JSON.stringify(await ({expression})))()",
            target={"context": self.context},
            awaitPromise=True,
            userActivation=True,  # as if clicked: media may play with sound
        )
        if reply["type"] == "exception":
            raise BiDiError(f"{expression}: {reply['exceptionDetails']['text']}")
        result = reply["result"]
        return json.loads(result["value"]) if result["type"] == "string" else None

    def close(self) -> None:
        async def shut() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._http is not None:
                await self._http.close()

        try:
            self._loop.run_until_complete(asyncio.wait_for(shut(), 5))
        except (OSError, TimeoutError, aiohttp.ClientError):
            pass
        finally:
            self._loop.close()


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"firefox-esr exited with status {proc.returncode} before its BiDi endpoint "
                f"opened; its output:\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"firefox-esr's BiDi endpoint (port {port}) did not accept within "
                    f"{timeout_s:.0f} s; its output:\n{log.read_text(errors='replace')[-3000:]}"
                ) from None
            time.sleep(0.2)


def _end(proc: subprocess.Popen[bytes]) -> None:
    """End firefox-esr and its content processes (its own process group)."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(browser_weights: Path) -> Iterator[str]:
    if not Path(FIREFOX).exists():
        pytest.skip(
            f"{FIREFOX} not found: install Debian's firefox-esr (apt-get install firefox-esr)"
        )
    with tempfile.TemporaryDirectory(prefix="dreamtalk-firefox-") as tmp:
        with serve(str(browser_weights), free_port(), Path(tmp) / "server.log") as url:
            yield url


@pytest.fixture(scope="module")
def firefox(server: str) -> Iterator[BiDi]:
    """firefox-esr on a throwaway profile, at the page, with its config loaded."""
    with tempfile.TemporaryDirectory(prefix="dreamtalk-firefox-profile-") as profile:
        prefs = "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
        Path(profile, "user.js").write_text(prefs)
        log = Path(profile, "firefox.log")
        port = free_port()
        cmd = [FIREFOX, "--headless", "--no-remote", "--profile", profile]
        cmd += ["--remote-debugging-port", str(port)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, ended as one
                env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"},
            )
        try:
            _wait_for_port(port, proc, log, timeout_s=30)
            browser = BiDi(f"ws://127.0.0.1:{port}/session")
            try:
                browser.call(
                    "browsingContext.navigate", context=browser.context, url=server, wait="complete"
                )
                browser.evaluate("window.dreamtalk.ready")
                yield browser
            finally:
                browser.close()
        finally:
            _end(proc)


def test_page_loads_with_its_config(firefox: BiDi, server: str) -> None:
    assert firefox.evaluate("document.body.dataset.ready") == "true"
    options = firefox.evaluate(
        "[...document.querySelectorAll('#emotion option')].map(o => o.value)"
    )
    assert len(options) == EMOTIONS, f"#emotion offers {options}"
    assert options == _get_json(f"{server}/config")["emotions"]


def test_live_session_from_the_microphone(firefox: BiDi, server: str) -> None:
    started = firefox.evaluate("window.dreamtalk.start({source: 'mic'})")
    session_id = started["sessionId"]
    assert firefox.evaluate("window.dreamtalk.state") == "live"
    assert _get_json(f"{server}/healthz")["sessions"] == 1

    time.sleep(5)  # the stats are sampled every second; let the rate settle
    stats = firefox.evaluate("window.dreamtalk.stats")
    log.info("Firefox's stats after 5 s: %s", stats)
    assert stats["fps"] is not None and stats["fps"] >= MIN_FPS, f"stats: {stats}"
    assert stats["framesDecoded"] > 0, f"stats: {stats}"
    width = firefox.evaluate("document.querySelector('#avatar-video').videoWidth")
    assert width == VIDEO_SIZE, f"the remote video is {width} px wide"

    before = _get_json(f"{server}/sessions/{session_id}")
    assert before["emotion"] != "happy", f"session: {before}"
    firefox.evaluate("window.dreamtalk.setEmotion('happy', 3)")
    info = _get_json(f"{server}/sessions/{session_id}")
    assert (info["emotion"], info["intensity"]) == ("happy", 3), f"session: {info}"

    firefox.evaluate("window.dreamtalk.stop()")
    assert firefox.evaluate("[window.dreamtalk.state, document.body.dataset.state]") == [
        "idle",
        "idle",
    ]
    deadline = time.monotonic() + 5
    while (sessions := _get_json(f"{server}/healthz")["sessions"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sessions == 0, f"{sessions} session(s) still open on the server after stop()"
