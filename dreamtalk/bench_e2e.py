"""`dreamtalk bench e2e`: the whole live path, glass to glass, in a real browser.

A real `dreamtalk serve` process, Debian's Chromium (headless, driven by Playwright with
``executable_path``: Playwright's own browser download cannot run here) and the page the
server serves. The microphone is a speech WAV (espeak-ng sentences, each followed by a
second of silence) fed through Chromium's fake capture device, with the browser's audio
processing (echo cancellation, noise suppression, gain control) off.

Instrumentation, injected before the page's own scripts (`page.add_init_script`):
- ``getUserMedia`` is wrapped: the page's microphone stream goes through an AudioWorklet that
  logs the RMS of every 128-sample block with its time: the speech as it entered the page;
- ``RTCPeerConnection`` is wrapped: every connection is kept for ``getStats`` snapshots
  (inbound video and audio), and the remote audio track is tapped like the microphone;
- ``requestVideoFrameCallback`` on ``#avatar-video`` draws every presented frame to a canvas
  and keeps it as a JPEG with its expected display time (when it reaches the glass).

Times are all ``performance.now()`` milliseconds of the page. Audio blocks carry their
AudioContext time, mapped to ``performance.now()`` by the smallest offset seen between a
block and the main thread receiving it (messages are only ever late). The input time is
when the page's audio graph sees a sample; capture happened a few ms (one graph buffer)
earlier, so the latency below is short of the true glass-to-glass figure by that much.

Afterwards, in Python, the avatar's mouth opening is measured on every captured frame: the
project's own face tracker (MediaPipe face detection and face mesh, as portrait registration
and `data prepare` use them) finds the lips, and the opening is the area of the mouth
interior the renderer draws between them (teeth and cavity), in inter-ocular distances (IOD)
squared; see `mouth_interior` for why not the mesh's own lip gap. From it:
At 512 px (the default here) the face mesh's inner lips follow the avatar's lip gap (r = 0.95
against the rig's own opening), so the opening analysed is that gap and the interior area is
the reference; at 256 px the other way round. A smile that bares teeth with the lips closed
counts as open in the interior area, not in the lip gap.
- the Pearson correlation of the mouth opening with the input loudness envelope (40 ms RMS
  in dB, floored 50 dB below the speech's peak), at the best lag in 0..800 ms;
- the share of frames with the mouth open while the input is silent (shifted by that lag);
  "open" means above 30% of the way from the mouth's rest opening (5th percentile) to its
  speaking opening (95th percentile);
- the glass-to-glass latency: for every speech onset in the input (speech after at least
  half a second of silence), the time until the same onset comes out of the remote audio,
  plus the offset of the mouth behind that audio (the lip sync the viewer sees, about 0: the
  server sends a frame and its audio at the same due time); p50 and p95. Also, per onset,
  the time until the first displayed frame whose mouth opening crosses that threshold: that
  adds the articulation itself (after "h" or "t" the jaw opens on the vowel, 20-150 ms after
  the acoustic onset even on an offline render with no latency at all).
Also the rendered frame rate (frames presented per second, from the frame callbacks), the
decoded one (``framesDecoded`` over time), the remote audio's bytes and energy, the audio's
round trip (mic to remote audio, by cross-correlation of their envelopes) and the lip sync
seen by the viewer (mouth against the remote audio).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
WAV_RATE = 48_000  # Chromium's fake capture resamples any rate; 48 kHz is what it runs at
PHRASES = (
    "Hello, it is nice to meet you.",
    "What a lovely morning.",
    "Tell me about your day.",
    "I am listening to you now.",
    "See you again very soon.",
)
LEAD_SILENCE_S = 0.8
GAP_SILENCE_S = 1.0
PEAK = 0.7  # -3 dBFS

# Analysis.
LOUDNESS_WINDOW_MS = 40.0
LOUDNESS_FLOOR_DB = 50.0  # below the speech's peak: the loudness envelope's zero
SPEECH_DB = -40.0  # a 20 ms window this far below the peak or louder is speech
MIN_SILENCE_MS = 500.0  # silences at least this long count (pauses between words do not)
SILENCE_MARGINS_MS = (200.0, 120.0)  # skipped after speech ends / before it starts again
MAX_LAG_MS = 800.0
LAG_STEP_MS = 10.0
OPEN_FRACTION = 0.3  # "open": this far from the rest opening to the speaking opening
MAX_ONSET_RESPONSE_MS = 1500.0
SETTLE_MS = 500.0  # frames this soon after capture starts are not analysed
CAPTURE_MAX_SIDE = 512  # captured frames larger than this are scaled down (JPEG q 0.92)
STATS_EVERY_MS = 1000

_INIT_SCRIPT = r"""
(() => {
  const E = window.__e2e = {
    mic: {t: [], rms: [], offset: Infinity, sampleRate: 0},
    remote: {t: [], rms: [], offset: Infinity, sampleRate: 0},
    frames: [], stats: [], pcs: [], errors: [], micSettings: null, micConstraints: null,
    capturing: false, remoteTapped: false,
  };
  const WORKLET = `
    class E2ETap extends AudioWorkletProcessor {
      constructor() { super(); this.buf = []; }
      process(inputs) {
        const ch = inputs[0] && inputs[0][0];
        let s = 0;
        const n = ch ? ch.length : 0;
        for (let i = 0; i < n; i++) s += ch[i] * ch[i];
        this.buf.push(currentTime, n ? Math.sqrt(s / n) : 0);
        if (this.buf.length >= 16) { this.port.postMessage(this.buf); this.buf = []; }
        return true;
      }
    }
    registerProcessor('e2e-tap', E2ETap);`;
  async function tap(stream, sink) {
    const ctx = new AudioContext({latencyHint: 'interactive'});
    const url = URL.createObjectURL(new Blob([WORKLET], {type: 'application/javascript'}));
    await ctx.audioWorklet.addModule(url);
    const node = new AudioWorkletNode(ctx, 'e2e-tap');
    const mute = ctx.createGain();
    mute.gain.value = 0;
    ctx.createMediaStreamSource(stream).connect(node).connect(mute).connect(ctx.destination);
    sink.sampleRate = ctx.sampleRate;
    sink.keep = [ctx, stream];
    node.port.onmessage = (ev) => {
      const now = performance.now();
      const d = ev.data;
      for (let i = 0; i < d.length; i += 2) { sink.t.push(d[i]); sink.rms.push(d[i + 1]); }
      sink.offset = Math.min(sink.offset, now - 1000 * d[d.length - 2]);
    };
    await ctx.resume();
  }
  const md = navigator.mediaDevices;
  if (md && md.getUserMedia) {
    const getUserMedia = md.getUserMedia.bind(md);
    md.getUserMedia = async (constraints) => {
      const c = Object.assign({}, constraints || {});
      E.micConstraints = JSON.parse(JSON.stringify(constraints || {}));
      if (c.audio) {  // the issue's condition: the browser's audio processing off
        c.audio = Object.assign(typeof c.audio === 'object' ? c.audio : {}, {
          echoCancellation: false, noiseSuppression: false, autoGainControl: false,
        });
      }
      const stream = await getUserMedia(c);
      const track = stream.getAudioTracks()[0];
      if (track) {
        E.micSettings = track.getSettings();
        tap(new MediaStream([track]), E.mic).catch((e) => E.errors.push('mic tap: ' + e));
      }
      return stream;
    };
  }
  const PC = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends PC {
    constructor(...args) {
      super(...args);
      E.pcs.push(this);
      this.addEventListener('track', (ev) => {
        if (ev.track.kind !== 'audio' || E.remoteTapped) return;
        E.remoteTapped = true;
        tap(new MediaStream([ev.track]), E.remote)
          .catch((e) => E.errors.push('remote tap: ' + e));
      });
    }
  };
  E.pollStats = async () => {
    const t = performance.now();
    for (const pc of E.pcs) {
      let report;
      try { report = await pc.getStats(); } catch (e) { continue; }
      report.forEach((s) => {
        if (s.type !== 'inbound-rtp') return;
        E.stats.push({
          t, kind: s.kind, framesDecoded: s.framesDecoded, framesReceived: s.framesReceived,
          framesDropped: s.framesDropped, framesPerSecond: s.framesPerSecond,
          frameWidth: s.frameWidth, frameHeight: s.frameHeight, bytesReceived: s.bytesReceived,
          packetsLost: s.packetsLost, totalAudioEnergy: s.totalAudioEnergy,
          totalSamplesDuration: s.totalSamplesDuration, jitterBufferDelay: s.jitterBufferDelay,
          jitterBufferEmittedCount: s.jitterBufferEmittedCount,
          totalDecodeTime: s.totalDecodeTime, codecId: s.codecId,
        });
      });
    }
  };
  E.startCapture = (maxSide, statsEveryMs) => {
    const video = document.querySelector('#avatar-video');
    if (!video) throw new Error('the page has no #avatar-video element');
    if (!video.requestVideoFrameCallback) throw new Error('no requestVideoFrameCallback');
    const canvas = document.createElement('canvas');
    const g = canvas.getContext('2d');
    const onFrame = (now, meta) => {
      if (!E.capturing) return;
      const k = Math.min(1, maxSide / Math.max(meta.width, meta.height));
      const w = Math.round(meta.width * k), h = Math.round(meta.height * k);
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
      g.drawImage(video, 0, 0, w, h);
      E.frames.push({
        t: meta.expectedDisplayTime || now, now, presented: meta.presentedFrames,
        width: meta.width, height: meta.height, receiveTime: meta.receiveTime ?? null,
        jpeg: canvas.toDataURL('image/jpeg', 0.92),
      });
      video.requestVideoFrameCallback(onFrame);
    };
    E.capturing = true;
    video.requestVideoFrameCallback(onFrame);
    E.statsTimer = setInterval(E.pollStats, statsEveryMs);
    return {width: video.videoWidth, height: video.videoHeight, paused: video.paused};
  };
  E.stopCapture = async () => {
    E.capturing = false;
    clearInterval(E.statsTimer);
    await E.pollStats();
  };
  E.summary = () => ({
    mic: {t: E.mic.t, rms: E.mic.rms, offset: E.mic.offset, sampleRate: E.mic.sampleRate},
    remote: {t: E.remote.t, rms: E.remote.rms, offset: E.remote.offset,
             sampleRate: E.remote.sampleRate},
    stats: E.stats, errors: E.errors, micSettings: E.micSettings,
    micConstraints: E.micConstraints, frameCount: E.frames.length,
    frames: E.frames.map((f) => Object.assign({}, f, {jpeg: undefined})),
  });
  E.jpegs = (start, end) => E.frames.slice(start, end).map((f) => f.jpeg);
})();
"""


class E2EError(RuntimeError):
    """The live path did not come up (server, page or WebRTC); the message says what was seen."""


@dataclass
class E2EResult:
    fps_rendered: float  # frames presented per second by the remote <video> (rVFC)
    fps_decoded: float  # inbound-rtp video framesDecoded per second
    audio_bytes: int  # inbound-rtp audio bytesReceived
    audio_energy: float  # inbound-rtp audio totalAudioEnergy
    mouth_env_corr: float  # mouth opening vs input loudness, Pearson, at the best lag
    lag_at_best_corr_ms: float
    mesh_gap_corr: float  # the other mouth measure vs input loudness at that lag (reference)
    silence_open_fraction: float  # frames with the mouth open during input silences
    latency_ms: list[float]  # glass to glass, one per speech onset (see the module docstring)
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    opening_ms: list[float]  # speech onset in to the mouth 30% open, one per onset
    opening_p50_ms: float | None
    frames_captured: int
    frames_tracked: int  # frames the face tracker found a face in
    onsets: int  # speech onsets in the analysed input
    mouth_rest: float  # 5th percentile of the mouth opening (IOD^2)
    mouth_speaking: float  # its 95th percentile
    video_size: tuple[int, int]
    audio_round_trip_ms: float | None  # mic in to remote audio out (envelope lag)
    av_offset_ms: float | None  # mouth lag behind the remote audio (+: video late)
    seconds: float
    weights: str
    notes: list[str] = field(default_factory=list)
    mouth_measure: str = "mouth interior (IOD^2)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- the speech -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechWav:
    path: Path
    sample_rate: int
    duration_s: float
    onsets_s: tuple[float, ...]  # where each phrase starts in the file


def _trim(audio: np.ndarray, level: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > level)
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio[:0]


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def make_speech_wav(path: str | Path, phrases: Sequence[str] = PHRASES) -> SpeechWav:
    """espeak-ng phrases, each followed by `GAP_SILENCE_S` of digital silence, after
    `LEAD_SILENCE_S`; 16-bit PCM mono at 48 kHz, peak -3 dBFS."""
    from engine.audio_io import load_audio
    from engine.data.espeak import synthesize

    path = Path(path)
    utterances = [synthesize(text) for text in phrases]
    espeak_rate = utterances[0].sample_rate
    pieces = [_trim(u.audio) for u in utterances]
    raw = path.with_suffix(".espeak.wav")
    gap = np.zeros(round(GAP_SILENCE_S * espeak_rate), np.float32)
    onsets, t = [], LEAD_SILENCE_S
    joined = [np.zeros(round(LEAD_SILENCE_S * espeak_rate), np.float32)]
    for piece in pieces:
        onsets.append(t)
        joined += [piece, gap]
        t += (len(piece) + len(gap)) / espeak_rate
    audio = np.concatenate(joined)
    _write_wav(raw, audio / max(float(np.abs(audio).max()), 1e-6) * PEAK, espeak_rate)
    audio = load_audio(raw, WAV_RATE)  # PyAV's resampler
    raw.unlink()
    _write_wav(path, audio, WAV_RATE)
    return SpeechWav(path, WAV_RATE, len(audio) / WAV_RATE, tuple(onsets))


# ---- the server -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@contextlib.contextmanager
def serve(
    weights: str | None,
    port: int,
    log_path: Path,
    timeout_s: float = 240.0,
    extra_args: Sequence[str] = (),
) -> Iterator[str]:
    """`python -m dreamtalk serve` on 127.0.0.1:port until /healthz answers; yields its URL.
    The process is always ended on the way out; its output goes to ``log_path``."""
    cmd = [sys.executable, "-m", "dreamtalk", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if weights:
        cmd += ["--weights", str(weights)]
    cmd += list(extra_args)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    url = f"http://127.0.0.1:{port}"
    repo = Path(__file__).resolve().parent.parent
    with open(log_path, "wb") as out:
        log.info("starting %s", " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=repo, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise E2EError(
                    f"`dreamtalk serve` exited with status {proc.returncode} before answering "
                    f"/healthz; its output:\n{_tail(log_path)}"
                )
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                if health.get("ok"):
                    log.info("server up: %s", health)
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise E2EError(
                    f"/healthz did not answer ok within {timeout_s:.0f} s; server output:\n"
                    f"{_tail(log_path)}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log.warning("server did not stop on SIGTERM; killing it")
            proc.kill()
            proc.wait()


# ---- the browser ------------------------------------------------------------------------------
@dataclass
class PageRecord:
    """What the instrumentation gathered in the page (times: performance.now() ms)."""

    summary: dict[str, Any]
    jpegs: list[str]
    console: list[str]
    capture_start: dict[str, Any]


def run_browser(
    url: str, wav: Path, seconds: float, headless: bool = True, live_timeout_s: float = 60.0
) -> PageRecord:
    """Open the page in Chromium with ``wav`` as the microphone, start it on the mic, capture
    ``seconds`` of the avatar; raise E2EError (with the console) if it does not go live."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise E2EError(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)"
        )
    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
    ]
    console: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=headless, args=args)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.grant_permissions(["microphone", "camera"], origin=url)
            page = context.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.add_init_script(_INIT_SCRIPT)
            page.goto(f"{url}/", wait_until="load")

            def fail(what: str) -> E2EError:
                state = page.evaluate("() => document.body && document.body.dataset.state")
                lines = "\n".join(console[-40:]) or "(nothing)"
                return E2EError(f"{what} (body data-state={state!r}); console:\n{lines}")

            try:
                page.wait_for_function(
                    "() => window.dreamtalk && typeof window.dreamtalk.start === 'function'",
                    timeout=15_000,
                )
            except PlaywrightError as err:
                raise fail("the page has no window.dreamtalk.start") from err
            try:
                page.evaluate("async () => { await window.dreamtalk.ready; }")
                page.evaluate("() => window.dreamtalk.start({source: 'mic'})")
            except PlaywrightError as err:
                raise fail(f"window.dreamtalk.start({{source: 'mic'}}) failed: {err}") from err
            try:
                page.wait_for_function(
                    "() => document.body.dataset.state === 'live'",
                    timeout=live_timeout_s * 1000,
                )
            except PlaywrightError as err:
                raise fail(f"the page did not go 'live' within {live_timeout_s:.0f} s") from err
            capture_start = page.evaluate(
                "([side, every]) => window.__e2e.startCapture(side, every)",
                [CAPTURE_MAX_SIDE, STATS_EVERY_MS],
            )
            log.info("live; capturing %.0f s of the avatar (%s)", seconds, capture_start)
            page.wait_for_timeout(seconds * 1000)
            page.evaluate("() => window.__e2e.stopCapture()")
            summary = page.evaluate("() => window.__e2e.summary()")
            jpegs: list[str] = []
            for start in range(0, summary["frameCount"], 50):
                jpegs += page.evaluate("([a, b]) => window.__e2e.jpegs(a, b)", [start, start + 50])
            with contextlib.suppress(PlaywrightError):  # let the page hang up cleanly
                page.evaluate("() => window.dreamtalk.stop && window.dreamtalk.stop()")
        finally:
            browser.close()
    return PageRecord(summary, jpegs, console, capture_start)


