"""`dreamtalk eval`: the metrics on constructed inputs with known answers, the emotion
classifier on separable data, and a tiny end-to-end run (toy corpus, untrained tiny models)
through the CLI, the live path included."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dreamtalk.cli import main
from engine.blendshapes import MOTION_DIM, MOTION_INDEX, MOUTH_NAMES
from engine.checkpoint import Checkpoint, save_checkpoint
from engine.data.corpus import Corpus
from engine.data.visemes import LIPS_CLOSED_IOD, lip_opening
from engine.evaluation import metrics as M
from engine.evaluation.emotion_classifier import ClassifierConfig, EmotionClassifier, accuracy_by
from engine.evaluation.evaluate import (
    EvalConfig,
    _Timed,
    check_targets,
    load_generators,
    parse_variants,
    run_stream,
    select_samples,
)
from engine.evaluation.features import FeatureConfig, FeatureSpace, window_features
from engine.models import (
    AudioEncoderConfig,
    EmoDiff,
    EmoDiffConfig,
    LipRefiner,
    LipRefinerConfig,
    LSTMBaseline,
    LSTMConfig,
)
from engine.motion_model import MotionModels
from engine.stream.config import StreamConfig
from engine.stream.idle import GateConfig, IdleConfig
from engine.training.toy_corpus import write_toy_corpus

JAW = MOTION_INDEX["jawOpen"]


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_signal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.normal(size=n + 8), np.ones(5) / 5, mode="same")[4:-4]
    return x - x.min()


# ---- lip-sync -------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [-3, 0, 2])
def test_lagged_correlation_recovers_a_known_shift(shift):
    target = smooth_signal(300)
    pred = np.roll(target, shift)  # shift > 0: the prediction is late
    curve = M.lagged_correlation(pred, target, max_lag=5)
    assert curve.shape == (11,)
    lag, best, at0 = M.best_lag([curve])
    assert lag == shift
    assert best > 0.97
    assert at0 == pytest.approx(curve[5])
    if shift:
        assert at0 < best


def test_pearson_edge_cases():
    t = smooth_signal(50)
    assert M.pearson(t, t) == pytest.approx(1.0)
    assert M.pearson(-t, t) == pytest.approx(-1.0)
    assert np.isnan(M.pearson(t, np.ones(50)))  # a flat target: nothing to follow
    assert M.pearson(np.zeros(50), t) == 0.0  # a frozen mouth follows nothing
    with pytest.raises(ValueError):
        M.pearson(t, t[:10])


def test_closure_rate_and_lip_sync_on_constructed_lips():
    """Four bilabials; the prediction closes the lips on the first two only."""
    n = 100
    target = np.zeros((n, MOTION_DIM), np.float32)
    target[:, JAW] = 0.4
    phones = [("p", 0.4, 0.48), ("m", 1.2, 1.32), ("b", 2.0, 2.08), ("m", 3.0, 3.1)]
    for _, a, b in phones:
        target[int(a * 25) : int(np.ceil(b * 25)), JAW] = 0.0
    pred = target.copy()
    pred[45:55, JAW] = 0.4  # lips stay open on b and the last m
    pred[70:80, JAW] = 0.4
    assert not (lip_opening(target[:5]) < LIPS_CLOSED_IOD).any()  # open between bilabials
    out = M.lip_sync([pred], [target], [phones], [JAW], JAW, max_lag=2)
    assert out["bilabials"] == 4
    assert out["bilabial_closure_rate"] == pytest.approx(0.5)
    perfect = M.lip_sync([target], [target], [phones], [JAW], JAW, max_lag=2)
    assert perfect["bilabial_closure_rate"] == 1.0
    assert perfect["jaw_corr_lag0"] == pytest.approx(1.0)
    assert perfect["mouth_corr_lag0"] == pytest.approx(1.0)
    assert perfect["jaw_best_lag"] == 0 and perfect["mouth_l1"] == 0.0
    assert out["mouth_l1"] == pytest.approx(np.abs(pred[:, JAW] - target[:, JAW]).mean())
    assert "lip_l1" not in out  # only when the articulation channels are named
    smile = MOTION_INDEX["mouthSmileLeft"]
    smiling = pred.copy()
    smiling[:, smile] = 0.5  # an expressive mouth channel: mouth L1 counts it, lip L1 does not
    both = M.lip_sync([smiling], [target], [phones], [JAW, smile], JAW, max_lag=2, lips=[JAW])
    assert both["lip_l1"] == pytest.approx(out["mouth_l1"])
    assert both["mouth_l1"] == pytest.approx((out["mouth_l1"] + 0.5) / 2)


# ---- diversity, smoothness, realism ----------------------------------------------------------
def test_seed_spread():
    a = np.zeros((2, 10, MOTION_DIM))
    a[1, :, 3] = 0.2
    # two seeds differing by d: unbiased std |d| / sqrt(2), on channel 3 only
    assert M.seed_spread(a, [3]) == pytest.approx(0.2 / np.sqrt(2))
    assert M.seed_spread(a, [3, 4]) == pytest.approx(0.1 / np.sqrt(2))
    assert M.seed_spread(np.repeat(a[:1], 3, 0), slice(None)) == 0.0
    with pytest.raises(ValueError):
        M.seed_spread(a[:1], [3])


def test_jerk_of_polynomials():
    t = np.arange(40, dtype=np.float64)
    motion = np.stack([2.0 * t + 1, 0.5 * t**2, 0.1 * t**3], 1)
    assert M.jerk(motion, [0]) == pytest.approx(0.0)
    assert M.jerk(motion, [1]) == pytest.approx(0.0)
    assert M.jerk(motion, [2]) == pytest.approx(0.6)  # 6 * 0.1
    assert M.third_difference(motion).shape == (37, 3)


@pytest.mark.parametrize("hop", [2, 4])
def test_seam_jerk_ratio_finds_steps_at_block_starts(hop):
    """A step of random sign at every block start puts 2|s| of jerk on the seam edge and s on
    each edge beside it (where two steps' contributions meet, they cancel half the time)."""
    n = 400
    rng = np.random.default_rng(0)
    smooth = np.stack([np.sin(np.arange(n) / (6 + 3 * k) + k) for k in range(4)], 1)
    smooth += rng.normal(0, 0.002, smooth.shape)  # some jerk everywhere
    stepped = smooth.copy()
    for b in range(0, n, hop):  # a small step at every block start
        stepped[b:] += 0.05 * rng.choice([-1, 1], size=4)
    starts = range(0, n, hop)
    plain = M.seam_jerk_ratio([M.seam_jerk_terms(smooth, starts)])
    seamy = M.seam_jerk_ratio([M.seam_jerk_terms(stepped, starts)])
    assert 0.6 < plain < 1.6
    assert seamy > 1.5 * plain
    assert seamy > (1.6 if hop == 2 else 2.4)
    # no seams at all: undefined
    assert np.isnan(M.seam_jerk_ratio([M.seam_jerk_terms(smooth, [])]))


def test_frechet_distance_zero_for_identical_sets_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    a -= a.mean(0)  # so that 2 a has the same mean
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    d = [M.frechet_distance(a, a + s) for s in (0.5, 1.0, 2.0)]
    assert d == pytest.approx([6 * 0.25, 6 * 1.0, 6 * 4.0], rel=1e-6)  # |mean shift|^2
    wider = M.frechet_distance(a, 2 * a)  # same mean, covariance 4x: tr(S + 4S - 2 * 2S) = tr S
    assert wider == pytest.approx(np.trace(np.cov(a, rowvar=False)), rel=1e-6)
    with pytest.raises(ValueError):
        M.frechet_distance(a, a[:, :3])


def test_window_features_and_feature_space():
    x = np.zeros((64, 2))
    x[:, 1] = np.arange(64) % 2  # alternates 0, 1: mean 0.5, std 0.5, |velocity| 1
    f = window_features(x, 32, 16)
    assert f.shape == (3, 6)
    np.testing.assert_allclose(f[0], [0, 0.5, 0, 0.5, 0, 1.0])
    assert window_features(x[:10], 32, 16).shape == (1, 6)  # short: one window of all of it
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(200, 12)) * np.arange(1, 13)
    space = FeatureSpace(FeatureConfig(dims=4)).fit(feats)
    assert space.transform(feats).shape == (200, 4)
    assert 0 < space.explained <= 1


