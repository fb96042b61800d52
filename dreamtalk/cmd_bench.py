"""`dreamtalk bench ...`: benchmarks that print median milliseconds."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (median ms)")
    bench = p.add_subparsers(dest="bench", required=True)
    render = bench.add_parser("render", help="renderer ms per frame: torch and ONNX Runtime")
    render.add_argument("--json", action="store_true", help="print one JSON object")
    render.add_argument("--repeats", type=int, default=50)
    render.set_defaults(func=_run_render)


def _run_render(args: argparse.Namespace) -> None:
    from dreamtalk.bench import main_render

    main_render(args.json, args.repeats)
