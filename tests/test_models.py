"""The networks, diffusion maths, checkpoints and inference API, on untrained weights.

Untrained EmoDiff outputs zeros (adaLN-Zero and a zero read-out), which would make parity and
determinism checks vacuous, so `randomize` perturbs every parameter first.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.blendshapes import MOTION_DIM, MOTION_INDEX, MOUTH_NAMES
from engine.checkpoint import (
    Checkpoint,
    CheckpointError,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from engine.diffusion import add_noise, ddim_step, sample_ddim, v_target, x_from_v
from engine.features import MELS_PER_FRAME
from engine.models import (
    AUDIO_LOOKAHEAD_FRAMES,
    AudioEncoder,
    AudioEncoderConfig,
    EmoDiff,
    EmoDiffConfig,
    LipRefiner,
    LipRefinerConfig,
    LSTMBaseline,
    LSTMConfig,
    pad_mel,
)
from engine.motion_model import MotionModels

# Largest absolute difference between ONNX Runtime and PyTorch (float32, outputs of order 1)
# that counts as the same network.
ONNX_TOLERANCE = 1e-4
NON_MOUTH = [i for i in range(MOTION_DIM) if i not in {MOTION_INDEX[n] for n in MOUTH_NAMES}]


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return module.eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def emodiff() -> EmoDiff:
    torch.manual_seed(0)
    return randomize(EmoDiff(EmoDiffConfig()))


@pytest.fixture(scope="module")
def bundle(emodiff) -> MotionModels:
    refiner = randomize(LipRefiner(LipRefinerConfig()), seed=1)
    return MotionModels(emodiff=emodiff, refiner=refiner, steps=4, guidance=2.0)


def test_audio_encoder_lookahead_and_shapes():
    cfg = AudioEncoderConfig()
    assert cfg.lookahead == AUDIO_LOOKAHEAD_FRAMES == 2
    assert cfg.left_context == 14
    enc = randomize(AudioEncoder(cfg))
    mel = torch.randn(3, MELS_PER_FRAME * (cfg.left_context + 10 + cfg.lookahead), 80)
    assert enc(mel).shape == (3, 10, cfg.dim)


def test_audio_encoder_streaming_equals_offline():
    """Features of a stream (spans with history and look-ahead) equal the whole file's, and a
    feature does not change when audio beyond its look-ahead changes."""
    cfg = AudioEncoderConfig()
    enc = randomize(AudioEncoder(cfg))
    n = 40
    mel = torch.randn(1, MELS_PER_FRAME * n, 80)
    padded = pad_mel(mel, cfg)
    with torch.no_grad():
        offline = enc(padded)
        assert offline.shape == (1, n, cfg.dim)
        left, look = cfg.left_context, cfg.lookahead
        for s in range(0, n, 2):  # hop of 2 frames
            span = padded[:, MELS_PER_FRAME * s : MELS_PER_FRAME * (s + left + 2 + look)]
            torch.testing.assert_close(enc(span), offline[:, s : s + 2], atol=1e-5, rtol=1e-5)
        # frame 10 sees audio up to frame 12 only
        changed = padded.clone()
        changed[:, MELS_PER_FRAME * (left + 13) :] += 5.0
        torch.testing.assert_close(enc(changed)[:, :11], offline[:, :11], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(enc(changed)[:, 11], offline[:, 11], atol=1e-3)


def test_emodiff_shapes_and_known_frames_ignore_noise(emodiff):
    cfg = emodiff.cfg
    b, t = 2, cfg.seq_len
    z, known = torch.randn(b, t, MOTION_DIM), torch.randn(b, t, MOTION_DIM)
    mask = torch.zeros(b, t)
    mask[:, : cfg.init_frames] = 1
    feats, style = torch.randn(b, t, cfg.audio.dim), torch.randn(b, cfg.dim)
    with torch.no_grad():
        v = emodiff(z, torch.rand(b), known, mask, feats, style)
        assert v.shape == (b, t, MOTION_DIM)
        # the noisy state at known positions is replaced by the known frames: it cannot matter
        z2 = z.clone()
        z2[:, : cfg.init_frames] = 100.0
        torch.testing.assert_close(
            emodiff(z2, torch.full((b,), 0.3), known, mask, feats, style),
            emodiff(z, torch.full((b,), 0.3), known, mask, feats, style),
        )


def test_diffusion_maths():
    torch.manual_seed(0)
    x, eps = torch.randn(4, 16, MOTION_DIM), torch.randn(4, 16, MOTION_DIM)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    z = add_noise(x, t, eps)
    torch.testing.assert_close(x_from_v(z, t, v_target(x, t, eps)), x)
    # with the true x, a DDIM step lands exactly on the same noise path at s
    s = torch.tensor([0.0, 0.1, 0.5, 0.25])
    zs = ddim_step(z[1:], x[1:], t[1:], s[1:])
    torch.testing.assert_close(zs, add_noise(x[1:], s[1:], eps[1:]), atol=1e-5, rtol=1e-5)
    # a denoiser that knows the answer makes any-step DDIM return it
    out = sample_ddim(lambda z_, t_: x, torch.randn_like(x), steps=3)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)
    assert math.isclose(
        float(add_noise(x, torch.ones(4), eps).sub(eps).abs().max()), 0, abs_tol=1e-6
    )


def test_sample_window_deterministic_with_seed_and_keeps_known(bundle):
    t = bundle.seq_len
    mel = torch.randn(1, MELS_PER_FRAME * (bundle.left_context + t + bundle.lookahead), 80)
    feats = bundle.encode_audio(mel)
    assert feats.shape == (1, t, 128)
    style = bundle.style_from_emotion("happy", 3)
    known = torch.rand(1, 14, MOTION_DIM) * 0.5

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return bundle.sample_window(feats, style, known, steps=4, guidance=2.0, generator=gen)

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (1, t, MOTION_DIM)
    assert torch.equal(a, b)
    assert not torch.allclose(a[:, 14:], c[:, 14:])
    assert torch.equal(a[:, :14], known)  # emitted frames come back bit for bit
    assert float(a[..., :52].min()) >= 0 and float(a[..., :52].max()) <= 1


def test_generate_offline_lengths(bundle):
    gen = torch.Generator().manual_seed(0)
    style = bundle.style_from_clip(torch.rand(90, MOTION_DIM))
    for frames in (5, 16, 37):
        out = bundle.generate(torch.randn(MELS_PER_FRAME * frames, 80), style, generator=gen)
        assert out.shape == (1, frames, MOTION_DIM)
        assert torch.isfinite(out).all()


def test_refiner_leaves_non_mouth_channels_untouched(bundle):
    torch.manual_seed(0)
    motion = torch.rand(2, 30, MOTION_DIM)
    motion[..., 52:] = torch.randn(2, 30, 6) * 0.2
    feats = torch.randn(2, 30, 128)
    style = torch.randn(1, 128)
    out = bundle.refiner(feats, motion, style.expand(2, -1))
    assert torch.equal(out[..., NON_MOUTH], motion[..., NON_MOUTH])
    mouth = [MOTION_INDEX[n] for n in MOUTH_NAMES]
    assert not torch.allclose(out[..., mouth], motion[..., mouth])
    refined = bundle.refine_lips(feats, motion, style)
    assert torch.equal(refined[..., NON_MOUTH], motion[..., NON_MOUTH])


def test_refiner_streaming_equals_offline(bundle):
    """Causal: refining 2 new frames with `refiner_context` frames before them gives the whole
    utterance's output for those frames."""
    torch.manual_seed(1)
    n, r = 60, bundle.refiner_context + 2
    assert bundle.refiner_context == 32
    motion, feats, style = torch.rand(1, n, MOTION_DIM), torch.randn(1, n, 128), torch.randn(1, 128)
    with torch.no_grad():
        offline = bundle.refiner(feats, motion, style)
        for end in range(r, n + 1, 2):
            span = bundle.refiner(feats[:, end - r : end], motion[:, end - r : end], style)
            torch.testing.assert_close(span[:, -2:], offline[:, end - 2 : end])
        # and a frame does not depend on later ones
        later = motion.clone()
        later[:, 40:] = 0.5
        torch.testing.assert_close(bundle.refiner(feats, later, style)[:, :40], offline[:, :40])


