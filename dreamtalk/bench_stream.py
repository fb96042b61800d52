"""`dreamtalk bench stream`: latency, real-time capacity, seams, parity, memory of live sessions.

Everything runs in this one process, the way the server will: one `StreamEngine`, its worker
threads, one intra-op thread each. Audio is speech (espeak-ng sentences when the library is
there, else a synthetic voiced/unvoiced signal) pushed in 20 ms chunks on the real clock.

- latency: for every frame with audio, the time from the push of the chunk holding the frame's
  first sample to the frame being ready (rendered), p50 / p95; the breakdown is the audio
  look-ahead (the encoder's, plus the mel window), the hop wait (frames wait for the last frame
  of their block), the chunking (a sample is pushed when its 20 ms chunk is complete) and the
  measured compute per block (models + render);
- real time: N sessions at once for a few seconds of speech each, N = 1, 2, ... until one drops
  frames or runs late, at 256 and 512;
- seams: jerk (third difference) of the emitted motion centred on block boundaries over jerk
  centred inside blocks;
- parity: the live path against the offline one (`render_motion`, exact), and, with ``--data``,
  against `MotionModels.generate` on the corpus's test split, metric by metric;
- memory: resident set size with one session and per further session, and a simulated 10-minute
  session (a manual clock, so it runs faster than real time) for flat memory and gap-free pts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from engine.blendshapes import MOTION_DIM, NUM_BLENDSHAPES
from engine.motion_model import WEIGHTS_DIR, MotionModels
from engine.stream import ManualClock, StreamConfig, StreamEngine, render_motion
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

CHUNK_MS = 20
SENTENCES = (
    "Hello there, it is really good to see you again today.",
    "I was thinking about what you said, and I believe you are right.",
    "Could you tell me a little more about the project you are working on?",
    "That sounds wonderful. Let us meet again next week and talk it over.",
)


# ---- models and audio -----------------------------------------------------------------------
def random_models(
    seed: int = 0, tiny: bool = False, lip_lookahead: int | None = None
) -> MotionModels:
    """Randomly initialised EmoDiff (student-shaped: guidance built in) and lip refiner of the
    default config, perturbed so they move (adaLN-Zero starts at zero output), with plausible
    motion statistics. For timing and for the streaming mechanics only: they do not lip-sync.
    ``lip_lookahead``: the refiner gets an audio encoder of its own (EmoDiff's shape) that
    looks that many frames ahead; None: it reads EmoDiff's features."""
    from engine.models import (
        AudioEncoderConfig,
        EmoDiff,
        EmoDiffConfig,
        LipRefiner,
        LipRefinerConfig,
    )

    gen = torch.Generator().manual_seed(seed)
    if tiny:
        ecfg = EmoDiffConfig(dim=64, depth=2, guidance_embed=True, audio=AudioEncoderConfig(dim=64))
        rcfg = LipRefinerConfig(audio_dim=64, style_dim=64, dim=64, num_blocks=2)
    else:
        ecfg, rcfg = EmoDiffConfig(guidance_embed=True), LipRefinerConfig()
    if lip_lookahead is not None:
        rcfg = replace(rcfg, audio=replace(ecfg.audio, lookahead=lip_lookahead))
    torch.manual_seed(seed)
    emodiff, refiner = EmoDiff(ecfg), LipRefiner(rcfg)
    mean = torch.full((MOTION_DIM,), 0.12)
    std = torch.full((MOTION_DIM,), 0.1)
    mean[NUM_BLENDSHAPES:], std[NUM_BLENDSHAPES:] = 0.0, 0.04
    with torch.no_grad():
        for module in (emodiff, refiner):
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
            module.motion_norm.set_stats(mean.numpy(), std.numpy())
            module.requires_grad_(False)
            module.eval()
    return MotionModels(emodiff=emodiff, refiner=refiner, steps=4, guidance=2.0)


def load_models(weights: str | Path | None) -> tuple[MotionModels, str]:
    """The checkpoints under ``weights`` (default ``weights/``), else random ones, labelled."""
    d = Path(weights) if weights else WEIGHTS_DIR
    try:
        models = MotionModels.load_default(d)
    except FileNotFoundError:
        log.warning("no weights in %s: timing with RANDOMLY INITIALISED models", d)
        return random_models(), f"random (no weights in {d})"
    kind = "student" if models.emodiff.cfg.guidance_embed else "teacher"
    refiner = "refiner" if models.refiner is not None else "no refiner"
    return models, f"trained ({d}: {kind}, {models.steps} steps, {refiner})"


def synthetic_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced/unvoiced signal with syllable and word rhythm (16 kHz float32), for machines
    without espeak-ng: glottal pulses through two moving formants, noise bursts, pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, np.float32)
    t = 0.3
    while t < seconds - 0.5:
        for _ in range(rng.integers(1, 4)):  # syllables of a word
            dur = rng.uniform(0.12, 0.25)
            a, b = int(t * SAMPLE_RATE), int(min(seconds, t + dur) * SAMPLE_RATE)
            if b <= a:
                break
            f0 = rng.uniform(100, 180)
            k = np.arange(b - a) / SAMPLE_RATE
            pulses = (np.sin(2 * np.pi * f0 * k) > 0.97).astype(np.float32)
            ir_t = np.arange(int(0.02 * SAMPLE_RATE)) / SAMPLE_RATE
            ir = sum(
                np.exp(-np.pi * bw * ir_t) * np.sin(2 * np.pi * f * ir_t)
                for f, bw in ((rng.uniform(400, 900), 80), (rng.uniform(1000, 2200), 120))
            )
            voiced = np.convolve(pulses, ir)[: b - a]
            env = np.sin(np.pi * np.linspace(0, 1, b - a)) ** 0.5
            seg = voiced * env
            if rng.random() < 0.3:  # a fricative onset
                m = min(len(seg), int(0.05 * SAMPLE_RATE))
                seg[:m] += rng.normal(0, 0.3, m) * np.linspace(1, 0, m)
            out[a:b] += seg.astype(np.float32)
            t += dur + rng.uniform(0.03, 0.08)
        t += rng.uniform(0.15, 0.45)
    peak = float(np.abs(out).max()) or 1.0
    return (0.5 * out / peak).astype(np.float32)


