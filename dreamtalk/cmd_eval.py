"""`dreamtalk eval`: lip-sync, expressiveness, diversity, realism, smoothness and speed of the
LSTM baseline, EmoDiff's full sampler and the distilled students, each with and without the
lip refiner, on a corpus split (default: the test split's unseen voices and sentences).

Prints a Markdown table (or, with ``--json``, one JSON object: ``{"variants": {name: {metric:
value}}, "config": {...}, "targets": {...}}``). docs/eval.md defines the metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    # (nothing heavy is imported here: every `dreamtalk` command builds this parser)
    p = sub.add_parser(
        "eval", help="evaluate every motion generator on the test split (table or --json)"
    )
    p.add_argument("--data", default="data/synth", help="corpus folder (data/synth)")
    p.add_argument("--weights", default="weights", help="checkpoint folder (weights/)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument(
        "--limit",
        type=int,
        default=24,
        help="utterances, one per (emotion, intensity) first (24; 0: the whole split; the full "
        "sampler takes ~8 s per utterance and seed on one core)",
    )
    p.add_argument("--seeds", type=int, default=2, help="generations per utterance (2)")
    p.add_argument(
        "--variants",
        default="all",
        help="all (default) or comma-separated names: lstm, full, distilled-4, distilled-2, "
        "distilled-1, each also as NAME+refiner (e.g. distilled-4+refiner)",
    )
    p.add_argument(
        "--path",
        choices=("stream", "offline"),
        default="stream",
        help="EmoDiff through the live windowed path (default) or MotionModels.generate",
    )
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (the weights' own)")
    p.add_argument("--max-lag", type=int, default=5, help="lag search, frames either side (5)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None, help="also write the JSON object to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval_command)


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (options as parsed, defaults spelled out)."""
    parts = ["dreamtalk", "eval", "--data", args.data, "--weights", args.weights]
    parts += ["--split", args.split, "--limit", str(args.limit), "--seeds", str(args.seeds)]
    parts += ["--variants", args.variants, "--path", args.path, "--max-lag", str(args.max_lag)]
    if args.guidance is not None:
        parts += ["--guidance", str(args.guidance)]
    parts += ["--threads", str(args.threads)]
    return shlex.join(parts)


def run_eval_command(args: argparse.Namespace) -> int:
    import torch

    from engine.evaluation.evaluate import EvalConfig, format_table, run_eval

    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if not Path(args.data).is_dir():
        raise ValueError(f"{args.data}: no such corpus folder (dreamtalk data synth --out ...)")
    torch.set_num_threads(args.threads)
    cfg = EvalConfig(
        data=args.data,
        weights=args.weights,
        split=args.split,
        limit=args.limit or None,
        seeds=args.seeds,
        variants=args.variants,
        path=args.path,
        guidance=args.guidance,
        max_lag=args.max_lag,
        progress=not args.no_progress,
    )
    result = run_eval(cfg)
    result["config"]["command"] = _command_line(args)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        log.info("wrote %s", args.out)
    print(text if args.json else format_table(result))
    return 0
