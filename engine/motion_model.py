"""Inference API over the trained networks: audio features, style, EmoDiff windows, lip refinement.

`MotionModels` is what the streaming engine, `dreamtalk render` and `dreamtalk eval` call. All
motion in and out of it is *raw* (ARKit weights in [0, 1], pose in radians / face units), shape
(B, frames, MOTION_DIM); normalisation is internal.

Timing constants (video frames of 40 ms):

- ``lookahead`` = AUDIO_LOOKAHEAD_FRAMES = 2: the audio feature of frame i needs the audio of
  frames up to i + 2 (80 ms, plus the mel window's 7.5 ms); ``left_context`` = 14 frames of past
  mel (silence at a session's start). `encode_audio` maps a mel span of
  ``4 (left_context + n + lookahead)`` rows to ``n`` features.
- ``seq_len`` = K + W = 8 + 8: one EmoDiff call denoises 16 frames. The first ``n_known``
  frames are given (initial state: frames already emitted), the rest are generated.

- ``refiner_context`` = 32: the lip refiner is causal; refining H new frames of EmoDiff's
  (unrefined) motion together with the 32 frames before them gives exactly the offline result.
- ``lip_lookahead`` = 3: the refiner's own audio encoder (the default recipe's) looks a frame
  further ahead than EmoDiff's; ``audio_lookahead`` (the larger) is what a live block waits for.

The live loop this is built for (hop H = 1 frame, EmoDiff every E = 4; `engine.stream.core`)::

    every H new frames of audio (plus the look-ahead):
        feats     += encode_audio(mel of the block's frames, EmoDiff's look-ahead)
        lip_feats += encode_lip_audio(mel of the block's frames, the refiner's look-ahead)
        every E frames:
            known  = the last 12 frames EmoDiff made (the whole overlap)
            window = sample_window(feats[-16:], style, known, steps=4)   # (1, 16, 58)
            raw   += window[:, -E:]                                      # EmoDiff's new frames
        out = refine_lips(lip_feats[-32 - H:], raw[-32 - H:], style)[:, -H:]
        emit out

The window overlaps the previous one by 12 frames, which are given as initial state rather than
regenerated, so the new frames continue the emitted ones without a seam (what a crossfade over
the overlap would otherwise have to hide). The model was trained for every known count from 0
to 15. Waiting: (H + audio_lookahead) x 40 ms = 160 ms, plus the mel window's 7.5 ms, plus
compute. Offline generation (`generate`) uses the same calls with K = 8 known frames and
W = 8 new ones per window, then refines the whole utterance at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from engine.blendshapes import MOTION_DIM, NUM_BLENDSHAPES
from engine.checkpoint import load_model
from engine.diffusion import Denoiser, sample_ddim, sample_student, x_from_v
from engine.emotions import check_intensity, emotion_index
from engine.features import MELS_PER_FRAME
from engine.models import EmoDiff, LipRefiner, LSTMBaseline, pad_mel
from engine.models.audio_encoder import SILENCE_LOG_MEL, AudioEncoderConfig

if TYPE_CHECKING:
    from engine.backends import Networks

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_FILES = {
    "emodiff": "emodiff_student.pt",  # distilled, few-step, guidance built in
    "teacher": "emodiff.pt",  # the full sampler (64-step DDIM with two calls per step)
    "refiner": "lips.pt",
    "lstm": "lstm.pt",
}
DEFAULT_GUIDANCE = 2.0
FULL_SAMPLER_STEPS = 64


Network = Callable[..., torch.Tensor]  # EmoDiff's forward, or a backend's runner of it


def guided_x(
    model: EmoDiff,
    z: torch.Tensor,
    t: torch.Tensor,
    known: torch.Tensor,
    known_mask: torch.Tensor,
    feats: torch.Tensor,
    style: torch.Tensor,
    guidance: torch.Tensor,
    net: Network | None = None,
) -> torch.Tensor:
    """Guided clean estimate x_w, normalised units, for a guidance scale per sequence (B,).

    A teacher applies classifier-free guidance with two predictions (style and null style,
    batched into one call of twice the batch). A student distilled with guidance reads the
    scale as an input: one call of the batch itself. ``net`` replaces the network call (an
    exported one-step graph, `engine.backends`); ``model`` still gives the config and the
    null style."""
    net = model if net is None else net
    if model.cfg.guidance_embed:
        return x_from_v(z, t, net(z, t, known, known_mask, feats, style, guidance))
    b = z.shape[0]
    two = (
        torch.cat([z, z]),
        torch.cat([t, t]),
        torch.cat([known, known]),
        torch.cat([known_mask, known_mask]),
        torch.cat([feats, feats]),
    )
    v = net(*two, torch.cat([style, model.style.null(b)]))
    x_cond, x_uncond = x_from_v(two[0], two[1], v).chunk(2)
    return x_uncond + guidance[:, None, None] * (x_cond - x_uncond)


def emodiff_denoiser(
    model: EmoDiff,
    feats: torch.Tensor,
    known: torch.Tensor,
    known_mask: torch.Tensor,
    style: torch.Tensor,
    guidance: float | torch.Tensor,
    net: Network | None = None,
) -> Denoiser:
    """D(z, t) -> x_hat for one EmoDiff, normalised units, known frames put back.

    Guidance as in `guided_x`, a float or a (B,) tensor (a graph input when the sampler is
    exported); a teacher at a float scale of 1 (pure conditional) or 0 (null style only) needs
    one call instead of two."""
    b = feats.shape[0]
    m = known_mask[..., None]
    if isinstance(guidance, torch.Tensor):
        w, scale = guidance, None
    else:
        w, scale = torch.full((b,), float(guidance)), float(guidance)
    call = model if net is None else net

    def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not model.cfg.guidance_embed and scale in (0.0, 1.0):
            s = style if scale == 1.0 else model.style.null(b)
            x = x_from_v(z, t, call(z, t, known, known_mask, feats, s))
        else:
            x = guided_x(model, z, t, known, known_mask, feats, style, w, net)
        return x * (1 - m) + known * m

    return denoise


def sample_emodiff(
    model: EmoDiff,
    feats: torch.Tensor,
    known: torch.Tensor,
    known_mask: torch.Tensor,
    style: torch.Tensor,
    steps: int,
    guidance: float | torch.Tensor,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    net: Network | None = None,
) -> torch.Tensor:
    """One window, normalised units in and out: (B, K + W, MOTION_DIM).

    ``noise`` (drawn from ``generator`` when None) is the sampler's start; ``net`` replaces
    the network call (see `guided_x`)."""
    if noise is None:
        noise = torch.randn(known.shape, generator=generator)
    denoise = emodiff_denoiser(model, feats, known, known_mask, style, guidance, net)
    sampler = sample_student if model.cfg.guidance_embed else sample_ddim
    return sampler(denoise, noise, steps)


def clamp_motion(motion: torch.Tensor) -> torch.Tensor:
    """Blendshape weights into [0, 1]; pose untouched."""
    return torch.cat([motion[..., :NUM_BLENDSHAPES].clamp(0, 1), motion[..., NUM_BLENDSHAPES:]], -1)


@dataclass
class MotionModels:
    """The trained networks for inference (float32, eval mode, no grad)."""

    emodiff: EmoDiff  # the sampler used by default: the distilled student when there is one
    refiner: LipRefiner | None = None
    teacher: EmoDiff | None = None  # the undistilled model, for the full sampler
    lstm: LSTMBaseline | None = None
    steps: int = 4  # default sampler steps of `emodiff`
    guidance: float = DEFAULT_GUIDANCE
    # checkpoint each network came from ("emodiff", "refiner", ...), when loaded from files
    sources: dict[str, Path] = field(default_factory=dict)
    # what runs the network calls of `emodiff` and `refiner` (`use_backend`); None: PyTorch
    networks: Networks | None = field(default=None, repr=False)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        emodiff: str | Path,
        refiner: str | Path | None = None,
        teacher: str | Path | None = None,
        lstm: str | Path | None = None,
    ) -> MotionModels:
        model, meta = load_model(emodiff, "emodiff")
        steps = int(meta.get("sampler", {}).get("steps", FULL_SAMPLER_STEPS))
        guidance = float(meta.get("sampler", {}).get("guidance", DEFAULT_GUIDANCE))
        bundle = cls(emodiff=model, steps=steps, guidance=guidance)
        bundle.sources["emodiff"] = Path(emodiff)
        if refiner is not None:
            bundle.refiner = load_model(refiner, "lips")[0]
            bundle.sources["refiner"] = Path(refiner)
        if teacher is not None:
            bundle.teacher = load_model(teacher, "emodiff")[0]
            bundle.sources["teacher"] = Path(teacher)
        if lstm is not None:
            bundle.lstm = load_model(lstm, "lstm")[0]
            bundle.sources["lstm"] = Path(lstm)
        for m in (bundle.emodiff, bundle.refiner, bundle.teacher, bundle.lstm):
            if m is not None:
                m.requires_grad_(False)
        return bundle

    @classmethod
    def load_default(cls, weights_dir: str | Path = WEIGHTS_DIR) -> MotionModels:
        """The committed weights under ``weights/``: the student if present (else the teacher),
        the refiner, and, when present, the teacher and the LSTM baseline."""
        d = Path(weights_dir)
        paths = {k: d / f for k, f in DEFAULT_FILES.items()}
        main = paths["emodiff"] if paths["emodiff"].is_file() else paths["teacher"]
        if not main.is_file():
            names = f"{DEFAULT_FILES['emodiff']} or {DEFAULT_FILES['teacher']}"
            raise FileNotFoundError(f"{d}: no EmoDiff weights ({names}); see docs/models.md")

        def opt(key: str) -> Path | None:
            return paths[key] if paths[key].is_file() and paths[key] != main else None

        return cls.load(main, refiner=opt("refiner"), teacher=opt("teacher"), lstm=opt("lstm"))

    def use_backend(self, backend: str = "auto", **options) -> Networks:
        """Run the network calls through ``backend`` (auto, torch, onnxruntime, tensorrt; see
        `engine.backends.load_networks` for the options: engine_dir, threads, fp16, sizes...).
        Exported files are made (or reused) in the engine folder first."""
        from engine.backends import load_networks

        self.networks = load_networks(self, backend, **options)
        return self.networks

    @property
    def nets(self) -> Networks:
        """The network calls in use: PyTorch unless `use_backend` chose another backend."""
        if self.networks is None:
            from engine.backends import torch_networks

            self.networks = torch_networks(self)
        return self.networks

    # ---- constants the streaming engine needs -------------------------------------------
    @property
    def lookahead(self) -> int:
        return self.emodiff.cfg.audio.lookahead

    @property
    def left_context(self) -> int:
        return self.emodiff.cfg.audio.left_context

    @property
    def lip_audio_config(self) -> AudioEncoderConfig:
        """The encoder the lip refiner's features come from: its own, which may look further
        ahead than EmoDiff's (the mouth needs the audio to come, EmoDiff less), else EmoDiff's."""
        if self.refiner is None:
            return self.emodiff.cfg.audio
        return self.refiner.features_config(self.emodiff.cfg.audio)

    @property
    def lip_lookahead(self) -> int:
        return self.lip_audio_config.lookahead

    @property
    def lip_left_context(self) -> int:
        return self.lip_audio_config.left_context

    @property
    def audio_lookahead(self) -> int:
        """Frames of future audio a block of the live loop waits for: the larger look-ahead."""
        return max(self.lookahead, self.lip_lookahead)

    @property
    def init_frames(self) -> int:
        return self.emodiff.cfg.init_frames

    @property
    def window_frames(self) -> int:
        return self.emodiff.cfg.window_frames

    @property
    def seq_len(self) -> int:
        return self.emodiff.cfg.seq_len

    @property
    def refiner_context(self) -> int:
        """Frames before the first frame to refine that the refiner must be given (32)."""
        return self.refiner.cfg.receptive_field - 1 if self.refiner is not None else 0

    @property
    def style_clip_frames(self) -> int:
        return self.emodiff.cfg.style_clip_frames

    @property
    def lip_features_shared(self) -> bool:
        """Whether the lip refiner reads EmoDiff's audio features (else its own encoder's)."""
        return self.refiner is None or self.refiner.audio is None

    @property
    def lip_feature_dim(self) -> int:
        return self.refiner.cfg.audio_dim if self.refiner is not None else 0

    # ---- calls --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_audio(self, mel: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Mel span (B, 4 (left_context + n + lookahead), 80) -> features (B, n, dim)."""
        mel = torch.as_tensor(mel, dtype=torch.float32)
        return self.nets.audio_encoder(mel if mel.ndim == 3 else mel[None])

    @torch.no_grad()
    def encode_utterance(self, mel: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A whole utterance's mel (4T, 80) or (B, 4T, 80) -> (B, T, dim), silence around it."""
        mel = torch.as_tensor(mel, dtype=torch.float32)
        mel = mel if mel.ndim == 3 else mel[None]
        return self.nets.audio_encoder(pad_mel(mel, self.emodiff.cfg.audio))

    @torch.no_grad()
    def encode_lip_audio(self, mel: np.ndarray | torch.Tensor) -> torch.Tensor:
        """`encode_audio` for the lip refiner: its own encoder's features, when it has one."""
        if self.lip_features_shared:
            return self.encode_audio(mel)
        mel = torch.as_tensor(mel, dtype=torch.float32)
        return self.nets.lip_audio_encoder(mel if mel.ndim == 3 else mel[None])

    @torch.no_grad()
    def encode_lip_utterance(self, mel: np.ndarray | torch.Tensor) -> torch.Tensor:
        """`encode_utterance` for the lip refiner."""
        if self.lip_features_shared:
            return self.encode_utterance(mel)
        mel = torch.as_tensor(mel, dtype=torch.float32)
        mel = mel if mel.ndim == 3 else mel[None]
        return self.nets.lip_audio_encoder(pad_mel(mel, self.refiner.cfg.audio))

    @torch.no_grad()
    def style_from_emotion(self, emotion: str | int, intensity: int = 2) -> torch.Tensor:
        e = emotion_index(emotion) if isinstance(emotion, str) else int(emotion)
        i = check_intensity(intensity)
        return self.emodiff.style.from_emotion(torch.tensor([e]), torch.tensor([i]))

    @torch.no_grad()
    def style_from_clip(self, motion: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A few seconds of raw motion (N, MOTION_DIM) of the wanted emotion -> (1, dim).

        Longer clips are cut to their middle ``style_clip_frames`` frames."""
        clip = torch.as_tensor(motion, dtype=torch.float32)
        if clip.ndim != 2 or clip.shape[1] != MOTION_DIM or len(clip) < 2:
            want = f"(frames >= 2, {MOTION_DIM})"
            raise ValueError(f"a style clip is {want}, got {tuple(clip.shape)}")
        s = self.style_clip_frames
        if len(clip) > s:
            start = (len(clip) - s) // 2
            clip = clip[start : start + s]
        n = len(clip)
        padded = torch.zeros(1, s, MOTION_DIM)
        padded[0, :n] = self.emodiff.motion_norm.normalize(clip)
        mask = torch.zeros(1, s)
        mask[0, :n] = 1.0
        return self.emodiff.style.from_clip(padded, mask)

    @torch.no_grad()
    def null_style(self) -> torch.Tensor:
        return self.emodiff.style.null(1)

    def window_noise(
        self, generator: torch.Generator | None, batch: int = 1, model: EmoDiff | None = None
    ) -> torch.Tensor:
        """The sampler's start of ``batch`` windows, drawn from ``generator``: (batch, seq_len,
        MOTION_DIM). Drawn in Python, whatever runs the network, so every backend and every
        batch a session's window is run in start from the same noise."""
        model = self.emodiff if model is None else model
        return torch.randn((batch, model.cfg.seq_len, MOTION_DIM), generator=generator)

    @torch.no_grad()
    def sample_window(
        self,
        feats: torch.Tensor,
        style: torch.Tensor,
        known: np.ndarray | torch.Tensor | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        model: EmoDiff | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """EmoDiff windows: feats (B, seq_len, dim), style (B or 1, dim), known (B, n_known,
        MOTION_DIM) raw frames for the first n_known < seq_len positions (or None) ->
        (B, seq_len, MOTION_DIM) raw, the known frames returned as given.

        ``noise`` (B, seq_len, MOTION_DIM) is the sampler's start, one row per window: the
        batched entry, where each row is its own window (a session's, its noise drawn from
        that session's generator), so that a row's result does not depend on the rows batched
        with it (up to float rounding). None: drawn from ``generator`` (`window_noise`).
        ``model`` picks another EmoDiff (e.g. ``self.teacher`` for the full sampler)."""
        model = self.emodiff if model is None else model
        steps = self.steps if steps is None and model is self.emodiff else steps
        steps = FULL_SAMPLER_STEPS if steps is None else steps
        guidance = self.guidance if guidance is None else guidance
        b, t = feats.shape[:2]
        if t != model.cfg.seq_len:
            raise ValueError(f"a window is {model.cfg.seq_len} frames of features, got {t}")
        if noise is None:
            noise = self.window_noise(generator, b, model)
        elif noise.shape != (b, t, MOTION_DIM):
            raise ValueError(f"noise must be {(b, t, MOTION_DIM)}, got {tuple(noise.shape)}")
        known_n = torch.zeros(b, t, MOTION_DIM)
        mask = torch.zeros(b, t)
        if known is not None:
            k = torch.as_tensor(known, dtype=torch.float32)
            k = k if k.ndim == 3 else k[None]
            n = k.shape[1]
            if n >= t:
                raise ValueError(f"at most {t - 1} known frames in a window, got {n}")
            known_n[:, :n] = model.motion_norm.normalize(k)
            mask[:, :n] = 1.0
        style = style.expand(b, -1)
        x = self._sample(model, noise, known_n, mask, feats, style, steps, guidance)
        out = clamp_motion(model.motion_norm.denormalize(x))
        if known is not None:  # bit-exact pass-through of what was already emitted
            out[:, :n] = k
        return out

    def _sample(
        self,
        model: EmoDiff,
        noise: torch.Tensor,
        known: torch.Tensor,
        mask: torch.Tensor,
        feats: torch.Tensor,
        style: torch.Tensor,
        steps: int,
        guidance: float,
    ) -> torch.Tensor:
        """The window's sampler on the backend in use: the unrolled graph in one call when it
        was exported for these steps, else `sample_emodiff` with the backend's one-step
        network (or the PyTorch module: another model, or no step graph)."""
        nets = self.nets if model is self.emodiff else None
        if nets is not None and nets.sampler is not None and steps == nets.sampler_steps:
            w = torch.full((noise.shape[0],), float(guidance))
            return nets.sampler(noise, known, mask, feats, style, w)
        net = nets.denoiser_for(steps) if nets is not None else None
        return sample_emodiff(model, feats, known, mask, style, steps, guidance, None, noise, net)

    @torch.no_grad()
    def refine_lips(
        self, feats: torch.Tensor, motion: torch.Tensor, style: torch.Tensor
    ) -> torch.Tensor:
        """Re-predict mouth and jaw of raw motion (B, n, MOTION_DIM) from features (B, n, dim);
        every other channel comes back unchanged. Without a refiner: the motion as it is."""
        if self.refiner is None:
            return motion
        style = style.expand(motion.shape[0], -1)
        return self.nets.refiner(feats, motion, style)  # clamped (`export.graphs.RefinerCall`)

    @torch.no_grad()
    def generate(
        self,
        mel: np.ndarray | torch.Tensor,
        style: torch.Tensor,
        steps: int | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        refine: bool = True,
        model: EmoDiff | None = None,
    ) -> torch.Tensor:
        """Offline: a whole utterance's mel (4T, 80) or (B, 4T, 80) -> raw motion (B, T, 58).

        Windows of K known + W new frames (the first window knows nothing); the last window is
        moved back to end at the last frame, knowing more frames instead."""
        model = self.emodiff if model is None else model
        mel = torch.as_tensor(mel, dtype=torch.float32)
        mel = mel if mel.ndim == 3 else mel[None]
        if mel.shape[1] % MELS_PER_FRAME:
            raise ValueError(f"mel rows must be a multiple of {MELS_PER_FRAME}, got {mel.shape[1]}")
        n = mel.shape[1] // MELS_PER_FRAME
        seq, b = model.cfg.seq_len, mel.shape[0]
        if n < seq:  # shorter than one window: generate over trailing silence, then cut
            mel = F.pad(mel, (0, 0, 0, MELS_PER_FRAME * (seq - n)), value=SILENCE_LOG_MEL)
        feats = self.encode_utterance(mel)
        total = feats.shape[1]
        out = torch.zeros(b, total, MOTION_DIM)
        out[:, :seq] = self.sample_window(
            feats[:, :seq], style, None, steps, guidance, generator, model
        )
        done = seq
        while done < total:
            end = min(done + model.cfg.window_frames, total)
            start = end - seq
            known = out[:, start:done]
            out[:, start:end] = self.sample_window(
                feats[:, start:end], style, known, steps, guidance, generator, model
            )
            done = end
        out = out[:, :n]
        if not refine:
            return out
        # the refiner's own features, or the ones EmoDiff just read (not encoded twice)
        lip_feats = feats if self.lip_features_shared else self.encode_lip_utterance(mel)
        return self.refine_lips(lip_feats[:, :n], out, style)

    @torch.no_grad()
    def generate_lstm(self, mel: np.ndarray | torch.Tensor, emotion: str | int, intensity: int):
        """The LSTM baseline on a whole utterance: (4T, 80) or (B, 4T, 80) -> (B, T, 58)."""
        if self.lstm is None:
            raise ValueError("no LSTM baseline loaded")
        mel = torch.as_tensor(mel, dtype=torch.float32)
        mel = mel if mel.ndim == 3 else mel[None]
        e = emotion_index(emotion) if isinstance(emotion, str) else int(emotion)
        b = mel.shape[0]
        motion = self.lstm(
            pad_mel(mel, self.lstm.cfg.audio),
            torch.full((b,), e),
            torch.full((b,), check_intensity(intensity)),
        )
        return clamp_motion(motion)
