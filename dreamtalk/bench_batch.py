"""`dreamtalk bench batch`: throughput and latency against the number of sessions, with
cross-session batching off (``max_batch=1``) and on (``max_batch`` = the session count).

For each session count N and each mode, in one engine with ``workers`` worker threads:

- throughput: the N sessions given their whole speech at once on the offline clock
  (`bench_stream.offline_run`): frames per second of wall time, and per second of CPU time
  (what the machine could do if the engine had the cores to itself);
- latency: the N sessions fed speech in 20 ms chunks on the real clock (`bench_stream.live_run`):
  push of a frame's first sample to the frame rendered, p50 / p95 over every session's frames,
  the frames dropped (late), and whether the run held real time.

A short run at each size first warms the allocator up (the first frames at a size are slow);
``runs`` trials of each configuration give medians (a shared machine's load moves figures).
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass

import torch

from dreamtalk.bench_stages import StageBenchConfig, backends_to_run, finite, on_backend, show
from dreamtalk.bench_stream import live_run, load_models, offline_run, speech_audio
from engine.timebase import SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchBenchConfig:
    sessions: tuple[int, ...] = (1, 2, 4, 8)
    sizes: tuple[int, ...] = (256,)
    backend: str = "auto"
    workers: int = 1
    seconds: float = 4.0  # speech per session and run
    runs: int = 1  # trials of each configuration; the table has their medians
    weights: str | None = None
    engine_dir: str | None = None

    def __post_init__(self) -> None:
        # the checks `dreamtalk bench stages` makes, on the same options
        StageBenchConfig(
            backends=(self.backend,), sizes=self.sizes, sessions=self.sessions, seconds=self.seconds
        )
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.runs < 1:
            raise ValueError(f"--runs must be at least 1, got {self.runs}")


def bench_batch(cfg: BatchBenchConfig) -> dict:
    """{"load_average", "models", "audio", "backend", "renderer", "workers", "trials",
    "runs": [{"size", "sessions", "batching", "max_batch", "fps_wall", "fps_cpu", "latency_ms_p50",
    "latency_ms_p95", "dropped_frames", "realtime"}]}: medians over ``cfg.runs`` trials
    (``realtime``: in every trial)."""
    torch.set_num_threads(1)
    load_start = [round(x, 2) for x in os.getloadavg()]
    (backend,) = backends_to_run((cfg.backend,))
    base, label = load_models(cfg.weights)
    stage_cfg = StageBenchConfig(sizes=cfg.sizes, sessions=cfg.sessions, engine_dir=cfg.engine_dir)
    models = on_backend(base, backend, stage_cfg)
    audio, audio_label = speech_audio(cfg.seconds)
    runs = []
    for size in cfg.sizes:
        offline_run(models, audio[:SAMPLE_RATE], 1, size)  # warm up: allocations at this size
        for n in cfg.sessions:
            for batching in (False, True):
                trials = [_trial(models, audio, n, size, cfg.workers, batching)
                          for _ in range(cfg.runs)]  # fmt: skip
                run = {
                    "size": size,
                    "sessions": n,
                    "batching": batching,
                    "max_batch": n if batching else 1,
                    **{k: _median([t[k] for t in trials]) for k in trials[0]},
                    "realtime": all(t["realtime"] for t in trials),
                }
                runs.append(run)
                log.info("%s", run)
    return {
        "models": label,
        "audio": f"{audio_label}, {len(audio) / SAMPLE_RATE:.1f} s per session",
        "backend": models.nets.backend,
        "renderer": {str(s): models.nets.renderer_kind(s) for s in cfg.sizes},
        "workers": cfg.workers,
        "trials": cfg.runs,
        "runs": runs,
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
    }


def _trial(models, audio, sessions: int, size: int, workers: int, batching: bool) -> dict:
    max_batch = sessions if batching else 1
    off = offline_run(models, audio, sessions, size, workers, max_batch)
    live = live_run(models, audio, sessions, size, workers, max_batch=max_batch)
    return {
        "fps_wall": off["frames"] / off["wall_s"],
        "fps_cpu": off["frames"] / off["cpu_s"],
        "latency_ms_p50": finite(live["latency_ms_p50"]),
        "latency_ms_p95": finite(live["latency_ms_p95"]),
        "dropped_frames": live["dropped_frames"],
        "realtime": live["realtime"],
    }


def _median(values: list):
    """The median of the trials' figures (None if a trial had none), rounded."""
    if any(v is None for v in values):
        return None
    return round(float(statistics.median(values)), 1)


def print_table(r: dict) -> None:
    load = r["load_average"]
    print(
        f"models: {r['models']}; audio: {r['audio']}; backend {r['backend']} "
        f"(renderer {', '.join(f'{k} at {s} px' for s, k in r['renderer'].items())}); "
        f"{r['workers']} worker(s); load average {load['start']} -> {load['end']}"
    )
    head = (
        "size",
        "sessions",
        "batching",
        "fps wall",
        "fps cpu",
        "p50 ms",
        "p95 ms",
        "dropped",
        "real time",
    )
    print("{:>4} {:>8} {:>8} {:>9} {:>8} {:>7} {:>7} {:>7} {:>9}".format(*head))
    for run in r["runs"]:
        print(
            f"{run['size']:>4} {run['sessions']:>8} {'on' if run['batching'] else 'off':>8} "
            f"{run['fps_wall']:>9.1f} {run['fps_cpu']:>8.1f} {_ms(run['latency_ms_p50']):>7} "
            f"{_ms(run['latency_ms_p95']):>7} {run['dropped_frames']:>7} "
            f"{'yes' if run['realtime'] else 'no':>9}"
        )


def main_batch(cfg: BatchBenchConfig, as_json: bool) -> None:
    show(bench_batch(cfg), as_json, print_table)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"
