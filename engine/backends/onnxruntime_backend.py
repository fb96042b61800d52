"""ONNX Runtime backends: the CPU execution provider, and CUDA (onnxruntime-gpu)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.backends.base import Backend, Runner
from engine.backends.kinds import ORT_CPU, ORT_CUDA

if TYPE_CHECKING:
    import onnxruntime

    from export.graphs import Graph

log = logging.getLogger(__name__)


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_provider_available() -> bool:
    """onnxruntime-gpu is installed and a GPU is there (the provider is listed by the GPU
    package even on a machine without one)."""
    if not ort_available():
        return False
    import onnxruntime as ort

    from engine.backends.devices import gpu_present

    return "CUDAExecutionProvider" in ort.get_available_providers() and gpu_present()


def session_options(threads: int) -> onnxruntime.SessionOptions:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # one intra-op thread per call, as the live engine runs PyTorch: sessions scale by the
    # engine's worker threads, each running one session's block at a time
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OrtRunner(Runner):
    """One InferenceSession. `InferenceSession.run` is thread-safe: the engine's workers share
    one runner per network."""

    def __init__(
        self, name: str, session: onnxruntime.InferenceSession, input_names: list[str], kind: str
    ):
        self.name, self.session, self.backend = name, session, kind
        wanted = {i.name for i in session.get_inputs()}
        # positions of the graph's inputs that the file kept (the tracer drops unused ones)
        self.feed = [(i, n) for i, n in enumerate(input_names) if n in wanted]
        missing = wanted - set(input_names)
        if missing:
            raise ValueError(f"{name}: the ONNX file has inputs the graph lacks: {sorted(missing)}")
        self.output = session.get_outputs()[0].name

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = {n: np.ascontiguousarray(inputs[i].detach().cpu().numpy()) for i, n in self.feed}
        return torch.from_numpy(self.session.run([self.output], feed)[0])


class OrtBackend(Backend):
    """ONNX Runtime on the CPU (``cuda=False``) or on a CUDA GPU (``cuda=True``)."""

    def __init__(self, cuda: bool = False, threads: int = 1, device_id: int = 0):
        if not ort_available():
            raise ValueError("--backend onnxruntime needs the onnxruntime package")
        self.cuda, self.threads, self.device_id = cuda, threads, device_id
        self.kind = ORT_CUDA if cuda else ORT_CPU

    def providers(self) -> list:
        if self.cuda:
            return [
                ("CUDAExecutionProvider", {"device_id": self.device_id}),
                "CPUExecutionProvider",
            ]
        return ["CPUExecutionProvider"]

    def runner(self, graph: Graph, path: Path | None = None) -> Runner:
        import onnxruntime as ort

        if path is None:
            raise ValueError(f"{graph.name}: ONNX Runtime needs the exported file")
        session = ort.InferenceSession(str(path), session_options(self.threads), self.providers())
        if self.cuda and session.get_providers()[0] != "CUDAExecutionProvider":
            # ONNX Runtime falls back to the CPU silently when CUDA cannot start: say so
            raise ValueError(
                f"{graph.name}: ONNX Runtime could not use CUDA ({session.get_providers()})"
            )
        return OrtRunner(graph.name, session, graph.input_names, self.kind)