def test_style_sources(bundle):
    a = bundle.style_from_emotion("happy", 1)
    b = bundle.style_from_emotion("sad", 1)
    c = bundle.style_from_emotion("happy", 3)
    assert a.shape == (1, 128) and not torch.allclose(a, b) and not torch.allclose(a, c)
    clip = bundle.style_from_clip(np.random.default_rng(0).random((200, MOTION_DIM)))
    assert clip.shape == (1, 128)
    with pytest.raises(ValueError, match="unknown emotion"):
        bundle.style_from_emotion("elated")
    with pytest.raises(ValueError, match="intensity"):
        bundle.style_from_emotion("happy", 4)


# ---- ONNX ---------------------------------------------------------------------------------
def _onnx_matches(tmp_path, module, args, names, out="out", batch_of=None):
    """Export with a dynamic batch axis (traced at batch 2), run ORT at batch 3, compare."""
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(a[:2] for a in args),
            str(path),
            input_names=names,
            output_names=[out],
            opset_version=17,
            dynamo=False,
            dynamic_axes={n: {0: "batch"} for n in [*names, out]},
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feed = {n: a[:3].numpy() for n, a in zip(names, args, strict=True) if n in wanted}
    got = session.run(None, feed)[0]
    with torch.no_grad():
        want = module(*(a[:3] for a in args)).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() < ONNX_TOLERANCE
    assert np.abs(want).max() > 1e-3  # not a vacuous comparison