# ---- the emotion classifier -----------------------------------------------------------------
def toy_emotions(n_per: int, seed: int, level: int) -> tuple[list[np.ndarray], list[int]]:
    """Three 'emotions', each a channel offset (0.2 x intensity) plus noise."""
    rng = np.random.default_rng(seed)
    motions, labels = [], []
    channels = ("mouthSmileLeft", "browInnerUp", "noseSneerLeft")
    for label, name in enumerate(channels):
        for _ in range(n_per):
            m = rng.normal(0, 0.05, (int(rng.integers(40, 160)), MOTION_DIM))
            m[:, MOTION_INDEX[name]] += 0.2 * level
            motions.append(m)
            labels.append(label)
    return motions, labels


def test_classifier_learns_separable_toy_data():
    """Emotion and intensity (two levels here) of unseen utterances, from seeded training."""
    (m1, e1), (m2, e2) = toy_emotions(60, 0, 1), toy_emotions(60, 1, 2)
    motions, emotions, levels = m1 + m2, e1 + e2, [1] * len(e1) + [2] * len(e2)
    cfg = ClassifierConfig(l2=1e-4)  # 360 utterances, not thousands: less regularisation
    clf = EmotionClassifier(cfg, num_emotions=3).fit(motions, emotions, levels)
    for level in (1, 2):
        test, truth = toy_emotions(10, 2 + level, level)
        pred = [clf.predict(m) for m in test]
        assert [p[0] for p in pred] == truth
        assert all(p[1] == level for p in pred)
    # the intensity of a given emotion: what it would be if that were the emotion
    assert clf.predict(test[0], emotion=truth[0])[1] == 2
    # seeded: the same fit twice gives the same network, and the global RNG is left alone
    state = torch.random.get_rng_state()
    again = EmotionClassifier(cfg, num_emotions=3).fit(motions, emotions, levels)
    assert torch.equal(torch.random.get_rng_state(), state)
    np.testing.assert_array_equal(again.log_proba(test[0]), clf.log_proba(test[0]))
    assert accuracy_by([0, 1, 1], [0, 1, 0], ["a", "b", "a"]) == {"a": 0.5, "b": 1.0}
    with pytest.raises(ValueError, match="intensities"):
        EmotionClassifier(cfg, num_emotions=3).fit(motions, emotions, [4] * len(emotions))