def speech_audio(seconds: float = 12.0, seed: int = 0) -> tuple[np.ndarray, str]:
    """(16 kHz float32 speech of about ``seconds``, what it is): espeak-ng sentences with short
    pauses, repeated to length; a synthetic signal if espeak-ng is missing."""
    from engine.stream.audio_input import PolyphaseResampler

    try:
        from engine.data.espeak import synthesize

        parts: list[np.ndarray] = []
        total = 0
        i = 0
        while total < seconds * SAMPLE_RATE:
            u = synthesize(SENTENCES[i % len(SENTENCES)])
            rs = PolyphaseResampler(u.sample_rate)
            x = np.concatenate([rs.process(u.audio), rs.finish()])
            pause = np.zeros(int(0.4 * SAMPLE_RATE), np.float32)
            parts += [x, pause]
            total += len(x) + len(pause)
            i += 1
        return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)], "espeak-ng sentences"
    except (OSError, ImportError) as err:
        log.info("espeak-ng unavailable (%s): synthetic speech", err)
        return synthetic_speech(seconds, seed), "synthetic voiced/unvoiced signal"


# ---- measurement helpers --------------------------------------------------------------------
def rss_mb() -> float:
    """Resident set size of this process (VmRSS), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Feeder:
    """Pushes each session's audio in 20 ms chunks on the real clock, from one thread, and
    records when every chunk went in; collects every session's frames as they come."""

    def __init__(self, sessions, audios: list[np.ndarray], chunk_ms: int = CHUNK_MS):
        self.sessions, self.audios = sessions, audios
        self.chunk = SAMPLE_RATE * chunk_ms // 1000
        self.pushes: list[list[tuple[int, int, float]]] = [[] for _ in sessions]  # start, n, t
        self.frames: list[list] = [[] for _ in sessions]
        self._done = threading.Event()

    def run(self, tail_s: float = 1.0) -> None:
        collector = threading.Thread(target=self._collect, daemon=True)
        collector.start()
        t_start = time.monotonic()
        n_chunks = max(len(a) for a in self.audios) // self.chunk
        for i in range(n_chunks):
            # a chunk is pushed when its last sample has "arrived", as from a microphone
            wait = t_start + (i + 1) * self.chunk / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            for k, (s, a) in enumerate(zip(self.sessions, self.audios, strict=True)):
                piece = a[i * self.chunk : (i + 1) * self.chunk]
                if len(piece):
                    r = s.push_audio(piece)
                    self.pushes[k].append((r.start_sample, r.num_samples, time.monotonic()))
        time.sleep(tail_s)
        self._done.set()
        collector.join()

    def _collect(self) -> None:
        while not self._done.is_set():
            for k, s in enumerate(self.sessions):
                self.frames[k].extend(s.pull_frames())
            time.sleep(0.005)
        for k, s in enumerate(self.sessions):
            self.frames[k].extend(s.pull_frames())

    def latencies_ms(self, k: int) -> list[float]:
        """Per frame with audio: ready time minus the push time of its first sample's chunk."""
        pushes = self.pushes[k]
        if not pushes:
            return []
        ends = np.array([a + n for a, n, _ in pushes])
        times = [t for _, _, t in pushes]
        first = pushes[0][0]
        out = []
        for f in self.frames[k]:
            s = f.index * SAMPLES_PER_FRAME
            if f.filled or s < first:
                continue
            j = int(np.searchsorted(ends, s, side="right"))
            if j < len(times):
                out.append((f.ready_time - times[j]) * 1000.0)
        return out

    def push_time_of(self, k: int, sample: int) -> float | None:
        pushes = self.pushes[k]
        ends = np.array([a + n for a, n, _ in pushes])
        j = int(np.searchsorted(ends, sample - 1, side="right"))
        return pushes[j][2] if j < len(pushes) else None


