"""`dreamtalk animate`: a blendshape CSV rendered onto a portrait, written as an MP4."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.audio_io import load_audio
from engine.avatar import load_avatar
from engine.motion_csv import read_motion_csv
from engine.renderer import Renderer, RendererConfig, to_uint8_frames
from engine.timebase import FPS, SAMPLE_RATE
from engine.video_io import Mp4Writer

log = logging.getLogger(__name__)


def resample_motion(frames: np.ndarray, source_fps: float, target_fps: float) -> np.ndarray:
    """Linear interpolation of (T, D) motion from one frame rate to another."""
    if len(frames) == 0 or abs(source_fps - target_fps) < 1e-6:
        return frames
    duration = len(frames) / source_fps
    count = max(1, int(round(duration * target_fps)))
    t_src = np.arange(len(frames)) / source_fps
    t_dst = np.arange(count) / target_fps
    columns = [np.interp(t_dst, t_src, frames[:, d]) for d in range(frames.shape[1])]
    return np.stack(columns, axis=1).astype(np.float32)


def animate(
    portrait: str | Path | None,
    blendshapes: str | Path,
    out: str | Path,
    audio: str | Path | None = None,
    size: int = 256,
    fps: float = FPS,
    batch: int = 8,
    progress: bool = True,
) -> Path:
    """Render the CSV's motion on the portrait (default portrait when None) to an MP4."""
    if size not in (256, 512):
        raise ValueError(f"size must be 256 or 512, got {size}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    track = read_motion_csv(blendshapes)
    motion = resample_motion(track.frames, track.fps or fps, fps)
    samples = load_audio(audio, SAMPLE_RATE) if audio is not None else None
    return render_motion_to_mp4(
        motion, out, audio=samples, portrait=portrait, size=size, fps=fps, batch=batch,
        progress=progress,
    )  # fmt: skip


def render_motion_to_mp4(
    motion: np.ndarray,
    out: str | Path,
    audio: np.ndarray | None = None,
    portrait: str | Path | None = None,
    size: int = 256,
    fps: float = FPS,
    batch: int = 8,
    progress: bool = True,
) -> Path:
    """Render motion frames (T, MOTION_DIM) on the portrait (default when None) to an MP4,
    muxing ``audio`` (16 kHz mono float) when given."""
    if size not in (256, 512):
        raise ValueError(f"size must be 256 or 512, got {size}")
    motion = np.ascontiguousarray(motion, dtype=np.float32)
    avatar = load_avatar(portrait, size=size)
    renderer = Renderer(RendererConfig(size=size)).eval()
    inputs = avatar.render_inputs()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    log.info("animating %d frames at %dx%d, %g fps", len(motion), size, size, fps)
    with Mp4Writer(out, size, size, fps=fps, audio=audio, audio_rate=SAMPLE_RATE) as writer:
        bar = tqdm(total=len(motion), unit="frame", disable=not progress, desc="animate")
        with torch.inference_mode():
            for start in range(0, len(motion), batch):
                chunk = torch.from_numpy(motion[start : start + batch])
                writer.write(to_uint8_frames(renderer(chunk, *inputs)))
                bar.update(len(chunk))
        bar.close()
    return Path(out)
