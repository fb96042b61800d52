"""`manifest.json`: what an export folder holds, written beside the files.

One entry per model: its file and sha256, input and output names, dtypes and shapes (read
back from the ONNX file; symbolic axes by name, ``batch`` first), the opset, the tolerance
that verification holds it to, the checkpoint it came from (path + sha256), the torch and onnx
versions that exported it, a fingerprint of everything that determines the file (weights,
config, code, versions: a different fingerprint makes the file stale), and the TensorRT
engines built from it, keyed by GPU, TensorRT version, ONNX hash and build options. The format
is described in docs/export.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``: a
    reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def publish(tmp: str | Path, path: str | Path) -> None:
    """Rename a finished temporary file to its name, readable by all (mkstemp makes files
    private; an engine folder is often a volume shared by the server's containers)."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on an export folder: two processes starting on one engine folder
    export (or build) each file once and never interleave their manifest updates."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def versions() -> dict[str, str | None]:
    """Versions of the packages that export and run the files (None: not installed)."""
    import onnx
    import torch

    out: dict[str, str | None] = {"torch": torch.__version__, "onnx": onnx.__version__}
    for name in ("onnxruntime", "tensorrt"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def read_manifest(folder: str | Path) -> dict:
    """The folder's manifest, or an empty one when there is none yet."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "models": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a valid manifest ({err})") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        # an older layout: start afresh (every file is re-exported)
        return {"format_version": FORMAT_VERSION, "models": {}}
    return manifest


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    manifest["format_version"] = FORMAT_VERSION
    manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    manifest["versions"] = versions()
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    return write_atomic(Path(folder) / MANIFEST, text.encode())


def onnx_io(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX file: name, numpy dtype name and shape (symbolic axes by
    name), as the file itself declares them."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def describe(value) -> dict:
        t = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return {"name": value.name, "dtype": dtype, "shape": shape}

    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [describe(v) for v in model.graph.output]


def check_entry(folder: Path, name: str, entry: dict) -> list[str]:
    """What is missing from one model's entry (an empty list: complete)."""
    needed = ("file", "sha256", "inputs", "outputs", "opset", "tolerance", "source", "torch",
              "onnx", "fingerprint")  # fmt: skip
    problems = [f"{name}: no {key!r}" for key in needed if key not in entry]
    if "file" in entry and not (folder / entry["file"]).is_file():
        problems.append(f"{name}: {entry['file']} is missing")
    return problems
