"""Training: loss falls on a tiny set, resume is exact, the CLI trains and distills every model,
and a trained EmoDiff's guidance moves the expression while the lips stay on the audio.

All on the toy corpus (engine.training.toy_corpus), with tiny models and a few hundred steps
at most: this checks that the machinery learns, not how well the default models do.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from dreamtalk.cli import main
from engine.blendshapes import MOTION_DIM, MOTION_INDEX, NUM_BLENDSHAPES
from engine.checkpoint import load_checkpoint
from engine.data.corpus import Corpus
from engine.data.visemes import lip_opening
from engine.emotions import EMOTIONS
from engine.models import (
    AudioEncoderConfig,
    EmoDiff,
    EmoDiffConfig,
    LipRefiner,
    LipRefinerConfig,
    pad_mel,
)
from engine.models.lip_refiner import LIP_LOOKAHEAD_FRAMES
from engine.motion_model import MotionModels
from engine.training.common import EXPRESSION, JAW, POSE, load_splits, pearson
from engine.training.distill import DistillConfig, offset_pose
from engine.training.emodiff import EmoDiffTask, EmoDiffTrainConfig
from engine.training.lips import LipsTask, LipsTrainConfig, gap_corr_loss
from engine.training.loop import LoopConfig, train
from engine.training.toy_corpus import write_toy_corpus
from engine.training.windows import WindowSampler

TINY_EMODIFF = EmoDiffConfig(dim=64, depth=2, heads=4, audio=AudioEncoderConfig(dim=64))
TINY_SETS = ["--set", "dim=48", "--set", "depth=2", "--set", "audio.dim=48"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_corpus(tmp_path_factory.mktemp("toy"), sentences=16, voices=2, seed=0)


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    """A tiny EmoDiff trained for 300 steps, with validation before and after."""
    torch.manual_seed(0)
    train_split, val_split = load_splits(toy)
    model = EmoDiff(TINY_EMODIFF)
    tcfg = EmoDiffTrainConfig(val_batches=1, val_batch_size=32, val_steps=8)
    task = EmoDiffTask(model, train_split, val_split, 32, tcfg, seed=0)
    before = task.validate(model.eval())
    cfg = LoopConfig(
        steps=300, batch_size=32, lr=2e-3, warmup=20, val_every=0, ckpt_every=0, progress=False
    )
    result = train(task, cfg, tmp_path_factory.mktemp("run"))
    return result, before, result.history[-1], val_split


def test_windows_match_the_offline_padding(toy):
    """A training window's motion and mel are the utterance's, with the silence `pad_mel` puts
    around an utterance offline (so training sees what inference computes)."""
    train_split, _ = load_splits(toy)
    cfg = AudioEncoderConfig()
    sampler = WindowSampler(train_split, 16, cfg.left_context, cfg.lookahead, 64, None, seed=0)
    utt = np.array([0, 0, 3, 5])
    lengths = np.diff(train_split.frame_offsets)
    start = np.array([0, 2, lengths[3] - 16, 7])
    batch = sampler.windows(utt, start)
    for b, (k, s0) in enumerate(zip(utt, start, strict=True)):
        a, e = train_split.frame_offsets[k], train_split.frame_offsets[k + 1]
        np.testing.assert_array_equal(
            batch.motion[b].numpy(), train_split.motion[a + s0 : a + s0 + 16]
        )
        padded = pad_mel(train_split.mel[4 * a : 4 * e].astype(np.float32), cfg)
        want = padded[4 * s0 : 4 * (s0 + 16 + cfg.left_context + cfg.lookahead)]
        np.testing.assert_array_equal(batch.mel[b].numpy(), want)
        assert int(train_split.emotion[k]) == int(batch.emotion[b])
        assert batch.clip_mask[b].sum() > 0


def test_tiny_model_learns_the_toy_set(trained):
    _, before, after, _ = trained
    assert after["val_v"] < 0.5 * before["val_v"]
    assert after["jaw_corr"] > 0.7 > before["jaw_corr"]
    assert after["mouth_l1"] < 0.5 * before["mouth_l1"]


def test_guidance_changes_expression_not_lip_sync(trained):
    """Same noise, same audio, the utterance's own emotion: scale 0 (style ignored) against 3.
    The expression moves (towards the requested emotion); the jaw keeps following the audio."""
    result, _, _, val = trained
    models = MotionModels(emodiff=result.ema, steps=8)
    expr_moved, closer, jaw_agree, sync0, sync3 = [], [], [], [], []
    for k in range(val.num_samples):
        if EMOTIONS[int(val.emotion[k])] == "neutral":
            continue
        a, b = val.frame_offsets[k], val.frame_offsets[k + 1]
        mel, target = val.mel[4 * a : 4 * b].astype(np.float32), torch.from_numpy(val.motion[a:b])
        style = models.style_from_emotion(int(val.emotion[k]), int(val.intensity[k]))
        out = {}
        for g in (0.0, 3.0):
            gen = torch.Generator().manual_seed(k)
            out[g] = models.generate(mel, style, guidance=g, generator=gen, refine=False)[0]
        e0, e3, et = (m[:, EXPRESSION] for m in (out[0.0], out[3.0], target))
        expr_moved.append(float((e3 - e0).abs().mean()))
        closer.append(float((e3 - et).abs().mean()) < float((e0 - et).abs().mean()))
        jaw_agree.append(float(pearson(out[0.0][:, JAW], out[3.0][:, JAW])))
        sync0.append(float(pearson(out[0.0][:, JAW], target[:, JAW])))
        sync3.append(float(pearson(out[3.0][:, JAW], target[:, JAW])))
    logging.getLogger(__name__).info(
        "moved %.3f closer %.2f jaw %.3f sync %.3f %.3f",
        np.mean(expr_moved),
        np.mean(closer),
        np.mean(jaw_agree),
        np.mean(sync0),
        np.mean(sync3),
    )
    assert np.mean(expr_moved) > 0.02  # blendshape units: a visible change of expression
    assert np.mean(closer) >= 0.7  # ... towards the emotion asked for
    assert np.mean(jaw_agree) > 0.85  # the mouth opens and closes at the same moments
    assert abs(np.mean(sync3) - np.mean(sync0)) < 0.1
    assert np.mean(sync3) > 0.6


@pytest.mark.parametrize("own_encoder", [True, False], ids=["own-encoder", "emodiff-features"])
def test_refiner_keeps_the_smile_and_restores_the_articulation(trained, toy, tmp_path, own_encoder):
    """A tiny refiner trained briefly: a smile added to its input comes back (the emotion's
    intensity is kept), and a mouth with no articulation left comes back moving with the audio.
    With its own audio encoder looking a frame further ahead than EmoDiff's (the default
    recipe: its training windows carry that encoder's mel spans) or reading EmoDiff's features."""
    result, *_ = trained
    torch.manual_seed(0)
    train_split, val_split = load_splits(toy)
    audio = replace(result.ema.cfg.audio, lookahead=LIP_LOOKAHEAD_FRAMES) if own_encoder else None
    refiner = LipRefiner(LipRefinerConfig(audio_dim=64, style_dim=64, dim=48, audio=audio))
    tcfg = LipsTrainConfig(val_batches=1, val_batch_size=64)
    task = LipsTask(refiner, result.ema, train_split, val_split, 32, tcfg, seed=0)
    assert task.sampler.lookahead == (LIP_LOOKAHEAD_FRAMES if own_encoder else 2)
    cfg = LoopConfig(
        steps=250, batch_size=32, lr=2e-3, warmup=20, val_every=0, ckpt_every=0, progress=False
    )
    refiner = train(task, cfg, tmp_path).ema
    batch = task.val[0]
    feats, style = task.conditions(refiner, batch, p_clip=0.0, train=False)
    target = batch.motion
    smile = [MOTION_INDEX["mouthSmileLeft"], MOTION_INDEX["mouthSmileRight"]]
    with torch.no_grad():
        plain = refiner(feats, target, style)
        smiling = target.clone()
        smiling[..., smile] = (smiling[..., smile] + 0.3).clamp(max=1.0)
        added = float((smiling[..., smile] - target[..., smile]).mean())
        kept = float((refiner(feats, smiling, style)[..., smile] - plain[..., smile]).mean())
        still = target.clone()
        still[..., JAW] = target[..., JAW].mean(dim=1, keepdim=True)  # jaw frozen at its mean
        restored = refiner(feats, still, style)
    assert kept > 0.8 * added
    sync = pearson(restored[..., JAW].reshape(-1), target[..., JAW].reshape(-1))
    assert float(sync) > 0.7


def _tiny_run(toy, tmp_path, steps: int, resume: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    train_split, val_split = load_splits(toy)
    model = EmoDiff(TINY_EMODIFF)  # a fresh model each time: resume must load everything
    tcfg = EmoDiffTrainConfig(val_batches=1, val_batch_size=8, val_steps=2)
    task = EmoDiffTask(model, train_split, val_split, 8, tcfg, seed=0)
    cfg = LoopConfig(steps=steps, batch_size=8, warmup=2, val_every=0, ckpt_every=3, progress=False)
    result = train(task, cfg, tmp_path, resume=resume)
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def test_resume_gives_the_uninterrupted_run(toy, tmp_path):
    straight = _tiny_run(toy, tmp_path / "a", 6, resume=False)
    _tiny_run(toy, tmp_path / "b", 3, resume=False)  # stopped half way ...
    resumed = _tiny_run(toy, tmp_path / "b", 6, resume=True)  # ... and continued (new process)
    for k, v in straight.items():
        assert torch.equal(v, resumed[k]), k
    state = load_checkpoint(tmp_path / "b" / "state.pt")
    assert state.step == 6 and state.optimizer is not None and state.ema is not None


def test_distill_pose_offset_moves_whole_windows_head_pose_only():
    torch.manual_seed(0)
    x = torch.randn(64, 16, MOTION_DIM)
    assert torch.equal(offset_pose(x, DistillConfig(pose_offset=0.0)), x)  # 0: off
    d = offset_pose(x, DistillConfig(pose_offset=0.5, p_pose_offset=0.5)) - x
    assert torch.equal(d[..., :NUM_BLENDSHAPES], torch.zeros_like(d[..., :NUM_BLENDSHAPES]))
    assert torch.allclose(d[..., POSE], d[:, :1, POSE].expand_as(d[..., POSE]))  # known = target
    moved = d[:, 0, POSE].abs().amax(dim=1) > 0
    assert 16 <= int(moved.sum()) <= 48
    assert 0.3 < float(d[moved][:, 0, POSE].std()) < 0.7
    with pytest.raises(ValueError, match="pose_offset"):
        DistillConfig(pose_offset=-0.1)


def test_cli_trains_distills_and_loads(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--no-progress",
        "--val-every",
        "2",
        "--set",
        "train.val_batch_size=8",
    ]
    assert (
        main(
            [
                "train",
                "emodiff",
                "--data",
                str(toy),
                "--out",
                "w/emodiff.pt",
                *common,
                *TINY_SETS,
                "--set",
                "train.val_steps=2",
            ]
        )
        == 0
    )
    # resume the same run to 6 steps
    assert (
        main(
            [
                "train",
                "emodiff",
                "--data",
                str(toy),
                "--out",
                "w/emodiff.pt",
                *common[2:],
                "--steps",
                "6",
                "--resume",
                *TINY_SETS,
                "--set",
                "train.val_steps=2",
            ]
        )
        == 0
    )
    teacher = load_checkpoint("w/emodiff.pt", "emodiff")
    assert teacher.step == 6 and teacher.config.dim == 48 and teacher.optimizer is None
    assert teacher.meta["sampler"]["kind"] == "ddim" and "argv" in teacher.meta

    assert (
        main(
            [
                "distill",
                "--teacher",
                "w/emodiff.pt",
                "--steps",
                "2",
                "--teacher-steps",
                "8",
                "--guided-steps",
                "2",
                "--round-steps",
                "2",
                "--out",
                "w/student.pt",
                "--batch-size",
                "8",
                "--no-progress",
                "--set",
                "val_batch_size=8",
            ]
        )
        == 0
    )
    student = load_checkpoint("w/student.pt", "emodiff")
    assert student.config.guidance_embed and student.step == 2 + 2 * 2  # guided, pd4, pd2
    dist = student.meta["distillation"]
    assert "progressive" in dist["method"] and student.meta["sampler"]["steps"] == 2
    assert {r["sampler"] for r in dist["quality_vs_steps"]} >= {"student-2", "teacher DDIM-2"}

    assert (
        main(
            [
                "train",
                "lips",
                "--emodiff",
                "w/student.pt",
                "--data",
                str(toy),
                "--out",
                "w/lips.pt",
                *common,
                "--set",
                "dim=32",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "lstm",
                "--data",
                str(toy),
                "--out",
                "w/lstm.pt",
                *common,
                "--set",
                "hidden=32",
                "--set",
                "audio.dim=32",
            ]
        )
        == 0
    )

    models = MotionModels.load(
        "w/student.pt", refiner="w/lips.pt", teacher="w/emodiff.pt", lstm="w/lstm.pt"
    )
    assert models.steps == 2 and models.teacher is not None
    sample = next(Corpus(toy).samples("test"))
    style = models.style_from_emotion(sample.emotion, sample.intensity)
    for m in (models.emodiff, models.teacher):
        out = models.generate(sample.mel, style, model=m, steps=2)
        assert out.shape == (1, sample.num_frames, 58) and torch.isfinite(out).all()
    lstm = models.generate_lstm(sample.mel, sample.emotion, sample.intensity)
    assert lstm.shape == (1, sample.num_frames, 58)


def test_cli_errors_are_one_line(toy, tmp_path, caplog):
    assert main(["train", "lips", "--data", str(toy), "--out", str(tmp_path / "x.pt")]) == 2
    assert "--emodiff" in caplog.text
    assert main(["distill", "--teacher", str(tmp_path / "none.pt"), "--out", "x.pt"]) == 2
    assert main(["train", "lstm", "--data", str(tmp_path), "--out", "x.pt"]) == 2
    assert main(["train", "lstm", "--data", str(toy), "--out", "x.pt", "--set", "bogus=1"]) == 2
    assert "no option 'bogus'" in caplog.text


def test_gap_corr_loss_follows_the_gap_between_the_lips():
    """0 when the refined lips part and close as the target's do (whatever the scale), about 2
    when they do the opposite, and windows whose lips do not move do not count."""
    t = torch.linspace(0, 6.28, 32)
    target = torch.zeros(3, 32, MOTION_DIM)
    target[:2, :, JAW] = 0.3 + 0.2 * torch.sin(t)  # two talking windows, one still
    same = target.clone()
    same[..., JAW] = 0.3 + 0.1 * torch.sin(t)
    opposite = target.clone()
    opposite[:2, :, JAW] = 0.3 - 0.2 * torch.sin(t)
    gap = lip_opening(target)
    assert gap_corr_loss(lip_opening(same), gap).item() < 1e-3
    assert gap_corr_loss(lip_opening(opposite), gap).item() > 1.9
    still = target.clone()
    still[2, :, JAW] = 0.3 + 0.2 * torch.sin(t)  # the still window's prediction moves: no cost
    assert gap_corr_loss(lip_opening(still), gap).item() < 1e-3