def _engine(models, cfg: StreamConfig | None = None, workers: int = 1, threads: int = 1,
            max_batch: int = 1, clock="monotonic"):  # fmt: skip
    return StreamEngine(models, cfg or StreamConfig(), clock=clock, workers=workers,
                        torch_threads=threads, max_batch=max_batch)  # fmt: skip


def session_audios(audio: np.ndarray, sessions: int) -> list[np.ndarray]:
    """The same speech for every session, each starting at another point of it."""
    shift = len(audio) // max(1, sessions)
    return [np.roll(audio, k * shift) for k in range(sessions)]


def live_run(
    models, audio: np.ndarray, sessions: int = 1, size: int = 256, workers: int = 1,
    threads: int = 1, cfg: StreamConfig | None = None, render: bool = True, max_batch: int = 1,
) -> dict:  # fmt: skip
    """N sessions fed the same speech (offset per session) in real time; latency, drops.
    ``max_batch``: cross-session batching (1: off)."""
    with _engine(models, cfg, workers, threads, max_batch) as engine:
        opened = [
            engine.open_session(None, "neutral", 2, seed=k, render=render, size=size)
            for k in range(sessions)
        ]
        audios = session_audios(audio, sessions)
        rss_open = rss_mb()
        feeder = Feeder(opened, audios)
        feeder.run()
        rss_run = rss_mb()
        lat = [x for k in range(sessions) for x in feeder.latencies_ms(k)]
        compute, queue = [], []
        core = opened[0].core
        for k, s in enumerate(opened):
            for rec in list(s.stats.blocks):
                compute.append((rec.end - rec.start) * 1000.0)
                if rec.forced:
                    continue
                need = core.need_samples(rec.first)
                t_audio = feeder.push_time_of(k, need)
                if t_audio is not None:
                    queue.append((rec.start - t_audio) * 1000.0)
        dropped = sum(s.stats.dropped_frames for s in opened)
        frames = sum(len(f) for f in feeder.frames)
        gaps = 0
        for fr in feeder.frames:
            idx = [f.index for f in fr]
            gaps += sum(1 for a, b in zip(idx, idx[1:], strict=False) if b != a + 1)
        out = {
            "sessions": sessions,
            "size": size,
            "workers": workers,
            "frames": frames,
            "dropped_frames": dropped,
            "underrun_frames": sum(s.stats.underrun_frames for s in opened),
            "gaps": gaps,
            "latency_ms_p50": percentile(lat, 50),
            "latency_ms_p95": percentile(lat, 95),
            "latency_ms_max": max(lat) if lat else float("nan"),
            "compute_ms_p50": percentile(compute, 50),
            "compute_ms_p95": percentile(compute, 95),
            "queue_ms_p50": percentile(queue, 50),
            "playout_delay_ms": opened[0].playout_delay * 1000.0,
            "rss_mb_open": rss_open,
            "rss_mb_run": rss_run,
        }
        out["realtime"] = bool(
            dropped == 0 and out["latency_ms_p95"] <= out["playout_delay_ms"] and gaps == 0
        )
        return out


