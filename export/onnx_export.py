"""ONNX export of the renderer (the other networks join in the export issue)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from engine.avatar import Avatar
from engine.blendshapes import MOTION_DIM
from engine.renderer import RENDER_INPUT_NAMES, Renderer, RendererConfig

log = logging.getLogger(__name__)

OPSET = 17
# Largest absolute difference from PyTorch (RGB in [0, 1]) that counts as the same frame.
RENDER_TOLERANCE = 2e-3


def export_renderer(avatar: Avatar, path: str | Path) -> Path:
    """Export the renderer with a dynamic batch axis on `motion` and `frames`.

    The avatar's tensors are graph inputs, so the file serves any avatar of the same size;
    the given avatar only traces shapes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    renderer = Renderer(RendererConfig(size=avatar.size)).eval()
    motion = torch.zeros(2, MOTION_DIM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python scalars
        torch.onnx.export(
            renderer,
            (motion, *avatar.render_inputs()),
            str(path),
            input_names=["motion", *RENDER_INPUT_NAMES],
            output_names=["frames"],
            dynamic_axes={"motion": {0: "batch"}, "frames": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the dynamo exporter needs onnxscript; the tracer covers our ops
        )
    log.info("exported renderer to %s", path)
    return path


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

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