def test_logistic_regression_learns_the_emotion():
    motions, emotions = toy_emotions(30, 0, 1)
    clf = EmotionClassifier(ClassifierConfig(hidden=0), num_emotions=3)
    clf.fit(motions, emotions, [1] * len(emotions))
    test, truth = toy_emotions(10, 5, 1)
    assert [clf.predict(m)[0] for m in test] == truth


# ---- the runner -----------------------------------------------------------------------------
def test_variants_are_checked():
    assert parse_variants("full+refiner, lstm") == ("lstm", "full+refiner")
    assert len(parse_variants("all")) == 10
    with pytest.raises(ValueError, match="unknown variant 'fast'"):
        parse_variants("fast")
    with pytest.raises(ValueError, match="path"):
        EvalConfig(path="batch")


def test_targets_check():
    good = {
        "jaw_corr_lag0": 0.9, "mouth_corr_lag0": 0.88, "jaw_best_lag": 0, "mouth_best_lag": 1,
        "bilabial_closure_rate": 0.95, "emotion_accuracy": 0.95, "mouth_l1": 0.02,
        "lip_l1": 0.015, "frechet_distance": 5.0, "diversity_expression": 0.02,
        "diversity_pose": 0.01, "ms_per_frame": 1.0, "ms_per_window": 2.0,
    }  # fmt: skip
    full = {**good, "mouth_l1": 0.0195, "ms_per_frame": 5.0, "ms_per_window": 24.0}
    lstm = {**good, "diversity_expression": 0.0, "diversity_pose": 0.0, "frechet_distance": 9.0}
    v = {"distilled-4+refiner": good, "full+refiner": full, "lstm": lstm}
    assert check_targets(v)["pass"] is True
    slow = check_targets({**v, "full+refiner": {**full, "ms_per_window": 10.0}})
    assert slow["pass"] is False  # the sampler only 5x faster (per frame, 5x passes above)
    worse = check_targets({**v, "full+refiner": {**full, "mouth_l1": 0.015}})  # 33% worse
    assert worse["pass"] is False
    # against the LSTM, lip-sync L1 is the articulation's: its mean smile may be nearer the
    # target's (mouth L1), its lips may not
    assert check_targets({**v, "lstm": {**lstm, "mouth_l1": 0.01}})["pass"] is True
    assert check_targets({**v, "lstm": {**lstm, "lip_l1": 0.01}})["pass"] is False
    assert check_targets({"distilled-4+refiner": good})["pass"] is None  # incomplete


