"""Portraits the server can animate: the default one and uploads, registered in the background.

An upload is checked (size, an image PIL can read, a sane pixel count) before anything is
stored, then saved under ``<avatar dir>/<digest>.<ext>`` (the same photo twice is one avatar)
and registered on a worker thread (`engine.avatar.load_avatar`, cached next to it), reporting
its stage and progress. A photo with no usable face ends ``failed`` with the portrait module's
message for the user. Registration of several uploads runs one at a time: it is CPU-heavy,
and live sessions come first.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from engine.avatar import DEFAULT_PORTRAIT, Avatar, load_avatar

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


class UploadError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class AvatarEntry:
    id: str
    path: Path
    status: str = "registering"  # registering | ready | failed
    progress: float = 0.0
    stage: str = "queued"
    error: str | None = None
    avatar: Avatar | None = None
    created: float = field(default_factory=time.time)

    def describe(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "progress": round(self.progress, 3),
            "stage": self.stage,
            "error": self.error,
            "image": f"/avatars/{self.id}/image",
        }


class AvatarStore:
    def __init__(self, directory: Path, size: int, max_upload_bytes: int):
        self.directory = directory
        self.size = size
        self.max_upload_bytes = max_upload_bytes
        self.entries: dict[str, AvatarEntry] = {}
        self._register_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    async def add_default(self, path: str | Path | None) -> AvatarEntry:
        """Register the server's default portrait now (startup); errors propagate."""
        entry = AvatarEntry("default", Path(path) if path else DEFAULT_PORTRAIT)
        self.entries[entry.id] = entry
        await self._register(entry)
        if entry.status != "ready":
            raise ValueError(f"default avatar {entry.path}: {entry.error}")
        return entry

    def upload(self, data: bytes) -> AvatarEntry:
        """Check and store an upload, start registering it; UploadError says what is wrong."""
        if len(data) > self.max_upload_bytes:
            raise UploadError(
                413, f"the image is {len(data)} bytes; the limit is {self.max_upload_bytes} bytes"
            )
        if not data:
            raise UploadError(400, "the upload is empty: send the image file as the body")
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format
                width, height = image.size
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise UploadError(415, "not an image (JPEG, PNG or WebP expected)") from err
        if kind not in FORMATS:
            raise UploadError(415, f"{kind} images are not supported: use JPEG, PNG or WebP")
        if width * height > MAX_PIXELS:
            raise UploadError(
                413, f"the image is {width}x{height}; at most {MAX_PIXELS} pixels are accepted"
            )
        digest = hashlib.sha256(data).hexdigest()[:16]
        if digest in self.entries and self.entries[digest].status != "failed":
            return self.entries[digest]
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{digest}.{FORMATS[kind]}"
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)  # never a half-written image under the real name
        entry = AvatarEntry(digest, path)
        self.entries[digest] = entry
        task = asyncio.ensure_future(self._register(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return entry

    def ready(self, avatar_id: str) -> Avatar:
        """The registered avatar; KeyError (unknown) or UploadError 409 (not ready)."""
        entry = self.entries[avatar_id]
        if entry.status != "ready":
            detail = (
                entry.error if entry.status == "failed" else f"{entry.stage}, {entry.progress:.0%}"
            )
            raise UploadError(409, f"avatar {avatar_id} is not ready ({entry.status}: {detail})")
        return entry.avatar

    async def _register(self, entry: AvatarEntry) -> None:
        loop = asyncio.get_running_loop()

        def progress(stage: str, done: float) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(_set_progress, entry, stage, done)

        async with self._register_lock:
            start = time.perf_counter()
            try:
                entry.avatar = await asyncio.to_thread(
                    load_avatar, entry.path, self.size, self.directory, progress
                )
            except ValueError as err:  # PortraitError: a message for the user
                # ...that names the file by its path on the server: call it "the photo"
                message = str(err).replace(str(entry.path), "the photo")
                entry.status, entry.error, entry.stage = "failed", message, "failed"
                log.info("avatar %s: registration failed: %s", entry.id, err)
                return
            except Exception as err:
                entry.status, entry.stage = "failed", "failed"
                entry.error = f"registration failed: {err!r}"
                log.exception("avatar %s: registration failed", entry.id)
                return
            entry.status, entry.progress, entry.stage = "ready", 1.0, "ready"
            log.info("avatar %s: ready in %.1f s", entry.id, time.perf_counter() - start)

    def image_png(self, avatar_id: str) -> bytes:
        entry = self.entries[avatar_id]
        if entry.avatar is not None:
            buffer = io.BytesIO()
            Image.fromarray(entry.avatar.image).save(buffer, format="PNG")
            return buffer.getvalue()
        with Image.open(entry.path) as image:
            image.thumbnail((512, 512))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue()


def _set_progress(entry: AvatarEntry, stage: str, done: float) -> None:
    if entry.status == "registering":
        entry.stage, entry.progress = stage, done
