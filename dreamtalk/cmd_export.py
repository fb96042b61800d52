"""`dreamtalk export`: the networks to ONNX (and TensorRT engines), with a manifest and checks.

Exports, from the weights folder: the audio encoder, EmoDiff (one denoiser step per call, or
its few-step sampler unrolled into one graph: ``--denoiser``), the lip refiner and the
renderer at ``--size``, each with a dynamic batch axis, into ``--out`` with ``manifest.json``
and ``recorded_inputs.npz`` (real inputs, recorded from a short run of the live path) beside
them.
``--verify`` runs each file on the recorded inputs and compares with PyTorch: exit status 1
past a model's tolerance. ``--format tensorrt`` also builds TensorRT engines for this GPU.
The folder is an engine folder: `dreamtalk serve --engine-dir` reuses it. docs/export.md.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from engine.backends.kinds import DEFAULT_FORM, DENOISER_FORMS

if TYPE_CHECKING:
    from engine.motion_model import MotionModels

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the networks to ONNX / TensorRT, with a manifest and verification",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--out", required=True, type=Path, help="folder to write (an engine folder)")
    p.add_argument("--fp16", action="store_true", help="TensorRT: FP16 where the GPU has it")
    p.add_argument("--max-batch", type=int, default=8, help="TensorRT: largest batch (1..N)")
    p.add_argument("--verify", action="store_true", help="compare with PyTorch on recorded inputs")
    p.add_argument(
        "--verify-only",
        action="store_true",
        help="verify the files already in --out (no export)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="verification tolerance for every model (default: each model's, in the manifest)",
    )
    p.add_argument("--weights", default=None, help="checkpoint folder (default: weights/)")
    p.add_argument("--size", type=int, choices=(256, 512), default=256, help="renderer size")
    p.add_argument(
        "--denoiser",
        choices=DENOISER_FORMS,
        default=DEFAULT_FORM,
        help=f"EmoDiff as one step per call or its sampler unrolled into one graph (default "
        f"{DEFAULT_FORM}: measured faster in the live path, docs/export.md)",
    )
    p.add_argument(
        "--timings",
        action="store_true",
        help="also time every network, PyTorch against ONNX Runtime (batch 1, one thread), and "
        "both EmoDiff forms; printed and kept in the manifest",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from engine.backends.devices import tensorrt_available
    from engine.motion_model import WEIGHTS_DIR, MotionModels

    # Cheap checks first: a bad option should not wait for the models or an export.
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.tolerance is not None and not args.tolerance >= 0:
        raise ValueError(f"--tolerance must be a number >= 0, got {args.tolerance}")
    if args.fp16 and args.format != "tensorrt":
        raise ValueError("--fp16 applies to TensorRT engines: add --format tensorrt")
    if args.format == "tensorrt" and not tensorrt_available():
        raise ValueError(
            "--format tensorrt needs an NVIDIA GPU that PyTorch sees and the tensorrt package "
            "(pip install '.[gpu]'); --format onnx works anywhere"
        )
    if args.verify_only and not (args.out / "manifest.json").is_file():
        raise ValueError(f"{args.out}: nothing exported there to verify (no manifest.json)")

    models = MotionModels.load_default(args.weights or WEIGHTS_DIR)
    # one intra-op thread, as the live engine runs the networks: these small calls only lose
    # to thread hand-offs (on a busy 2-core machine, the recording run took 30 s, not 1 s)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _export_and_verify(models, args)
    finally:
        torch.set_num_threads(threads)


def _export_and_verify(models: MotionModels, args: argparse.Namespace) -> int:
    if not args.verify_only:
        export_all(models, args)
    status = 0
    if args.verify or args.verify_only:
        from export.verify import report, verify_folder

        checks = verify_folder(args.out, models, args.format == "tensorrt", args.tolerance)
        print(report(checks))
        failed = [c.model for c in checks if not c.ok]
        if failed:
            log.error("verification failed: %s past tolerance", ", ".join(failed))
            status = 1
    if args.timings:
        print_timings(models, args.out)
    return status


def export_all(models: MotionModels, args: argparse.Namespace) -> None:
    """Every network into ``args.out`` (re-exported even when fresh), engines when asked, and
    the recorded inputs."""
    from export.engine_cache import EngineCache
    from export.graphs import motion_graphs, renderer_graph
    from export.manifest import read_manifest
    from export.recording import record_inputs, save_recorded
    from export.tensorrt_build import BuildOptions

    cache = EngineCache(args.out)
    graphs = [*motion_graphs(models, args.denoiser), renderer_graph(args.size)]
    options = BuildOptions(fp16=args.fp16, max_batch=args.max_batch)
    for graph in graphs:
        path = cache.onnx(graph, force=True)
        if args.format == "tensorrt":
            cache.tensorrt(graph, path, options)
    # everything the folder holds gets recorded inputs: it may hold another EmoDiff form or
    # renderer size from an earlier export, which --verify checks too
    entries = read_manifest(args.out)["models"].values()
    forms = tuple(dict.fromkeys(e["form"] for e in entries if "form" in e))
    sizes = tuple(e["size"] for e in entries if "size" in e)
    save_recorded(args.out, record_inputs(models, sizes, forms))
    print(summary(args.out))


def summary(folder: Path) -> str:
    """One line per exported model: file, inputs -> output, with symbolic axes by name."""
    from export.manifest import read_manifest

    def shape(spec: dict) -> str:
        return f"{spec['name']}[{', '.join(str(d) for d in spec['shape'])}]"

    lines = [str(folder / "manifest.json")]
    for name, entry in read_manifest(folder)["models"].items():
        io = ", ".join(shape(s) for s in entry["inputs"])
        out = ", ".join(shape(s) for s in entry["outputs"])
        engines = f"  (+{len(entry['tensorrt'])} TensorRT)" if entry.get("tensorrt") else ""
        lines.append(f"  {name:<16} {entry['file']:<22} {io} -> {out}{engines}")
    return "\n".join(lines)


def print_timings(models: MotionModels, folder: Path) -> None:
    from export.manifest import locked, read_manifest, write_manifest
    from export.timing import time_folder

    timings = time_folder(folder, models)
    with locked(folder):
        manifest = read_manifest(folder)
        manifest["timings_ms"] = timings
        write_manifest(folder, manifest)
    print(json.dumps(timings, indent=2))