TINY_AUDIO = AudioEncoderConfig(dim=32)


def _save(path, kind: str, cfg, model: torch.nn.Module, **meta) -> None:
    save_checkpoint(path, Checkpoint(kind, cfg, model.state_dict(), meta=meta))


def tiny_weights(folder, teacher: bool = True, lstm: bool = True):
    """Untrained tiny checkpoints in the layout of weights/: enough to run every code path."""
    torch.manual_seed(0)
    cfg = EmoDiffConfig(dim=32, depth=1, heads=2, audio=TINY_AUDIO)
    if teacher:
        sampler = {"kind": "ddim", "steps": 64, "guidance": 2.0}
        _save(folder / "emodiff.pt", "emodiff", cfg, EmoDiff(cfg), sampler=sampler)
    scfg = dataclasses.replace(cfg, guidance_embed=True)
    sampler = {"kind": "student", "steps": 4, "guidance": 2.0}
    _save(folder / "emodiff_student.pt", "emodiff", scfg, EmoDiff(scfg), sampler=sampler)
    rcfg = LipRefinerConfig(audio_dim=32, style_dim=32, dim=16)
    _save(folder / "lips.pt", "lips", rcfg, LipRefiner(rcfg))
    if lstm:
        lcfg = LSTMConfig(hidden=16, layers=1, emotion_dim=8, audio=TINY_AUDIO)
        _save(folder / "lstm.pt", "lstm", lcfg, LSTMBaseline(lcfg))
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_corpus(tmp_path_factory.mktemp("toy"), sentences=16, voices=2, seed=0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("w"))


