"""`dreamtalk data`: make, inspect and prepare training corpora.

dreamtalk data synth --out DIR --hours H [--seed S] [--workers N] [--overwrite]
dreamtalk data stats DIR
dreamtalk data show DIR ID --out MP4 [--portrait IMG] [--size 256|512]
dreamtalk data prepare --videos DIR --out DIR [--layout mead|flat]
"""

from __future__ import annotations

import argparse
import json
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make, inspect and prepare training corpora")
    data = p.add_subparsers(dest="data_command", required=True)

    s = data.add_parser(
        "synth",
        help="generate the synthetic emotional speech -> blendshape corpus (espeak-ng)",
        description="Speech from espeak-ng with phoneme timings, coarticulated visemes, "
        "emotions at three intensities, prosody-driven head motion, blinks; augmented "
        "audio with precomputed log-mel features; train/val/test split by voice and sentence.",
    )
    s.add_argument("--out", required=True, help="corpus folder to create")
    s.add_argument("--hours", type=float, required=True, help="hours of audio to generate")
    s.add_argument("--seed", type=int, default=0, help="same seed, same corpus (default 0)")
    s.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default 2)"
    )
    s.add_argument("--overwrite", action="store_true", help="replace a corpus already in --out")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run_synth)

    st = data.add_parser("stats", help="hours per split, emotion, intensity and voice")
    st.add_argument("dir", help="corpus folder")
    st.add_argument("--json", action="store_true", help="print JSON instead of tables")
    st.set_defaults(func=run_stats)

    sh = data.add_parser("show", help="render one sample's target motion, with its audio")
    sh.add_argument("dir", help="corpus folder")
    sh.add_argument("id", help="sample id (e.g. s0000012; `data stats` shows the splits)")
    sh.add_argument("--out", required=True, help="MP4 to write")
    sh.add_argument("--portrait", default=None, help="portrait image (default: assets)")
    sh.add_argument("--size", type=int, choices=(256, 512), default=256)
    sh.add_argument("--no-progress", action="store_true", help="no progress bar")
    sh.set_defaults(func=run_show)

    pr = data.add_parser(
        "prepare", help="track faces in real videos (MEAD, HDTF) and fit blendshapes"
    )
    pr.add_argument("--videos", required=True, help="folder of videos")
    pr.add_argument("--out", required=True, help="corpus folder to create")
    pr.add_argument(
        "--layout",
        choices=("mead", "flat"),
        default="flat",
        help="mead: MEAD's <speaker>/video/front/<emotion>/level_<n>/<id>.mp4 tree; "
        "flat: any videos, emotion neutral unless the file name says otherwise",
    )
    pr.set_defaults(func=run_prepare)


def run_synth(args: argparse.Namespace) -> None:
    from engine.data.synth import SynthConfig, synth_corpus

    if not args.hours > 0:
        raise ValueError(f"--hours must be positive, got {args.hours}")
    manifest = synth_corpus(
        args.out,
        SynthConfig(hours=args.hours, seed=args.seed),
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    per_split = ", ".join(f"{s} {h:.2f} h" for s, h in manifest["stats"]["hours"].items())
    total = f"{manifest['hours']:.2f} h in {manifest['num_samples']} samples"
    print(f"{args.out}: {total} ({per_split})")


def run_stats(args: argparse.Namespace) -> None:
    from engine.data.synth import corpus_stats, format_stats

    stats = corpus_stats(args.dir)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))


def run_show(args: argparse.Namespace) -> None:
    from engine.data.synth import show_sample

    print(
        show_sample(
            args.dir,
            args.id,
            args.out,
            portrait=args.portrait,
            size=args.size,
            progress=not args.no_progress,
        )
    )


def run_prepare(args: argparse.Namespace) -> None:
    from pathlib import Path

    try:
        from engine.data.prepare import prepare_videos
    except ModuleNotFoundError as err:
        if err.name != "engine.data.prepare":
            raise
        raise ValueError("`data prepare` is not available in this build") from err
    manifest = prepare_videos(Path(args.videos), Path(args.out), layout=args.layout)
    shards = {split: len(paths) for split, paths in manifest.get("splits", {}).items()}
    print(f"{args.out}: shards per split {shards}")