def test_onnx_audio_encoder(tmp_path):
    enc = randomize(AudioEncoder(AudioEncoderConfig()))
    mel = torch.randn(3, MELS_PER_FRAME * (14 + 2 + 2), 80)
    _onnx_matches(tmp_path, enc, (mel,), ["mel"], "feats")


@pytest.mark.parametrize("student", [False, True])
def test_onnx_emodiff(tmp_path, student):
    torch.manual_seed(0)
    model = randomize(EmoDiff(EmoDiffConfig(guidance_embed=student)))
    b, t = 3, model.cfg.seq_len
    mask = torch.zeros(b, t)
    mask[:, :10] = 1
    args = [
        torch.randn(b, t, MOTION_DIM),
        torch.rand(b),
        torch.randn(b, t, MOTION_DIM),
        mask,
        torch.randn(b, t, 128),
        torch.randn(b, 128),
    ]
    names = ["z", "t", "known", "known_mask", "feats", "style"]
    if student:
        args.append(torch.rand(b) * 4)
        names.append("guidance")
    _onnx_matches(tmp_path, model, args, names, "v")


def test_onnx_style_encoders(tmp_path, emodiff):
    mask = torch.ones(3, 64)
    mask[1, 40:] = 0
    _onnx_matches(
        tmp_path,
        emodiff.style.clip,
        (torch.randn(3, 64, MOTION_DIM), mask),
        ["clip", "clip_mask"],
        "style",
    )
    _onnx_matches(
        tmp_path,
        emodiff.style.emotion,
        (torch.tensor([1, 2, 7]), torch.tensor([1, 3, 2])),
        ["emotion", "intensity"],
        "style",
    )


def test_onnx_lip_refiner(tmp_path):
    refiner = randomize(LipRefiner(LipRefinerConfig()))
    args = (torch.randn(3, 16, 128), torch.rand(3, 16, MOTION_DIM), torch.randn(3, 128))
    _onnx_matches(tmp_path, refiner, args, ["feats", "motion", "style"], "motion_out")


def test_onnx_lstm(tmp_path):
    model = randomize(LSTMBaseline(LSTMConfig()))
    mel = torch.randn(3, MELS_PER_FRAME * (14 + 20 + 2), 80)
    args = (mel, torch.tensor([0, 3, 5]), torch.tensor([1, 2, 3]))
    _onnx_matches(tmp_path, model, args, ["mel", "emotion", "intensity"], "motion")


# ---- checkpoints --------------------------------------------------------------------------
def test_checkpoint_round_trip_half_and_errors(tmp_path, emodiff):
    cfg = EmoDiffConfig(dim=64, depth=2, audio=AudioEncoderConfig(dim=64))
    model = randomize(EmoDiff(cfg))
    path = save_checkpoint(
        tmp_path / "m.pt",
        Checkpoint("emodiff", cfg, model.state_dict(), step=7, meta={"x": np.float32(1.5)}),
    )
    ckpt = load_checkpoint(path, "emodiff")
    assert ckpt.config == cfg and ckpt.step == 7 and ckpt.meta["x"] == 1.5
    rebuilt = build_model(ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v)

    half = save_checkpoint(
        tmp_path / "h.pt", Checkpoint("emodiff", cfg, model.state_dict()), half=True
    )
    assert half.stat().st_size < 0.6 * path.stat().st_size
    rebuilt = build_model(load_checkpoint(half))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[k], v, atol=2e-3, rtol=2e-3)

    with pytest.raises(CheckpointError, match="expected 'lips'"):
        load_checkpoint(path, "lips")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a dreamtalk checkpoint"):
        load_checkpoint(other)