# ---- the mouth --------------------------------------------------------------------------------
# MediaPipe places the lips well on the rendered avatar, but at the server's default 256 px
# its inner-lip contours barely follow the avatar's lip gap (r = 0.07 against the rig's own
# lip opening on an offline render of the default portrait; 0.95 at 512 px). What it renders
# when the lips part does show at 256 px: the renderer's mouth interior, near-white teeth
# (0.93, 0.90, 0.83) and a dark cavity, where the closed mouth shows only lip colours (the
# renderer paints the photo's own teeth over with them). So the mouth opening is measured as
# the area of teeth- or cavity-coloured pixels inside the tracked outer lip contour (its lower
# half lowered by 0.1 IOD, where the open jaw takes the lower lip), in IOD squared: r = 0.90
# against the rig's lip opening at 256 px, 0.95 at 512 px.
TEETH_MAX_SATURATION = 0.2
TEETH_MIN_VALUE = 0.5
CAVITY_MAX_VALUE = 0.3
LOWER_LIP_GROWTH_IOD = 0.1


def _face_axes(lm: np.ndarray) -> tuple[float, np.ndarray]:
    """(IOD in pixels, the face's downward unit vector: perpendicular to the eye line)."""
    from engine import face_topology as topo
    from engine.fit import interocular

    iod = float(interocular(lm))
    eye_r = lm[list(topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER), :2].mean(0)
    eye_l = lm[list(topo.LEFT_EYE_UPPER + topo.LEFT_EYE_LOWER), :2].mean(0)
    x_axis = (eye_l - eye_r) / max(float(np.linalg.norm(eye_l - eye_r)), 1e-6)
    return iod, np.array([-x_axis[1], x_axis[0]])


