"""Per-channel normalisation of motion frames and log-mel bins, with stats from the train split.

The networks see every motion channel and every mel bin at zero mean and unit variance, so one
learning rate and one noise scale suit blendshapes (0..1), head angles (radians) and log-mel
energies alike. The stats are buffers: they travel inside the model's state dict, hence
inside every checkpoint and every ONNX graph that includes them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# A channel that barely moves in the training data (tongueOut in a corpus without it) would be
# blown up to unit variance by its own tiny std; flooring it keeps such channels at ~0 instead.
STD_FLOOR = 1e-3


def channel_stats(
    values: np.ndarray, max_rows: int = 500_000, floor: float = STD_FLOOR
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and floored std of each column of ``values`` (rows are frames), float32.

    At most ``max_rows`` evenly spaced rows are read (and widened to float64): the stats of a
    10-hour corpus do not need all of its 14 million mel rows."""
    step = max(1, len(values) // max_rows)
    sample = np.asarray(values[::step], dtype=np.float64)
    mean = sample.mean(axis=0)
    std = np.maximum(sample.std(axis=0), floor)
    return mean.astype(np.float32), std.astype(np.float32)


class ChannelNorm(nn.Module):
    """x -> (x - mean) / std per channel (the last axis), and back."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_channels))
        self.register_buffer("std", torch.ones(num_channels))

    @torch.no_grad()
    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean
