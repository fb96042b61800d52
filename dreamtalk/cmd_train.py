"""`dreamtalk train emodiff|lips|lstm` and `dreamtalk distill`: the default weights' recipe.

Each run keeps its resumable state in ``--run-dir`` (default ``runs/<out name>``; pass
``--resume`` to continue it) and writes the inference checkpoint (EMA weights, float16, config
and the record of how it was made) to ``--out``. See docs/models.md for the commands that made
the committed weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODELS = ("emodiff", "lips", "lstm")


def _add_common(p: argparse.ArgumentParser, steps: int | None, batch: int, lr: float) -> None:
    p.add_argument("--out", required=True, help="inference checkpoint to write (.pt)")
    p.add_argument(
        "--run-dir", default=None, help="resumable state and metrics (default: runs/<out name>)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    if steps is not None:  # (distill's --steps is the student's sampler steps instead)
        p.add_argument("--steps", type=int, default=steps, help=f"optimiser steps ({steps})")
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, default=None, help="stop and save after this")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default float16)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config field (e.g. dim=64) or, as train.KEY=VALUE, "
        "a training option; repeatable",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train EmoDiff, the lip refiner or the LSTM baseline")
    p.add_argument("model", choices=MODELS)
    p.add_argument("--data", required=True, help="corpus folder (dreamtalk data synth/prepare)")
    p.add_argument(
        "--emodiff",
        default=None,
        help="lips: the EmoDiff checkpoint whose styles the refiner reads (its own audio "
        "encoder starts as a copy of this one's)",
    )
    _add_common(p, steps=10_000, batch=64, lr=5e-4)
    p.set_defaults(func=run_train)

    d = sub.add_parser("distill", help="distill EmoDiff's guided sampler into a few-step student")
    d.add_argument("--teacher", required=True, help="EmoDiff checkpoint to distill")
    d.add_argument("--data", default=None, help="corpus folder (default: the teacher's)")
    d.add_argument("--steps", type=int, default=4, help="the student's sampler steps (4)")
    d.add_argument("--teacher-steps", type=int, default=64, help="the full sampler's steps")
    d.add_argument("--guided-steps", type=int, default=1000, help="optimiser steps, stage 1")
    d.add_argument("--round-steps", type=int, default=1000, help="optimiser steps per halving")
    _add_common(d, steps=None, batch=64, lr=2e-4)
    d.set_defaults(func=run_distill)


def _parse_sets(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    model, train = {}, {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set wants KEY=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if key.startswith("train."):
            train[key[len("train.") :]] = parsed
        else:
            model[key] = parsed
    return model, train


def _replace(cfg: Any, values: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cfg)}
    for key in values:
        if key.split(".")[0] not in names:
            raise ValueError(f"{what} has no option {key!r}; options: {', '.join(sorted(names))}")
    nested = {k: v for k, v in values.items() if "." in k}
    flat = {k: v for k, v in values.items() if "." not in k}
    cfg = dataclasses.replace(cfg, **flat)
    for key, value in nested.items():  # e.g. audio.dim=96
        head, rest = key.split(".", 1)
        setattr(cfg, head, _replace(getattr(cfg, head), {rest: value}, f"{what}.{head}"))
    return cfg


def _loop_config(args: argparse.Namespace, steps: int):
    import torch

    from engine.training.loop import LoopConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if steps < 1:
        raise ValueError(f"--steps must be positive, got {steps}")
    return LoopConfig(
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        max_minutes=args.max_minutes,
        val_every=args.val_every,
        ckpt_every=args.ckpt_every,
        progress=not args.no_progress,
    )


def _record(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    return {
        "argv": shlex.join(sys.argv),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
    }


def _run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.out).stem


def run_train(args: argparse.Namespace) -> int:
    import torch

    from engine.checkpoint import load_model
    from engine.training.common import load_splits
    from engine.training.loop import train, write_inference_checkpoint

    model_sets, train_sets = _parse_sets(args.set)
    loop_cfg = _loop_config(args, args.steps)
    torch.manual_seed(args.seed)  # the model's initial weights
    train_split, val_split = load_splits(args.data)
    if args.model == "emodiff":
        from engine.models import EmoDiff, EmoDiffConfig
        from engine.training.emodiff import EmoDiffTask, EmoDiffTrainConfig

        model = EmoDiff(_replace(EmoDiffConfig(), model_sets, "EmoDiffConfig"))
        tcfg = _replace(EmoDiffTrainConfig(), train_sets, "EmoDiffTrainConfig")
        task = EmoDiffTask(
            model, train_split, val_split, args.batch_size, tcfg, args.seed, args.data
        )
    elif args.model == "lips":
        from engine.models import LipRefiner, LipRefinerConfig
        from engine.models.lip_refiner import LIP_GAP_NAMES, LIP_LOOKAHEAD_FRAMES
        from engine.training.lips import LipsTask, LipsTrainConfig

        if not args.emodiff:
            raise ValueError("train lips needs --emodiff CKPT (its audio features and styles)")
        emodiff, _ = load_model(args.emodiff, "emodiff")
        # its own audio encoder, of EmoDiff's shape (it starts as a copy of EmoDiff's) but
        # looking a frame further ahead, and the articulation from the audio alone
        # (docs/models.md, "Lip refiner")
        defaults = LipRefinerConfig(
            audio_dim=emodiff.cfg.audio.dim,
            style_dim=emodiff.cfg.dim,
            audio=dataclasses.replace(emodiff.cfg.audio, lookahead=LIP_LOOKAHEAD_FRAMES),
            from_audio=LIP_GAP_NAMES,
            reads_shape=False,
        )
        model = LipRefiner(_replace(defaults, model_sets, "LipRefinerConfig"))
        tcfg = _replace(LipsTrainConfig(), train_sets, "LipsTrainConfig")
        task = LipsTask(
            model,
            emodiff,
            train_split,
            val_split,
            args.batch_size,
            tcfg,
            args.seed,
            args.data,
            args.emodiff,
        )
    else:
        from engine.models import LSTMBaseline, LSTMConfig
        from engine.training.lstm import LSTMTask, LSTMTrainConfig

        model = LSTMBaseline(_replace(LSTMConfig(), model_sets, "LSTMConfig"))
        tcfg = _replace(LSTMTrainConfig(), train_sets, "LSTMTrainConfig")
        task = LSTMTask(model, train_split, val_split, args.batch_size, tcfg, args.seed, args.data)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %.2f M parameters; run dir %s", args.model, n_params / 1e6, _run_dir(args))
    result = train(task, loop_cfg, _run_dir(args), resume=args.resume)
    path = write_inference_checkpoint(args.out, task, result, _record(args), half=not args.fp32)
    log.info("wrote %s (%d steps, %.1f min)", path, result.step, result.wall_seconds / 60)
    return 0


def run_distill(args: argparse.Namespace) -> int:
    import torch

    from engine.checkpoint import load_model
    from engine.training.common import load_splits
    from engine.training.distill import DistillConfig, DistillTask
    from engine.training.loop import train, write_inference_checkpoint

    model_sets, train_sets = _parse_sets(args.set)  # the student's architecture is the teacher's:
    train_sets = {**model_sets, **train_sets}  # every --set is a distillation option
    teacher, meta = load_model(args.teacher, "emodiff")
    data = args.data or meta.get("data")
    if not data:
        raise ValueError(f"{args.teacher} records no corpus; pass --data DIR")
    dcfg = DistillConfig(
        target_steps=args.steps,
        teacher_steps=args.teacher_steps,
        guided_steps=args.guided_steps,
        round_steps=args.round_steps,
    )
    dcfg = _replace(dcfg, train_sets, "DistillConfig")
    loop_cfg = _loop_config(args, dcfg.total_steps)
    torch.manual_seed(args.seed)
    train_split, val_split = load_splits(data)
    task = DistillTask(
        teacher, train_split, val_split, args.batch_size, dcfg, args.seed, args.teacher, data
    )
    log.info(
        "distilling %s: %s; phases %s",
        args.teacher,
        "guided + progressive",
        [(name, n, k) for name, n, k in dcfg.phases()],
    )
    result = train(task, loop_cfg, _run_dir(args), resume=args.resume)
    for row in task.quality_vs_steps(result.ema):
        log.info("quality: %s", " ".join(f"{k}={v}" for k, v in row.items()))
    path = write_inference_checkpoint(args.out, task, result, _record(args), half=not args.fp32)
    log.info("wrote %s (%d steps, %.1f min)", path, result.step, result.wall_seconds / 60)
    return 0
