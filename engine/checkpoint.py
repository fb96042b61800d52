"""Checkpoints: one file holds a model's config, weights and, while training, everything to resume.

A checkpoint is a ``torch.save`` of a plain dict (tensors, numbers, strings, lists, dicts only,
so it loads with ``weights_only=True``: opening a file never runs code from it)::

    format      CHECKPOINT_FORMAT
    kind        "emodiff" | "lips" | "lstm"       which network
    config      the network's config dataclass, as a dict (rebuilt by `build_model`)
    model       state dict of the weights to use (the EMA weights in an inference checkpoint)
    ema         state dict of the EMA weights (training state only)
    optimizer   optimiser state dict (training state only)
    step        optimiser steps taken
    rng         torch / numpy generator states (training state only)
    task        the training task's own state (e.g. the distillation round and its teacher)
    meta        free-form: training config, data, command, seed, wall time, history, sampler

Training keeps a full *state* checkpoint in its run folder and writes a small *inference*
checkpoint (EMA weights, optionally float16) to ``--out``; both load with `load_checkpoint`.
Writes are atomic (temporary file, then rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import typing
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
KINDS = ("emodiff", "lips", "lstm")


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the file and why."""


@dataclass
class Checkpoint:
    kind: str
    config: Any  # the network's config dataclass
    model: dict[str, torch.Tensor]
    step: int = 0
    ema: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _config_classes() -> dict[str, type]:
    from engine.models import EmoDiffConfig, LipRefinerConfig, LSTMConfig

    return {"emodiff": EmoDiffConfig, "lips": LipRefinerConfig, "lstm": LSTMConfig}


def _model_classes() -> dict[str, type[nn.Module]]:
    from engine.models import EmoDiff, LipRefiner, LSTMBaseline

    return {"emodiff": EmoDiff, "lips": LipRefiner, "lstm": LSTMBaseline}


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a (possibly nested) config dataclass; unknown keys are an error, missing keys
    take the class default (so an older checkpoint still loads after a field is added)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise CheckpointError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in values.items():
        hint = _dataclass_in(hints.get(name))
        if hint is not None and isinstance(value, dict):
            value = config_from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_in(hint: Any) -> type | None:
    """The config dataclass a field holds: ``C`` for ``C`` and for ``C | None``."""
    if dataclasses.is_dataclass(hint):
        return hint
    found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
    return found[0] if len(found) == 1 else None


def build_model(ckpt: Checkpoint, weights: str = "model") -> nn.Module:
    """The network of a checkpoint, with its ``model`` (or ``ema``) weights, in eval mode."""
    model = _model_classes()[ckpt.kind](ckpt.config)
    state = ckpt.model if weights == "model" else ckpt.ema
    if state is None:
        raise CheckpointError(f"checkpoint has no {weights!r} weights")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{ckpt.kind} weights do not fit its config: {err}") from err
    return model.eval()


def plain(value: Any) -> Any:
    """``value`` as plain Python (dict, list, str, int, float, bool, None) so that it loads with
    ``weights_only=True``: numpy scalars become numbers, anything else its string."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or type(value) in (str, int, float, bool):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    return str(value)


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint, half: bool = False) -> Path:
    """Write ``ckpt`` atomically. ``half`` stores floating-point weights as float16 (inference
    checkpoints: half the size; the networks run in float32 after loading)."""
    if ckpt.kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, got {ckpt.kind!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def store(state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        if state is None:
            return None
        out = {}
        for k, v in state.items():
            v = v.detach().cpu()
            out[k] = v.half() if half and v.is_floating_point() else v.clone()
        return out

    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": ckpt.kind,
        "config": dataclasses.asdict(ckpt.config),
        "model": store(ckpt.model),
        "ema": store(ckpt.ema),
        "optimizer": ckpt.optimizer,
        "step": int(ckpt.step),
        "rng": ckpt.rng,
        "task": ckpt.task,
        "meta": plain(ckpt.meta),
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike[str], kind: str | None = None) -> Checkpoint:
    """Read a checkpoint; ``kind`` (if given) must match. Raises FileNotFoundError for a missing
    file and CheckpointError for anything else that is not a checkpoint of this project."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from err
    if not isinstance(payload, dict) or "format" not in payload or "kind" not in payload:
        raise CheckpointError(f"{path}: not a dreamtalk checkpoint")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format']!r}, this version reads "
            f"{CHECKPOINT_FORMAT}"
        )
    found = payload["kind"]
    if found not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {found!r}")
    if kind is not None and found != kind:
        raise CheckpointError(f"{path}: a {found!r} checkpoint, expected {kind!r}")
    try:
        config = config_from_dict(_config_classes()[found], payload["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad {found} config ({err})") from err
    return Checkpoint(
        kind=found,
        config=config,
        model=payload["model"],
        step=int(payload.get("step", 0)),
        ema=payload.get("ema"),
        optimizer=payload.get("optimizer"),
        rng=payload.get("rng"),
        task=payload.get("task"),
        meta=payload.get("meta") or {},
    )


def load_model(path: str | os.PathLike[str], kind: str | None = None) -> tuple[nn.Module, dict]:
    """The network stored at ``path`` (eval mode, float32) and the checkpoint's meta."""
    ckpt = load_checkpoint(path, kind)
    return build_model(ckpt), ckpt.meta
