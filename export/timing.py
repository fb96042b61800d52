"""Milliseconds per call of each network, PyTorch eager against ONNX Runtime on the CPU.

Batch 1 (the last recorded call of each network), one intra-op thread on both sides by
default (how the live engine runs them), the median of many calls. EmoDiff is timed as a whole
window in three ways: PyTorch (`sample_emodiff`), ONNX Runtime with the sampler unrolled into
one graph, and ONNX Runtime one step per call with the sampler's maths in Python; and the
whole live path (a session rendering speech, CPU ms per frame) with EmoDiff in each form: the
comparison that chose the exported form (docs/export.md). Times are CPU time of the process,
so other processes on a shared machine do not count.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.backends import TorchBackend, make_backend
from engine.backends.kinds import DENOISER_FORMS, ORT_CPU, TORCH
from engine.backends.networks import torch_renderer
from engine.motion_model import MotionModels, sample_emodiff
from export.engine_cache import EngineCache
from export.graphs import SAMPLER, sampler_graph, step_graph
from export.manifest import read_manifest
from export.recording import inputs_of, load_recorded, speech
from export.verify import graph_for

log = logging.getLogger(__name__)


def median_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 10) -> dict:
    """Median ms per call of each function: CPU time of the calling thread (PyTorch and ONNX
    Runtime both compute on it with one intra-op thread), so other processes on the machine
    do not count; the calls interleaved (round robin) so that what they leave in the caches
    affects each function alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.thread_time()
            fn()
            times[name].append((time.thread_time() - start) * 1000.0)
    return {name: round(statistics.median(t), 4) for name, t in times.items()}


def _last(inputs: tuple[torch.Tensor, ...], batched: list[bool]) -> tuple[torch.Tensor, ...]:
    """Batch 1: the last recorded call (the steady state, as the live path runs it; the first
    is the session's pre-roll)."""
    return tuple(t[-1:] if b else t for t, b in zip(inputs, batched, strict=True))


def time_folder(
    folder: str | Path,
    models: MotionModels,
    threads: int = 1,
    repeats: int = 200,
    size: int = 256,
    live_rounds: int = 7,
) -> dict:
    """{"threads", "repeats", "models": {name: {"torch": ms, "onnxruntime": ms}},
    "emodiff_window": {"torch": ms, "unrolled": ms, "step": ms},
    "live_ms_per_frame": {"size": px, "unrolled": ms, "step": ms}} for an export folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    recorded = load_recorded(folder)
    ort = make_backend(ORT_CPU, threads=threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    result: dict = {"threads": threads, "repeats": repeats, "models": {}}
    try:
        for name, entry in manifest["models"].items():
            graph = graph_for(name, entry, models)
            batched = [bool(s.shape) and s.shape[0] == "batch" for s in graph.inputs]
            x = _last(inputs_of(graph, recorded), batched)
            eager = TorchBackend().runner(graph)
            runner = ort.runner(graph, folder / entry["file"])
            result["models"][name] = median_ms(
                {"torch": lambda r=eager, x=x: r(*x), "onnxruntime": lambda r=runner, x=x: r(*x)},
                repeats,
            )
            log.info("%s: %s", name, result["models"][name])
        result["emodiff_window"] = _time_forms(models, recorded, ort, repeats)
        result["live_ms_per_frame"] = _time_live(models, size, threads, live_rounds)
    finally:
        torch.set_num_threads(previous)
    return result


def _time_forms(models: MotionModels, recorded: dict, ort, repeats: int) -> dict:
    """One EmoDiff window (the default steps) in PyTorch and in both exported forms."""
    unrolled, step = sampler_graph(models), step_graph(models)
    if f"{SAMPLER}/noise" in recorded:
        noise, known, mask, feats, style, _ = (t[-1:] for t in inputs_of(unrolled, recorded))
    else:  # exported in the one-step form: its recorded state is as good a start
        noise, _, known, mask, feats, style = (t[-1:] for t in inputs_of(step, recorded)[:6])
    g = models.guidance
    guidance = torch.full((1,), g)
    with tempfile.TemporaryDirectory() as tmp:
        cache = EngineCache(tmp)
        run_unrolled = ort.runner(unrolled, cache.onnx(unrolled))
        run_step = ort.runner(step, cache.onnx(step))
        model, steps = models.emodiff, models.steps

        def eager():
            with torch.no_grad():
                return sample_emodiff(model, feats, known, mask, style, steps, g, noise=noise)

        def one_graph():
            return run_unrolled(noise, known, mask, feats, style, guidance)

        def per_step():
            return sample_emodiff(model, feats, known, mask, style, steps, g, noise=noise,
                                  net=run_step)  # fmt: skip

        forms = {"torch": eager, "unrolled": one_graph, "step": per_step}
        return {"steps": steps, **median_ms(forms, repeats)}


def _session_ms_per_frame(models: MotionModels, audio, size: int) -> float:
    """CPU ms per frame of an offline-clock session fed ``audio`` in 20 ms chunks, rendering."""
    from engine.stream import StreamEngine

    with StreamEngine(models, clock=None) as engine:
        session = engine.open_session(None, seed=0, render=True, size=size)
        start, frames = time.process_time(), 0
        for i in range(0, len(audio), 320):
            session.push_audio(audio[i : i + 320])
        session.flush()
        while session.drain(60) and (got := session.pull_frames()):
            frames += len(got)
        return (time.process_time() - start) * 1000.0 / max(frames, 1)


def _time_live(models: MotionModels, size: int, threads: int, rounds: int) -> dict:
    """The live path with EmoDiff in each exported form: the audio encoder and the refiner in
    ONNX Runtime, the renderer in PyTorch, as ``--backend auto`` runs on a CPU. Between two
    windows the renderer runs, so EmoDiff starts with the caches cold: what the form
    comparison has to be about."""
    audio = speech(4.0)
    bundles = {}
    with tempfile.TemporaryDirectory() as tmp:
        for form in DENOISER_FORMS:
            bundle = dataclasses.replace(models, networks=None)
            nets = bundle.use_backend(ORT_CPU, engine_dir=Path(tmp) / form, threads=threads,
                                      form=form)  # fmt: skip
            nets.make_renderer, nets.renderer_backend = torch_renderer, TORCH
            bundles[form] = bundle
        times: dict[str, list[float]] = {form: [] for form in bundles}
        for _ in range(rounds):
            for form, bundle in bundles.items():
                times[form].append(_session_ms_per_frame(bundle, audio, size))
    return {"size": size, **{f: round(statistics.median(t), 3) for f, t in times.items()}}