def mesh_lip_gap(landmarks: np.ndarray) -> float:
    """Gap between the face mesh's inner lip contours (mean over their middle points), in
    IOD, measured across the eye line: one frame's (478, 2+) landmarks in pixels."""
    from engine import face_topology as topo

    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    iod, down = _face_axes(lm)
    upper = lm[list(topo.LIP_INNER_UPPER[1:-1])] @ down
    lower = lm[list(topo.LIP_INNER_LOWER[1:-1])] @ down
    return float(np.maximum(lower - upper, 0.0).mean() / iod)


def mouth_interior(rgb: np.ndarray, landmarks: np.ndarray) -> float:
    """Area of the visible mouth interior (teeth- or cavity-coloured pixels inside the outer
    lip contour), in IOD squared: one (H, W, 3) uint8 RGB frame and its landmarks."""
    import cv2

    from engine import face_topology as topo

    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    iod, down = _face_axes(lm)
    upper = lm[list(topo.LIP_OUTER_UPPER)]
    lower = lm[list(topo.LIP_OUTER_LOWER[::-1])] + LOWER_LIP_GROWTH_IOD * iod * down
    mask = np.zeros(rgb.shape[:2], np.uint8)
    polygon = np.round(np.concatenate([upper, lower]) * 4).astype(np.int32)
    cv2.fillPoly(mask, [polygon], 1, shift=2)  # 2 fractional bits
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[mask.astype(bool)].astype(np.float64) / 255.0
    sat, value = hsv[:, 1], hsv[:, 2]
    teeth = (sat < TEETH_MAX_SATURATION) & (value > TEETH_MIN_VALUE)
    cavity = value < CAVITY_MAX_VALUE
    return float((teeth | cavity).sum()) / iod**2


