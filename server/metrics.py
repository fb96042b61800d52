"""Process metrics in the Prometheus text exposition format (``GET /metrics``).

Counters and histograms are plain Python objects updated from the event loop and from the
encoder threads (a lock keeps histogram updates whole); `Metrics.render` writes them out.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)
ENCODE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, cumulative = [], 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts, strict=False):
            cumulative += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        brace = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{brace} {self.total:.6f}", f"{name}_count{brace} {self.n}"]
        return out


class Metrics:
    """What `/metrics` reports. Sessions report into it; nothing here reads them back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sessions_open = 0
        self.sessions_total = 0
        self.sessions_rejected = 0
        self.frames_sent = 0
        self.frames_repeated = 0  # sent again because the engine dropped the next one
        self.frames_dropped = 0  # late in the engine, never rendered
        self.audio_in_seconds = 0.0
        self.latency = Histogram(LATENCY_BUCKETS)  # frame ready - its audio's arrival
        self.encode: dict[str, Histogram] = {}

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency.observe(seconds)

    def observe_encode(self, codec: str, seconds: float) -> None:
        with self._lock:
            self.encode.setdefault(codec, Histogram(ENCODE_BUCKETS)).observe(seconds)

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP dreamtalk_sessions Sessions open now.",
                "# TYPE dreamtalk_sessions gauge",
                f"dreamtalk_sessions {self.sessions_open}",
                "# HELP dreamtalk_sessions_total Sessions opened since the start.",
                "# TYPE dreamtalk_sessions_total counter",
                f"dreamtalk_sessions_total {self.sessions_total}",
                "# HELP dreamtalk_sessions_rejected_total Sessions refused (--max-sessions).",
                "# TYPE dreamtalk_sessions_rejected_total counter",
                f"dreamtalk_sessions_rejected_total {self.sessions_rejected}",
                "# HELP dreamtalk_frames_sent_total Video frames handed to encoders.",
                "# TYPE dreamtalk_frames_sent_total counter",
                f"dreamtalk_frames_sent_total {self.frames_sent}",
                "# HELP dreamtalk_frames_repeated_total Frames sent again for a dropped one.",
                "# TYPE dreamtalk_frames_repeated_total counter",
                f"dreamtalk_frames_repeated_total {self.frames_repeated}",
                "# HELP dreamtalk_frames_dropped_total Frames not rendered by their due time.",
                "# TYPE dreamtalk_frames_dropped_total counter",
                f"dreamtalk_frames_dropped_total {self.frames_dropped}",
                "# HELP dreamtalk_audio_in_seconds_total Speech audio received.",
                "# TYPE dreamtalk_audio_in_seconds_total counter",
                f"dreamtalk_audio_in_seconds_total {self.audio_in_seconds:.3f}",
                "# HELP dreamtalk_frame_latency_seconds A frame ready, after its audio arrived.",
                "# TYPE dreamtalk_frame_latency_seconds histogram",
                *self.latency.lines("dreamtalk_frame_latency_seconds"),
                "# HELP dreamtalk_encode_seconds Time to encode one frame.",
                "# TYPE dreamtalk_encode_seconds histogram",
            ]
            for codec, hist in sorted(self.encode.items()):
                lines += hist.lines("dreamtalk_encode_seconds", f'codec="{codec}"')
        return "\n".join(lines) + "\n"
