"""Fixtures shared by several test files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models at small batches run fastest on one thread, and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def browser_weights() -> Path:
    """The weights the browser tests serve: ``$DREAMTALK_E2E_WEIGHTS`` or weights/; they skip
    when it holds no trained student."""
    folder = Path(os.environ.get("DREAMTALK_E2E_WEIGHTS", REPO / "weights"))
    if not folder.is_absolute():
        folder = REPO / folder
    if not (folder / "emodiff_student.pt").is_file():
        pytest.skip(
            f"no trained weights in {folder} (emodiff_student.pt missing); set "
            "DREAMTALK_E2E_WEIGHTS to a checkpoint folder"
        )
    return folder


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    """The committed weights exported once per run (`dreamtalk export --out DIR`, ONNX, the
    256 px renderer, recorded inputs): an engine folder the export and backend tests share."""
    from dreamtalk.cli import main

    folder = tmp_path_factory.mktemp("engines")
    assert main(["export", "--out", str(folder)]) == 0
    return folder


def drain_frames(session) -> list:
    """Every frame an offline session has left to give (after `flush`), in order."""
    frames = []
    while True:
        assert session.drain(60)
        got = session.pull_frames()
        if not got:
            return frames
        frames += got