def offline_run(
    models, audio: np.ndarray, sessions: int = 1, size: int = 256, workers: int = 1,
    max_batch: int = 1, keep_images: int = 0,
) -> dict:  # fmt: skip
    """N sessions given their whole speech at once on the offline clock: as fast as the
    engine goes. Frames, wall and CPU seconds of the process (CPU time does not count other
    processes on a shared machine); the first ``keep_images`` images of the first session."""
    with _engine(models, workers=workers, max_batch=max_batch, clock=None) as engine:
        opened = [engine.open_session(None, "neutral", 2, seed=k, size=size)
                  for k in range(sessions)]  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        for s, a in zip(opened, session_audios(audio, sessions), strict=True):
            s.push_audio(a)
            s.flush()
        frames, images, busy = 0, [], True
        while busy:
            busy = False
            for s in opened:
                s.drain(120)
                got = s.pull_frames()
                frames += len(got)
                busy = busy or bool(got)
                if s is opened[0]:
                    images += [f.image for f in got][: keep_images - len(images)]
        return {
            "sessions": sessions,
            "frames": frames,
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            "images": images,
        }


def capacity(models, audio: np.ndarray, size: int, workers: int, max_sessions: int) -> dict:
    """Sessions at once that hold real time (no drop, p95 latency under the playout delay)."""
    held, runs = 0, []
    for n in range(1, max_sessions + 1):
        r = live_run(models, audio, sessions=n, size=size, workers=workers)
        runs.append(r)
        log.info(
            "%d px x %d sessions: dropped %d, latency p95 %.0f ms, compute p50 %.1f ms",
            size, n, r["dropped_frames"], r["latency_ms_p95"], r["compute_ms_p50"],
        )  # fmt: skip
        if not r["realtime"]:
            break
        held = n
    return {"sessions": held, "runs": runs}


def memory(models, audio: np.ndarray, sessions: int = 4, size: int = 256) -> dict:
    """RSS with 1..N sessions open in one engine, each having rendered a few seconds."""
    rss = []
    with StreamEngine(models, clock=None, torch_threads=1) as engine:
        opened = []
        for k in range(sessions):
            s = engine.open_session(None, seed=k, size=size)
            s.push_audio(audio[: 3 * SAMPLE_RATE])
            s.flush()
            while s.drain(60) and s.pull_frames():
                pass
            opened.append(s)
            rss.append(rss_mb())
    per = (rss[-1] - rss[0]) / (sessions - 1) if sessions > 1 else float("nan")
    return {"rss_mb_1_session": rss[0], "rss_mb_by_sessions": rss, "rss_mb_per_extra_session": per}


