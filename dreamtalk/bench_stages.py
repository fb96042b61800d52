"""`dreamtalk bench stages` (what plain `dreamtalk bench` runs): median ms of each stage of the
live path, per backend, frame size and number of sessions.

The stages of one block (H frames, 1 by default) of N sessions, each timed on the inputs of a
real block (the live path run over speech until it is in its steady state, its network inputs
kept by `engine.stream.core.run_blocks`), N rows batched as the engine batches them:

- ``features``: log-mel of the block's new audio (per session) and the audio encoders over the
  mel spans (one call for the N sessions; ``audio_encoder`` is that call alone);
- ``emodiff``: one EmoDiff window of every session (`MotionModels.sample_window`, 4 steps);
- ``lip_refiner``: the lip refiner over every session's span;
- ``render``: one frame of every session, as the engine renders them (the sessions share the
  portrait: one call for all on a GPU renderer and on a CPU one at 256 px, one call per frame
  on a CPU at 512 px); ``render_batched`` (more than one session): one call for all, whatever
  the backend: with ``render`` at 512 px, the comparison behind that choice;
- ``encode``: one frame to VP8 as the server sends it (`server.media.FrameStore`'s yuv420p
  conversion, then aiortc's encoder), per frame;
- ``e2e_block`` / ``e2e_frame``: CPU ms of the whole engine (audio input, every stage but
  encode, bookkeeping) per block of the N sessions and per frame, measured on an offline-clock
  engine running the N sessions over the speech with batching on.

The stages are timed with `export.timing.median_ms` (CPU time of the calling thread, one
intra-op thread, calls interleaved round robin), so other processes on a shared machine do
not count; they still slow the caches. A short run at each size warms the allocator up first.
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dreamtalk.bench_stream import load_models, offline_run, session_audios, speech_audio
from engine.backends.kinds import BACKEND_CHOICES, KINDS, ORT_CPU, ORT_CUDA, TORCH
from engine.motion_model import MotionModels
from engine.stream import StreamConfig
from engine.stream.worker import renders_in_batches
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

STAGES = ("features", "audio_encoder", "emodiff", "lip_refiner", "render", "encode")
OPTIONAL = ("render_batched",)  # timed with more than one session only
NETWORKS = ("audio_encoder", "emodiff", "lip_refiner", "render")  # what the ratios compare
SIZES = (256, 512)
BACKEND_NAMES = (*BACKEND_CHOICES, ORT_CPU, ORT_CUDA)  # choices, and exact ONNX Runtime kinds


@dataclass(frozen=True)
class StageBenchConfig:
    backends: tuple[str, ...] | None = None  # None: every backend this machine has
    sizes: tuple[int, ...] = SIZES
    sessions: tuple[int, ...] = (1, 4)
    repeats: int = 30  # timed calls of each stage
    seconds: float = 3.0  # speech for the end-to-end run (its first second: steady state)
    weights: str | None = None  # None: weights/ (random models, labelled so, when it is empty)
    engine_dir: str | None = None  # exported files (None: the cache folder of the weights)

    def __post_init__(self) -> None:
        for size in self.sizes:
            if size not in SIZES:
                raise ValueError(f"--sizes: {size} is not a frame size (256 or 512)")
        if not self.sizes or not self.sessions:
            raise ValueError("--sizes and --sessions need at least one value each")
        if any(n < 1 for n in self.sessions):
            raise ValueError(f"--sessions must be at least 1, got {list(self.sessions)}")
        if self.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {self.repeats}")
        if not self.seconds >= 1.5:
            raise ValueError(f"--seconds must be at least 1.5, got {self.seconds}")
        check_backend_names(self.backends or ())


def check_backend_names(names: tuple[str, ...]) -> None:
    """Each a `--backend` choice or an exact ONNX Runtime kind, else a ValueError naming them."""
    for name in names:
        if name not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {name!r}: use one of {', '.join(BACKEND_NAMES)}")


def backends_to_run(names: tuple[str, ...] | None) -> list[str]:
    """The backends to bench: the kinds named (auto stays auto: the server's default mix), or
    every kind this machine has; each once."""
    from engine.backends import available_kinds, resolve_backend

    if not names:
        return [k for k in KINDS if k in available_kinds()]
    check_backend_names(names)
    chosen: list[str] = []
    for name in names:
        kind = "auto" if name == "auto" else resolve_backend(name)  # unavailable: ValueError
        if kind not in chosen:
            chosen.append(kind)
    return chosen


def on_backend(models: MotionModels, backend: str, cfg: StageBenchConfig) -> MotionModels:
    """A copy of ``models`` whose networks run on ``backend`` (exported first, or reused)."""
    bundle = dataclasses.replace(models, networks=None)
    bundle.use_backend(
        backend,
        engine_dir=cfg.engine_dir,
        threads=1,
        sizes=cfg.sizes,
        max_batch=max(8, *cfg.sessions),
    )
    return bundle


# ---- the stages -----------------------------------------------------------------------------
def steady_blocks(models: MotionModels, audio: np.ndarray, sessions: int, seconds: float = 1.0):
    """N sessions' cores run over ``seconds`` of their speech in batches; the blocks of the
    last batch (each network's inputs), their frames, and the cores."""
    from engine.stream.core import SessionCore, run_blocks

    cfg = StreamConfig()
    style = models.style_from_emotion("neutral", 2)
    cores = [SessionCore(models, cfg, style, seed=k) for k in range(sessions)]
    for core, a in zip(cores, session_audios(audio, sessions), strict=True):
        core.push(a)
    blocks: list = []
    frames: list = []
    while cores[0].next_block < seconds * FPS:
        blocks.clear()
        frames = run_blocks(cores, blocks)
    for f in frames:
        if isinstance(f, Exception):
            raise f
    return blocks, frames, cores


def stage_calls(
    models: MotionModels, audio: np.ndarray, sessions: int, size: int, images: list[np.ndarray]
) -> dict[str, Callable[[], object]]:
    """One call per stage over the inputs of a real block of ``sessions`` sessions."""
    from engine.avatar import load_avatar
    from engine.features import MEL_LOOKAHEAD_SAMPLES, log_mel
    from engine.renderer import to_uint8_frames

    blocks, frames, cores = steady_blocks(models, audio, sessions)
    core = cores[0]
    cat = torch.cat
    mels = cat([b.mel for b in blocks])
    lip_mels = cat([b.lip_mel for b in blocks])
    # the audio the block's mel rows are computed from (`SessionCore._mel_upto`): H frames
    # and the one before, through the mel window's look-ahead
    b, H, L = blocks[0].b, core.H, core.L
    lo, hi = (b + L - 1) * SAMPLES_PER_FRAME, (b + H + L) * SAMPLES_PER_FRAME
    spans = [c.timeline.read(lo, hi + MEL_LOOKAHEAD_SAMPLES) for c in cores]
    windows = [b.window for b in blocks]
    feats, style = cat([w.feats for w in windows]), cat([w.style for w in windows])
    known = None if windows[0].known is None else cat([w.known for w in windows])
    noise = cat([w.noise for w in windows])
    refine = [b.refine for b in blocks]
    r_feats, r_motion = cat([r.feats for r in refine]), cat([r.motion for r in refine])
    r_style = cat([r.style for r in refine])
    cfg = core.cfg

    def encoders():
        out = models.encode_audio(mels)
        if not models.lip_features_shared:
            models.encode_lip_audio(lip_mels)
        return out

    def features():
        for span in spans:
            log_mel(span, H + 1)
        return encoders()

    avatar = load_avatar(None, size)
    inputs = avatar.render_inputs()
    renderer = models.nets.renderer(size)
    motion = torch.from_numpy(np.stack([f[0].motion for f in frames]))

    def render_batched():
        with torch.no_grad():
            return to_uint8_frames(renderer(motion, *inputs))

    as_engine = renders_in_batches(models.nets.renderer_kind(size, batch=2), size)  # as the engine

    def render_each():
        with torch.no_grad():
            return [to_uint8_frames(renderer(m[None], *inputs)) for m in motion]

    calls = {
        "features": features,
        "audio_encoder": encoders,
        "emodiff": lambda: models.sample_window(
            feats, style, known, cfg.steps, cfg.guidance, noise=noise
        ),
        "lip_refiner": lambda: models.refine_lips(r_feats, r_motion, r_style),
        "render": render_batched if as_engine else render_each,
        "encode": vp8_encoder(images),
    }
    if sessions > 1:
        calls["render_batched"] = render_batched
    return calls


def vp8_encoder(images: list[np.ndarray]) -> Callable[[], object]:
    """Encode the next of ``images`` (a cycle, so that the encoder sees video) the way the
    server does: yuv420p once (`FrameStore.put`), a `VideoFrame` per track, aiortc's VP8."""
    from aiortc.codecs.vpx import Vp8Encoder

    from server.media import VIDEO_CLOCK, FrameStore

    store, encoder = FrameStore(keep=2), Vp8Encoder()
    state = {"n": 0}

    def encode():
        n = state["n"]
        state["n"] = n + 1
        store.put(n, images[n % len(images)])
        _, frame = store.get(n)
        frame.pts, frame.time_base = n * (VIDEO_CLOCK // FPS), fractions.Fraction(1, VIDEO_CLOCK)
        return encoder.encode(frame)

    return encode


def bench_combination(
    models: MotionModels, audio: np.ndarray, size: int, sessions: int, repeats: int
) -> dict:
    """Every stage of one backend at one size and session count (module docstring)."""
    from export.timing import median_ms

    run = offline_run(models, audio, sessions, size, max_batch=sessions, keep_images=50)
    calls = stage_calls(models, audio, sessions, size, run["images"])
    result = median_ms(calls, repeats, warmup=3)
    e2e_frame = run["cpu_s"] * 1000.0 / max(1, run["frames"])
    result["e2e_frame"] = round(e2e_frame, 4)
    result["e2e_block"] = round(e2e_frame * StreamConfig().hop_frames * sessions, 4)
    return result


def bench_stages(cfg: StageBenchConfig) -> dict:
    """{"load_average": {...}, "models", "audio", "threads", "repeats", "hop_frames",
    "backends": {backend: {"renderer": kind, "motion": kind, "<size>": {"<sessions>":
    {stage: median ms}}}}, "ratios": {"<size>": {network: torch ms / ONNX Runtime ms}}}."""
    torch.set_num_threads(1)
    load_start = [round(x, 2) for x in os.getloadavg()]
    backends = backends_to_run(cfg.backends)
    base, label = load_models(cfg.weights)
    audio, audio_label = speech_audio(cfg.seconds)
    result: dict = {
        "models": label,
        "audio": f"{audio_label}, {len(audio) / SAMPLE_RATE:.1f} s",
        "threads": 1,
        "repeats": cfg.repeats,
        "hop_frames": StreamConfig().hop_frames,
        "backends": {},
    }
    for backend in backends:
        models = on_backend(base, backend, cfg)
        renderer = {str(s): models.nets.renderer_kind(s) for s in cfg.sizes}
        batches = {str(s): models.nets.renderer_kind(s, batch=2) for s in cfg.sizes}
        entry: dict = {"motion": models.nets.backend, "renderer": renderer}
        entry["renderer_batches"] = batches
        for size in cfg.sizes:
            offline_run(models, audio[:SAMPLE_RATE], 1, size)  # warm up: allocations, caches
            for n in cfg.sessions:
                ms = bench_combination(models, audio, size, n, cfg.repeats)
                entry.setdefault(str(size), {})[str(n)] = ms
                log.info("%s %d px x %d sessions: %s", backend, size, n, ms)
        result["backends"][backend] = entry
    result["ratios"] = ratios(result["backends"], cfg.sessions[0])
    result["load_average"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
    return result


def ratios(by_backend: dict, sessions: int) -> dict:
    """PyTorch's ms over ONNX Runtime's, per size and network (above 1: ONNX Runtime faster),
    at ``sessions`` sessions; empty unless both were benched."""
    ort = next((k for k in (ORT_CPU, ORT_CUDA) if k in by_backend), None)
    if TORCH not in by_backend or ort is None:
        return {}
    out: dict = {"onnxruntime": ort, "sessions": sessions}
    for size, by_n in by_backend[TORCH].items():
        if not size.isdigit():
            continue
        t, o = by_n[str(sessions)], by_backend[ort][size][str(sessions)]
        out[size] = {k: round(t[k] / o[k], 2) for k in (*NETWORKS, "e2e_frame") if o[k] > 0}
    return out


# ---- output ---------------------------------------------------------------------------------
def finite(x):
    """JSON has no NaN: a measurement that did not happen (no frames) is None."""
    return None if isinstance(x, float) and math.isnan(x) else x


def print_table(r: dict) -> None:
    load = r["load_average"]
    print(
        f"models: {r['models']}; audio: {r['audio']}; {r['threads']} thread; "
        f"load average {load['start']} -> {load['end']}"
    )
    print(
        "median CPU ms: features, refiner per block (H frames) of every session; EmoDiff per "
        "window; render per frame of every session (render1x: in one call); encode per frame"
    )
    columns = (  # (key, heading, width)
        ("features", "features", 9),
        ("audio_encoder", "encoder", 8),
        ("emodiff", "emodiff", 8),
        ("lip_refiner", "refiner", 8),
        ("render", "render", 8),
        ("render_batched", "render1x", 9),
        ("encode", "encode", 7),
        ("e2e_frame", "e2e/frame", 9),
        ("e2e_block", "e2e/block", 9),
    )
    width = max(len(_name(b, e, int(s))) for b, e in r["backends"].items() for s in e["renderer"])
    print(
        f"{'backend':<{width}} {'size':>4} {'sess':>4} "
        + " ".join(f"{head:>{w}}" for _, head, w in columns)
    )
    for backend, entry in r["backends"].items():
        for size, by_n in entry.items():
            if not size.isdigit():
                continue
            for n, ms in by_n.items():
                cells = " ".join(
                    f"{ms[k]:>{w}.2f}" if k in ms else f"{'-':>{w}}" for k, _, w in columns
                )
                print(f"{_name(backend, entry, size):<{width}} {size:>4} {n:>4} {cells}")
    rat = r.get("ratios") or {}
    for size, by_net in rat.items():
        if size.isdigit():
            parts = ", ".join(f"{k} {v:.2f}x" for k, v in by_net.items())
            print(
                f"PyTorch / {rat['onnxruntime']} at {size} px, {rat['sessions']} session(s): "
                f"{parts}"
            )


def _name(backend: str, entry: dict, size: int) -> str:
    renderer = entry["renderer"][str(size)]
    batches = entry.get("renderer_batches", {}).get(str(size), renderer)
    if renderer == batches == entry["motion"]:
        return backend
    what = renderer if renderer == batches else f"{renderer}, batches {batches}"
    return f"{backend} ({entry['motion']} + renderer {what})"


def show(result: dict, as_json: bool, table: Callable[[dict], None]) -> None:
    """A bench's result as one JSON object, or as its table."""
    if as_json:
        print(json.dumps(result))
    else:
        table(result)


def main_stages(cfg: StageBenchConfig, as_json: bool) -> None:
    show(bench_stages(cfg), as_json, print_table)
