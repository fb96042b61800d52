"""Runtime backends: every network call through PyTorch, ONNX Runtime (CPU or CUDA) or TensorRT.

`load_networks` (what `MotionModels.use_backend` calls) picks the backend, exports the networks
(or reuses the exports) into the engine folder, and returns the `Networks` that
`MotionModels` and the stream engine's renderers call. ``--backend auto`` takes the fastest
the machine has: TensorRT when a GPU and the tensorrt package are there, else ONNX Runtime on
CUDA (onnxruntime-gpu and a GPU), else ONNX Runtime on the CPU (when installed), else PyTorch.
On the CPU, ``auto`` renders one 256 px frame in ONNX Runtime and 512 px frames and batches of
frames in PyTorch, each where it was measured the faster (docs/bench.md#stages);
``--backend onnxruntime`` renders everything in ONNX Runtime.
"""

from __future__ import annotations

import importlib

from engine.backends.kinds import BACKEND_CHOICES, DEFAULT_FORM, KINDS, check_backend

# Everything but the names is imported on first use: the command line reads the names to
# build its options without importing torch.
_LAZY = {
    "Backend": "base",
    "Runner": "base",
    "TorchBackend": "base",
    "TorchRunner": "base",
    "Networks": "networks",
    "torch_networks": "networks",
    "available_kinds": "select",
    "load_networks": "select",
    "make_backend": "select",
    "resolve_backend": "select",
}

__all__ = ["BACKEND_CHOICES", "DEFAULT_FORM", "KINDS", "check_backend", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"engine.backends.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'engine.backends' has no attribute {name!r}")
