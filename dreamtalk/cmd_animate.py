"""`dreamtalk animate`: a blendshape CSV onto a portrait, as an MP4."""

from __future__ import annotations

import argparse

from engine.timebase import FPS


def register(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
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