# ---- seams and parity -----------------------------------------------------------------------
def seam_jerk_ratio(motion: np.ndarray, hop: int, skip: int = 4) -> float | None:
    """Mean |third difference| centred on block boundaries over the same centred inside blocks,
    per channel normalised by the channel's own std (channels that do not move are left out).

    The third difference m[i+2] - 3 m[i+1] + 3 m[i] - m[i-1] is centred on the edge between
    frames i and i+1; blocks start at multiples of ``hop``."""
    if hop < 2:
        return None
    m = motion[skip:] if skip else motion
    start = skip
    std = m.std(axis=0)
    cols = std > 1e-4
    x = m[:, cols] / std[cols]
    d3 = np.abs(x[3:] - 3 * x[2:-1] + 3 * x[1:-2] - x[:-3]).mean(axis=1)
    edge_after = np.arange(1, len(m) - 2) + start  # frame index i of the edge i|i+1
    at_seam = (edge_after + 1) % hop == 0
    return float(d3[at_seam].mean() / d3[~at_seam].mean())


def test_samples(data: str, max_samples: int) -> tuple[str, list]:
    """(split, samples with audio) of a corpus: its test split, else its val split."""
    from engine.data.corpus import Corpus

    corpus = Corpus(data)
    for split in ("test", "val"):
        try:
            samples = []
            for sample in corpus.samples(split, with_audio=True):
                samples.append(sample)
                if len(samples) >= max_samples:
                    break
        except (ValueError, KeyError):
            continue
        if samples:
            return split, samples
    raise ValueError(f"{data}: no test or val samples")


def parity_on_corpus(models, data: str, max_samples: int, seed: int = 0) -> dict:
    """Streaming (`render_motion`) against the offline sampler (`MotionModels.generate`) on the
    corpus's test split, with the quick metrics of engine.training.common, sample by sample."""
    from engine.emotions import EMOTIONS
    from engine.training.common import mean_metrics, motion_metrics

    split, samples = test_samples(data, max_samples)
    live, offline = [], []
    for k, smp in enumerate(samples):
        target = torch.from_numpy(smp.motion.astype(np.float32))[None]
        emotion = EMOTIONS[smp.emotion]
        stream = render_motion(
            models, smp.audio, SAMPLE_RATE, emotion, smp.intensity, seed=seed + k
        )
        live.append(motion_metrics(torch.from_numpy(stream[: smp.num_frames])[None], target))
        style = models.style_from_emotion(emotion, smp.intensity)
        gen = torch.Generator().manual_seed(seed + k)
        mel = smp.mel.astype(np.float32)
        offline.append(motion_metrics(models.generate(mel, style, generator=gen), target))
    lm, om = mean_metrics(live), mean_metrics(offline)
    rel = {k: (lm[k] - om[k]) / abs(om[k]) * 100.0 if om[k] else float("nan") for k in om}
    return {"split": split, "samples": len(live), "stream": lm, "offline": om, "diff_pct": rel}


def stream_equals_offline(models, audio: np.ndarray, seed: int = 0) -> float:
    """Max |difference| between a session fed 20 ms chunks (offline clock) and render_motion."""
    with StreamEngine(models, clock=None) as engine:
        s = engine.open_session(None, seed=seed, render=False)
        chunk = SAMPLE_RATE * CHUNK_MS // 1000
        frames = []
        for i in range(0, len(audio), chunk):
            s.push_audio(audio[i : i + chunk])
            frames += s.pull_frames()
        s.flush()
        while s.drain(60) and (got := s.pull_frames()):
            frames += got
    ref = render_motion(models, audio, seed=seed)
    got_m = np.stack([f.motion for f in frames])[: len(ref)]
    return float(np.abs(got_m - ref).max())


