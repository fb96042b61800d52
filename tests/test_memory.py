"""`engine.memory.keep_freed_memory`: a 512 px frame's temporaries reuse the last frame's pages."""

from __future__ import annotations

import resource

import torch

from dreamtalk.bench import _talking_motion
from engine.avatar import load_avatar
from engine.memory import keep_freed_memory
from engine.renderer import Renderer, RendererConfig, to_uint8_frames


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_rendering_512_px_frames_faults_no_pages_in_once_warm(one_thread):
    """Without the settings glibc returned each frame's 3 MB temporaries to the kernel and a
    PyTorch frame faulted them in again: about 2300 minor page faults per 512 px frame."""
    assert keep_freed_memory()  # this machine's C library is glibc
    avatar = load_avatar(None, size=512)
    inputs = avatar.render_inputs()
    renderer = Renderer(RendererConfig(size=512)).eval()
    motion = torch.from_numpy(_talking_motion(12))
    faults = []
    with torch.inference_mode():
        for frame in motion:
            before = _minor_faults()
            to_uint8_frames(renderer(frame[None], *inputs))
            faults.append(_minor_faults() - before)
    assert max(faults[4:]) < 100, faults  # the first frames grow the heap
