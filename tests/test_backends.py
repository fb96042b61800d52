"""Runtime backends: choosing one (`auto` and its rules, bad names), and the same frames from
PyTorch and ONNX Runtime through the live stream path. The CUDA and TensorRT tests run where a
GPU is present and skip, saying why, elsewhere.

On the committed weights, with the engine folder that `dreamtalk export` made once per run
(the ``export_dir`` fixture), so nothing is exported twice.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import drain_frames

from dreamtalk.bench_stream import speech_audio
from dreamtalk.cli import main
from engine.avatar import load_avatar
from engine.backends import check_backend, load_networks, resolve_backend
from engine.backends import select as backend_select
from engine.backends.base import BatchSplitRunner, TorchRunner
from engine.backends.devices import tensorrt_available
from engine.backends.kinds import ORT_CPU, ORT_CUDA, TENSORRT, TORCH
from engine.backends.networks import torch_renderer
from engine.backends.onnxruntime_backend import cuda_provider_available
from engine.blendshapes import MOTION_DIM, MOTION_INDEX
from engine.motion_model import MotionModels
from engine.stream import StreamConfig, StreamEngine, render_motion
from server.config import ServerConfig

# Largest difference between backends through the whole live path (EmoDiff conditions on its
# own output, so per-call differences of ~1e-5 could grow; measured: under 1e-5) ...
MOTION_TOLERANCE = 1e-3
# ... and between their uint8 frames (the renderers differ by ~1e-5 before rounding)
FRAME_TOLERANCE = 2


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speech_audio(2.0)[0]


def _models() -> MotionModels:
    return MotionModels.load_default()


def _frames(models: MotionModels, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(motion, images) of a session fed ``audio`` in 20 ms chunks, offline clock."""
    with StreamEngine(models, clock=None) as engine:
        session = engine.open_session(None, seed=5, render=True, size=256)
        for i in range(0, len(audio), 320):
            session.push_audio(audio[i : i + 320])
        session.flush()
        frames = drain_frames(session)
    return np.stack([f.motion for f in frames]), np.stack([f.image for f in frames])


@pytest.fixture(scope="module")
def torch_frames(one_thread, speech):
    return _frames(_models(), speech)


def test_bad_backend_names_are_refused_clearly(capsys, caplog):
    for bad in ("bogus", "ORT", ""):
        with pytest.raises(ValueError, match="use one of auto, torch, onnxruntime, tensorrt"):
            check_backend(bad)
        with pytest.raises(ValueError, match="unknown backend"):
            resolve_backend(bad)
    with pytest.raises(ValueError, match="--backend must be one of auto, torch, onnxruntime"):
        ServerConfig(backend="cuda")
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--backend", "bogus"])
    assert exit_.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    if not tensorrt_available():
        with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
            resolve_backend("tensorrt")
        assert main(["render", "--audio", "x.wav", "--out", "x.mp4", "--backend", "tensorrt"]) == 2


def test_auto_takes_the_fastest_backend_the_machine_has(monkeypatch, caplog):
    here = resolve_backend("auto")
    if not tensorrt_available() and not cuda_provider_available():
        assert here == ORT_CPU  # this CPU machine: onnxruntime is a dependency
    monkeypatch.setattr(backend_select, "tensorrt_available", lambda: True)
    monkeypatch.setattr(backend_select, "cuda_provider_available", lambda: True)
    assert resolve_backend("auto") == TENSORRT
    assert resolve_backend("onnxruntime") == ORT_CUDA
    monkeypatch.setattr(backend_select, "tensorrt_available", lambda: False)
    assert resolve_backend("auto") == ORT_CUDA
    monkeypatch.setattr(backend_select, "cuda_provider_available", lambda: False)
    assert resolve_backend("auto") == ORT_CPU
    monkeypatch.setattr(backend_select, "ort_available", lambda: False)
    assert resolve_backend("auto") == TORCH
    with pytest.raises(ValueError, match="needs the onnxruntime package"):
        resolve_backend("onnxruntime")
    assert resolve_backend("torch") == TORCH


def test_auto_on_the_cpu_says_what_it_took_and_renders_512_px_and_batches_in_torch(
    export_dir, caplog
):
    if resolve_backend("auto") != ORT_CPU:
        pytest.skip("this machine has a GPU backend: auto does not take ONNX Runtime's CPU")
    with caplog.at_level(logging.INFO):
        nets = load_networks(_models(), "auto", engine_dir=export_dir)
    assert nets.backend == ORT_CPU
    assert nets.renderer_kind(256) == ORT_CPU and nets.renderer_kind(512) == TORCH
    assert nets.renderer_kind(256, batch=2) == TORCH == nets.renderer_kind(512, batch=2)
    assert isinstance(nets.renderer(512), TorchRunner)
    assert (
        "backend: onnxruntime-cpu (chosen by auto); "
        "renderer: onnxruntime-cpu at 256 px (torch for batches), torch at 512 px" in caplog.text
    )
    # one frame goes to ONNX Runtime, a batch to PyTorch: each runner's own output, exactly
    split = nets.renderer(256)
    assert isinstance(split, BatchSplitRunner) and split.single.backend == ORT_CPU
    inputs = load_avatar(None, size=256).render_inputs()
    motion = torch.zeros(3, MOTION_DIM)
    motion[:, MOTION_INDEX["jawOpen"]] = torch.tensor([0.2, 0.5, 0.8])
    assert torch.equal(split(motion[:1], *inputs), split.single(motion[:1], *inputs))
    assert torch.equal(split(motion, *inputs), torch_renderer(256)(motion, *inputs))
    assert "exporting" not in caplog.text  # the engine folder's files were fresh: reused


