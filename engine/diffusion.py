"""Diffusion maths and samplers, as plain functions over a denoiser.

Variance-preserving process with the cosine schedule, continuous time ``t`` in [0, 1]::

    alpha_t = cos(pi t / 2),  sigma_t = sin(pi t / 2),  z_t = alpha_t x + sigma_t eps

so ``t = 0`` is the data and ``t = 1`` is pure noise. The network predicts
``v = alpha_t eps - sigma_t x`` (Salimans & Ho 2022), which stays well conditioned at both ends
(an eps-predictor cannot give x at t = 1, which few-step students need). From ``v``::

    x_hat = alpha_t z_t - sigma_t v,   eps_hat = sigma_t z_t + alpha_t v

Samplers see the model through a *denoiser* ``D(z, t) -> x_hat`` (the k-diffusion / EDM
convention): the clean estimate, with guidance and known frames already applied. The DDIM step
(eta = 0) from ``t`` to ``s < t`` moves along the estimated noise::

    eps_hat = (z_t - alpha_t x_hat) / sigma_t
    z_s     = alpha_s x_hat + sigma_s eps_hat

- ``sample_ddim``: the full sampler, N uniform steps in t (the reference: 64 steps, with
  classifier-free guidance, two network evaluations per step, batched into one call);
- ``sample_student``: the distilled student's sampler, the same DDIM update on the student's
  own 1..4-step grid, one network evaluation per step (guidance is distilled into it).

Classifier-free guidance (Ho & Salimans 2022) mixes conditional and unconditional predictions,
``x_w = x_uncond + w (x_cond - x_uncond)``: w = 0 ignores the style, w = 1 is the plain
conditional model, w > 1 exaggerates the style.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z_t, t) -> x_hat


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal and noise scales of the cosine schedule at time t (any shape)."""
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast over a batch of sequences."""
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def add_noise(x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    alpha, sigma = alpha_sigma(_bcast(t, x))
    return alpha * x + sigma * eps


def v_target(x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    alpha, sigma = alpha_sigma(_bcast(t, x))
    return alpha * eps - sigma * x


def x_from_v(z: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    alpha, sigma = alpha_sigma(_bcast(t, z))
    return alpha * z - sigma * v


def v_from_x(z: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The v that a model would have to predict at (z, t) to yield the clean estimate x."""
    alpha, sigma = alpha_sigma(_bcast(t, z))
    return (alpha * z - x) / sigma


def ddim_step(z: torch.Tensor, x_hat: torch.Tensor, t: torch.Tensor, s: torch.Tensor):
    """Deterministic DDIM update from time t to time s (t > 0; s may be 0)."""
    alpha_t, sigma_t = alpha_sigma(_bcast(t, z))
    alpha_s, sigma_s = alpha_sigma(_bcast(s, z))
    eps_hat = (z - alpha_t * x_hat) / sigma_t
    return alpha_s * x_hat + sigma_s * eps_hat


def time_grid(steps: int) -> list[float]:
    """Uniform grid 1 = t_0 > t_1 > ... > t_steps = 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return [1.0 - i / steps for i in range(steps + 1)]


def sample_ddim(denoise: Denoiser, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Run DDIM from pure noise (t = 1) to t = 0 in ``steps`` uniform steps; returns x."""
    z = noise
    grid = time_grid(steps)
    b = noise.shape[0]
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        t_vec = torch.full((b,), t)
        x_hat = denoise(z, t_vec)
        z = ddim_step(z, x_hat, t_vec, torch.full((b,), s))
    return z


def sample_student(denoise: Denoiser, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """The distilled student's sampler: DDIM on its own grid, one denoiser call per step.

    The update is the same as ``sample_ddim``'s; what differs is the denoiser (a student that
    was trained to land, in one step, where two of its teacher's steps land) and that guidance
    is an input of that one call rather than a second call."""
    return sample_ddim(denoise, noise, steps)
