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


class TorchBackend(Backend):
    kind = TORCH
    needs_file = False

    def runner(self, graph: Graph, path: Path | None = None) -> Runner:
        return TorchRunner(graph.name, graph.module)
