"""TensorRT backend: serialized engines (plans) run with PyTorch CUDA tensors as buffers.

The plans are built from the ONNX files by `export.tensorrt_build` and cached in the engine
folder per GPU model and TensorRT version (`export.engine_cache`). Each runner has one
execution context and one CUDA stream; calls on it are serialised (a context holds the shapes
and addresses of one call). Inputs that stay the same tensor from call to call (an avatar's
tensors) are copied to the GPU once. A call whose shapes fall outside the plan's optimization
profile (an offline utterance longer than the profile's frames) runs on the fallback runner.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.backends.base import Backend, Runner
from engine.backends.kinds import TENSORRT

if TYPE_CHECKING:
    from export.graphs import Graph

log = logging.getLogger(__name__)


# TensorRT's data types by name, as the engines' inputs and outputs may have them (looked up by
# name: the enum's members differ between TensorRT versions)
_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


def _torch_dtype(trt_dtype) -> torch.dtype:
    if trt_dtype.name not in _TORCH_DTYPES:
        raise ValueError(f"an engine tensor of TensorRT type {trt_dtype.name}: not supported")
    return _TORCH_DTYPES[trt_dtype.name]


class TrtRunner(Runner):
    backend = TENSORRT

    def __init__(
        self,
        name: str,
        plan: Path,
        input_names: list[str],
        fallback: Runner | None = None,
        device: int = 0,
    ):
        import tensorrt as trt

        self.name, self.fallback = name, fallback
        self.device = torch.device("cuda", device)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise ValueError(f"{plan}: TensorRT could not load this engine (rebuild it)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = {n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self.outputs = [n for n in names if n not in inputs]
        self.feed = [(i, n) for i, n in enumerate(input_names) if n in inputs]
        self.dtypes = {n: _torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self.profile = {
            n: self.engine.get_tensor_profile_shape(n, 0)
            for n in inputs
            if -1 in tuple(self.engine.get_tensor_shape(n))
        }
        self.stream = torch.cuda.Stream(self.device)
        self.lock = threading.Lock()
        self._resident: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self._warned = False

    def _fits(self, name: str, shape: tuple[int, ...]) -> bool:
        if name not in self.profile:
            return True
        lo, _, hi = (tuple(s) for s in self.profile[name])
        if len(shape) != len(lo):
            return False
        return all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True))

    def _on_device(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The input on the GPU; the same host tensor, unchanged, is copied only once."""
        held = self._resident.get(name)
        if held is not None and held[0] is tensor and held[1] == tensor._version:
            return held[2]
        dev = tensor.to(self.device, self.dtypes[name], non_blocking=False).contiguous()
        self._resident[name] = (tensor, tensor._version, dev)
        return dev

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        shapes = {n: tuple(inputs[i].shape) for i, n in self.feed}
        if not all(self._fits(n, s) for n, s in shapes.items()):
            if self.fallback is None:
                raise ValueError(f"{self.name}: shapes {shapes} are outside the engine's profile")
            if not self._warned:
                log.info("%s: shapes outside the TensorRT profile run on %s", self.name,
                         self.fallback.backend)  # fmt: skip
                self._warned = True
            return self.fallback(*inputs)
        with self.lock, torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for i, name in self.feed:
                buf = self._on_device(name, inputs[i])
                self.context.set_input_shape(name, tuple(buf.shape))
                self.context.set_tensor_address(name, buf.data_ptr())
            outs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.name}: TensorRT execution failed")
            result = outs[self.outputs[0]].to("cpu", torch.float32)
            self.stream.synchronize()
        return result


class TrtBackend(Backend):
    """TensorRT engines; ``fallback`` runs calls outside an engine's profile."""

    kind = TENSORRT

    def __init__(self, fp16: bool = False, max_batch: int = 8, fallback: Backend | None = None):
        from engine.backends.devices import tensorrt_available

        if not tensorrt_available():
            raise ValueError(
                "--backend tensorrt needs an NVIDIA GPU that PyTorch sees (torch.cuda) and the "
                "tensorrt package (pip install '.[gpu]')"
            )
        self.fp16, self.max_batch, self.fallback = fp16, max_batch, fallback

    def runner(self, graph: Graph, path: Path | None = None) -> Runner:
        if path is None:
            raise ValueError(f"{graph.name}: TensorRT needs a built engine")
        fallback = self.fallback.runner(graph) if self.fallback is not None else None
        return TrtRunner(graph.name, path, graph.input_names, fallback)
