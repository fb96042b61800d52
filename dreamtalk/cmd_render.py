"""`dreamtalk render`: speech in, a talking portrait out, through the live streaming path.

The motion comes from `engine.stream.render_motion`, the same windowed, overlap-blended
session core a live stream runs, so a file and a stream of the same audio give the same
frames for the same seed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dreamtalk.cmd_serve import add_backend_options
from engine.emotions import EMOTIONS
from engine.timebase import FPS, SAMPLE_RATE

if TYPE_CHECKING:
    import numpy as np

    from engine.backends.base import Runner

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render speech (any audio file) to a talking-head MP4")
    p.add_argument("--portrait", default=None, help="JPEG/PNG/WebP portrait (default: assets)")
    p.add_argument("--audio", required=True, help="speech: any file PyAV decodes")
    p.add_argument("--out", required=True, help="MP4 to write (the audio is muxed in)")
    p.add_argument("--emotion", default="neutral", help=f"one of {', '.join(EMOTIONS)}")
    p.add_argument("--intensity", type=int, default=2, choices=(1, 2, 3))
    p.add_argument("--style", default=None, help="style clip: a motion CSV of the wanted emotion")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--size", type=int, choices=(256, 512), default=256)
    p.add_argument("--weights", default=None, help="checkpoint folder (default: weights/)")
    p.add_argument("--blendshapes-out", default=None, help="also write the motion as a CSV")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backend_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from engine.animate import render_motion_to_mp4
    from engine.audio_io import load_audio
    from engine.backends.kinds import TORCH
    from engine.emotions import check_intensity, emotion_index
    from engine.motion_csv import read_motion_csv, write_motion_csv
    from engine.motion_model import WEIGHTS_DIR, MotionModels
    from engine.stream import StreamConfig, render_motion

    # Cheap checks first: a wrong name should not wait for the models to load.
    emotion_index(args.emotion)
    check_intensity(args.intensity)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    style_clip = read_motion_csv(args.style).frames if args.style else None
    audio = load_audio(args.audio, SAMPLE_RATE)
    if len(audio) == 0:
        raise ValueError(f"{args.audio}: no audio samples")

    models = MotionModels.load_default(args.weights or WEIGHTS_DIR)
    nets = models.use_backend(
        args.backend, engine_dir=args.engine_dir, threads=torch.get_num_threads()
    )
    config = StreamConfig(steps=args.steps, guidance=args.guidance)
    motion = render_motion(
        models, audio, SAMPLE_RATE, emotion=args.emotion, intensity=args.intensity,
        seed=args.seed, config=config, style_clip=style_clip,
    )  # fmt: skip
    log.info("%d motion frames (%.2f s) from %s", len(motion), len(motion) / FPS, args.audio)
    if args.blendshapes_out:
        print(write_motion_csv(args.blendshapes_out, motion, fps=FPS))
    if nets.renderer_kind(args.size) == TORCH:
        out = render_motion_to_mp4(
            motion, Path(args.out), audio=audio, portrait=args.portrait, size=args.size,
            progress=not args.no_progress,
        )  # fmt: skip
    else:
        out = render_on_backend(nets.renderer(args.size), motion, Path(args.out), audio,
                                args.portrait, args.size)  # fmt: skip
    print(out)


def render_on_backend(
    renderer: Runner,
    motion: np.ndarray,
    out: Path,
    audio: np.ndarray | None,
    portrait: str | None,
    size: int,
) -> Path:
    """`engine.animate.render_motion_to_mp4` with the backend's renderer: 8 frames a call."""
    import torch

    from engine.avatar import load_avatar
    from engine.renderer import to_uint8_frames
    from engine.video_io import Mp4Writer

    avatar = load_avatar(portrait, size=size)
    inputs = avatar.render_inputs()
    out.parent.mkdir(parents=True, exist_ok=True)
    with Mp4Writer(out, size, size, fps=FPS, audio=audio, audio_rate=SAMPLE_RATE) as writer:
        for start in range(0, len(motion), 8):
            chunk = torch.from_numpy(motion[start : start + 8].copy())
            writer.write(to_uint8_frames(renderer(chunk, *inputs)))
    return out