def track_mouth(jpegs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mouth interior area in IOD^2, mesh lip gap in IOD) per captured frame (JPEG data
    URLs), NaN where no face is found."""
    import cv2

    from engine.portrait import detect_faces, fit_face_mesh

    interior = np.full(len(jpegs), np.nan)
    gap = np.full(len(jpegs), np.nan)
    for i, url in enumerate(jpegs):
        data = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        faces = detect_faces(rgb)
        landmarks = fit_face_mesh(rgb, faces[0]) if faces else None
        if landmarks is not None:
            interior[i] = mouth_interior(rgb, landmarks)
            gap[i] = mesh_lip_gap(landmarks)
    return interior, gap


# ---- the analysis -----------------------------------------------------------------------------
@dataclass
class Envelope:
    """An audio tap's block RMS on the page clock."""

    t_ms: np.ndarray  # block centres, performance.now() ms
    rms: np.ndarray
    block_ms: float

    @classmethod
    def from_tap(cls, tap: dict[str, Any]) -> Envelope | None:
        t, rms = np.asarray(tap["t"], np.float64), np.asarray(tap["rms"], np.float64)
        offset = tap["offset"]
        if len(t) < 2 or not tap["sampleRate"] or offset is None or not math.isfinite(offset):
            return None
        block_ms = 128_000.0 / tap["sampleRate"]
        return cls(1000.0 * t + offset + block_ms / 2, rms, block_ms)

    def db(self, window_ms: float) -> np.ndarray:
        """Moving RMS over ``window_ms``, in dB relative to the 99th percentile of it."""
        n = max(1, round(window_ms / self.block_ms))
        power = np.convolve(self.rms**2, np.ones(n) / n, mode="same")
        level = 10.0 * np.log10(np.maximum(power, 1e-12))
        return level - np.percentile(level, 99)

    def loudness(self) -> np.ndarray:
        """Log loudness over 40 ms windows: 0 at or below the floor, about 1 at the peak."""
        return np.clip(1.0 + self.db(LOUDNESS_WINDOW_MS) / LOUDNESS_FLOOR_DB, 0.0, None)

    def silences(self) -> list[tuple[float, float]]:
        """(start, end) ms of the silences at least `MIN_SILENCE_MS` long."""
        speech = self.db(20.0) > SPEECH_DB
        spans, start = [], None
        for t, s in zip(self.t_ms, speech, strict=True):
            if not s and start is None:
                start = t
            elif s and start is not None:
                spans.append((start, t))
                start = None
        if start is not None:
            spans.append((start, float(self.t_ms[-1])))
        return [(a, b) for a, b in spans if b - a >= MIN_SILENCE_MS]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def best_lag(
    t_ms: np.ndarray, values: np.ndarray, env_t: np.ndarray, env: np.ndarray, lags: np.ndarray
) -> tuple[float, float]:
    """(lag, r): the lag (ms) maximising the correlation of ``values`` at ``t_ms`` with the
    envelope ``lag`` earlier, over frames whose shifted time lies inside the envelope."""
    best = (float("nan"), -math.inf)
    for lag in lags:
        at = t_ms - lag
        ok = (at >= env_t[0]) & (at <= env_t[-1])
        r = _corr(values[ok], np.interp(at[ok], env_t, env))
        if math.isfinite(r) and r > best[1]:
            best = (float(lag), r)
    return best[0], (best[1] if math.isfinite(best[1]) else float("nan"))


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def analyse(
    record: PageRecord,
    opening: np.ndarray,
    gap: np.ndarray,
    seconds: float,
    weights: str,
    closed_by: np.ndarray | None = None,
) -> E2EResult:
    """The figures of one run from the page's record, the mouth opening (interior area) and
    the mesh's lip gap per frame."""
    s = record.summary
    notes: list[str] = []
    if s["errors"]:
        notes.append("page instrumentation errors: " + "; ".join(s["errors"]))
    settings = s.get("micSettings") or {}
    processing = ("echoCancellation", "noiseSuppression", "autoGainControl")
    notes.append(
        "microphone: "
        + ", ".join(f"{k}={settings.get(k)}" for k in processing)
        + f", {settings.get('sampleRate')} Hz"
    )
    errors = [line for line in record.console if line.startswith(("error:", "pageerror:"))]
    if errors:
        notes.append(f"{len(errors)} console errors, first: " + " | ".join(errors[:3]))
    frames = s["frames"]
    t = np.array([f["t"] for f in frames], np.float64)
    presented = np.array([f["presented"] for f in frames], np.float64)
    fps_rendered = (
        float((presented[-1] - presented[0]) / (t[-1] - t[0]) * 1000.0) if len(t) > 1 else 0.0
    )
    video = [x for x in s["stats"] if x["kind"] == "video"]
    audio = [x for x in s["stats"] if x["kind"] == "audio"]
    fps_decoded = 0.0
    if len(video) > 1 and video[-1]["t"] > video[0]["t"]:
        decoded = (video[-1]["framesDecoded"] or 0) - (video[0]["framesDecoded"] or 0)
        fps_decoded = decoded / (video[-1]["t"] - video[0]["t"]) * 1000.0
    last_t = max((x["t"] for x in audio), default=None)
    last_audio = [x for x in audio if x["t"] == last_t]
    audio_bytes = int(sum(x["bytesReceived"] or 0 for x in last_audio))
    audio_energy = float(sum(x["totalAudioEnergy"] or 0.0 for x in last_audio))
    size = (int(frames[-1]["width"]), int(frames[-1]["height"])) if frames else (0, 0)

    mic = Envelope.from_tap(s["mic"])
    remote = Envelope.from_tap(s["remote"])
    tracked = np.isfinite(opening)
    nan = float("nan")
    result = E2EResult(
        fps_rendered=fps_rendered, fps_decoded=fps_decoded, audio_bytes=audio_bytes,
        audio_energy=audio_energy, mouth_env_corr=nan, lag_at_best_corr_ms=nan, mesh_gap_corr=nan,
        silence_open_fraction=nan, latency_ms=[], latency_p50_ms=None, latency_p95_ms=None,
        opening_ms=[], opening_p50_ms=None,
        frames_captured=len(frames), frames_tracked=int(tracked.sum()), onsets=0,
        mouth_rest=nan, mouth_speaking=nan, video_size=size, audio_round_trip_ms=None,
        av_offset_ms=None, seconds=seconds, weights=weights, notes=notes,
    )  # fmt: skip
    if len(frames) < 2:
        notes.append(f"only {len(frames)} frames of the avatar were presented")
        return result
    if mic is None:
        notes.append("no microphone samples reached the page's audio tap")
        return result
    if tracked.sum() < 10:
        notes.append(f"the face tracker found the face in only {tracked.sum()} frames")
        return result
    if tracked.mean() < 0.9:
        notes.append(f"face found in only {tracked.mean():.0%} of the frames")

    use = tracked & (t >= t[0] + SETTLE_MS)
    ft, fo = t[use], opening[use]
    loud = mic.loudness()
    lags = np.arange(0.0, MAX_LAG_MS + LAG_STEP_MS / 2, LAG_STEP_MS)
    lag, r = best_lag(ft, fo, mic.t_ms, loud, lags)
    result.mouth_env_corr, result.lag_at_best_corr_ms = r, lag
    if not math.isfinite(lag):
        notes.append("mouth opening or input loudness is constant: no correlation")
        return result
    result.mesh_gap_corr = _corr(gap[use], np.interp(ft - lag, mic.t_ms, loud))

    rest, speaking = np.percentile(fo, 5), np.percentile(fo, 95)
    result.mouth_rest, result.mouth_speaking = float(rest), float(speaking)
    threshold = rest + OPEN_FRACTION * (speaking - rest)
    silences = mic.silences()
    at = ft - lag
    in_silence = np.zeros(len(ft), bool)
    for a, b in silences:
        in_silence |= (at >= a + SILENCE_MARGINS_MS[0]) & (at <= b - SILENCE_MARGINS_MS[1])
    if in_silence.any():
        # "open" in silence is judged on ``closed_by`` when given: the interior area, where
        # lips apart show teeth or the cavity (a smile's lips may read as a small mesh gap)
        so = fo if closed_by is None else closed_by[use]
        lo, hi = np.percentile(so, 5), np.percentile(so, 95)
        result.silence_open_fraction = float(
            (so[in_silence] > lo + OPEN_FRACTION * (hi - lo)).mean()
        )
    else:
        notes.append("no frames fell in an input silence")

    # Onsets: the end of each silence, if speech followed it inside the analysed frames.
    latencies = []
    onsets = []
    skipped = 0
    for _, onset in silences:
        if onset >= mic.t_ms[-1] - mic.block_ms or onset < ft[0] or onset > ft[-1] - 300.0:
            continue
        result.onsets += 1
        onsets.append(onset)
        before = np.flatnonzero(ft < onset)
        if len(before) and fo[before[-1]] > threshold:
            skipped += 1
            continue
        after = np.flatnonzero((ft >= onset) & (ft <= onset + MAX_ONSET_RESPONSE_MS))
        opened = after[fo[after] > threshold]
        if len(opened):
            latencies.append(float(ft[opened[0]] - onset))
        else:
            notes.append(f"onset at {onset:.0f} ms: the mouth did not open within 1.5 s")
    if skipped:
        notes.append(f"{skipped} onsets skipped: the mouth was already open at the onset")
    result.opening_ms = latencies
    result.opening_p50_ms = _percentile(latencies, 50)

    if remote is not None and remote.rms.max() > 0:
        remote_loud = remote.loudness()
        rt, rl = remote.t_ms, remote_loud
        keep = (rt >= ft[0]) & (rt <= ft[-1])
        round_trip, r_rt = best_lag(
            rt[keep], rl[keep], mic.t_ms, loud, np.arange(0.0, 1500.0, LAG_STEP_MS / 2)
        )
        if math.isfinite(round_trip):
            result.audio_round_trip_ms = round_trip
            notes.append(f"remote audio vs mic loudness: r={r_rt:.2f} at {round_trip:.0f} ms")
        offset, r_av = best_lag(ft, fo, rt, rl, np.arange(-400.0, 400.0 + 1, LAG_STEP_MS))
        if math.isfinite(offset):
            result.av_offset_ms = offset
            notes.append(f"mouth vs remote audio loudness: r={r_av:.2f} at {offset:.0f} ms")
        # Glass to glass, per onset: when that onset comes back out of the remote audio, plus
        # how far the mouth is behind that audio (the lip sync the viewer sees).
        remote_onsets = np.array([b for _, b in remote.silences()])
        for onset in onsets:
            back = remote_onsets[(remote_onsets > onset) & (remote_onsets < onset + 1500.0)]
            if len(back):
                result.latency_ms.append(float(back[0] - onset) + (result.av_offset_ms or 0.0))
        result.latency_p50_ms = _percentile(result.latency_ms, 50)
        result.latency_p95_ms = _percentile(result.latency_ms, 95)
    else:
        notes.append("the remote audio tap heard nothing (remote audio not decoded or silent)")
    return result


