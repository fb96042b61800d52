"""What accelerators this machine has, as the backends see them."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def gpu_present() -> bool:
    """An NVIDIA GPU is usable: PyTorch sees CUDA, or the driver's control device exists (a
    CPU build of PyTorch next to onnxruntime-gpu)."""
    return torch.cuda.is_available() or Path("/dev/nvidiactl").exists()


@functools.cache
def tensorrt_available() -> bool:
    """TensorRT can run here: the package imports and PyTorch has CUDA (its tensors are the
    engines' device buffers)."""
    if not torch.cuda.is_available():
        return False
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def gpu_name(device: int = 0) -> str:
    return torch.cuda.get_device_name(device)


def has_fast_fp16(device: int = 0) -> bool:
    """Native FP16 arithmetic at full rate: compute capability 5.3, 6.0, 6.2 and 7.0 on (6.1,
    the consumer Pascal cards, runs FP16 at 1/64 rate)."""
    major, minor = torch.cuda.get_device_capability(device)
    return (major, minor) >= (5, 3) and (major, minor) != (6, 1)
