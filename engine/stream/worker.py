"""The shared runner: worker threads that step every open session's core when it is due.

One `StreamEngine` serves many sessions with one `MotionModels` and one renderer per frame
size, both on the backend the models were given (`MotionModels.use_backend`; PyTorch unless
told otherwise). Sessions never compute on the caller's thread: `push_audio` and the other
session calls only queue work under a short lock, and ``workers`` threads (default 1) pick the
session whose next frame is due soonest (earliest deadline first), run one block of it and
render its frames.

Two workers use two cores: PyTorch releases the GIL inside its ops, and each worker runs one
block (or one batch of blocks) at a time with one intra-op thread.

Cross-session batching (``max_batch`` > 1): a worker that picks the session due soonest also
takes every other session whose block can run *now* (its audio is in, or the clock forces it)
and is due within ``batch_window_ms`` of it (default: one hop), up to ``max_batch`` sessions,
and runs their blocks together: each of the motion networks is called once for all of them
(`engine.stream.core.run_blocks`). The frames of a batch's sessions that share an avatar are
rendered in one call on a GPU renderer and in PyTorch, and in ONNX Runtime on a CPU at 256 px;
at 512 px ONNX Runtime's CPU renderer takes them one by one, which was measured faster there
(docs/bench.md; ``batch_renders``, `engine.stream.session.deliver_blocks`). It never waits for
a session that is not ready: a batch is whatever is ready when a worker picks. With several
workers, a worker takes its share of the ready sessions (their number over the idle workers,
itself included), so that the others have theirs. ``max_batch=1`` runs one session's block
at a time, as before batching existed.

Clocks: with ``clock=None`` the engine is *offline*: a block runs as soon as its audio (with
look-ahead) is there, or when `Session.flush` says no more is coming, and the output queue
applies back-pressure; nothing depends on timing, so the frames are a pure function of the
audio, the seed and the calls (tests, `dreamtalk render`). With a clock (`time.monotonic` by
default) it is *live*: time also drives the session (see `Session` for the timeline rules) and
late frames are dropped. `ManualClock` makes the live behaviour testable without sleeping.

Workers start with the first session and are joined when the last one closes (or on `close`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.backends import Runner
from engine.backends.kinds import ORT_CPU
from engine.motion_model import MotionModels
from engine.stream.config import StreamConfig
from engine.stream.core import run_blocks
from engine.timebase import FPS

if TYPE_CHECKING:
    from engine.avatar import Avatar
    from engine.stream.session import PendingBlock, Session

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# A batch of frames renders faster in one call on every renderer but ONNX Runtime's on a CPU
# above 256 px, which renders those one by one (docs/bench.md): on a CPU 4 frames of 256 px
# were measured 8-45% faster in one call than in 4, and at 512 px PyTorch's one call is 10-17%
# faster (with `engine.memory.keep_freed_memory`; before it the batch's temporaries were
# faulted in afresh and one call was slower), ONNX Runtime's 66% slower in one run of two.
CPU_BATCH_RENDER_MAX_SIZE = 256


def renders_in_batches(renderer_backend: str, size: int) -> bool:
    """The default of `StreamEngine.batch_renders`: yes, but in ONNX Runtime on a CPU above
    256 px."""
    return renderer_backend != ORT_CPU or size <= CPU_BATCH_RENDER_MAX_SIZE


class ManualClock:
    """A clock that only moves when told to: live-mode tests without sleeping."""

    def __init__(self, start: float = 0.0):
        self.now = start
        self._listeners: list[Callable[[], None]] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for wake in list(self._listeners):
            wake()

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._listeners.append(wake)

    def unsubscribe(self, wake: Callable[[], None]) -> None:
        if wake in self._listeners:
            self._listeners.remove(wake)


class _Worker:
    """A worker thread and its own stop flag (read and written under the engine's lock)."""

    def __init__(self) -> None:
        self.thread: threading.Thread
        self.stop = False


class StreamEngine:
    """Models, renderers and worker threads shared by live sessions.

    ``clock``: ``"monotonic"`` (live, the default), any ``() -> seconds`` callable (live), or
    None (offline). ``torch_threads``: intra-op threads set for the process when the engine is
    made (None leaves PyTorch's setting alone). ``max_batch``: sessions whose blocks run
    together (1: no batching); ``batch_window_ms``: how much later than the soonest due a
    session's block may be due to join its batch (None: one hop); ``batch_renders``: render
    the frames of a batch's sessions that share an avatar in one call (None: on a GPU
    renderer, and on a CPU one up to 256 px, where it was measured faster). See the module
    docstring."""

    def __init__(
        self,
        models: MotionModels,
        config: StreamConfig | None = None,
        clock: Clock | str | None = "monotonic",
        workers: int = 1,
        torch_threads: int | None = 1,
        max_batch: int = 1,
        batch_window_ms: float | None = None,
        batch_renders: bool | None = None,
    ):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer of at least 1, got {max_batch!r}")
        if batch_window_ms is not None and not batch_window_ms >= 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {batch_window_ms!r}")
        self.models = models
        self.config = config or StreamConfig()
        if clock == "monotonic":
            clock = time.monotonic
        elif isinstance(clock, str):
            raise ValueError(f"clock must be 'monotonic', a callable or None, got {clock!r}")
        self.clock: Clock | None = clock
        self.num_workers = workers
        self.max_batch = max_batch
        hop_ms = self.config.hop_frames * 1000.0 / FPS
        self.batch_window = (hop_ms if batch_window_ms is None else batch_window_ms) / 1000.0
        self._batch_renders = batch_renders
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        for m in (models.emodiff, models.refiner):
            if m is not None:
                m.eval()
        self._cond = threading.Condition()
        self._sessions: list[Session] = []
        self._workers: list[_Worker] = []
        self._running = 0  # workers running a batch (engine lock)
        # portraits loaded for sessions opened by path (or the default), shared while in use
        self._avatars: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._avatars_lock = threading.Lock()
        if isinstance(self.clock, ManualClock):
            self.clock.subscribe(self.wake)

    @property
    def live(self) -> bool:
        return self.clock is not None

    def now(self) -> float:
        return self.clock() if self.clock is not None else 0.0

    # ---- sessions -------------------------------------------------------------------------
    def open_session(
        self,
        avatar: Avatar | str | None = None,
        emotion: str | int = "neutral",
        intensity: int = 2,
        seed: int | None = None,
        style_clip=None,
        render: bool = True,
        size: int = 256,
        on_frames: Callable[[], None] | None = None,
    ) -> Session:
        """A new live session (see `engine.stream.session.Session`)."""
        from engine.stream.session import Session

        session = Session(self, avatar, emotion, intensity, seed, style_clip, render, size,
                          on_frames)  # fmt: skip
        with self._cond:
            self._sessions.append(session)
            self._start_workers()
            self._cond.notify_all()
        return session

    def renderer(self, size: int) -> Runner:
        """The renderer of ``size`` px frames on the models' backend (`MotionModels.nets`):
        ``renderer(motion (B, 58), *avatar.render_inputs()) -> (B, 3, size, size)``."""
        return self.models.nets.renderer(size)

    def avatar(self, avatar: Avatar | str | None, size: int) -> Avatar:
        """``avatar`` itself, or the avatar of a portrait file (the default portrait when
        None) at ``size``, loaded once while sessions use it: sessions opened on the same
        portrait share one `Avatar`, so their frames render in one call when batched. A file
        that changed (time, size) since is loaded again."""
        if avatar is not None and not isinstance(avatar, str):
            return avatar
        from engine.avatar import DEFAULT_PORTRAIT, load_avatar

        path = DEFAULT_PORTRAIT if avatar is None else Path(avatar)
        try:
            st = path.stat()
        except OSError:
            return load_avatar(avatar, size)  # it says what is wrong with the file
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size, size)
        with self._avatars_lock:
            found = self._avatars.get(key)
        if found is None:  # loaded outside the lock: registering a portrait takes seconds
            loaded = load_avatar(avatar, size)
            with self._avatars_lock:
                found = self._avatars.setdefault(key, loaded)
        return found

    def batch_renders(self, size: int) -> bool:
        """Whether a batch's frames of ``size`` px that share an avatar render in one call
        (``__init__``'s ``batch_renders``; by default `renders_in_batches`)."""
        if self._batch_renders is not None:
            return self._batch_renders
        return renders_in_batches(self.models.nets.renderer_kind(size, batch=2), size)

    def _remove(self, session: Session) -> None:
        with self._cond:
            # a block of it may be running; unless this is the thread running it (a frame
            # callback closing a session of its own batch), wait for the block to end
            while session._busy is not None and session._busy is not threading.current_thread():
                self._cond.wait()
            if session in self._sessions:
                self._sessions.remove(session)
            last = not self._sessions
            self._cond.notify_all()
        if last:
            self._stop_workers()

    @property
    def sessions(self) -> list[Session]:
        with self._cond:
            return list(self._sessions)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Close every session and join the workers."""
        for s in self.sessions:
            s.close()
        self._stop_workers()
        if isinstance(self.clock, ManualClock):
            self.clock.unsubscribe(self.wake)

    def __enter__(self) -> StreamEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- workers --------------------------------------------------------------------------
    def _start_workers(self) -> None:  # holding _cond
        self._workers = [w for w in self._workers if w.thread.is_alive() and not w.stop]
        while len(self._workers) < self.num_workers:
            worker = _Worker()
            worker.thread = threading.Thread(
                target=self._work,
                args=(worker,),
                name=f"dreamtalk-stream-{len(self._workers)}",
                daemon=True,
            )
            self._workers.append(worker)
            worker.thread.start()

    def _stop_workers(self) -> None:
        # Each worker has its own stop flag: with one shared flag, a session closing while
        # another opens could clear it before a worker saw it, and the join never returned.
        with self._cond:
            workers, self._workers = self._workers, []
            for w in workers:
                w.stop = True
            self._cond.notify_all()
        for w in workers:
            if w.thread is not threading.current_thread():
                w.thread.join()
        with self._cond:
            if self._sessions:  # a session opened meanwhile
                self._start_workers()

    def _pick(self, now: float) -> tuple[list[Session], float | None]:
        """The runnable session with the earliest due frame, batched with up to
        ``max_batch - 1`` others that are runnable now and due within ``batch_window`` of it
        (soonest first), their share when other workers are idle; else no session, and when
        to look again."""
        ready: list[tuple[float, Session]] = []
        wake_at = None
        for s in self._sessions:
            if s._busy is not None or s._closed:
                continue
            due, event = s._schedule(now)
            if due is not None:
                ready.append((due, s))
            if event is not None and (wake_at is None or event < wake_at):
                wake_at = event
        if not ready:
            return [], wake_at
        ready.sort(key=lambda r: r[0])  # stable: ties go in the order sessions opened
        last = ready[0][0] + self.batch_window
        batch = [s for due, s in ready if due <= last]
        # share them with the idle workers: one worker running every session's block while
        # another waits would use one core of two
        idle = max(1, len(self._workers) - self._running)
        return batch[: min(self.max_batch, -(-len(batch) // idle))], wake_at

    def _work(self, me: _Worker) -> None:
        while True:
            with self._cond:
                while True:
                    if me.stop:
                        return
                    now = self.now()
                    batch, wake_at = self._pick(now)
                    if batch:
                        for session in batch:
                            session._busy = me.thread
                        self._running += 1
                        break
                    timeout = None
                    if wake_at is not None and not isinstance(self.clock, ManualClock):
                        timeout = max(0.0, wake_at - now)
                    self._cond.wait(timeout)
            try:
                self._run_batch(batch)
            except Exception as err:  # a bug here must not take the worker down
                for session in batch:
                    self._failed(session, err)
            finally:
                with self._cond:
                    for session in batch:
                        session._busy = None
                    self._running -= 1
                    self._cond.notify_all()

    def _run_batch(self, batch: list[Session]) -> None:
        """One block of each session in ``batch`` that can run (`Session._begin_block`), the
        networks called once for all of them, then their frames rendered and queued."""
        from engine.stream.session import deliver_blocks

        start = self.now()
        pending: list[PendingBlock] = []
        for session in batch:
            try:
                block = session._begin_block(start)
            except Exception as err:  # a bug in one session must not take the others down
                self._failed(session, err)
                continue
            if block is not None:
                pending.append(block)
        done = []
        for block, frames in zip(pending, run_blocks([b.session.core for b in pending]),
                                 strict=True):  # fmt: skip
            if isinstance(frames, Exception):
                self._failed(block.session, frames)
            else:
                block.frames = frames
                done.append(block)
        deliver_blocks(done, self.batch_renders)

    @staticmethod
    def _failed(session: Session, err: Exception) -> None:
        log.error("session %s failed", session.id, exc_info=err)
        session._fail(err)

    def wait_idle(self, session: Session, timeout: float | None = None) -> bool:
        """Block until ``session`` has nothing it could run now; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if session._closed:
                    return True
                if not session._busy and session._schedule(self.now())[0] is None:
                    return True
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 0.5)