# ---- one run, and the command -----------------------------------------------------------------
def default_weights() -> Path:
    from engine.motion_model import WEIGHTS_DIR

    return Path(WEIGHTS_DIR)


def run_e2e(
    weights: str | Path | None,
    seconds: float = 20.0,
    port: int | None = None,
    headless: bool = True,
    keep_dir: str | Path | None = None,
    server_args: Sequence[str] = (),
    size: int = 512,
) -> E2EResult:
    """One end-to-end run: speech WAV, server, browser, analysis. ``weights`` is passed to
    ``dreamtalk serve --weights`` (None: the server's default), ``server_args`` after it;
    ``size`` is the avatar's (512: the mouth is the tracked lip gap; 256: its interior).
    ``keep_dir`` keeps the WAV, the server's output and a per-frame CSV (time, mouth opening)
    there."""
    with tempfile.TemporaryDirectory(prefix="dreamtalk-e2e-") as tmp:
        work = Path(keep_dir) if keep_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        wav = make_speech_wav(work / "speech.wav")
        log.info("speech: %s, %.1f s, onsets at %s s", wav.path, wav.duration_s,
                 ", ".join(f"{x:.2f}" for x in wav.onsets_s))  # fmt: skip
        server_log = work / "server.log"
        with serve(
            str(weights) if weights else None,
            port or free_port(),
            server_log,
            extra_args=["--size", str(size), *server_args],
        ) as url:
            try:
                record = run_browser(url, wav.path, seconds, headless=headless)
            except E2EError as err:
                raise E2EError(f"{err}\nserver output:\n{_tail(server_log)}") from err
        started = time.monotonic()
        interior, gap = track_mouth(record.jpegs)
        log.info("tracked %d frames in %.1f s", len(gap), time.monotonic() - started)
        label = str(weights) if weights else "server default"
        if size >= 512:  # the face mesh follows the lips: measure the lip gap itself
            result = analyse(record, gap, interior, seconds, label, closed_by=interior)
            result.mouth_measure = "mesh lip gap (IOD)"
        else:
            result = analyse(record, interior, gap, seconds, label)
        if keep_dir:
            _keep(work, record, interior, gap, result)
    return result


