"""The names of backends and of EmoDiff's exported forms (no heavy imports: the command line
builds its options from them)."""

from __future__ import annotations

# What `--backend` accepts.
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "tensorrt")
# The kinds of backend that run, fastest first (what `auto` chooses between).
TORCH = "torch"
ORT_CPU = "onnxruntime-cpu"
ORT_CUDA = "onnxruntime-cuda"
TENSORRT = "tensorrt"
KINDS = (TENSORRT, ORT_CUDA, ORT_CPU, TORCH)

# EmoDiff leaves PyTorch as one denoiser step per call (the sampler's maths in Python), or as
# its whole few-step sampler unrolled into one graph. In the live path on the CPU, one step
# per call was measured faster (its 326 optimised nodes run 4 times, warm after the first;
# the unrolled graph's 1353 run once, cold after the renderer), and it runs any step count:
# the default.
# Unrolled wins only in a tight loop with warm caches (docs/export.md).
DENOISER_FORMS = ("step", "unrolled")
DEFAULT_FORM = "step"


def check_backend(choice: str) -> str:
    """``choice`` if it is one of `BACKEND_CHOICES`, else a ValueError that lists them."""
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {choice!r}: use one of {', '.join(BACKEND_CHOICES)}")
    return choice
