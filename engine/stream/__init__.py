"""Live streaming: sessions that turn a jittery audio stream into 25 fps frames.

See docs/streaming.md. `StreamEngine` holds the shared models, renderers and worker threads;
`StreamEngine.open_session` (or the module-level `open_session`, on a default engine) makes a
`Session`; `render_motion` runs the same code path over a whole file, offline.
"""

from engine.stream.config import StreamConfig
from engine.stream.core import MotionFrame, SessionCore
from engine.stream.offline import render_motion
from engine.stream.session import Frame, PushResult, Session, SessionStats, open_session
from engine.stream.worker import ManualClock, StreamEngine

__all__ = [
    "Frame",
    "ManualClock",
    "MotionFrame",
    "PushResult",
    "Session",
    "SessionCore",
    "SessionStats",
    "StreamConfig",
    "StreamEngine",
    "open_session",
    "render_motion",
]
