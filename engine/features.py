"""Log-mel features: the one audio representation every model reads.

80 mel bins, 25 ms Hann window, 10 ms hop, so four feature frames per 40 ms video frame.
Framing is fixed to the sample clock, which makes the features of a stream identical to the
features of the whole file (chunk-size invariance): feature frame ``j`` is centred on sample
``160 * j + 80`` and covers samples ``[160 j - 120, 160 j + 280)``, zero outside the signal.
Video frame ``i`` owns feature frames ``4 i .. 4 i + 3``, centred inside its 640 samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from engine.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 80
    f_min: float = 55.0
    f_max: float = 7600.0
    log_floor: float = 1e-5


MEL = MelConfig()
MELS_PER_FRAME = SAMPLES_PER_FRAME // MEL.hop_length  # 4
# Samples a feature frame reaches past its own hop: what a stream must wait for.
MEL_LOOKAHEAD_SAMPLES = MEL.win_length - MEL.hop_length - (MEL.win_length - MEL.hop_length) // 2
_LEFT_PAD = (MEL.win_length - MEL.hop_length) // 2  # 120


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=4)
def mel_filterbank(cfg: MelConfig = MEL) -> np.ndarray:
    """HTK-style triangular filters, shape (n_mels, n_fft // 2 + 1), each normalised by width."""
    freqs = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank *= 2.0 / (upper - lower)  # equal area: a flat spectrum gives flat mel energies
    return bank.astype(np.float32)


@lru_cache(maxsize=4)
def _window(cfg: MelConfig = MEL) -> np.ndarray:
    return np.hanning(cfg.win_length + 1)[:-1].astype(np.float32)


def log_mel(audio: np.ndarray, num_frames: int | None = None, cfg: MelConfig = MEL) -> np.ndarray:
    """Log-mel features of 16 kHz mono float audio, shape (4 * num_frames, n_mels), float32.

    ``num_frames`` video frames (default: ``ceil(len(audio) / 640)``); audio past the end is
    taken as silence. Frame-exact: ``log_mel(a)[4*i:4*i+4]`` only depends on
    ``a[640*i - 120 : 640*i + 760]``.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if num_frames is None:
        num_frames = -(-len(audio) // SAMPLES_PER_FRAME)
    n = num_frames * MELS_PER_FRAME
    if n == 0:
        return np.zeros((0, cfg.n_mels), np.float32)
    total = _LEFT_PAD + (n - 1) * cfg.hop_length + cfg.win_length
    padded = np.zeros(total, np.float32)
    body = audio[: total - _LEFT_PAD]
    padded[_LEFT_PAD : _LEFT_PAD + len(body)] = body
    frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.win_length)[:: cfg.hop_length][:n]
    spectrum = np.fft.rfft(frames * _window(cfg), n=cfg.n_fft, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    mel = power.astype(np.float32) @ mel_filterbank(cfg).T
    return np.log(np.maximum(mel, cfg.log_floor)).astype(np.float32)
