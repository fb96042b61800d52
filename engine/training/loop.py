"""The training loop every model shares: AdamW, warm-up + cosine LR, EMA, validation, resume.

A `Task` says what one model learns (its batches, loss, validation, extra state); `train` runs
it. The loop keeps a full state checkpoint in the run folder (``<run_dir>/state.pt``: weights,
EMA, optimiser, step, torch RNG, the task's state including its data generator), rewritten every
``ckpt_every`` steps and at the end, so ``resume=True`` continues a stopped run with the very
batches and noise an uninterrupted run would have drawn. Validation metrics go to the log and
to ``<run_dir>/metrics.jsonl``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


@dataclass
class LoopConfig:
    steps: int = 10_000
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 200
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    val_every: int = 500
    ckpt_every: int = 500
    seed: int = 0
    max_minutes: float | None = None  # stop (and save) after this much wall time
    progress: bool = True


class Task:
    """What one model learns. Subclasses set ``kind``, ``model``, and implement ``loss``."""

    kind: str
    model: nn.Module

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def loss(self, model: nn.Module, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Draw a batch and return (loss, numbers to show)."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        return {}

    def begin_step(self, step: int, model: nn.Module, ema: nn.Module) -> bool:
        """Called before every step; return True to reset the optimiser (a new phase)."""
        return False

    def lr_factor(self, step: int, cfg: LoopConfig) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def meta(self) -> dict[str, Any]:
        return {}


class WindowTask(Task):
    """A task that draws its batches from ``self.sampler`` (a `WindowSampler`): the sampler's
    position is part of the resumable state, so a resumed run sees the same batches."""

    sampler: Any

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "sampler" in state:
            self.sampler.set_state(state["sampler"])


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module
    step: int
    history: list[dict[str, Any]]
    wall_seconds: float
    finished: bool


def _optimizer(task: Task, cfg: LoopConfig) -> torch.optim.Optimizer:
    # no weight decay on biases, norms and embeddings' 1-D parameters
    params = task.trainable()
    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


def train(task: Task, cfg: LoopConfig, run_dir: str | Path, resume: bool = False) -> TrainResult:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / STATE_FILE
    model = task.model
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = _optimizer(task, cfg)
    step, wall, history = 0, 0.0, []
    torch.manual_seed(cfg.seed)

    if resume and state_path.is_file():
        state = load_checkpoint(state_path, task.kind)
        if dataclasses.asdict(state.config) != dataclasses.asdict(model.cfg):
            raise ValueError(
                f"{state_path}: the saved run has another model config; "
                "use a new --run-dir or drop --resume"
            )
        task.load_state_dict(state.task or {})
        model.load_state_dict(state.model)
        ema.load_state_dict(state.ema)
        opt = _optimizer(task, cfg)  # the task may have changed which parameters train
        opt.load_state_dict(state.optimizer)
        torch.set_rng_state(state.rng["torch"])
        step, wall = state.step, float(state.meta.get("wall_seconds", 0.0))
        history = list(state.meta.get("history", []))
        log.info("resumed %s from %s at step %d", task.kind, state_path, step)
    elif state_path.is_file():
        log.info("%s exists; starting over (pass --resume to continue it)", state_path)

    def save_state() -> None:
        meta = {"wall_seconds": wall, "history": history, "loop": dataclasses.asdict(cfg)}
        meta.update(task.meta())
        save_checkpoint(
            state_path,
            Checkpoint(
                kind=task.kind,
                config=model.cfg,
                model=model.state_dict(),
                step=step,
                ema=ema.state_dict(),
                optimizer=opt.state_dict(),
                rng={"torch": torch.get_rng_state()},
                task=task.state_dict(),
                meta=meta,
            ),
        )

    def validate() -> None:
        rng = torch.get_rng_state()  # validation must not shift the training noise
        metrics = {k: round(float(v), 5) for k, v in task.validate(ema).items()}
        torch.set_rng_state(rng)
        record = {"step": step, "wall_s": round(wall, 1), **metrics}
        history.append(record)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = " ".join(f"{k}={v}" for k, v in metrics.items())
        log.info("%s step %d: %s", task.kind, step, shown)

    model.train()
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc=f"train {task.kind}",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    started = time.perf_counter() - wall
    finished = True
    while step < cfg.steps:
        if task.begin_step(step, model, ema):
            opt = _optimizer(task, cfg)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * task.lr_factor(step, cfg)
        loss, shown = task.loss(model, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(task.trainable(), cfg.grad_clip)
        opt.step()
        # EMA warm-up: early on average over fewer steps, so the EMA is not stuck at init
        ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        step += 1
        wall = time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss.item():.4f}",
            gn=f"{float(grad_norm):.2f}",
            **{k: f"{v:.4f}" for k, v in shown.items()},
        )
        if cfg.val_every and step % cfg.val_every == 0:
            validate()
            model.train()
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            save_state()
        if cfg.max_minutes is not None and wall > 60 * cfg.max_minutes and step < cfg.steps:
            log.warning(
                "%s: stopping at step %d after %.1f min (--max-minutes)", task.kind, step, wall / 60
            )
            finished = False
            break
    bar.close()
    if not history or history[-1]["step"] != step:
        validate()
    save_state()
    model.eval()
    return TrainResult(model, ema, step, history, wall, finished)


def write_inference_checkpoint(
    path: str | Path, task: Task, result: TrainResult, meta: dict[str, Any], half: bool = True
) -> Path:
    """The deliverable: EMA weights (float16 unless ``half`` is False), config, and the meta
    that says how they were made."""
    full_meta = {
        "wall_seconds": round(result.wall_seconds, 1),
        "steps": result.step,
        "finished": result.finished,
        "history": result.history,
        **task.meta(),
        **meta,
    }
    ckpt = Checkpoint(
        kind=task.kind,
        config=result.ema.cfg,
        model=result.ema.state_dict(),
        step=result.step,
        meta=full_meta,
    )
    return save_checkpoint(path, ckpt, half=half)
