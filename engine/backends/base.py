"""The backend interface: a `Backend` turns an exported network into a `Runner`.

A runner is one network call: torch tensors in, in the graph's input order (`export.graphs`),
one CPU float32 tensor out, whatever runs it (PyTorch, ONNX Runtime on the CPU or CUDA,
TensorRT). Inputs that an exported file does not use (the tracer prunes them) are accepted and
dropped, so callers never depend on the backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.backends.kinds import TORCH

if TYPE_CHECKING:
    from export.graphs import Graph


class Runner(ABC):
    """One network on one backend (module docstring)."""

    name: str
    backend: str

    @abstractmethod
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor: ...


class Backend(ABC):
    """Makes runners. ``kind`` is one of `KINDS`; ``needs_file``: whether the runner reads an
    exported file (ONNX, or a TensorRT plan) rather than the PyTorch module."""

    kind: str
    needs_file: bool = True

    @abstractmethod
    def runner(self, graph: Graph, path: Path | None = None) -> Runner: ...


class TorchRunner(Runner):
    """A PyTorch call under no_grad: what the project ran before it had backends."""

    backend = TORCH

    def __init__(self, name: str, fn: Callable[..., torch.Tensor]):
        self.name, self.fn = name, fn

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(*inputs)


class BatchSplitRunner(Runner):
    """One network on two runners by batch size: a call of one row on ``single``, a larger
    batch on ``batched`` (where each was measured the faster). ``backend`` names the single
    row's runner, ``batched_backend`` the other's."""

    def __init__(self, single: Runner, batched: Runner):
        self.name, self.single, self.batched = single.name, single, batched
        self.backend, self.batched_backend = single.backend, batched.backend

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return (self.single if inputs[0].shape[0] == 1 else self.batched)(*inputs)


class TorchBackend(Backend):
    kind = TORCH
    needs_file = False

    def runner(self, graph: Graph, path: Path | None = None) -> Runner:
        return TorchRunner(graph.name, graph.module)
