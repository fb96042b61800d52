"""The engine folder: exported ONNX files and TensorRT engines, reused across restarts.

`dreamtalk serve --engine-dir DIR` (and `render`) keep their exports here: on start, each
network's ONNX file is reused when its manifest entry's fingerprint still matches (the same
weights, config, code, opset and torch/onnx versions) and the file's sha256 is the one
recorded, and exported again otherwise; a TensorRT engine is reused while its key (GPU model,
TensorRT version, ONNX sha256, precision, max batch: `export.tensorrt_build.engine_key`) is
in the manifest, and built otherwise. `dreamtalk export --out DIR` writes the same layout, so
a folder exported ahead of time is an engine folder. A lock on the folder makes concurrent
starts export each file once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from engine.avatar import CACHE_DIR
from export.graphs import SAMPLER, STEP, Graph
from export.manifest import (
    locked,
    onnx_io,
    read_manifest,
    sha256_file,
    versions,
    write_manifest,
)
from export.onnx_export import OPSET, export_graph
from export.tensorrt_build import BuildOptions, Target, build_engine, engine_key, precision

if TYPE_CHECKING:
    from engine.motion_model import MotionModels

log = logging.getLogger(__name__)

DEFAULT_ENGINE_DIR = CACHE_DIR / "engines"


def fingerprint(graph: Graph) -> str:
    """sha256 of everything that determines the exported file: the graph's name, shapes and
    options, its weights and buffers, its code, the opset and the exporter's versions."""
    h = hashlib.sha256()
    v = versions()
    header = {
        "name": graph.name,
        "inputs": [s.as_dict() for s in graph.inputs],
        "output": graph.output.as_dict(),
        "meta": graph.meta,
        "config": repr(getattr(graph.module, "cfg", getattr(graph.module, "config", None))),
        "opset": OPSET,
        "torch": v["torch"],
        "onnx": v["onnx"],
    }
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    h.update(graph.code_digest().encode())
    for key, tensor in sorted(graph.module.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def default_folder(models: MotionModels) -> Path:
    """The engine folder of a set of weights when none is given: one per weights under the
    user's cache (``$DREAMTALK_CACHE/engines/<digest>``), so that processes serving different
    weights never re-export each other's files."""
    h = hashlib.sha256()
    for module in (models.emodiff, models.refiner):
        if module is not None:
            h.update(repr(module.cfg).encode())
            for key, tensor in sorted(module.state_dict().items()):
                h.update(key.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return DEFAULT_ENGINE_DIR / h.hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class EngineCache:
    """One engine folder (module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def manifest(self) -> dict:
        """The folder's manifest as it is now (empty when nothing was exported yet)."""
        return read_manifest(self.folder)

    def onnx(self, graph: Graph, force: bool = False) -> Path:
        """The graph's ONNX file in the folder, exported first when missing or stale (or
        when ``force``)."""
        path = self.folder / f"{graph.name}.onnx"
        fp = fingerprint(graph)
        with locked(self.folder):
            manifest = read_manifest(self.folder)
            old = manifest["models"].get(graph.name)
            if not force and old and self._fresh(old, path, fp):
                log.debug("%s: reusing %s", graph.name, path)
                return path
            log.info("%s: exporting to %s (%s)", graph.name, path,
                     "forced" if force else "stale" if old else "none yet")  # fmt: skip
            export_graph(graph, path)
            if old:  # engines built from the previous file can never be used again
                for engine in old.get("tensorrt", {}).values():
                    with contextlib.suppress(OSError):
                        (self.folder / engine["file"]).unlink()
            manifest["models"][graph.name] = self._entry(graph, path, fp)
            if graph.name in (SAMPLER, STEP):
                manifest["denoiser"] = {"form": graph.meta["form"], "model": graph.name,
                                        "steps": graph.meta.get("steps")}  # fmt: skip
            write_manifest(self.folder, manifest)
        return path

    @staticmethod
    def _fresh(entry: dict, path: Path, fp: str) -> bool:
        return (
            entry.get("fingerprint") == fp
            and path.is_file()
            and sha256_file(path) == entry.get("sha256")
        )

    def _entry(self, graph: Graph, path: Path, fp: str) -> dict:
        inputs, outputs = onnx_io(path)
        source = None
        if graph.source is not None:
            src = Path(graph.source)
            source = {"path": str(src), "sha256": sha256_file(src) if src.is_file() else None}
        v = versions()
        return {
            "file": path.name,
            "sha256": sha256_file(path),
            "inputs": inputs,
            "outputs": outputs,
            "opset": OPSET,
            "tolerance": graph.tolerance,
            "tolerance_fp16": graph.tolerance_fp16,
            "ranges": {k: list(r) for k, r in graph.ranges.items()},
            "source": source,
            "torch": v["torch"],
            "onnx": v["onnx"],
            "fingerprint": fp,
            "exported": _now(),
            **graph.meta,
            "tensorrt": {},
        }

    def tensorrt(self, graph: Graph, onnx_path: Path, options: BuildOptions) -> Path:
        """The TensorRT engine of the graph's (fresh) ONNX file for this GPU, built when the
        folder has none for this GPU model, TensorRT version, ONNX file and options."""
        target = Target.current()
        with locked(self.folder):
            manifest = read_manifest(self.folder)
            entry = manifest["models"].get(graph.name)
            if entry is None or entry.get("file") != onnx_path.name:
                raise ValueError(f"{graph.name}: no ONNX export in {self.folder} to build from")
            key = engine_key(target, entry["sha256"], options, graph.half)
            plan = self.folder / f"{graph.name}.{key}.plan"
            engines = entry.setdefault("tensorrt", {})
            known = engines.get(key)
            if known and plan.is_file() and sha256_file(plan) == known.get("sha256"):
                return plan
            build_engine(graph, onnx_path, plan, target, options)
            engines[key] = {
                "file": plan.name,
                "sha256": sha256_file(plan),
                "gpu": target.gpu,
                "tensorrt": target.tensorrt,
                "precision": precision(target, options, graph.half),
                "max_batch": options.max_batch,
                "onnx_sha256": entry["sha256"],
                "built": _now(),
            }
            write_manifest(self.folder, manifest)
        return plan