def _keep(
    work: Path, record: PageRecord, opening: np.ndarray, gap: np.ndarray, result: E2EResult
) -> None:
    frames = record.summary["frames"]
    lines = ["t_ms,presented,receive_ms,interior_iod2,mesh_gap_iod"]
    lines += [
        f"{f['t']:.2f},{f['presented']},{f['receiveTime'] or ''},{o:.5f},{g:.5f}"
        for f, o, g in zip(frames, opening, gap, strict=True)
    ]
    (work / "frames.csv").write_text("\n".join(lines) + "\n")
    summary = dict(record.summary, console=record.console, capture_start=record.capture_start)
    (work / "page.json").write_text(json.dumps(summary))
    (work / "result.json").write_text(json.dumps(result.to_dict(), indent=1))
    frames_dir = work / "frames"
    frames_dir.mkdir(exist_ok=True)
    for i, url in enumerate(record.jpegs):
        (frames_dir / f"{i:05d}.jpg").write_bytes(base64.b64decode(url.split(",", 1)[1]))


def _median(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None


def summarise(results: Sequence[E2EResult]) -> dict[str, Any]:
    """Medians over runs of the headline figures, plus every run."""
    keys = (
        "fps_rendered", "fps_decoded", "mouth_env_corr", "lag_at_best_corr_ms",
        "silence_open_fraction", "latency_p50_ms", "latency_p95_ms", "audio_round_trip_ms",
        "av_offset_ms", "opening_p50_ms",
    )  # fmt: skip
    medians = {k: _median([getattr(r, k) for r in results]) for k in keys}
    all_latency = [x for r in results for x in r.latency_ms]
    medians["latency_p50_ms_all_onsets"] = _percentile(all_latency, 50)
    medians["latency_p95_ms_all_onsets"] = _percentile(all_latency, 95)
    return {"median": medians, "runs": [r.to_dict() for r in results]}


def print_report(summary: dict[str, Any]) -> None:
    m = summary["median"]

    def f(v: float | None, spec: str = ".1f") -> str:
        return "n/a" if v is None else format(v, spec)

    runs = summary["runs"]
    first = runs[0]
    print(f"weights: {first['weights']}; {len(runs)} run(s) of {first['seconds']:.0f} s; "
          f"video {first['video_size'][0]}x{first['video_size'][1]}")  # fmt: skip
    print(f"frames per second: rendered {f(m['fps_rendered'])}, decoded {f(m['fps_decoded'])}")
    print(f"remote audio: {first['audio_bytes']} bytes, energy {first['audio_energy']:.3g}")
    print(f"mouth measure: {first['mouth_measure']}")
    print(f"mouth vs input loudness: r = {f(m['mouth_env_corr'], '.3f')} at lag "
          f"{f(m['lag_at_best_corr_ms'], '.0f')} ms; mouth open in silences: "
          f"{f(m['silence_open_fraction'], '.1%')}")  # fmt: skip
    print(f"glass-to-glass latency (speech onset in -> that onset out, with its mouth): p50 "
          f"{f(m['latency_p50_ms'], '.0f')} ms, p95 {f(m['latency_p95_ms'], '.0f')} ms "
          f"(all {sum(len(r['latency_ms']) for r in runs)} onsets: p50 "
          f"{f(m['latency_p50_ms_all_onsets'], '.0f')}, p95 "
          f"{f(m['latency_p95_ms_all_onsets'], '.0f')}; target p50 <= 300 ms)")  # fmt: skip
    print(f"speech onset in -> mouth 30% open out: p50 {f(m['opening_p50_ms'], '.0f')} ms "
          "(adds the articulation: the jaw opens on the vowel after a consonant)")  # fmt: skip
    print(f"audio round trip (mic -> remote audio): {f(m['audio_round_trip_ms'], '.0f')} ms; "
          f"mouth behind remote audio: {f(m['av_offset_ms'], '.0f')} ms")  # fmt: skip
    for i, r in enumerate(runs):
        for note in r["notes"]:
            print(f"run {i + 1}: {note}")


def main_e2e(args: Any) -> None:
    results = []
    for i in range(args.runs):
        log.info("run %d of %d", i + 1, args.runs)
        keep = Path(args.keep) / f"run{i + 1}" if args.keep else None
        results.append(
            run_e2e(
                args.weights,
                args.seconds,
                args.port,
                not args.headed,
                keep_dir=keep,
                server_args=shlex.split(args.server_args or ""),
                size=args.size,
            )
        )
    summary = summarise(results)
    if args.json:
        print(_dumps(summary))
    else:
        print_report(summary)


def _dumps(obj: Any) -> str:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj))
