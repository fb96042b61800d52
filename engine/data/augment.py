"""Audio for the corpus: resampling to 16 kHz and augmentation, in numpy.

espeak's audio is clean, level and dry; a model trained on it alone learns espeak, not speech.
`augment` puts the speech in a room (synthetic reverb), adds background noise at 5-30 dB SNR
(white, pink, brown, babble-like, hum, fan), passes it through a microphone or a phone
(band limits, tilt) and sets a random recording level, so the features vary the way real
recordings do while the timing, which the motion targets follow, stays put.

Everything is FFT-based (no scipy): one rfft per filter, reverb by FFT convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.timebase import SAMPLE_RATE


def _next_fast_len(n: int) -> int:
    """Smallest 2^a * 3^b * 5^c >= n: FFT lengths numpy's pocketfft handles fast."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            q = p35
            while q < n:
                q *= 2
            best = min(best, q)
            p35 *= 3
        p5 *= 5
    return best


def resample(audio: np.ndarray, rate: int, new_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling by FFT (zero-padded, with a soft roll-off below the new Nyquist).

    Exact for band-limited content; the padding keeps the circular wrap out of the signal.
    Output length is ``round(len(audio) * new_rate / rate)``.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if rate == new_rate or len(audio) == 0:
        return audio.copy()
    out_len = int(round(len(audio) * new_rate / rate))
    pad = max(256, int(0.02 * rate))
    # Frequencies must map exactly between the two grids: n_out / n_in = new_rate / rate.
    g = int(np.gcd(rate, new_rate))
    step_in, step_out = rate // g, new_rate // g
    blocks = _next_fast_len(-(-(len(audio) + pad) // step_in))
    n_in, n_out = blocks * step_in, blocks * step_out
    spec = np.fft.rfft(audio, n=n_in)
    keep = min(len(spec), n_out // 2 + 1)
    spec = spec[:keep]
    freqs = np.arange(keep) * rate / n_in
    nyq = min(rate, new_rate) / 2
    # Raised-cosine roll-off over the top 10% below the lower Nyquist: no ringing at the edge.
    lo = 0.9 * nyq
    taper = np.clip((nyq - freqs) / (nyq - lo), 0.0, 1.0)
    spec = spec * (0.5 - 0.5 * np.cos(np.pi * taper))
    out = np.fft.irfft(spec, n=n_out) * (n_out / n_in)
    return out[:out_len].astype(np.float32)


def _colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    spec *= f ** (-exponent / 2.0)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n=n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def _spectral_filter(x: np.ndarray, gain_of_hz) -> np.ndarray:
    n = len(x)
    spec = np.fft.rfft(x)
    spec *= gain_of_hz(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE))
    return np.fft.irfft(spec, n=n).astype(np.float32)


def _band(f: np.ndarray, low: float, high: float, order: float = 4.0) -> np.ndarray:
    """Magnitude of a Butterworth-like band-pass (high-pass at low, low-pass at high)."""
    hp = 1.0 / np.sqrt(1.0 + (low / np.maximum(f, 1e-3)) ** (2 * order)) if low > 0 else 1.0
    lp = 1.0 / np.sqrt(1.0 + (f / high) ** (2 * order)) if high > 0 else 1.0
    return hp * lp


NOISE_KINDS = ("white", "pink", "brown", "babble", "hum", "fan")


def make_noise(rng: np.random.Generator, n: int, kind: str | None = None) -> np.ndarray:
    """Unit-RMS background noise of a random (or the given) kind, ``n`` samples at 16 kHz."""
    kind = kind or str(rng.choice(NOISE_KINDS, p=[0.15, 0.25, 0.15, 0.2, 0.1, 0.15]))
    if kind == "white":
        x = rng.standard_normal(n).astype(np.float32)
    elif kind == "pink":
        x = _colored_noise(rng, n, 1.0)
    elif kind == "brown":
        x = _colored_noise(rng, n, 2.0)
    elif kind == "babble":
        # Speech-shaped noise with a syllable-rate (3-6 Hz) envelope: distant talkers.
        shaped = _spectral_filter(
            rng.standard_normal(n).astype(np.float32), lambda f: _band(f, 150.0, 3000.0, 2.0)
        )
        t = np.arange(n) / SAMPLE_RATE
        env = np.ones(n, np.float32)
        for _ in range(int(rng.integers(2, 5))):
            rate = rng.uniform(3.0, 6.0)
            env += 0.6 * np.maximum(0.0, np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.28)))
        x = shaped * env
    elif kind == "hum":
        base = rng.choice([50.0, 60.0])
        t = np.arange(n) / SAMPLE_RATE
        x = sum(
            rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.28))
            for k in range(1, 8)
        )
        x = np.asarray(x, np.float32) + 0.1 * _colored_noise(rng, n, 1.0)
    elif kind == "fan":
        lo, hi = rng.uniform(80, 300), rng.uniform(800, 3000)
        x = _spectral_filter(
            rng.standard_normal(n).astype(np.float32), lambda f: _band(f, lo, hi, 1.5)
        )
    else:
        raise ValueError(f"unknown noise kind {kind!r}; one of {NOISE_KINDS}")
    x = np.asarray(x, np.float32)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def room_impulse_response(
    rng: np.random.Generator, rt60: float, direct_ratio_db: float
) -> np.ndarray:
    """A synthetic RIR: a direct path, sparse early reflections, an exponential noise tail.

    ``rt60`` seconds to decay by 60 dB; ``direct_ratio_db`` direct-to-reverberant energy.
    """
    length = int(min(rt60 * 1.2, 1.0) * SAMPLE_RATE) + 1
    t = np.arange(length) / SAMPLE_RATE
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60)  # 6.9 = ln(1000)
    onset = int(rng.uniform(0.002, 0.012) * SAMPLE_RATE)  # reverb starts after the direct path
    tail[:onset] = 0.0
    for _ in range(int(rng.integers(3, 9))):  # early reflections off walls, floor, desk
        k = int(rng.uniform(0.002, 0.04) * SAMPLE_RATE)
        if k < length:
            tail[k] += rng.uniform(-1, 1) * np.exp(-6.9078 * k / SAMPLE_RATE / rt60) * 3.0
    # Walls absorb highs: darken the tail a little.
    tail = _spectral_filter(tail.astype(np.float32), lambda f: _band(f, 0.0, rng.uniform(3e3, 8e3)))
    tail *= np.sqrt(10 ** (-direct_ratio_db / 10) / (np.sum(tail**2) + 1e-12))
    tail[0] += 1.0
    return tail.astype(np.float32)


def fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Linear convolution, truncated to ``len(x)``."""
    n = _next_fast_len(len(x) + len(h) - 1)
    y = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(h, n), n)
    return y[: len(x)].astype(np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    noise_prob: float = 0.9
    snr_db: tuple[float, float] = (5.0, 30.0)
    reverb_prob: float = 0.5
    rt60: tuple[float, float] = (0.15, 0.9)
    direct_ratio_db: tuple[float, float] = (-3.0, 12.0)
    phone_prob: float = 0.12  # 300-3400 Hz telephone band
    mic_prob: float = 0.5  # low cut, high roll-off, spectral tilt of a cheap microphone
    level_dbfs: tuple[float, float] = (-38.0, -16.0)  # speech RMS after augmentation
    clip_prob: float = 0.03
    listen_noise_dbfs: tuple[float, float] = (-65.0, -35.0)


def _active_rms(x: np.ndarray, speech_mask: np.ndarray | None) -> float:
    if speech_mask is not None and speech_mask.any():
        x = x[speech_mask]
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-9)


def augment(
    audio: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig = AugmentConfig(),
    speech_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, float | str]]:
    """Augmented copy of 16 kHz ``audio`` and a record of what was done to it.

    ``speech_mask`` (bool per sample) marks where speech is, so the SNR is the speech's and
    not diluted by pauses; with no speech at all (a listening sample) the noise is set to an
    absolute level instead.
    """
    x = np.asarray(audio, np.float32).copy()
    n = len(x)
    info: dict[str, float | str] = {}
    has_speech = speech_mask is not None and bool(speech_mask.any())
    if speech_mask is None:
        has_speech = bool(np.abs(x).max() > 0) if n else False

    if has_speech and rng.random() < cfg.reverb_prob:
        rt60 = float(rng.uniform(*cfg.rt60))
        drr = float(rng.uniform(*cfg.direct_ratio_db))
        x = fft_convolve(x, room_impulse_response(rng, rt60, drr))
        info.update(rt60=rt60, drr_db=drr)

    speech_rms = _active_rms(x, speech_mask) if has_speech else 0.0
    if rng.random() < cfg.noise_prob or not has_speech:
        kind = str(rng.choice(NOISE_KINDS, p=[0.15, 0.25, 0.15, 0.2, 0.1, 0.15]))
        noise = make_noise(rng, n, kind)
        if has_speech:
            snr = float(rng.uniform(*cfg.snr_db))
            x = x + noise * (speech_rms / 10 ** (snr / 20))
            info.update(noise=kind, snr_db=snr)
        else:
            level = float(rng.uniform(*cfg.listen_noise_dbfs))
            x = noise * 10 ** (level / 20)
            info.update(noise=kind, noise_dbfs=level)

    if rng.random() < cfg.phone_prob:
        lo, hi = rng.uniform(250, 400), rng.uniform(3000, 3700)
        x = _spectral_filter(x, lambda f: _band(f, lo, hi, 4.0))
        info.update(band="phone", low_hz=lo, high_hz=hi)
    elif rng.random() < cfg.mic_prob:
        lo, hi = rng.uniform(40, 220), rng.uniform(4500, 8000)
        tilt = rng.uniform(-6.0, 6.0)  # dB per decade above 1 kHz

        def mic(f: np.ndarray) -> np.ndarray:
            slope = 10 ** (tilt * np.log10(np.maximum(f, 1.0) / 1000.0) / 20)
            return _band(f, lo, hi, 2.0) * np.clip(slope, 0.1, 4.0)

        x = _spectral_filter(x, mic)
        info.update(band="mic", low_hz=lo, high_hz=hi, tilt_db=tilt)

    if has_speech:
        level = float(rng.uniform(*cfg.level_dbfs))
        x = x * (10 ** (level / 20) / _active_rms(x, speech_mask))
        info["level_dbfs"] = level
        if rng.random() < cfg.clip_prob:
            limit = float(np.abs(x).max()) * rng.uniform(0.3, 0.7)
            x = np.clip(x, -limit, limit)
            info["clipped"] = limit
    peak = float(np.abs(x).max()) if n else 0.0
    if peak > 0.99:  # never wrap around in int16
        x *= 0.99 / peak
    return x.astype(np.float32), info


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
