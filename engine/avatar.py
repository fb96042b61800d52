"""An avatar: one registered portrait plus everything the per-frame path reuses, cached.

`load_avatar(path, size)` registers the portrait (face mesh, crop), builds the face rig and
the renderer's precompute once, and stores them in an ``.npz`` avatar file: next to the
image when that folder is writable, else in the cache folder. The next run with the same
image bytes, size and format version loads the file instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from engine.face_rig import FaceRig, build_rig, refine_lip_opening
from engine.portrait import register_portrait
from engine.renderer import RENDER_INPUT_NAMES, RendererConfig, precompute

log = logging.getLogger(__name__)

# Bump when the rig or the precompute changes: old avatar files are then rebuilt.
AVATAR_FORMAT = 5
DEFAULT_PORTRAIT = Path(__file__).resolve().parent.parent / "assets" / "portrait.png"
CACHE_DIR = Path(os.environ.get("DREAMTALK_CACHE", Path.home() / ".cache" / "dreamtalk"))


@dataclass
class Avatar:
    """A portrait ready to render at one size."""

    size: int
    image: np.ndarray  # (size, size, 3) uint8, the registered crop
    landmarks: np.ndarray  # (478, 3) in crop pixels
    rig: FaceRig
    warp: dict[str, np.ndarray]  # the renderer's precompute
    source: str = ""

    def render_inputs(self) -> tuple[torch.Tensor, ...]:
        """The renderer's avatar inputs, in `RENDER_INPUT_NAMES` order."""
        tensors = self.rig.tensors()
        tensors.update({k: torch.from_numpy(v) for k, v in self.warp.items()})
        return tuple(tensors[name] for name in RENDER_INPUT_NAMES)


Progress = Callable[[str, float], None]  # (stage, fraction done)


def build_avatar(
    source: str | Path | bytes, size: int = 256, progress: Progress | None = None
) -> Avatar:
    """Register a portrait and precompute its rig and warp (no caching). ``progress`` is
    told each stage as it starts (a server shows it while a user waits)."""
    report = progress or (lambda stage, done: None)
    report("finding the face", 0.05)
    portrait = register_portrait(source, size=size)
    report("fitting the lips", 0.45)
    landmarks = refine_lip_opening(portrait.image, portrait.landmarks)
    report("building the face rig", 0.55)
    rig = build_rig(landmarks, size)
    report("precomputing the warp", 0.85)
    warp = precompute(rig, portrait.image, RendererConfig(size=size))
    report("ready", 1.0)
    return Avatar(size, portrait.image, landmarks, rig, warp, source=portrait.source)


def avatar_cache_path(image_path: Path, size: int, digest: str) -> Path:
    """Where the avatar file of an image lives: beside it if writable, else in the cache."""
    name = f"{image_path.stem}.{digest[:12]}.{size}.avatar.npz"
    if os.access(image_path.parent, os.W_OK):
        return image_path.parent / name
    return CACHE_DIR / "avatars" / name


def load_avatar(
    path: str | Path | None = None,
    size: int = 256,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> Avatar:
    """The avatar of a portrait file (the default portrait when None), cached on disk."""
    image_path = Path(path) if path is not None else DEFAULT_PORTRAIT
    try:
        data = image_path.read_bytes()
    except OSError as err:
        from engine.portrait import PortraitError

        raise PortraitError(f"cannot read portrait {image_path}: {err.strerror}") from err
    digest = hashlib.sha256(data + f"|{AVATAR_FORMAT}|{size}".encode()).hexdigest()
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{image_path.stem}.{digest[:12]}.{size}.avatar.npz"
    else:
        cache = avatar_cache_path(image_path, size, digest)
    if cache.exists():
        try:
            avatar = read_avatar_file(cache)
            log.info("loaded avatar %s", cache)
            return avatar
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning("avatar file %s is unreadable (%s): rebuilding it", cache, err)
    avatar = build_avatar(image_path, size=size, progress=progress)  # the path names errors
    avatar.source = str(image_path)
    try:
        write_avatar_file(avatar, cache)
        log.info("wrote avatar %s", cache)
    except OSError as err:  # a read-only place is no reason to fail the render
        log.warning("could not write avatar file %s: %s", cache, err)
    return avatar


def write_avatar_file(avatar: Avatar, path: Path) -> None:
    """Write atomically: a crash never leaves a half-written avatar file."""
    arrays = {
        "format": np.array(AVATAR_FORMAT),
        "size": np.array(avatar.size),
        "image": avatar.image,
        "landmarks": avatar.landmarks,
        "source": np.array(avatar.source),
    }
    for f in fields(FaceRig):
        arrays[f"rig.{f.name}"] = np.asarray(getattr(avatar.rig, f.name))
    for key, value in avatar.warp.items():
        arrays[f"warp.{key}"] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".avatar-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an avatar file is no secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_avatar_file(path: Path) -> Avatar:
    with np.load(path, allow_pickle=False) as npz:
        if int(npz["format"]) != AVATAR_FORMAT:
            raise ValueError(f"avatar format {int(npz['format'])}, expected {AVATAR_FORMAT}")
        rig_kwargs = {}
        for f in fields(FaceRig):
            value = npz[f"rig.{f.name}"]
            rig_kwargs[f.name] = int(value) if value.ndim == 0 else value
        warp = {k.split(".", 1)[1]: npz[k] for k in npz.files if k.startswith("warp.")}
        return Avatar(
            size=int(npz["size"]),
            image=npz["image"],
            landmarks=npz["landmarks"],
            rig=FaceRig(**rig_kwargs),
            warp=warp,
            source=str(npz["source"]),
        )
