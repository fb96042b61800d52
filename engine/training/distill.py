"""Few-step distillation of EmoDiff: guided distillation, then progressive distillation.

Method: "On Distillation of Guided Diffusion Models" (Meng, Rombach, Gao, Kingma, Ermon,
Ho, Salimans; CVPR 2023), whose stage 2 is progressive distillation (Salimans & Ho, ICLR 2022).

Stage 1, guided distillation. The student is the teacher plus a guidance-scale embedding
(zero-initialised, so it starts as the teacher's conditional model). It learns to give, in ONE
call, what the teacher gives with classifier-free guidance in two::

    x_w(z_t) = x_uncond + w (x_cond - x_uncond),   w ~ U[guidance_min, guidance_max],  t ~ U(0, 1]

Stage 2, progressive distillation, in rounds. A round's teacher is the student so far (frozen);
the student starts as a copy of it and learns to land, with one DDIM step of size 1/N, where two
teacher DDIM steps of size 1/(2N) land::

    t = i / N (i = 1..N),  t' = t - 1/(2N),  t'' = t - 1/N
    z'  = DDIM(z_t, x_teacher(z_t, t, w), t -> t')
    z'' = DDIM(z',  x_teacher(z', t', w), t' -> t'')
    x_target solves  DDIM(z_t, x_target, t -> t'') = z'':
        x_target = (z'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)

N halves each round: teacher_steps/2, teacher_steps/4, ..., target_steps (64 -> 32 -> 16 -> 8
-> 4 by default). Losses are on v (x-error weighted by SNR + 1, as both papers recommend), on
the frames to generate, plus ``velocity_weight`` times the squared frame-to-frame difference of
the same v error (the motion counterpart of EmoDiff's velocity term: it weighs jitter). The
data give z_t (z_t = alpha_t x + sigma_t eps from training windows), with known frames and
style sources drawn as in EmoDiff training. The audio encoder, style
encoder and normalisation are frozen: the student shares them with the teacher, so the lip
refiner trained on either sees the same features.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engine.data.corpus import SplitArrays
from engine.diffusion import add_noise, alpha_sigma, ddim_step, v_from_x
from engine.models import EmoDiff
from engine.motion_model import DEFAULT_GUIDANCE, clamp_motion, guided_x, sample_emodiff
from engine.training.common import POSE, motion_metrics
from engine.training.emodiff import EmoDiffTrainConfig, batch_style, make_sampler
from engine.training.loop import LoopConfig, WindowTask
from engine.training.windows import fixed_batches

log = logging.getLogger(__name__)

METHOD = "guided distillation (Meng et al. 2023) + progressive distillation (Salimans & Ho 2022)"


@dataclass
class DistillConfig:
    target_steps: int = 4
    teacher_steps: int = 64  # the full sampler the student replaces
    guided_steps: int = 1000  # optimiser steps of stage 1
    round_steps: int = 1000  # optimiser steps of each halving round
    warmup: int = 50  # per phase
    velocity_weight: float = 1.0
    guidance_min: float = 0.0
    guidance_max: float = 4.0
    p_clip: float = 0.5
    p_known_none: float = 0.1
    p_known_init: float = 0.5
    # The known-frame count drawn with p_known_init: 14 of 16, what the live path knew when the
    # committed student was distilled (S - H, blocks of 2 frames then); the teacher was trained
    # with its K = 8 there, and a student distilled at K = 8 drifted through the live loop (FD 47
    # against the teacher's 30, docs/eval.md). The live path now knows S - E = 12
    # (`StreamConfig`); a student distilled at 12 measured the same there (FD 30.6 against
    # 30.0, one seed).
    known_init: int = 14
    # Head-pose offset (normalised units, std) added to the whole window, known frames and
    # target alike, in a share ``p_pose_offset`` of the windows. Through the live loop the
    # known frames are the model's own, often further from the audio's typical pose than the
    # data's; the teacher's answer there (it keeps the offset) is what the student must learn
    # to keep the pose diversity the loop accumulates (docs/eval.md: 2.9% under the full
    # sampler's through the loop, 5.2% without). 0: off.
    pose_offset: float = 0.5
    p_pose_offset: float = 0.5
    val_batch_size: int = 64
    val_guidance: float = DEFAULT_GUIDANCE

    def __post_init__(self) -> None:
        ratio = self.teacher_steps / self.target_steps
        if self.target_steps < 1 or ratio < 1 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(
                f"teacher steps / target steps must be a power of 2, got "
                f"{self.teacher_steps} / {self.target_steps}"
            )
        if self.pose_offset < 0 or not 0 <= self.p_pose_offset <= 1:
            raise ValueError(
                f"pose_offset must be >= 0 and p_pose_offset in [0, 1], got "
                f"{self.pose_offset}, {self.p_pose_offset}"
            )

    def phases(self) -> list[tuple[str, int, int]]:
        """(name, student sampler steps, optimiser steps) of each phase."""
        out = [("guided", self.teacher_steps, self.guided_steps)]
        n = self.teacher_steps // 2
        while n >= self.target_steps:
            out.append((f"pd{n}", n, self.round_steps))
            n //= 2
        return out

    @property
    def total_steps(self) -> int:
        return sum(p[2] for p in self.phases())


def offset_pose(x: torch.Tensor, dcfg: DistillConfig) -> torch.Tensor:
    """Normalised windows (B, T, MOTION_DIM) with, in a share ``p_pose_offset`` of them, a
    constant drawn from N(0, pose_offset^2) per head-pose channel added to every frame."""
    if dcfg.pose_offset <= 0:
        return x
    b = x.shape[0]
    on = (torch.rand(b, 1, 1) < dcfg.p_pose_offset).float()
    x = x.clone()
    x[..., POSE] += dcfg.pose_offset * torch.randn(b, 1, x.shape[-1] - POSE.start) * on
    return x


def make_student(teacher: EmoDiff) -> EmoDiff:
    """The teacher's architecture plus the guidance embedding, with the teacher's weights."""
    cfg = copy.deepcopy(teacher.cfg)
    cfg.guidance_embed = True
    student = EmoDiff(cfg)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guidance_mlp.") for k in missing):
        raise ValueError(f"teacher weights do not fit the student: {missing} {unexpected}")
    # shared with the teacher and frozen: the refiner depends on these features and styles
    for module in (student.audio, student.style, student.motion_norm):
        module.requires_grad_(False)
    return student


class DistillTask(WindowTask):
    kind = "emodiff"

    def __init__(
        self,
        teacher: EmoDiff,
        train: SplitArrays,
        val: SplitArrays,
        batch_size: int,
        dcfg: DistillConfig,
        seed: int = 0,
        teacher_path: str | Path | None = None,
        data: str | Path | None = None,
    ):
        if teacher.cfg.guidance_embed:
            raise ValueError("the teacher is already a distilled student; give the original")
        self.teacher0 = teacher.eval().requires_grad_(False)
        self.model = make_student(teacher)
        self.dcfg, self.batch_size = dcfg, batch_size
        self.teacher_path, self.data = teacher_path, data
        self.phase_list = dcfg.phases()
        self.phase = -1  # index of the phase the current teacher belongs to
        self.teacher: EmoDiff = self.teacher0
        tcfg = EmoDiffTrainConfig(p_known_none=dcfg.p_known_none, p_known_init=dcfg.p_known_init)
        known = dcfg.known_init
        if not isinstance(known, int) or not 0 <= known < teacher.cfg.seq_len:
            raise ValueError(f"known_init must be in [0, {teacher.cfg.seq_len}), got {known}")
        self.sampler = make_sampler(train, teacher.cfg, tcfg, seed, known)
        val_sampler = make_sampler(val, teacher.cfg, tcfg, seed + 1)
        self.val = fixed_batches(val_sampler, 1, dcfg.val_batch_size, seed + 2)[0]
        self._reference: dict[str, Any] | None = None
        self.quality: list[dict[str, Any]] = []

    # ---- phases ---------------------------------------------------------------------------
    def phase_at(self, step: int) -> tuple[int, int]:
        """(phase index, first step of that phase)."""
        start = 0
        for i, (_, _, n) in enumerate(self.phase_list):
            if step < start + n:
                return i, start
            start += n
        return len(self.phase_list) - 1, start - self.phase_list[-1][2]

    def begin_step(self, step: int, model: EmoDiff, ema: EmoDiff) -> bool:
        index, _ = self.phase_at(step)
        if index == self.phase:
            return False
        self.phase = index
        name, n, count = self.phase_list[index]
        if index > 0:  # a halving round: the student so far (its EMA) becomes the teacher
            model.load_state_dict(ema.state_dict())
            self.teacher = copy.deepcopy(ema).eval().requires_grad_(False)
        log.info("distill phase %s: student sampler %d steps, %d optimiser steps", name, n, count)
        return True

    def lr_factor(self, step: int, cfg: LoopConfig) -> float:
        _, start = self.phase_at(step)
        count = self.phase_list[self.phase_at(step)[0]][2]
        local = step - start
        if local < self.dcfg.warmup:
            return (local + 1) / self.dcfg.warmup
        progress = min(1.0, (local - self.dcfg.warmup) / max(1, count - self.dcfg.warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    # ---- loss -----------------------------------------------------------------------------
    def loss(self, model: EmoDiff, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.sampler.sample(self.batch_size)
        b = batch.motion.shape[0]
        with torch.no_grad():
            x = offset_pose(model.motion_norm.normalize(batch.motion), self.dcfg)
            feats = model.audio(batch.mel)
            style, _ = batch_style(model, batch, self.dcfg.p_clip, 0.0)
            mask = batch.known_mask()
        g0, g1 = self.dcfg.guidance_min, self.dcfg.guidance_max
        w = g0 + (g1 - g0) * torch.rand(b)
        eps = torch.randn_like(x)
        name, n, _ = self.phase_list[self.phase]
        cond = (x, mask, feats, style, w)

        if name == "guided":
            # continuous t, kept off 0 where v_from_x divides by sigma ~ 0
            t = 1.0 / self.dcfg.teacher_steps + (1 - 1.0 / self.dcfg.teacher_steps) * torch.rand(b)
            z = add_noise(x, t, eps)
            with torch.no_grad():
                v_tgt = v_from_x(z, t, guided_x(self.teacher, z, t, *cond))
        else:
            t = torch.randint(1, n + 1, (b,)).float() / n
            t_mid, t_next = t - 0.5 / n, t - 1.0 / n
            z = add_noise(x, t, eps)
            with torch.no_grad():
                z1 = ddim_step(z, guided_x(self.teacher, z, t, *cond), t, t_mid)
                z2 = ddim_step(z1, guided_x(self.teacher, z1, t_mid, *cond), t_mid, t_next)
                a_t, s_t = alpha_sigma(t[:, None, None])
                a_n, s_n = alpha_sigma(t_next[:, None, None])
                x_tgt = (z2 - (s_n / s_t) * z) / (a_n - (s_n / s_t) * a_t)
                v_tgt = v_from_x(z, t, x_tgt)
        v = model(z, t, x, mask, feats, style, w)
        gen = (1 - mask)[..., None]
        frames = gen.sum().clamp(min=1) * x.shape[-1]
        err = v - v_tgt
        match = ((err**2) * gen).sum() / frames
        # the same error's frame-to-frame difference: few-step students otherwise leave
        # high-frequency error (jitter) that a plain MSE weighs no more than a slow offset
        vel = (((err[:, 1:] - err[:, :-1]) ** 2) * gen[:, 1:]).sum() / frames
        loss = match + self.dcfg.velocity_weight * vel
        return loss, {"match": match.item(), "vel": vel.item()}

    # ---- validation: the student against the full sampler --------------------------------
    @torch.no_grad()
    def _sample(self, model: EmoDiff, steps: int) -> tuple[torch.Tensor, float]:
        """Raw motion of the validation batch (K known, W generated; fixed noise), and the
        wall time per window per sequence."""
        batch = self.val
        x = model.motion_norm.normalize(batch.motion)
        feats = model.audio(batch.mel)
        style = model.style.from_emotion(batch.emotion, batch.intensity)
        mask = torch.zeros_like(batch.known_mask())
        mask[:, : model.cfg.init_frames] = 1.0
        gen = torch.Generator().manual_seed(1234)
        start = time.perf_counter()
        out = sample_emodiff(model, feats, x, mask, style, steps, self.dcfg.val_guidance, gen)
        seconds = (time.perf_counter() - start) / x.shape[0]
        return clamp_motion(model.motion_norm.denormalize(out)), seconds

    def _metrics(self, pred: torch.Tensor) -> dict[str, float]:
        w = slice(self.teacher0.cfg.init_frames, None)
        ref = self.reference()["motion"]
        m = motion_metrics(pred[:, w], self.val.motion[:, w])
        m["to_full_l1"] = float((pred[:, w] - ref[:, w]).abs().mean())
        return m

    def reference(self) -> dict[str, Any]:
        """The full sampler on the validation batch (computed once)."""
        if self._reference is None:
            motion, seconds = self._sample(self.teacher0, self.dcfg.teacher_steps)
            self._reference = {"motion": motion, "seconds": seconds}
        return self._reference

    @torch.no_grad()
    def validate(self, model: EmoDiff) -> dict[str, float]:
        n = self.phase_list[max(self.phase, 0)][1]
        pred, _ = self._sample(model, n)
        return {"student_steps": n, **self._metrics(pred)}

    @torch.no_grad()
    def quality_vs_steps(self, student: EmoDiff) -> list[dict[str, Any]]:
        """Student at 1, 2, 4, ... target steps, teacher DDIM at the same counts and at the full
        count, on the validation batch: the table `docs/models.md` reports."""
        rows = []
        ref = self.reference()
        full = self._metrics(ref["motion"])
        name = f"teacher DDIM-{self.dcfg.teacher_steps} + CFG"
        calls = 2 * self.dcfg.teacher_steps
        rows.append(
            {"sampler": name, "calls": calls, "ms_per_window_batched": 1000 * ref["seconds"]}
        )
        rows[-1].update(full)
        n = 1
        while n <= self.dcfg.target_steps:
            candidates = (("student", student, n), ("teacher DDIM", self.teacher0, 2 * n))
            for label, model, calls in candidates:
                pred, seconds = self._sample(model, n)
                row = {
                    "sampler": f"{label}-{n}",
                    "calls": calls,
                    "ms_per_window_batched": 1000 * seconds,
                }
                rows.append({**row, **self._metrics(pred)})
            n *= 2
        self.quality = [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows
        ]
        return self.quality

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {**super().state_dict(), "phase": self.phase}
        if self.phase > 0:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.phase = int(state.get("phase", -1))
        if "teacher" in state:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
            self.teacher.load_state_dict(state["teacher"])

    def meta(self) -> dict[str, Any]:
        return {
            "distillation": {
                "method": METHOD,
                "config": asdict(self.dcfg),
                "phases": [list(p) for p in self.phase_list],
                "teacher": str(self.teacher_path) if self.teacher_path else None,
                "quality_vs_steps": self.quality,
            },
            "data": str(self.data) if self.data else None,
            "sampler": {
                "kind": "student",
                "steps": self.dcfg.target_steps,
                "guidance": self.dcfg.val_guidance,
            },
        }
