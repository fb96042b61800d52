"""`dreamtalk`: one console script, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys

from engine.timebase import FPS

log = logging.getLogger("dreamtalk")


def _add_animate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "animate",
        help="render a blendshape CSV (ARKit / Live Link Face) onto a portrait as an MP4",
    )
    p.add_argument("--portrait", default=None, help="JPEG/PNG/WebP portrait (default: assets)")
    p.add_argument("--blendshapes", required=True, help="CSV, one row per frame")
    p.add_argument("--out", required=True, help="MP4 to write")
    p.add_argument("--audio", default=None, help="audio file to mux in (any format)")
    p.add_argument("--size", type=int, choices=(256, 512), default=256)
    p.add_argument("--fps", type=float, default=FPS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (median ms)")
    bench = p.add_subparsers(dest="bench", required=True)
    render = bench.add_parser("render", help="renderer ms per frame: torch and ONNX Runtime")
    render.add_argument("--json", action="store_true", help="print one JSON object")
    render.add_argument("--repeats", type=int, default=50)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamtalk", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_animate(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "animate":
            from engine.animate import animate

            out = animate(
                args.portrait,
                args.blendshapes,
                args.out,
                audio=args.audio,
                size=args.size,
                fps=args.fps,
                progress=not args.no_progress,
            )
            print(out)
        elif args.command == "bench" and args.bench == "render":
            from dreamtalk.bench import main_render

            main_render(args.json, args.repeats)
    except (ValueError, OSError) as err:  # bad input: one clear line, no traceback
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
