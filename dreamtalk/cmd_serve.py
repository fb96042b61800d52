"""`dreamtalk serve`: the WebRTC avatar server (server/, docs/server.md)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from engine.backends.kinds import BACKEND_CHOICES


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--engine-dir``, shared by `serve` and `render` (docs/export.md)."""
    p.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="what runs the networks; auto: TensorRT, else ONNX Runtime (CUDA, then CPU), else "
        "PyTorch, whichever this machine has first (default auto)",
    )
    p.add_argument(
        "--engine-dir",
        type=Path,
        default=None,
        help="folder of exported ONNX / TensorRT files, made on first start and reused "
        "(default: ~/.cache/dreamtalk/engines/<weights>)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the avatar server: the page, WHIP/WHEP, the assistant WebSocket",
        description="Serve live avatars over WebRTC on one port: the page at /, WHIP at "
        "/whip, WHEP at /sessions/<id>/whep, the assistant API at /ws, /healthz and /metrics.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--avatar", help="default portrait image (default: assets/portrait.png)")
    p.add_argument("--size", type=int, default=256, choices=(256, 512), help="frame size")
    p.add_argument("--max-sessions", type=int, default=4, help="sessions open at once")
    p.add_argument("--weights", help="weights folder (default: weights/)")
    p.add_argument("--workers", type=int, default=1, help="engine worker threads (cores)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="sessions whose blocks run in one call per network (cross-session batching; "
        "1: off; default 8)",
    )
    p.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server (repeatable); none by default: host candidates only",
    )
    p.add_argument(
        "--ice-host",
        action="append",
        default=[],
        metavar="ADDR",
        help="address ICE gathers host candidates on (repeatable); default: every "
        "interface, or 127.0.0.1 when --host is loopback",
    )
    p.add_argument("--video-codec", default="vp8", choices=("vp8", "h264"))
    p.add_argument("--avatar-dir", type=Path, help="where uploaded portraits are kept")
    p.add_argument(
        "--media-timeout",
        type=float,
        default=10.0,
        help="seconds without audio from a publisher before its session ends",
    )
    add_backend_options(p)
    p.add_argument("--fp16", action="store_true", help="TensorRT engines in FP16 (fast-FP16 GPUs)")
    latency = p.add_argument_group("latency (docs/streaming.md has the trade-off)")
    latency.add_argument("--hop-frames", type=int, help="frames per block (default 1)")
    latency.add_argument("--lookahead-frames", type=int, help="audio look-ahead, frames")
    latency.add_argument("--jitter-ms", type=float, help="how late audio may arrive")
    latency.add_argument("--compute-margin-ms", type=float, help="playout delay kept for compute")
    latency.add_argument("--playout-delay-ms", type=float, help="fixed delay (default: derived)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from server.app import run as serve
    from server.config import SERVER_STREAM, ServerConfig
    from server.rtc import IceServer

    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    extra = {"avatar_dir": args.avatar_dir} if args.avatar_dir else {}
    stream = {
        name: value
        for name, value in (
            ("hop_frames", args.hop_frames),
            ("lookahead_frames", args.lookahead_frames),
            ("jitter_ms", args.jitter_ms),
            ("compute_margin_ms", args.compute_margin_ms),
            ("playout_delay_ms", args.playout_delay_ms),
        )
        if value is not None
    }
    config = ServerConfig(
        host=args.host,
        port=args.port,
        avatar=args.avatar,
        size=args.size,
        max_sessions=args.max_sessions,
        weights=args.weights,
        workers=args.workers,
        max_batch=args.max_batch,
        ice_servers=[IceServer.parse(spec) for spec in args.ice_server],
        ice_hosts=list(args.ice_host),
        video_codec=args.video_codec,
        media_timeout_s=args.media_timeout,
        stream=dataclasses.replace(SERVER_STREAM, **stream),
        backend=args.backend,
        engine_dir=args.engine_dir,
        fp16=args.fp16,
        **extra,
    )
    serve(config)
    return 0
