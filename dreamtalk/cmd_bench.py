"""`dreamtalk bench ...`: benchmarks (renderer ms per frame; live streaming figures; the
browser end to end)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (median ms)")
    bench = p.add_subparsers(dest="bench", required=True)
    render = bench.add_parser("render", help="renderer ms per frame: torch and ONNX Runtime")
    render.add_argument("--json", action="store_true", help="print one JSON object")
    render.add_argument("--repeats", type=int, default=50)
    render.set_defaults(func=_run_render)
    stream = bench.add_parser(
        "stream", help="live sessions: latency, real-time capacity, seams, parity, memory"
    )
    stream.add_argument("--json", action="store_true", help="print one JSON object")
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
    e2e.add_argument("--json", action="store_true", help="print one JSON object")
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


def _run_render(args: argparse.Namespace) -> None:
    from dreamtalk.bench import main_render

    main_render(args.json, args.repeats)


def _run_stream(args: argparse.Namespace) -> None:
    from dreamtalk.bench_stream import main_stream

    main_stream(args)


def _run_e2e(args: argparse.Namespace) -> None:
    from dreamtalk.bench_e2e import main_e2e

    main_e2e(args)
