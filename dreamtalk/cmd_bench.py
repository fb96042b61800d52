"""`dreamtalk bench ...`: benchmarks (per-stage ms per backend, the default; cross-session
batching; renderer ms per frame; live streaming figures; the browser end to end)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks (median ms)",
        description="Without a subcommand: `bench stages` with its defaults.",
    )
    _json_option(p)
    p.set_defaults(func=_run_default)
    bench = p.add_subparsers(dest="bench")
    stages = bench.add_parser(
        "stages", help="ms per stage (features, EmoDiff, refiner, render, encode) per backend"
    )
    _json_option(stages)
    stages.add_argument(
        "--backends",
        type=_names,
        default=None,
        help="comma-separated: torch, onnxruntime, tensorrt, auto, onnxruntime-cpu, "
        "onnxruntime-cuda (default: every backend this machine has)",
    )
    stages.add_argument("--sizes", type=_ints, default=(256, 512), help="frame sizes (256,512)")
    stages.add_argument("--sessions", type=_ints, default=(1, 4), help="session counts (1,4)")
    stages.add_argument("--repeats", type=int, default=30, help="timed calls per stage (30)")
    stages.add_argument("--seconds", type=float, default=3.0, help="speech for end to end (3)")
    _model_options(stages)
    stages.set_defaults(func=_run_stages)
    batch = bench.add_parser(
        "batch", help="throughput and latency against sessions, batching off and on"
    )
    _json_option(batch)
    batch.add_argument(
        "--sessions", type=_ints, default=(1, 2, 4, 8), help="session counts (1,2,4,8)"
    )
    batch.add_argument("--sizes", type=_ints, default=(256,), help="frame sizes (256)")
    batch.add_argument("--backend", default="auto", help="what runs the networks (auto)")
    batch.add_argument("--workers", type=int, default=1, help="engine worker threads (1)")
    batch.add_argument("--seconds", type=float, default=4.0, help="speech per session (4)")
    batch.add_argument("--runs", type=int, default=1, help="trials per configuration (1)")
    _model_options(batch)
    batch.set_defaults(func=_run_batch)
    render = bench.add_parser("render", help="renderer ms per frame: torch and ONNX Runtime")
    _json_option(render)
    render.add_argument("--repeats", type=int, default=50)
    render.set_defaults(func=_run_render)
    stream = bench.add_parser(
        "stream", help="live sessions: latency, real-time capacity, seams, parity, memory"
    )
    _json_option(stream)
    stream.add_argument("--weights", default=None, help="checkpoint folder (default: weights/)")
    stream.add_argument("--data", default=None, help="corpus for parity (its test split)")
    stream.add_argument("--seconds", type=float, default=12.0, help="speech for latency (12)")
    stream.add_argument(
        "--capacity-seconds", type=float, default=6.0, help="speech per capacity trial (6)"
    )
    stream.add_argument("--max-sessions", type=int, default=8, help="capacity search limit (8)")
    stream.add_argument(
        "--stability-minutes", type=float, default=10.0, help="simulated long session (10; 0 off)"
    )
    stream.add_argument("--parity-samples", type=int, default=18, help="test samples (18)")
    stream.add_argument(
        "--tradeoff", action="store_true", help="also measure the H/O/look-ahead trade-off table"
    )
    stream.set_defaults(func=_run_stream)
    e2e = bench.add_parser(
        "e2e", help="browser end to end: fps, lip sync, glass-to-glass latency (Chromium)"
    )
    _json_option(e2e)
    e2e.add_argument("--weights", default=None, help="checkpoint folder (default: weights/)")
    e2e.add_argument("--seconds", type=float, default=20.0, help="seconds of avatar captured (20)")
    e2e.add_argument("--runs", type=int, default=1, help="runs; medians are printed (1)")
    e2e.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    e2e.add_argument("--headed", action="store_true", help="show the browser window")
    e2e.add_argument("--keep", default=None, help="keep WAV, logs, frames and CSVs in this folder")
    e2e.add_argument("--size", type=int, default=512, choices=(256, 512), help="avatar size (512)")
    e2e.add_argument(
        "--server-args", default="", help="more `dreamtalk serve` options, e.g. '--hop-frames 1'"
    )
    e2e.set_defaults(func=_run_e2e)


def _json_option(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's default must not undo `dreamtalk bench --json <subcommand>`
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object"
    )


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, help="checkpoint folder (default: weights/)")
    p.add_argument("--engine-dir", default=None, help="exported files (default: the cache)")


def _listed(convert: Callable[[str], object]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return tuple(convert(t) for t in items)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err

    return parse


_ints = _listed(int)
_names = _listed(str)


def _as_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _run_default(args: argparse.Namespace) -> None:
    from dreamtalk.bench_stages import StageBenchConfig, main_stages

    main_stages(StageBenchConfig(), _as_json(args))


def _run_stages(args: argparse.Namespace) -> None:
    from dreamtalk.bench_stages import StageBenchConfig, main_stages

    main_stages(_config(StageBenchConfig, args), _as_json(args))


def _run_batch(args: argparse.Namespace) -> None:
    from dreamtalk.bench_batch import BatchBenchConfig, main_batch

    main_batch(_config(BatchBenchConfig, args), _as_json(args))


def _config(cls: type, args: argparse.Namespace):
    """A bench's config dataclass from the options of the same names."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def _run_render(args: argparse.Namespace) -> None:
    from dreamtalk.bench import main_render

    main_render(_as_json(args), args.repeats)


def _run_stream(args: argparse.Namespace) -> None:
    from dreamtalk.bench_stream import main_stream

    args.json = _as_json(args)
    main_stream(args)


def _run_e2e(args: argparse.Namespace) -> None:
    from dreamtalk.bench_e2e import main_e2e

    args.json = _as_json(args)
    main_e2e(args)
