"""ONNX export of the networks (`export.graphs`): the tracer, opset 17, a dynamic batch axis.

Files are written to a temporary name beside the target and renamed once complete, so an
interrupted export never leaves half a file where a runtime would load it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from engine.avatar import Avatar
from engine.renderer import RENDER_INPUT_NAMES
from export.graphs import TOLERANCES, Graph, renderer_graph
from export.manifest import publish

log = logging.getLogger(__name__)

OPSET = 17
# Largest absolute difference from PyTorch (RGB in [0, 1]) that counts as the same frame.
RENDER_TOLERANCE = TOLERANCES["renderer"][0]


def export_graph(graph: Graph, path: str | Path) -> Path:
    """Export ``graph`` to ``path`` (ONNX, opset `OPSET`, its symbolic axes dynamic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python scalars
            torch.onnx.export(
                graph.module,
                graph.example(),
                tmp,
                input_names=graph.input_names,
                output_names=[graph.output.name],
                dynamic_axes=graph.dynamic_axes(),
                opset_version=OPSET,
                dynamo=False,  # the dynamo exporter needs onnxscript; the tracer covers our ops
            )
        _declare_output(tmp, graph)
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    log.info("exported %s to %s", graph.name, path)
    return path


def _declare_output(path: str, graph: Graph) -> None:
    """Write the output's shape as the graph declares it: the tracer leaves made-up names on
    axes it could not infer (the renderer's frame size), which runtimes then cannot plan for."""
    import onnx

    model = onnx.load(path)
    (out,) = model.graph.output
    dims = out.type.tensor_type.shape.dim
    if len(dims) != len(graph.output.shape):
        raise ValueError(f"{graph.name}: exported output has rank {len(dims)}, declared "
                         f"{len(graph.output.shape)}")  # fmt: skip
    for dim, want in zip(dims, graph.output.shape, strict=True):
        if isinstance(want, str):
            dim.dim_param = want
        else:
            dim.dim_value = want
    onnx.save(model, path)


def export_renderer(avatar: Avatar, path: str | Path) -> Path:
    """Export the renderer with a dynamic batch axis on `motion` and `frames`.

    The avatar's tensors are graph inputs, so the file serves any avatar of the same size;
    the given avatar only traces shapes."""
    return export_graph(renderer_graph(avatar.size, avatar), path)


def onnx_feed(session, motion: np.ndarray, avatar: Avatar) -> dict[str, np.ndarray]:
    """Inputs for an ONNX Runtime session of the renderer (unused inputs are pruned)."""
    wanted = {i.name for i in session.get_inputs()}
    feed = {"motion": np.ascontiguousarray(motion, dtype=np.float32)}
    for name, tensor in zip(RENDER_INPUT_NAMES, avatar.render_inputs(), strict=True):
        if name in wanted:
            feed[name] = tensor.numpy()
    return feed


def ort_session(path: str | Path, threads: int = 1):
    """A CPU ONNX Runtime session with a fixed thread count."""
    import onnxruntime as ort

    from engine.backends.onnxruntime_backend import session_options

    return ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )
