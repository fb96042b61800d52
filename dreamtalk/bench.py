"""`dreamtalk bench render`: median ms per frame of the renderer, per backend and threads."""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.avatar import load_avatar
from engine.blendshapes import MOTION_DIM, MOTION_INDEX
from engine.renderer import Renderer, RendererConfig

log = logging.getLogger(__name__)


def _talking_motion(num_frames: int, seed: int = 0) -> np.ndarray:
    """Frames that exercise the whole renderer: jaw, smile, blinks and head motion."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames) / 25.0
    motion = np.zeros((num_frames, MOTION_DIM), np.float32)
    motion[:, MOTION_INDEX["jawOpen"]] = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t)
    motion[:, MOTION_INDEX["mouthSmileLeft"]] = rng.uniform(0, 0.6, num_frames)
    motion[:, MOTION_INDEX["eyeBlinkLeft"]] = rng.uniform(0, 1, num_frames)
    motion[:, MOTION_INDEX["headYaw"]] = 0.2 * np.sin(2 * np.pi * 0.4 * t)
    motion[:, MOTION_INDEX["headPitch"]] = 0.1 * np.sin(2 * np.pi * 0.3 * t)
    return motion


def _median_ms(run: Callable[[np.ndarray], object], motion: np.ndarray, repeats: int) -> float:
    run(motion[:1])  # warm up allocations and caches
    times = []
    for i in range(repeats):
        frame = motion[i % len(motion) : i % len(motion) + 1]
        start = time.perf_counter()
        run(frame)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _torch_runner(renderer: Renderer, inputs: tuple) -> Callable[[np.ndarray], object]:
    return lambda motion: renderer(torch.from_numpy(motion), *inputs)


def _ort_runner(session, avatar) -> Callable[[np.ndarray], object]:
    from export.onnx_export import onnx_feed

    return lambda motion: session.run(None, onnx_feed(session, motion, avatar))


def bench_render(sizes=(256, 512), threads=(1, 2), repeats: int = 50) -> dict:
    """{"torch": {"256": {"threads_1": ms, ...}, ...}, "onnxruntime": {...}}: one frame per call,
    the way the live path renders."""
    from export.onnx_export import export_renderer, ort_session

    results: dict[str, dict[str, dict[str, float]]] = {"torch": {}, "onnxruntime": {}}
    motion = _talking_motion(repeats)
    previous_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            avatar = load_avatar(None, size=size)
            inputs = avatar.render_inputs()
            renderer = Renderer(RendererConfig(size=size)).eval()
            onnx_path = export_renderer(avatar, Path(tmp) / f"renderer_{size}.onnx")
            for n in threads:
                torch.set_num_threads(n)
                with torch.inference_mode():
                    ms = _median_ms(_torch_runner(renderer, inputs), motion, repeats)
                results["torch"].setdefault(str(size), {})[f"threads_{n}"] = round(ms, 3)
                session = ort_session(onnx_path, threads=n)
                ms = _median_ms(_ort_runner(session, avatar), motion, repeats)
                results["onnxruntime"].setdefault(str(size), {})[f"threads_{n}"] = round(ms, 3)
                log.info("render %d px, %d thread(s): done", size, n)
    torch.set_num_threads(previous_threads)
    return results


def print_table(results: dict) -> None:
    print("renderer, median ms per frame (one frame per call)")
    print(f"{'backend':<12} {'size':>5} {'1 thread':>10} {'2 threads':>10}")
    for backend, by_size in results.items():
        for size, by_threads in by_size.items():
            cells = [f"{by_threads.get(f'threads_{n}', float('nan')):10.2f}" for n in (1, 2)]
            print(f"{backend:<12} {size:>5} {' '.join(cells)}")


def main_render(as_json: bool, repeats: int) -> None:
    results = bench_render(repeats=repeats)
    if as_json:
        print(json.dumps(results))
    else:
        print_table(results)
