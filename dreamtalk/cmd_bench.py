"""`dreamtalk bench ...`: benchmarks (renderer ms per frame; live streaming figures)."""

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


def _run_render(args: argparse.Namespace) -> None:
    from dreamtalk.bench import main_render

    main_render(args.json, args.repeats)


def _run_stream(args: argparse.Namespace) -> None:
    from dreamtalk.bench_stream import main_stream

    main_stream(args)
