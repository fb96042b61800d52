"""TensorRT engines built from the ONNX files, with the `tensorrt` Python API.

One engine (a serialized plan) per ONNX file, GPU model, TensorRT version and build options.
Networks are strongly typed (the only kind TensorRT 11 builds; TensorRT 10 builds them with
the ``STRONGLY_TYPED`` flag): each layer runs in its ONNX tensors' type. An FP32 engine is
built from the exported file with TF32 off (TF32 rounds products to 10-bit mantissas, 100
times the FP32 tolerances); an FP16 one (``fp16``, where the GPU has fast FP16 and the graph
allows it: `export.graphs.Graph.half`) from its FP16 copy (`export.fp16.to_fp16`). Inputs
and outputs stay FP32 either way. The dynamic axes get one optimization profile: ``batch``
from 1 to ``max_batch`` (tuned for 1, the live path's call), the other symbolic axes over the
graph's ranges (`export.graphs.Graph.ranges`).

`engine_key` names the cache entry; `export.engine_cache` reuses a plan while its key is the
same and builds a new one when the GPU, TensorRT, the ONNX file or the options change.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from export.graphs import Graph
from export.manifest import write_atomic

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30  # scratch memory TensorRT may use while choosing kernels


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False
    max_batch: int = 8
    workspace_bytes: int = WORKSPACE_BYTES

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {self.max_batch}")


@dataclass(frozen=True)
class Target:
    """What an engine is specific to: the GPU model and the TensorRT version."""

    gpu: str
    tensorrt: str
    fast_fp16: bool

    @classmethod
    def current(cls, device: int = 0) -> Target:
        import tensorrt as trt

        from engine.backends.devices import gpu_name, has_fast_fp16

        return cls(gpu_name(device), trt.__version__, has_fast_fp16(device))


def precision(target: Target, options: BuildOptions, half: bool = True) -> str:
    """What an engine computes in: "fp16" when asked for, the GPU has fast FP16 and the graph
    allows it (``half``), else "fp32"."""
    return "fp16" if options.fp16 and target.fast_fp16 and half else "fp32"


def engine_key(target: Target, onnx_sha256: str, options: BuildOptions, half: bool = True) -> str:
    """The cache key of one engine: GPU model, TensorRT version, ONNX hash, precision, batch."""
    gpu = re.sub(r"[^a-z0-9]+", "-", target.gpu.lower()).strip("-")
    built_in = precision(target, options, half)
    raw = f"{target.gpu}|{target.tensorrt}|{onnx_sha256}|{built_in}|{options.max_batch}"
    digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
    return f"{gpu}.trt{target.tensorrt}.{built_in}.b{options.max_batch}.{digest}"


def profile_shapes(graph: Graph, max_batch: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of every input with a symbolic axis."""
    out = {}
    for spec in graph.inputs:
        if not any(isinstance(d, str) for d in spec.shape):
            continue
        lo = tuple(1 if d == "batch" else graph.ranges[d][0] if isinstance(d, str) else d
                   for d in spec.shape)  # fmt: skip
        opt = graph.shape(spec, 1, pick=1)
        hi = graph.shape(spec, max_batch, pick=2)
        out[spec.name] = (lo, opt, hi)
    return out


def build_engine(
    graph: Graph, onnx_path: Path, plan_path: Path, target: Target, options: BuildOptions
) -> Path:
    """Parse ``onnx_path``, build a serialized engine for this GPU and write it (atomically)
    to ``plan_path``."""
    import onnx
    import tensorrt as trt

    from export.fp16 import to_fp16

    built_in = precision(target, options, graph.half)
    if options.fp16 and built_in == "fp32":
        reason = f"{target.gpu} has no fast FP16" if graph.half else "the graph needs FP32"
        log.warning("building %s in FP32: %s", graph.name, reason)
    model = onnx.load(str(onnx_path))
    if built_in == "fp16":
        model = to_fp16(model)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{onnx_path}: TensorRT could not parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(graph, options.max_batch)
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name in shapes:
            profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    log.info("building the %s TensorRT engine of %s for %s (this takes a while)", built_in,
             graph.name, target.gpu)  # fmt: skip
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    write_atomic(plan_path, bytes(serialized))
    log.info("built %s", plan_path)
    return plan_path