def test_stream_run_captures_the_unrefined_live_output(toy, weights):
    """The EmoDiff output captured from a refined live run equals a run without the refiner,
    bit for bit (EmoDiff never sees the refined mouth), and the refiner only changes the mouth."""
    gens = load_generators(weights, str(toy), None)
    models = gens["distilled-4"].models
    sample = select_samples(Corpus(toy), "test", 1, audio=True)[0]
    scfg = StreamConfig(steps=4, gate=GateConfig(enabled=False), idle=IdleConfig(enabled=False))
    with_refiner = run_stream(_Timed(models, models.refiner_context), sample, 3, scfg)
    bare = MotionModels(emodiff=models.emodiff, refiner=None, steps=4)
    without = run_stream(_Timed(bare, 0), sample, 3, scfg)
    np.testing.assert_array_equal(with_refiner.raw, without.raw)
    assert without.refined is None and with_refiner.refined.shape == (sample.num_frames, MOTION_DIM)
    mouth = {MOTION_INDEX[n] for n in MOUTH_NAMES}
    keep = [i for i in range(MOTION_DIM) if i not in mouth]
    np.testing.assert_array_equal(with_refiner.refined[:, keep], with_refiner.raw[:, keep])
    blocks = sample.num_frames // scfg.hop_frames
    per = scfg.motion_hop // scfg.hop_frames  # one window per E frames, plus the pre-roll
    assert with_refiner.windows == -(-blocks // per) + 1


def test_eval_end_to_end_json(toy, weights, capsys):
    argv = ["eval", "--data", str(toy), "--weights", str(weights), "--limit", "2", "--seeds", "2"]
    assert main([*argv, "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"variants", "config", "targets"}
    v = result["variants"]
    assert list(v) == list(parse_variants("all"))
    c = result["config"]
    assert c["samples"] == 2 and c["seeds"] == 2 and c["path"] == "stream"
    assert c["command"].startswith("dreamtalk eval --data")
    assert len({s.split("_", 2)[2] for s in c["sample_ids"]}) == 2  # two (emotion, intensity)
    metric_names = {
        "jaw_corr_lag0", "jaw_best_lag", "mouth_corr_lag0", "mouth_best_lag",
        "bilabial_closure_rate", "mouth_l1", "lip_l1", "emotion_accuracy",
        "emotion_accuracy_by_emotion",
        "emotion_accuracy_by_intensity", "diversity_expression", "diversity_pose",
        "frechet_distance", "jerk", "seam_jerk_ratio", "ms_per_window", "ms_per_frame",
    }  # fmt: skip
    for name, entry in v.items():
        assert metric_names <= set(entry), name
        assert entry["ms_per_frame"] > 0
        assert 0 <= entry["emotion_accuracy"] <= 1
    assert v["lstm"]["diversity_expression"] == 0.0 and v["lstm"]["seam_jerk_ratio"] is None
    assert v["lstm"]["ms_per_window"] is None
    assert v["distilled-4"]["diversity_expression"] > 0
    assert v["full"]["calls_per_window"] == 128 and v["distilled-1"]["calls_per_window"] == 1
    assert "4-step student on a 2-step grid" in v["distilled-2"]["sampler"]
    # the full sampler is the slow one
    assert v["full"]["ms_per_window"] > 5 * v["distilled-4"]["ms_per_window"]
    assert result["targets"]["variant"] == "distilled-4+refiner"


def test_eval_reports_missing_weights_and_bad_input(toy, tmp_path, capsys, caplog):
    w = tiny_weights(tmp_path / "w", teacher=False, lstm=False)
    argv = ["eval", "--data", str(toy), "--weights", str(w), "--limit", "1", "--seeds", "1"]
    assert main([*argv, "--variants", "lstm,full+refiner,distilled-1", "--json",
                 "--no-progress", "--path", "offline"]) == 0  # fmt: skip
    v = json.loads(capsys.readouterr().out)["variants"]
    assert "dreamtalk train lstm" in v["lstm"]["missing"]
    assert "dreamtalk train emodiff" in v["full+refiner"]["missing"]
    assert v["distilled-1"]["path"] == "offline" and v["distilled-1"]["diversity_pose"] is None
    assert main([*argv, "--variants", "bogus"]) == 2
    assert "unknown variant 'bogus'" in caplog.text
    assert main(["eval", "--data", str(tmp_path / "nope"), "--weights", str(w)]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--data", str(toy), "--weights", str(empty)]) == 2
    assert "no EmoDiff weights" in caplog.text
