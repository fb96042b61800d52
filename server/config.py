"""The server's settings: one dataclass, filled from `dreamtalk serve`'s options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.avatar import CACHE_DIR
from engine.backends.kinds import BACKEND_CHOICES
from engine.stream.config import StreamConfig
from server.rtc import IceServer

# The engine's clock for the server (docs/server.md, "Latency"): audio from aiortc arrives in
# steady 20 ms packets (20 ms of jitter allowance, not 60) and blocks take 10-30 ms (a 25 ms
# compute margin, not 40): a playout delay of 4 frames + 7.5 + 20 + 25 = 212.5 ms, against the
# library's 267.5 ms. One frame of look-ahead instead of two was measured too: the audio comes
# back 40 ms sooner but the mouth lags it by 80 ms (it cannot anticipate), so no gain.
SERVER_STREAM = StreamConfig(jitter_ms=20.0, compute_margin_ms=25.0)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    avatar: str | None = None  # the default portrait (None: assets/portrait.png)
    size: int = 256  # rendered frame size, 256 or 512
    max_sessions: int = 4
    weights: str | None = None  # None: weights/
    workers: int = 1  # engine worker threads (cores for the models and the renderer)
    # Sessions whose blocks run in one call per network (cross-session batching,
    # docs/streaming.md); 1: off. Also the TensorRT engines' largest batch when above 8.
    max_batch: int = 8
    ice_servers: list[IceServer] = field(default_factory=list)  # none: host candidates only
    ice_hosts: list[str] = field(default_factory=list)  # addresses ICE gathers (None: auto)
    video_codec: str = "vp8"  # default when the offer does not ask
    avatar_dir: Path = CACHE_DIR / "uploads"
    max_upload_bytes: int = 10 * 1024 * 1024
    media_timeout_s: float = 10.0  # no audio from a publisher this long: it is gone
    connect_timeout_s: float = 20.0  # ICE + DTLS must connect within this
    retry_after_s: int = 10  # told to clients refused for --max-sessions
    # The live engine's windows and clock (docs/streaming.md): the latency/quality trade-off.
    stream: StreamConfig = SERVER_STREAM
    # What runs the networks (docs/export.md): auto takes the fastest the machine has (on this
    # project's CPU machines, ONNX Runtime for the motion networks: 3-4x PyTorch's speed).
    backend: str = "auto"
    engine_dir: Path | None = None  # exported ONNX / TensorRT files (None: the user's cache)
    fp16: bool = False  # TensorRT engines in FP16 where the GPU has it

    def __post_init__(self) -> None:
        if self.size not in (256, 512):
            raise ValueError(f"--size must be 256 or 512, got {self.size}")
        if self.max_sessions < 1:
            raise ValueError(f"--max-sessions must be at least 1, got {self.max_sessions}")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.video_codec not in ("vp8", "h264"):
            raise ValueError(f"--video-codec must be vp8 or h264, got {self.video_codec!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be 1-65535, got {self.port}")
        if self.backend not in BACKEND_CHOICES:
            raise ValueError(
                f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {self.backend!r}"
            )
