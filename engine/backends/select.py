"""Choosing a backend and loading the networks on it (`engine.backends`' docstring)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from engine.backends.base import Backend, BatchSplitRunner, Runner, TorchBackend
from engine.backends.devices import tensorrt_available
from engine.backends.kinds import (
    DEFAULT_FORM,
    KINDS,
    ORT_CPU,
    ORT_CUDA,
    TENSORRT,
    TORCH,
    check_backend,
)
from engine.backends.networks import Networks, torch_networks, torch_renderer
from engine.backends.onnxruntime_backend import OrtBackend, cuda_provider_available, ort_available
from engine.portrait import SUPPORTED_SIZES

if TYPE_CHECKING:
    from engine.motion_model import MotionModels
    from export.graphs import Graph

log = logging.getLogger(__name__)

# The largest frames ONNX Runtime's CPU renderer was measured faster at than PyTorch's
# (`dreamtalk export --timings`, docs/export.md); `auto` renders larger ones in PyTorch.
ORT_CPU_RENDER_MAX_SIZE = 256


def available_kinds() -> list[str]:
    """The backends this machine can run, fastest first."""
    kinds = []
    if tensorrt_available():
        kinds.append(TENSORRT)
    if cuda_provider_available():
        kinds.append(ORT_CUDA)
    if ort_available():
        kinds.append(ORT_CPU)
    return [*kinds, TORCH]


def resolve_backend(choice: str) -> str:
    """The kind that runs for ``--backend choice``: auto takes the first of
    `available_kinds`; onnxruntime takes CUDA when it can; a named backend this machine
    cannot run is a ValueError that says what is missing. "onnxruntime-cpu" and
    "onnxruntime-cuda" (`KINDS`) name one provider exactly."""
    kinds = available_kinds()
    if choice in (ORT_CPU, ORT_CUDA):  # an exact kind (benchmarks, tests): if it is here
        if choice not in kinds:
            raise ValueError(f"the {choice} backend is not available here ({', '.join(kinds)} are)")
        return choice
    check_backend(choice)
    if choice == "auto":
        return kinds[0]
    if choice == "torch":
        return TORCH
    if choice == "onnxruntime":
        if ORT_CUDA in kinds:
            return ORT_CUDA
        if ORT_CPU in kinds:
            return ORT_CPU
        raise ValueError("--backend onnxruntime needs the onnxruntime package")
    if TENSORRT not in kinds:
        raise ValueError(
            "--backend tensorrt needs an NVIDIA GPU that PyTorch sees (torch.cuda) and the "
            "tensorrt package (pip install '.[gpu]')"
        )
    return TENSORRT


def make_backend(kind: str, threads: int = 1, fp16: bool = False, max_batch: int = 8) -> Backend:
    """The backend of one kind (`KINDS`). TensorRT runs calls outside its engines' profiles
    (an utterance longer than they were built for) in PyTorch."""
    if kind == TORCH:
        return TorchBackend()
    if kind in (ORT_CPU, ORT_CUDA):
        return OrtBackend(cuda=kind == ORT_CUDA, threads=threads)
    if kind == TENSORRT:
        from engine.backends.tensorrt_backend import TrtBackend

        return TrtBackend(fp16=fp16, max_batch=max_batch, fallback=TorchBackend())
    raise ValueError(f"unknown backend kind {kind!r}: one of {', '.join(KINDS)}")


def load_networks(
    models: MotionModels,
    backend: str = "auto",
    engine_dir: str | Path | None = None,
    threads: int = 1,
    fp16: bool = False,
    max_batch: int = 8,
    sizes: tuple[int, ...] = (),
    form: str | None = None,
) -> Networks:
    """The networks of ``models`` on ``backend`` (module docstring), exported into (or reused
    from) ``engine_dir`` (default: ``~/.cache/dreamtalk/engines/<weights digest>``).
    ``threads``: ONNX Runtime's intra-op threads per call; ``fp16`` / ``max_batch``: the
    TensorRT engines' build options; ``sizes``: renderers to prepare now rather than at the
    first session; ``form``: EmoDiff's exported form, "step" or "unrolled" (default: the form
    the folder was exported in, else step).

    A backend named explicitly that cannot start is an error; under ``auto`` the next fastest
    is tried (a GPU whose engines fail to build still serves, on ONNX Runtime or PyTorch)."""
    kind = resolve_backend(backend)
    kinds = available_kinds()
    candidates = kinds[kinds.index(kind) :] if backend == "auto" else [kind]
    for i, kind in enumerate(candidates):
        try:
            nets = _networks(models, kind, backend, engine_dir, threads, fp16, max_batch, form)
            for size in sizes:
                nets.renderer(size)
            break
        except (ValueError, RuntimeError, OSError) as err:
            if i == len(candidates) - 1:
                raise
            log.warning("backend %s could not start (%s): trying %s", kind, err, candidates[i + 1])
    how = "chosen by auto" if backend == "auto" else "as asked"
    renders = ", ".join(nets.describe_renderer(s) for s in SUPPORTED_SIZES)
    log.info("backend: %s (%s); renderer: %s", nets.backend, how, renders)
    return nets


def _networks(models: MotionModels, kind: str, *options) -> Networks:
    return torch_networks(models) if kind == TORCH else _exported_networks(models, kind, *options)


def _exported_networks(
    models: MotionModels,
    kind: str,
    choice: str,
    engine_dir: str | Path | None,
    threads: int,
    fp16: bool,
    max_batch: int,
    form: str | None,
) -> Networks:
    from export.engine_cache import EngineCache, default_folder
    from export.graphs import motion_graphs, networks_of, renderer_graph
    from export.tensorrt_build import BuildOptions

    cache = EngineCache(engine_dir if engine_dir is not None else default_folder(models))
    runtime = make_backend(kind, threads, fp16, max_batch)
    options = BuildOptions(fp16=fp16, max_batch=max_batch)

    def load(graph: Graph) -> Runner:
        path = cache.onnx(graph)
        if kind == TENSORRT:
            path = cache.tensorrt(graph, path, options)
        return runtime.runner(graph, path)

    if form is None:  # the form the folder was exported in (`dreamtalk export --denoiser`)
        form = cache.manifest().get("denoiser", {}).get("form", DEFAULT_FORM)
    runners = {g.name: load(g) for g in motion_graphs(models, form)}

    # On a CPU, auto renders each call where it was measured the faster (docs/bench.md#stages):
    # one frame of 256 px in ONNX Runtime (2.4 against 2.9 ms); 512 px frames in PyTorch (ONNX
    # Runtime's GridSample costs about 2.5x PyTorch's per pixel, and a frame needs one
    # full-resolution sample of the portrait: docs/export.md); batches of frames in PyTorch,
    # which spreads its per-op overhead over the batch where ONNX Runtime's cost stays per frame
    # (4 frames of 256 px: 5.9 against 7.8 ms; 8: 10.3 against 15.9).
    cpu_auto = choice == "auto" and kind == ORT_CPU

    def torch_render_sizes(size: int) -> bool:
        return cpu_auto and size > ORT_CPU_RENDER_MAX_SIZE

    def torch_render_batches(size: int) -> bool:
        return cpu_auto

    def make_renderer(size: int) -> Runner:
        if torch_render_sizes(size):
            return torch_renderer(size)
        exported = load(renderer_graph(size))
        return BatchSplitRunner(exported, torch_renderer(size)) if cpu_auto else exported

    return networks_of(
        runners,
        kind,
        models,
        make_renderer,
        torch_render_sizes=torch_render_sizes,
        torch_render_batches=torch_render_batches,
    )
