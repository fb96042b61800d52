"""`dreamtalk export`: every network to ONNX with a manifest, verification against PyTorch on
recorded inputs (and its failure past a tolerance), a dynamic batch, the engine folder's reuse
and refresh, TensorRT's cache key and build (on a GPU only), and bad input.

On the committed weights (`weights/`), exported once per run (the ``export_dir`` fixture).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from dreamtalk.cli import main
from engine.backends import TorchBackend, make_backend
from engine.backends.devices import tensorrt_available
from engine.backends.kinds import ORT_CPU
from engine.motion_model import WEIGHTS_DIR, MotionModels
from export.engine_cache import EngineCache, fingerprint
from export.fp16 import half_fraction, to_fp16
from export.graphs import SAMPLER, STEP, Graph, TensorSpec, audio_encoder_graph
from export.manifest import check_entry, read_manifest, sha256_file
from export.onnx_export import export_graph, ort_session
from export.recording import inputs_of, load_recorded
from export.tensorrt_build import BuildOptions, Target, engine_key, profile_shapes
from export.verify import graph_for

# the committed refiner has its own audio encoder (`lip_audio_encoder`)
MODELS = ("audio_encoder", STEP, "lip_refiner", "lip_audio_encoder", "renderer_256")


@pytest.fixture(scope="module")
def models(one_thread) -> MotionModels:
    return MotionModels.load_default()


def test_every_network_is_exported_with_a_complete_manifest(export_dir):
    manifest = read_manifest(export_dir)
    assert set(manifest["models"]) == set(MODELS)
    assert manifest["denoiser"] == {"form": "step", "model": STEP, "steps": None}
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["onnx"] == onnx.__version__
    for name, entry in manifest["models"].items():
        assert check_entry(export_dir, name, entry) == []
        assert entry["sha256"] == sha256_file(export_dir / entry["file"])
        assert entry["opset"] == 17
        if name.startswith("renderer"):  # its sampling positions need FP32
            assert 0 < entry["tolerance"] and entry["tolerance_fp16"] is None
        else:
            assert 0 < entry["tolerance"] < entry["tolerance_fp16"]
        # the batch axis is symbolic on every batched input and on the output
        assert entry["outputs"][0]["shape"][0] == "batch"
        assert entry["inputs"][0]["shape"][0] == "batch"
        assert all(isinstance(d, str | int) for s in entry["inputs"] for d in s["shape"])
    weights = {
        "audio_encoder": "emodiff_student.pt",
        STEP: "emodiff_student.pt",
        "lip_refiner": "lips.pt",
        "lip_audio_encoder": "lips.pt",
    }
    for name, file in weights.items():
        source = manifest["models"][name]["source"]
        assert Path(source["path"]).name == file
        assert source["sha256"] == sha256_file(WEIGHTS_DIR / file)
    assert manifest["models"]["renderer_256"]["source"] is None  # no trained weights
    frames = manifest["models"]["renderer_256"]["outputs"][0]["shape"]
    assert frames == ["batch", 3, 256, 256]
    assert (export_dir / "recorded_inputs.npz").is_file()


def test_verify_passes_on_the_export(export_dir, capsys):
    assert main(["export", "--out", str(export_dir), "--verify-only"]) == 0
    table = capsys.readouterr().out
    for name in MODELS:
        line = next(row for row in table.splitlines() if row.startswith(name))
        assert line.endswith("ok") and "onnxruntime-cpu" in line


def test_verify_fails_past_the_tolerance(export_dir, capsys):
    assert main(["export", "--out", str(export_dir), "--verify-only", "--tolerance", "1e-12"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_verify_fails_on_a_tampered_file(export_dir, tmp_path, caplog):
    folder = tmp_path / "tampered"
    shutil.copytree(export_dir, folder)
    path = folder / "lip_refiner.onnx"
    model = onnx.load(str(path))
    bias = next(i for i in model.graph.initializer if i.name.endswith("out.bias"))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.05, bias.name))
    onnx.save(model, str(path))
    assert main(["export", "--out", str(folder), "--verify-only"]) == 1
    assert "lip_refiner.onnx changed since it was exported" in caplog.text
    assert "verification failed: lip_refiner" in caplog.text


def test_a_dynamic_batch_of_three(export_dir, models):
    """Every model at batch 3 (recorded inputs) against PyTorch."""
    manifest, recorded = read_manifest(export_dir), load_recorded(export_dir)
    ort = make_backend(ORT_CPU)
    for name, entry in manifest["models"].items():
        graph = graph_for(name, entry, models)
        inputs = tuple(
            t[:3] if spec.shape[:1] == ("batch",) else t
            for t, spec in zip(inputs_of(graph, recorded), graph.inputs, strict=True)
        )
        out = ort.runner(graph, export_dir / entry["file"])(*inputs)
        ref = TorchBackend().runner(graph)(*inputs)
        assert out.shape[0] == 3 and out.shape == ref.shape
        assert float((out - ref).abs().max()) <= entry["tolerance"], name


def test_the_audio_encoder_and_refiner_take_any_length(export_dir, models):
    ort = make_backend(ORT_CPU)
    entry = read_manifest(export_dir)["models"]["audio_encoder"]
    graph = graph_for("audio_encoder", entry, models)
    mel = torch.randn(2, 4 * (14 + 37 + 2), 80) - 4.0  # 37 frames, not the traced 2
    out = ort.runner(graph, export_dir / entry["file"])(mel)
    assert out.shape == (2, 37, 128)
    assert float((out - models.emodiff.audio(mel)).abs().max()) <= entry["tolerance"]


def test_the_engine_folder_reuses_fresh_files_and_refreshes_stale_ones(models, tmp_path):
    cache = EngineCache(tmp_path)
    graph = audio_encoder_graph(models)
    path = cache.onnx(graph)
    first = read_manifest(tmp_path)["models"]["audio_encoder"]
    stamp = path.stat().st_mtime_ns
    assert cache.onnx(graph) == path and path.stat().st_mtime_ns == stamp  # reused
    # other weights: another fingerprint, so the file is exported again
    changed = MotionModels.load_default()
    with torch.no_grad():
        changed.emodiff.audio.inp.bias.add_(0.01)
    graph2 = audio_encoder_graph(changed)
    assert fingerprint(graph2) != first["fingerprint"]
    cache.onnx(graph2)
    second = read_manifest(tmp_path)["models"]["audio_encoder"]
    assert second["fingerprint"] == fingerprint(graph2) and second["sha256"] != first["sha256"]
    # a file damaged on disk is exported again too
    path.write_bytes(b"not onnx")
    cache.onnx(graph2)
    assert sha256_file(path) == read_manifest(tmp_path)["models"]["audio_encoder"]["sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


class _Broken(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("cannot trace this")


def test_a_failed_export_leaves_no_file(tmp_path):
    spec = TensorSpec("x", "float32", ("batch", 4))
    graph = Graph("broken", _Broken(), (spec,), TensorSpec("y", "float32", ("batch", 4)), 1, 1)
    with pytest.raises(RuntimeError, match="cannot trace"):
        export_graph(graph, tmp_path / "broken.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_refused_clearly(tmp_path, caplog):
    out = str(tmp_path / "out")
    assert main(["export", "--out", out, "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in caplog.text
    assert main(["export", "--out", out, "--fp16"]) == 2
    assert "--fp16 applies to TensorRT" in caplog.text
    assert main(["export", "--out", out, "--verify-only"]) == 2
    assert "nothing exported there" in caplog.text
    assert main(["export", "--out", out, "--weights", str(tmp_path / "none")]) == 2
    assert "no EmoDiff weights" in caplog.text
    if not tensorrt_available():
        assert main(["export", "--out", out, "--format", "tensorrt"]) == 2
        assert "needs an NVIDIA GPU" in caplog.text
    assert not (tmp_path / "out").exists()  # nothing half-made


def test_tensorrt_cache_key_and_profile():
    """The key changes with the GPU model, TensorRT's version, the ONNX file and the options;
    the optimization profile spans batch 1..max_batch (no GPU needed)."""
    a100, h100 = Target("NVIDIA A100", "10.3.0", True), Target("NVIDIA H100 PCIe", "10.3.0", True)
    newer = Target("NVIDIA A100", "10.4.0", True)
    opts = BuildOptions(max_batch=8)
    keys = {
        engine_key(a100, "aa" * 32, opts),
        engine_key(h100, "aa" * 32, opts),
        engine_key(newer, "aa" * 32, opts),
        engine_key(a100, "bb" * 32, opts),
        engine_key(a100, "aa" * 32, BuildOptions(fp16=True, max_batch=8)),
        engine_key(a100, "aa" * 32, BuildOptions(max_batch=4)),
    }
    assert len(keys) == 6
    assert engine_key(a100, "aa" * 32, opts).startswith("nvidia-a100.trt10.3.0.fp32.b8.")
    # no fast FP16: the key says what was built (FP32)
    assert ".fp32." in engine_key(Target("GTX 1080", "10.3.0", False), "aa" * 32,
                                  BuildOptions(fp16=True))  # fmt: skip
    # nor for a graph that needs FP32 (the renderer)
    half = BuildOptions(fp16=True)
    assert ".fp16." in engine_key(a100, "aa" * 32, half)
    assert ".fp32." in engine_key(a100, "aa" * 32, half, half=False)
    with pytest.raises(ValueError, match="max-batch"):
        BuildOptions(max_batch=0)
    graph = audio_encoder_graph(MotionModels.load_default())
    (lo, opt, hi) = profile_shapes(graph, 6)["mel"]
    assert lo[0] == 1 and opt[0] == 1 and hi[0] == 6
    assert lo[1] < opt[1] < hi[1] and lo[2] == opt[2] == hi[2] == 80


def _io_types(model: onnx.ModelProto) -> list[tuple[str, int]]:
    values = (*model.graph.input, *model.graph.output)
    return [(v.name, v.type.tensor_type.elem_type) for v in values]


def test_fp16_copies_run_in_half_precision_within_their_tolerance(export_dir):
    """What FP16 TensorRT engines are built from (strongly typed networks: every layer runs in
    its ONNX type): every weight of a matrix product in float16, the time embedding's sinusoids
    and the layer norms in float32, inputs and output float32 under the same names. On the
    recorded inputs each copy is within its FP16 tolerance of the FP32 file, and not equal."""
    manifest = read_manifest(export_dir)
    recorded = load_recorded(export_dir)
    checked = 0
    for name, entry in manifest["models"].items():
        if entry["tolerance_fp16"] is None:
            continue
        model = onnx.load(export_dir / entry["file"])
        half = to_fp16(model)
        assert half_fraction(half) == 1.0 and half_fraction(model) == 0.0
        assert _io_types(half) == _io_types(model)
        typed = onnx.shape_inference.infer_shapes(half).graph
        types = {v.name: v.type.tensor_type.elem_type for v in (*typed.value_info, *typed.input)}
        types.update({t.name: t.data_type for t in half.graph.initializer})
        for node in half.graph.node:
            if node.op_type in ("Sin", "Cos", "LayerNormalization"):
                assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
        path = export_dir / f"{name}.fp16.onnx"
        onnx.save(half, path)
        try:
            sessions = [ort_session(export_dir / entry["file"]), ort_session(path)]
        finally:
            path.unlink()
        feed = {i.name: recorded[f"{name}/{i.name}"] for i in sessions[0].get_inputs()}
        full, reduced = (s.run(None, feed)[0] for s in sessions)
        assert reduced.dtype == np.float32
        assert 0 < np.abs(full - reduced).max() <= entry["tolerance_fp16"], name
        checked += 1
    assert checked == len(manifest["models"]) - 1  # all but the renderer


@pytest.mark.skipif(not tensorrt_available(),
                    reason="TensorRT needs an NVIDIA GPU and the tensorrt package (pip install "
                    "'.[gpu]'); this machine has neither")  # fmt: skip
def test_tensorrt_engines_build_verify_and_are_cached(tmp_path, capsys):
    out = str(tmp_path / "trt")
    args = ["export", "--format", "tensorrt", "--out", out, "--max-batch", "4", "--verify"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.count("tensorrt") >= len(MODELS)
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    for entry in manifest["models"].values():
        (engine,) = entry["tensorrt"].values()
        assert engine["gpu"] == torch.cuda.get_device_name(0) and engine["max_batch"] == 4
        assert (Path(out) / engine["file"]).is_file()


def test_recorded_inputs_come_from_a_real_run(export_dir):
    recorded = load_recorded(export_dir)
    mask = recorded[f"{STEP}/known_mask"]
    assert mask.shape == (8, 16)  # two windows of 4 steps: the pre-roll, then the first block
    assert (mask[:4].sum(1) == 0).all() and (mask[4:].sum(1) > 0).all()
    assert np.allclose(recorded[f"{STEP}/t"], [1.0, 0.75, 0.5, 0.25] * 2)
    assert np.allclose(recorded[f"{STEP}/guidance"], 2.0)
    mel = recorded["audio_encoder/mel"]
    assert mel.shape[0] == 8 and mel.std() > 0.5  # speech, not silence


def test_the_unrolled_sampler_exports_and_verifies_beside_the_step(export_dir, tmp_path, capsys):
    out = tmp_path / "both"
    shutil.copytree(export_dir, out)
    assert main(["export", "--out", str(out), "--denoiser", "unrolled", "--verify"]) == 0
    manifest = read_manifest(out)
    assert manifest["denoiser"] == {"form": "unrolled", "model": SAMPLER, "steps": 4}
    assert {SAMPLER, STEP} <= set(manifest["models"])  # the folder keeps the step form
    table = capsys.readouterr().out.splitlines()
    for name in (SAMPLER, STEP):  # both verified: the recorded inputs cover both forms
        assert next(r for r in table if r.startswith(name)).endswith("ok")
