"""Lip refiner: re-predicts the mouth and jaw from the audio, keeping the emotion's mouth shape.

Mouth dynamics are tied to the audio far more tightly than the rest of the face, and a diffusion
sample spends part of its freedom there. The refiner reads, per frame, audio features, the
*shape* of EmoDiff's mouth (its ``MOUTH_NAMES`` channels, normalised, through a causal mean over
``shape_frames`` = 9 frames) and the style vector, and predicts the mouth as that shape plus
what the audio calls for. The mean lets an emotion's mouth shape (a smile, a frown) through at
the intensity EmoDiff chose, and stops EmoDiff's articulation, right or wrong or jittery, from
reaching the output. The refiner does not read the rest of the face either, so it cannot
re-derive a typical smile from the cheeks or the style instead of keeping the one it is given
(the training adds random offsets to the target mouth shape to make the same point,
`engine.training.lips.offset_mouth`).

Two switches say how much of EmoDiff's mouth it reads (the default recipe sets both; an older
checkpoint has neither and reads it all):

- ``from_audio``: channels whose EmoDiff values are not read at all. The default is every
  channel that parts the lips (`LIP_GAP_NAMES`): the lip gap is the audio's and the style's to
  say, and EmoDiff's values, read as a shape, held lips apart on bilabials;
- ``reads_shape`` False: the network itself reads only the audio and the style; EmoDiff's
  shape of the other channels is only added back to its output, so no EmoDiff jitter can reach
  the articulation through them.

Every other channel (eyes, brows, cheeks, nose, head pose) is passed through *bit for bit*: the
output is ``motion * keep + mouth @ scatter`` with 0/1 matrices, in raw units, so no
normalisation round trip touches them.

The audio features come from the refiner's own audio encoder when it has one
(``LipRefinerConfig.audio``; the default recipe starts it from EmoDiff's and fine-tunes it on
the mouth objective with voice augmentation, `engine.training.mel_augment`), otherwise from
EmoDiff's. EmoDiff's encoder is trained to help a denoiser that already sees 8-14 known frames;
the mouth needs features that carry the phones themselves, for voices never heard in training.
`engine.motion_model.MotionModels.encode_lip_audio` gives whichever the refiner reads.

Temporal context comes from causal dilated convolutions: output frame i depends on frames
i - 32 .. i of the features and the mouth (``receptive_field`` = 33), and the features already
look 2 frames ahead in the audio. So refining H new frames together with the
``receptive_field - 1`` frames before them gives exactly what refining the whole utterance
gives: streaming and offline agree, and the refiner adds no latency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.blendshapes import MOTION_DIM, MOTION_INDEX, MOUTH_NAMES
from engine.models.audio_encoder import (
    AUDIO_LOOKAHEAD_FRAMES,
    AudioEncoder,
    AudioEncoderConfig,
)
from engine.motion_norm import ChannelNorm

MOUTH_INDICES: tuple[int, ...] = tuple(MOTION_INDEX[n] for n in MOUTH_NAMES)
# The mouth channels that articulate speech (the audio decides them); the others (smile, frown,
# dimple, shrug, sideways jaw and mouth, tongue) carry the emotion's mouth shape.
ARTICULATION_NAMES: tuple[str, ...] = (
    "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight", "mouthPressLeft",
    "mouthPressRight", "mouthRollLower", "mouthRollUpper", "mouthStretchLeft", "mouthStretchRight",
)  # fmt: skip
# positions inside the refiner's mouth channels (MOUTH_NAMES order)
ARTICULATION_IN_MOUTH: tuple[int, ...] = tuple(MOUTH_NAMES.index(n) for n in ARTICULATION_NAMES)
EXPRESSIVE_IN_MOUTH: tuple[int, ...] = tuple(
    i for i in range(len(MOUTH_NAMES)) if i not in set(ARTICULATION_IN_MOUTH)
)
# Every mouth channel that parts the lips (`engine.data.visemes.lip_opening`): the articulation
# plus the shrug of the upper lip and the jaw thrust, which emotions use too. EmoDiff's values of
# these, read by the refiner, would hold the lips apart on a bilabial or add its jitter to the gap.
LIP_GAP_NAMES: tuple[str, ...] = (*ARTICULATION_NAMES, "mouthShrugUpper", "jawForward")
# The default recipe's own audio encoder looks one frame further ahead than EmoDiff's: the
# mouth's correlation with the target gains most from the coming audio, and blocks of one frame
# wait for it no longer than blocks of two waited for EmoDiff's (docs/streaming.md).
LIP_LOOKAHEAD_FRAMES = AUDIO_LOOKAHEAD_FRAMES + 1


@dataclass
class LipRefinerConfig:
    audio_dim: int = 128  # the audio feature size (the own encoder's, or EmoDiff's)
    style_dim: int = 128  # EmoDiff's style vector size
    dim: int = 128
    num_blocks: int = 4
    kernel: int = 5
    # EmoDiff's mouth is read through a causal mean over this many frames: its shape (the
    # emotion's smile or frown) gets through, its articulation (and any jitter) does not
    shape_frames: int = 9
    # the refiner's own audio encoder; None: it reads EmoDiff's features
    audio: AudioEncoderConfig | None = None
    # Mouth channels whose EmoDiff values are not read at all: the audio and the style alone
    # decide them (the default recipe: every channel that parts the lips, `LIP_GAP_NAMES`).
    # EmoDiff's shape is kept on the others (smile, frown, ...). Empty: every channel's shape.
    from_audio: tuple[str, ...] = ()
    # False: the network reads only the audio and the style; EmoDiff's shape (of the channels
    # not in from_audio) is only added back to its output. The articulation then cannot pick
    # up EmoDiff's jitter through the expressive channels (the default recipe).
    reads_shape: bool = True

    def __post_init__(self) -> None:
        if self.audio is not None and self.audio.dim != self.audio_dim:
            raise ValueError(f"audio_dim {self.audio_dim} != its encoder's {self.audio.dim}")
        unknown = set(self.from_audio) - set(MOUTH_NAMES)
        if unknown:
            raise ValueError(f"from_audio names no mouth channel: {sorted(unknown)}")

    @property
    def receptive_field(self) -> int:
        """Frames (the current one included) that one output frame depends on."""
        convs = sum((self.kernel - 1) * (1 + i % 2) for i in range(self.num_blocks))
        return 1 + convs + self.shape_frames - 1


class RefinerBlock(nn.Module):
    """Pre-norm residual block: LayerNorm -> causal dilated conv -> GELU -> 1x1 conv."""

    def __init__(self, dim: int, kernel: int, dilation: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.past = dilation * (kernel - 1)
        self.conv = nn.Conv1d(dim, dim, kernel, dilation=dilation)
        self.proj = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        # causal: frame i reads frames i - past .. i; before the first frame, the first frame
        h = F.pad(self.norm(x).transpose(1, 2), (self.past, 0), mode="replicate")
        return x + self.proj(F.gelu(self.conv(h))).transpose(1, 2)


class LipRefiner(nn.Module):
    """(audio feats (B,T,A), motion (B,T,MOTION_DIM) raw, style (B,S)) -> motion, mouth redone."""

    def __init__(self, cfg: LipRefinerConfig):
        super().__init__()
        self.cfg = cfg
        self.motion_norm = ChannelNorm(MOTION_DIM)
        self.audio = AudioEncoder(cfg.audio) if cfg.audio is not None else None
        self.inp = nn.Linear(cfg.audio_dim + len(MOUTH_INDICES), cfg.dim)
        self.style_in = nn.Linear(cfg.style_dim, cfg.dim)
        # dilations 1, 2, 1, 2...: 24 frames of past context with kernel 5 and four blocks,
        # 8 more for the shape mean
        self.blocks = nn.ModuleList(
            RefinerBlock(cfg.dim, cfg.kernel, 1 + i % 2) for i in range(cfg.num_blocks)
        )
        self.out_norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, len(MOUTH_INDICES))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        scatter = torch.zeros(len(MOUTH_INDICES), MOTION_DIM)
        scatter[torch.arange(len(MOUTH_INDICES)), torch.tensor(MOUTH_INDICES)] = 1.0
        keep = torch.ones(MOTION_DIM)
        keep[list(MOUTH_INDICES)] = 0.0
        self.register_buffer("scatter", scatter, persistent=False)
        self.register_buffer("keep", keep, persistent=False)
        self.register_buffer("mouth_index", torch.tensor(MOUTH_INDICES), persistent=False)
        read = torch.ones(len(MOUTH_INDICES))
        read[[MOUTH_NAMES.index(n) for n in cfg.from_audio]] = 0.0
        self.register_buffer("mouth_read", read, persistent=False)
        seen = read if cfg.reads_shape else torch.zeros_like(read)
        self.register_buffer("shape_seen", seen, persistent=False)

    def features_config(self, shared: AudioEncoderConfig) -> AudioEncoderConfig:
        """The encoder whose features this refiner reads: its own (which may look further ahead
        than EmoDiff's), else ``shared``, EmoDiff's."""
        return self.cfg.audio if self.cfg.audio is not None else shared

    def predict_mouth(
        self, feats: torch.Tensor, motion: torch.Tensor, style: torch.Tensor
    ) -> torch.Tensor:
        """Normalised mouth channels (B, T, len(MOUTH_NAMES)): what training compares."""
        # unread channels sit at their mean (0, normalised): the network predicts them whole
        mouth = self.motion_norm.normalize(motion)[..., self.mouth_index] * self.mouth_read
        k = self.cfg.shape_frames
        padded = F.pad(mouth.transpose(1, 2), (k - 1, 0), mode="replicate")
        shape = F.avg_pool1d(padded, k, stride=1).transpose(1, 2)  # causal mean
        seen = shape * self.shape_seen  # what the network itself reads of EmoDiff's mouth
        h = self.inp(torch.cat([feats, seen], dim=-1)) + self.style_in(style)[:, None]
        for block in self.blocks:
            h = block(h)
        # the articulation on top of EmoDiff's mouth shape: at initialisation the refiner
        # returns the shape, and it learns to add what the audio says, not to re-decide the
        # expression
        return shape + self.out(self.out_norm(h))

    def forward(
        self, feats: torch.Tensor, motion: torch.Tensor, style: torch.Tensor
    ) -> torch.Tensor:
        return self.with_mouth(motion, self.predict_mouth(feats, motion, style))

    def with_mouth(self, motion: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
        """Raw ``motion`` with its mouth channels replaced by normalised ``mouth``."""
        mean = self.motion_norm.mean[self.mouth_index]
        std = self.motion_norm.std[self.mouth_index]
        return motion * self.keep + (mouth * std + mean) @ self.scatter