# ---- stability ------------------------------------------------------------------------------
def stability(models, audio: np.ndarray, minutes: float, size: int = 256) -> dict:
    """A long live session on a manual clock (faster than real time): speech in 20 ms chunks,
    silences without audio, TTS bursts, interrupts and emotion changes, in a loop. Memory at the
    first minute and at the end; pts gap-free; nothing dropped."""
    clock = ManualClock()
    chunk = SAMPLE_RATE * CHUNK_MS // 1000
    emotions = ("happy", "sad", "angry", "neutral")
    with StreamEngine(models, clock=clock, torch_threads=1) as engine:
        s = engine.open_session(None, "happy", 2, seed=0, size=size)
        last_index, gaps, frames, rss_1 = -1, 0, 0, None
        cycle = 0

        def tick(seconds: float, push=None) -> None:
            nonlocal last_index, gaps, frames
            clock.advance(seconds)
            if push is not None:
                s.push_audio(push)
            s.drain()
            for f in s.pull_frames():
                gaps += f.index != last_index + 1
                last_index = f.index
                frames += 1

        while clock() < minutes * 60:
            for i in range(len(audio) // chunk):  # live speech
                tick(CHUNK_MS / 1000, audio[i * chunk : (i + 1) * chunk])
            for _ in range(75):  # 3 s thinking, no audio at all
                tick(0.04)
            s.set_emotion(emotions[cycle % len(emotions)], 1 + cycle % 3)
            s.push_audio(audio)  # a TTS burst...
            for _ in range(50):
                tick(0.04)
            s.interrupt()  # ...cut after 2 s
            for _ in range(25):
                tick(0.04)
            cycle += 1
            if rss_1 is None and clock() >= 60:
                rss_1 = rss_mb()
        rss_end = rss_mb()
        stats = s.stats
    return {
        "minutes": clock() / 60,
        "frames": frames,
        "gaps": gaps,
        "dropped_frames": stats.dropped_frames,
        "rss_mb_after_1_min": rss_1,
        "rss_mb_end": rss_end,
        "rss_growth_mb": None if rss_1 is None else rss_end - rss_1,
    }


# ---- the trade-off table --------------------------------------------------------------------
TRADEOFF = (
    ("H=1 E=4 O=12 C=4 (default)", dict()),
    ("H=2 E=4 O=12 C=4", dict(hop_frames=2)),
    ("H=2 E=2 O=14 C=4", dict(hop_frames=2, motion_hop_frames=2)),
    ("H=1 E=2 O=14 C=4", dict(motion_hop_frames=2)),
    ("H=4 E=4 O=12 C=4", dict(hop_frames=4, motion_hop_frames=4)),
    ("H=8 E=8 O=8 C=4", dict(hop_frames=8, motion_hop_frames=8)),
    ("H=1 E=4 O=12 C=0", dict(crossfade_frames=0)),
    ("H=1 O=8 C=4 (re-estimated overlap)", dict(known_frames=8)),
    ("H=1 O=8 C=0", dict(known_frames=8, crossfade_frames=0)),
    ("H=1 O=4 C=4", dict(known_frames=4)),
    ("H=1 O=0 C=0", dict(known_frames=0, crossfade_frames=0)),
    ("H=1 look-ahead 2", dict(lookahead_frames=2)),
    ("H=1 look-ahead 1", dict(lookahead_frames=1)),
    ("H=1 look-ahead 0", dict(lookahead_frames=0)),
)


def tradeoff(models, audio: np.ndarray, data: str | None, max_samples: int, live_s: float) -> list:
    rows = []
    for name, overrides in TRADEOFF:
        cfg = StreamConfig(**overrides)
        r = live_run(models, audio[: int(live_s * SAMPLE_RATE)], cfg=cfg)
        motion = render_motion(models, audio, seed=0, config=cfg)
        row = {
            "config": name,
            "latency_ms_p50": r["latency_ms_p50"],
            "latency_ms_p95": r["latency_ms_p95"],
            "compute_ms_per_s": r["compute_ms_p50"] * FPS / cfg.hop_frames,
            "seam_jerk_ratio": seam_jerk_ratio(motion, cfg.motion_hop),  # where windows join
            "dropped_frames": r["dropped_frames"],
        }
        if data:
            row.update(_quality(models, data, max_samples, cfg))
        rows.append(row)
        log.info("%s: %s", name, json.dumps(row))
    return rows


def _quality(models, data: str, max_samples: int, cfg: StreamConfig) -> dict:
    from engine.emotions import EMOTIONS
    from engine.training.common import mean_metrics, motion_metrics

    _, samples = test_samples(data, max_samples)
    items = []
    for k, smp in enumerate(samples):
        target = torch.from_numpy(smp.motion.astype(np.float32))[None]
        emotion = EMOTIONS[smp.emotion]
        m = render_motion(models, smp.audio, SAMPLE_RATE, emotion, smp.intensity, seed=k,
                          config=cfg)  # fmt: skip
        items.append(motion_metrics(torch.from_numpy(m[: smp.num_frames])[None], target))
    return mean_metrics(items)


# ---- main -----------------------------------------------------------------------------------
def bench_stream(
    weights: str | None = None,
    data: str | None = None,
    seconds: float = 12.0,
    capacity_seconds: float = 6.0,
    max_sessions: int = 8,
    stability_minutes: float = 10.0,
    parity_samples: int = 18,
    with_tradeoff: bool = False,
) -> dict:
    torch.set_num_threads(1)
    models, label = load_models(weights)
    audio, audio_label = speech_audio(seconds)
    rss_models = rss_mb()
    load = [round(x, 2) for x in os.getloadavg()]
    log.info("models: %s; audio: %s; load average %s", label, audio_label, load)

    mem = memory(models, audio)  # first, before the other runs grow the allocator's pools
    main = live_run(models, audio)  # one session, 256 px, one worker: the latency figures
    cfg = StreamConfig()
    core_h = cfg.hop_frames
    lookahead = models.audio_lookahead if cfg.lookahead_frames is None else cfg.lookahead_frames
    result: dict = {
        "models": label,
        "audio": audio_label,
        "load_average_at_start": load,
        "latency_ms_p50": main["latency_ms_p50"],
        "latency_ms_p95": main["latency_ms_p95"],
        "lookahead_ms": lookahead * 1000.0 / FPS + 1000.0 * 120 / SAMPLE_RATE,
        "hop_ms": core_h * 1000.0 / FPS,
        "hop_wait_ms_mean": (core_h - 1) * 1000.0 / FPS / 2,
        "chunk_ms": CHUNK_MS,
        "compute_ms_p50": main["compute_ms_p50"],
        "compute_ms_p95": main["compute_ms_p95"],
        "queue_ms_p50": main["queue_ms_p50"],
        "playout_delay_ms": main["playout_delay_ms"],
        "one_session_256_one_core": main["realtime"],
        "rss_mb_models": rss_models,
        **mem,
    }
    # one 512 px session with the two cores to itself: two workers (a session's blocks run one
    # at a time, so this is about having the second core free), one intra-op thread each
    one_512 = live_run(models, audio[: int(capacity_seconds * SAMPLE_RATE)], size=512, workers=2)
    result["one_session_512_two_cores"] = one_512["realtime"]
    keys = ("latency_ms_p50", "latency_ms_p95", "compute_ms_p50", "dropped_frames")
    result["one_session_512"] = {k: one_512[k] for k in keys}

    short = audio[: int(capacity_seconds * SAMPLE_RATE)]
    cap = {size: capacity(models, short, size, workers=2, max_sessions=max_sessions)
           for size in (256, 512)}  # fmt: skip
    result["realtime_sessions_256"] = cap[256]["sessions"]
    result["realtime_sessions_512"] = cap[512]["sessions"]
    # the stricter count: real time *and* the 200 ms latency budget kept
    for size in (256, 512):
        runs = cap[size]["runs"]
        ok = [r["sessions"] for r in runs if r["realtime"] and r["latency_ms_p95"] <= 200]
        result[f"sessions_within_200ms_{size}"] = max(ok, default=0)
    held_runs = [r for c in cap.values() for r in c["runs"] if r["realtime"]]
    result["dropped_frames"] = main["dropped_frames"] + sum(r["dropped_frames"] for r in held_runs)
    result["capacity_runs"] = [
        {k: r[k] for k in ("size", "sessions", "dropped_frames", "latency_ms_p95",
                           "compute_ms_p50", "realtime")}
        for c in cap.values() for r in c["runs"]
    ]  # fmt: skip

    motion = render_motion(models, audio, seed=0)
    result["seam_jerk_ratio"] = seam_jerk_ratio(motion, cfg.motion_hop)  # where windows join
    diff = stream_equals_offline(models, audio[: 6 * SAMPLE_RATE])
    result["stream_vs_offline_max_abs_diff"] = diff
    if data:
        result["parity"] = parity_on_corpus(models, data, parity_samples)
    if stability_minutes > 0:
        result["stability"] = stability(models, audio, stability_minutes)
    if with_tradeoff:
        result["tradeoff"] = tradeoff(models, audio, data, parity_samples, live_s=6.0)
    return result


def print_report(r: dict) -> None:
    print(f"models: {r['models']}; audio: {r['audio']}; load avg {r['load_average_at_start']}")
    print(
        f"latency p50 {r['latency_ms_p50']:.0f} ms, p95 {r['latency_ms_p95']:.0f} ms "
        f"(budget 200) = look-ahead {r['lookahead_ms']:.1f} + hop wait {r['hop_wait_ms_mean']:.0f} "
        f"(hop {r['hop_ms']:.0f}) + chunking <= {r['chunk_ms']} + queue {r['queue_ms_p50']:.1f} "
        f"+ compute {r['compute_ms_p50']:.1f} ms/block (p95 {r['compute_ms_p95']:.1f})"
    )
    print(f"playout delay (frame due after its pts): {r['playout_delay_ms']:.0f} ms")
    print(
        f"real time: one session 256 px on one core: {r['one_session_256_one_core']}; "
        f"512 px on two cores: {r['one_session_512_two_cores']}"
    )
    print(
        f"sessions in real time at once (2 workers): 256 px {r['realtime_sessions_256']}, "
        f"512 px {r['realtime_sessions_512']} (within the 200 ms budget: "
        f"{r['sessions_within_200ms_256']} and {r['sessions_within_200ms_512']}); "
        f"dropped frames {r['dropped_frames']}"
    )
    for run in r["capacity_runs"]:
        print(
            f"  {run['size']} px x {run['sessions']}: dropped {run['dropped_frames']}, "
            f"p95 {run['latency_ms_p95']:.0f} ms, compute {run['compute_ms_p50']:.1f} ms/block"
        )
    extra = r.get("rss_mb_per_extra_session")
    print(
        f"memory: models {r['rss_mb_models']:.0f} MB, one session {r['rss_mb_1_session']:.0f} MB"
        + (f", +{extra:.0f} MB per further session" if extra is not None else "")
    )
    print(f"seam jerk ratio (boundary / inside): {r['seam_jerk_ratio']:.3f}")
    print(f"stream vs offline path, max |diff|: {r['stream_vs_offline_max_abs_diff']:.2e}")
    if "parity" in r:
        p = r["parity"]
        print(f"parity on {p['split']} ({p['samples']} samples), stream vs generate:")
        for k in p["offline"]:
            print(
                f"  {k:10s} stream {p['stream'][k]:.4f}  offline {p['offline'][k]:.4f}  "
                f"({p['diff_pct'][k]:+.1f}%)"
            )
    if "stability" in r:
        s = r["stability"]
        print(
            f"stability: {s['minutes']:.1f} min simulated, {s['frames']} frames, "
            f"gaps {s['gaps']}, dropped {s['dropped_frames']}, "
            f"RSS {s['rss_mb_after_1_min'] or 0:.0f} -> {s['rss_mb_end']:.0f} MB"
        )
    if "tradeoff" in r:
        print("trade-off:")
        for row in r["tradeoff"]:
            print("  " + json.dumps(row))


def main_stream(args) -> None:
    result = bench_stream(
        weights=args.weights,
        data=args.data,
        seconds=args.seconds,
        capacity_seconds=args.capacity_seconds,
        max_sessions=args.max_sessions,
        stability_minutes=args.stability_minutes,
        parity_samples=args.parity_samples,
        with_tradeoff=args.tradeoff,
    )
    if args.json:
        print(json.dumps(result, default=_jsonable))
    else:
        print_report(result)


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    raise TypeError(type(x))