def test_the_torch_backend_is_the_plain_pytorch_path(one_thread, speech):
    plain, chosen = _models(), _models()
    chosen.use_backend("torch")
    assert np.array_equal(
        render_motion(plain, speech, seed=2), render_motion(chosen, speech, seed=2)
    )


def test_onnxruntime_gives_the_same_frames_through_the_stream_path(
    export_dir, torch_frames, speech
):
    models = _models()
    models.use_backend("onnxruntime", engine_dir=export_dir, sizes=(256,))
    assert models.nets.renderer_kind(512) == models.nets.backend  # asked for: ORT at any size
    motion, images = _frames(models, speech)
    ref_motion, ref_images = torch_frames
    assert motion.shape == ref_motion.shape
    assert np.abs(motion - ref_motion).max() <= MOTION_TOLERANCE
    diff = np.abs(images.astype(int) - ref_images.astype(int))
    assert diff.max() <= FRAME_TOLERANCE


def test_any_step_count_and_the_unrolled_form_match_too(export_dir, tmp_path, one_thread, speech,
                                                        caplog):  # fmt: skip
    cfg = StreamConfig(steps=2)
    ref = render_motion(_models(), speech, seed=1, config=cfg)
    step = _models()
    step.use_backend("onnxruntime", engine_dir=export_dir)  # the default: one step per call
    assert step.nets.denoiser is not None and step.nets.sampler is None
    assert np.abs(render_motion(step, speech, seed=1, config=cfg) - ref).max() <= MOTION_TOLERANCE

    unrolled = _models()
    folder = tmp_path / "engines"
    shutil.copytree(export_dir, folder)  # the shared folder stays as exported
    unrolled.use_backend("onnxruntime", engine_dir=folder, form="unrolled")
    assert unrolled.nets.sampler is not None and unrolled.nets.sampler_steps == 4
    restart = _models()  # a restart on that folder keeps the form it was exported in
    assert restart.use_backend("onnxruntime", engine_dir=folder).sampler is not None
    four = render_motion(_models(), speech, seed=1)
    assert np.abs(render_motion(unrolled, speech, seed=1) - four).max() <= MOTION_TOLERANCE
    with caplog.at_level(logging.WARNING):
        out = render_motion(unrolled, speech, seed=1, config=cfg)  # 2 steps: EmoDiff in torch
    assert "2-step windows run in PyTorch" in caplog.text
    assert np.abs(out - ref).max() <= MOTION_TOLERANCE


GPU_BACKENDS = [
    pytest.param(
        "onnxruntime", ORT_CUDA, id="onnxruntime-cuda",
        marks=pytest.mark.skipif(not cuda_provider_available(),
                                 reason="ONNX Runtime CUDA needs onnxruntime-gpu and an NVIDIA GPU "
                                 "(pip install '.[gpu]'); this machine has neither"),
    ),
    pytest.param(
        "tensorrt", TENSORRT, id="tensorrt",
        marks=pytest.mark.skipif(not tensorrt_available(),
                                 reason="TensorRT needs an NVIDIA GPU and the tensorrt package "
                                 "(pip install '.[gpu]'); this machine has neither"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("backend", "kind"), GPU_BACKENDS)
def test_gpu_backends_give_the_same_frames(export_dir, torch_frames, speech, backend, kind):
    models = _models()
    models.use_backend(backend, engine_dir=export_dir, sizes=(256,))
    assert models.nets.backend == kind and models.nets.renderer_backend == kind
    motion, images = _frames(models, speech)
    assert np.abs(motion - torch_frames[0]).max() <= MOTION_TOLERANCE
    assert np.abs(images.astype(int) - torch_frames[1].astype(int)).max() <= FRAME_TOLERANCE


def test_auto_falls_back_when_the_fastest_backend_cannot_start(export_dir, monkeypatch, caplog):
    """A GPU whose engines fail to build still serves: auto tries the next fastest."""
    real = backend_select._exported_networks

    def failing(models, kind, *options):
        if kind == TENSORRT:
            raise ValueError("TensorRT could not build an engine")
        return real(models, kind, *options)

    monkeypatch.setattr(backend_select, "tensorrt_available", lambda: True)
    monkeypatch.setattr(backend_select, "cuda_provider_available", lambda: False)
    monkeypatch.setattr(backend_select, "_exported_networks", failing)
    with caplog.at_level(logging.INFO):
        nets = load_networks(_models(), "auto", engine_dir=export_dir)
    assert nets.backend == ORT_CPU
    assert "backend tensorrt could not start (TensorRT could not build" in caplog.text
    with pytest.raises(ValueError, match="could not build"):  # asked for by name: an error
        load_networks(_models(), "tensorrt", engine_dir=export_dir)
