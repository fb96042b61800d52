"""The shared runner: worker threads that step every open session's core when it is due.

One `StreamEngine` serves many sessions with one `MotionModels` and one renderer per frame
size, both on the backend the models were given (`MotionModels.use_backend`; PyTorch unless
told otherwise). Sessions never compute on the caller's thread: `push_audio` and the other
session calls only queue work under a short lock, and ``workers`` threads (default 1) pick the
session whose next frame is due soonest (earliest deadline first), run one block of it and
render its frames.
Two workers use two cores: PyTorch releases the GIL inside its ops, and each worker runs one
session's block at a time with one intra-op thread.

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
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from engine.backends import Runner
from engine.motion_model import MotionModels
from engine.stream.config import StreamConfig

if TYPE_CHECKING:
    from engine.avatar import Avatar
    from engine.stream.session import Session

log = logging.getLogger(__name__)

Clock = Callable[[], float]


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
    made (None leaves PyTorch's setting alone)."""

    def __init__(
        self,
        models: MotionModels,
        config: StreamConfig | None = None,
        clock: Clock | str | None = "monotonic",
        workers: int = 1,
        torch_threads: int | None = 1,
    ):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.models = models
        self.config = config or StreamConfig()
        if clock == "monotonic":
            clock = time.monotonic
        elif isinstance(clock, str):
            raise ValueError(f"clock must be 'monotonic', a callable or None, got {clock!r}")
        self.clock: Clock | None = clock
        self.num_workers = workers
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        for m in (models.emodiff, models.refiner):
            if m is not None:
                m.eval()
        self._cond = threading.Condition()
        self._sessions: list[Session] = []
        self._workers: list[_Worker] = []
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

    def _remove(self, session: Session) -> None:
        with self._cond:
            while session._busy:
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

    def _pick(self, now: float) -> tuple[Session | None, float | None]:
        """The runnable session with the earliest due frame, else when to look again."""
        best, best_due, wake_at = None, None, None
        for s in self._sessions:
            if s._busy or s._closed:
                continue
            due, event = s._schedule(now)
            if due is not None and (best_due is None or due < best_due):
                best, best_due = s, due
            if event is not None and (wake_at is None or event < wake_at):
                wake_at = event
        return best, wake_at

    def _work(self, me: _Worker) -> None:
        while True:
            with self._cond:
                while True:
                    if me.stop:
                        return
                    now = self.now()
                    session, wake_at = self._pick(now)
                    if session is not None:
                        session._busy = True
                        break
                    timeout = None
                    if wake_at is not None and not isinstance(self.clock, ManualClock):
                        timeout = max(0.0, wake_at - now)
                    self._cond.wait(timeout)
            try:
                session._run_block()
            except Exception as err:  # a bug in one session must not take the others down
                log.exception("session %s failed", session.id)
                session._fail(err)
            finally:
                with self._cond:
                    session._busy = False
                    self._cond.notify_all()

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
