"""Cross-session batching: sessions whose blocks run together give the frames they give alone,
the batches really form (network calls counted through wrapped runners), a session that is not
ready never holds up a ready one, closing a session in the middle of a batch leaks nothing,
and ``max_batch=1`` is the engine as it was.

On small randomly initialised models (as tests/test_stream.py). Nothing is timed: batches are
made deterministic by holding the engine's lock while every session's audio is queued (the
workers cannot pick before it is all there), and the live case runs on a `ManualClock`.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
import pytest
from conftest import drain_frames

from dreamtalk.bench_stream import random_models, speech_audio
from dreamtalk.cli import main
from engine.backends import TorchRunner
from engine.backends.kinds import ORT_CPU, ORT_CUDA, TENSORRT
from engine.motion_model import MotionModels
from engine.stream import ManualClock, StreamConfig, StreamEngine, render_motion
from engine.stream.worker import renders_in_batches
from engine.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME
from server.config import ServerConfig

MOTION_TOLERANCE = 1e-5  # batched calls round differently from single ones, nothing more
FRAME_TOLERANCE = 1  # uint8 levels


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speech_audio(2.4)[0]


def _models():
    return random_models(seed=0, tiny=True)


class Counted:
    """A runner that records the batch size of every call."""

    def __init__(self, runner, sizes: list[int]):
        self.runner, self.sizes = runner, sizes
        self.name, self.backend = runner.name, runner.backend

    def __call__(self, *inputs):
        self.sizes.append(int(inputs[0].shape[0]))
        return self.runner(*inputs)


def count_calls(models) -> dict[str, list[int]]:
    """Wrap every network of ``models`` (its PyTorch networks): name -> batch size per call."""
    nets = models.nets
    calls: dict[str, list[int]] = {"encoder": [], "emodiff": [], "refiner": []}
    nets.audio_encoder = Counted(nets.audio_encoder, calls["encoder"])
    nets.refiner = Counted(nets.refiner, calls["refiner"])
    # the PyTorch path calls the module itself; as a runner it is the same call, counted
    nets.denoiser = Counted(TorchRunner("emodiff_step", models.emodiff), calls["emodiff"])
    make = nets.make_renderer
    nets._renderers.clear()

    def renderer(size: int):
        calls[f"render_{size}"] = []
        return Counted(make(size), calls[f"render_{size}"])

    nets.make_renderer = renderer
    return calls


# (emotion, seed, render, size, audio transform): what each test session is
SESSIONS = [
    ("happy", 11, True, 256, lambda a: a),
    ("angry", 12, True, 256, lambda a: a[::-1].copy()),
    ("sad", 13, False, 256, lambda a: np.roll(a, 5000)),
    ("neutral", 14, True, 512, lambda a: 0.5 * a),
]


def run_together(models, speech, max_batch: int, sessions=SESSIONS, on_open=None, hold=False,
                 **kw):  # fmt: skip
    """Every session's whole audio queued before a worker may pick (the engine's lock held),
    then run to the end: the sessions stay in step, so the batches are deterministic.
    ``on_open(engine, sessions)`` runs first (with ``hold``: under the lock, and it queues
    the audio itself)."""
    with StreamEngine(models, clock=None, max_batch=max_batch, **kw) as engine:
        opened = [engine.open_session(None, emo, seed=seed, render=render, size=size)
                  for emo, seed, render, size, _ in sessions]  # fmt: skip
        with engine._cond:
            if on_open is not None:
                on_open(engine, opened)
            for s, (*_, audio_of) in zip(opened, sessions, strict=True):
                if not hold:
                    s.push_audio(audio_of(speech))
                    s.flush()
        frames = [collect(s) for s in opened]
    return opened, frames


def collect(session) -> list:
    return drain_frames(session)


def alone(models, speech, k: int) -> list:
    return run_together(models, speech, 1, sessions=[SESSIONS[k]])[1][0]


def motion(frames) -> np.ndarray:
    return np.stack([f.motion for f in frames])


def images(frames) -> np.ndarray:
    return np.stack([f.image for f in frames]).astype(int)


# ---- the same frames -----------------------------------------------------------------------
def test_batched_sessions_give_the_frames_they_give_alone(speech):
    models = _models()
    calls = count_calls(models)
    n = len(SESSIONS)
    _, frames = run_together(models, speech, max_batch=n, batch_renders=True)
    steps, cfg = models.steps, StreamConfig()
    frames_out = -(-len(speech) // SAMPLES_PER_FRAME)
    blocks = frames_out // cfg.hop_frames  # every session: the same count

    # the batch formed: after each session's pre-roll (batch 1, when it opened), every
    # network ran once per block for all four sessions (EmoDiff on every E / H-th block: each
    # call generates E frames)
    windows = -(-blocks // (cfg.motion_hop // cfg.hop_frames))
    assert calls["emodiff"] == [1] * steps * n + [n] * steps * windows
    assert calls["encoder"] == [1] * n + [n] * blocks
    assert calls["refiner"] == [n] * blocks
    # asked to batch renders (at any size): frames of the two 256 px sessions on the default
    # portrait render in one call per frame slot; the 512 px session alone; the motion-only
    # one not at all
    assert calls["render_256"] == [2] * cfg.hop_frames * blocks
    assert calls["render_512"] == [1] * cfg.hop_frames * blocks

    for k, (emotion, seed, render, size, audio_of) in enumerate(SESSIONS):
        ref = render_motion(models, audio_of(speech), emotion=emotion, seed=seed)
        got = motion(frames[k])
        assert got.shape[0] >= len(ref)
        np.testing.assert_allclose(got[: len(ref)], ref, atol=MOTION_TOLERANCE, rtol=0)
        if render:
            single = alone(models, speech, k)
            assert [f.index for f in single] == [f.index for f in frames[k]]
            diff = np.abs(images(frames[k]) - images(single))
            assert diff.max() <= FRAME_TOLERANCE
            assert frames[k][0].image.shape == (size, size, 3)


def test_batching_through_onnx_runtime_gives_the_same_frames(export_dir, one_thread, speech):
    """The committed weights on ONNX Runtime (every network, the renderer too), through their
    exported dynamic batch axis: batched sessions give the frames they give alone."""
    models = MotionModels.load_default()
    models.use_backend("onnxruntime", engine_dir=export_dir, sizes=(256,))
    sessions = SESSIONS[:3]
    _, together = run_together(models, speech, 3, sessions=sessions)
    for k, session in enumerate(sessions):
        single = run_together(models, speech, 1, sessions=[session])[1][0]
        np.testing.assert_allclose(motion(together[k]), motion(single), atol=MOTION_TOLERANCE,
                                   rtol=0)  # fmt: skip
        if session[2]:
            assert np.abs(images(together[k]) - images(single)).max() <= FRAME_TOLERANCE


def test_max_batch_caps_the_batch_and_one_is_the_engine_as_it_was(speech):
    models = _models()
    calls = count_calls(models)
    _, frames = run_together(models, speech, max_batch=2)
    assert set(calls["emodiff"]) == {1, 2} and max(calls["refiner"]) == 2
    # by default the PyTorch renderer takes a batch's frames of one avatar in one call; ONNX
    # Runtime's on a CPU only at 256 px (measured faster each way: docs/bench.md)
    assert set(calls["render_256"]) == {2}  # A and B: the default portrait
    with StreamEngine(models, clock=None, max_batch=2) as engine:
        assert engine.batch_renders(256) and engine.batch_renders(512)
    assert renders_in_batches(ORT_CPU, 256) and not renders_in_batches(ORT_CPU, 512)
    assert renders_in_batches(TENSORRT, 512) and renders_in_batches(ORT_CUDA, 512)
    with StreamEngine(models, clock=None, max_batch=2, batch_renders=False) as engine:
        assert not engine.batch_renders(256)

    models = _models()
    calls = count_calls(models)
    _, frames = run_together(models, speech, max_batch=1)
    assert all(size == 1 for sizes in calls.values() for size in sizes)
    for k, (emotion, seed, render, _, audio_of) in enumerate(SESSIONS):
        ref = render_motion(models, audio_of(speech), emotion=emotion, seed=seed)
        assert np.array_equal(motion(frames[k])[: len(ref)], ref)  # bit for bit
        if render:
            assert np.array_equal(images(frames[k]), images(alone(models, speech, k)))


def test_two_workers_share_the_ready_sessions(speech):
    """With two idle workers, the first to pick takes half of the ready sessions (the other
    worker takes the rest: two cores, not one); with the other worker busy, all of them. The
    frames are still each session's own."""
    models = _models()
    sessions = [(e, seed, False, 256, audio_of) for e, seed, _, _, audio_of in SESSIONS]
    picked = {}

    def on_open(engine, opened):
        for s, (*_, audio_of) in zip(opened, sessions, strict=True):
            s.push_audio(audio_of(speech))
            s.flush()
        picked["idle"] = engine._pick(engine.now())[0]
        engine._running += 1  # as if the other worker were running a batch
        picked["busy"] = engine._pick(engine.now())[0]
        engine._running -= 1

    _, frames = run_together(models, speech, 4, sessions=sessions, workers=2, on_open=on_open,
                             hold=True)  # fmt: skip
    assert len(picked["idle"]) == 2 and len(picked["busy"]) == 4
    for k, (emotion, seed, _, _, audio_of) in enumerate(sessions):
        ref = render_motion(models, audio_of(speech), emotion=emotion, seed=seed)
        np.testing.assert_allclose(motion(frames[k])[: len(ref)], ref, atol=MOTION_TOLERANCE,
                                   rtol=0)  # fmt: skip


def test_bad_batch_settings_are_refused_clearly(capsys):
    models = _models()
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="max_batch must be an integer of at least 1"):
            StreamEngine(models, clock=None, max_batch=bad)
    with pytest.raises(ValueError, match="batch_window_ms must be >= 0"):
        StreamEngine(models, clock=None, max_batch=4, batch_window_ms=-1.0)
    with pytest.raises(ValueError, match="--max-batch must be at least 1"):
        ServerConfig(max_batch=0)
    assert main(["serve", "--max-batch", "0", "--port", "1"]) == 2


def test_a_failure_stays_with_its_session(speech, caplog):
    """A batched EmoDiff call that raises is retried row by row (the sessions get their
    frames all the same), and a session whose own phase raises fails alone: the others in its
    batch go on."""
    models = _models()
    runner = TorchRunner("emodiff_step", models.emodiff)

    def no_batches(*inputs):
        if inputs[0].shape[0] > 1:
            raise RuntimeError("out of memory (a test)")
        return runner(*inputs)

    models.nets.denoiser = no_batches
    sessions = [(e, seed, False, 256, audio_of) for e, seed, _, _, audio_of in SESSIONS[:3]]
    with StreamEngine(models, clock=None, max_batch=3) as engine:
        opened = [engine.open_session(None, emo, seed=seed, render=False)
                  for emo, seed, *_ in sessions]  # fmt: skip

        def broken(block, window):
            raise ValueError("a bug in one session (a test)")

        opened[1].core._take_window = broken
        with engine._cond:
            for s, (*_, audio_of) in zip(opened, sessions, strict=True):
                s.push_audio(audio_of(speech))
                s.flush()
        frames = {k: collect(opened[k]) for k in (0, 2)}
        with pytest.raises(RuntimeError, match="a bug in one session"):
            opened[1].pull_frames()
    assert "a batched call of 3 rows failed (out of memory (a test)): one row at a time" in (
        caplog.text
    )
    for k in (0, 2):
        emotion, seed, _, _, audio_of = sessions[k]
        ref = render_motion(models, audio_of(speech), emotion=emotion, seed=seed)
        np.testing.assert_allclose(motion(frames[k])[: len(ref)], ref, atol=MOTION_TOLERANCE,
                                   rtol=0)  # fmt: skip


# ---- readiness and timing -------------------------------------------------------------------
def test_a_session_that_is_not_ready_never_delays_a_ready_one(speech):
    """Live, on a manual clock: A's audio comes in real time, B's 100 ms behind it (and none
    at all for its last half second). Every block of A starts at the very clock tick its audio
    is complete, whether or not B is ready, and B's blocks run when B is."""
    clock = ManualClock()
    models = _models()
    chunk = SAMPLE_RATE // 50  # 20 ms
    lag = 5  # chunks
    with StreamEngine(models, clock=clock, max_batch=4) as engine:
        a = engine.open_session(None, seed=1, render=False)
        b = engine.open_session(None, seed=2, render=False)
        pushed_a: list[tuple[int, float]] = []  # (timeline end, clock) after each push
        n = len(speech) // chunk
        for i in range(n + lag):
            clock.advance(chunk / SAMPLE_RATE)
            if i < n:
                r = a.push_audio(speech[i * chunk : (i + 1) * chunk])
                pushed_a.append((r.start_sample + r.num_samples, clock()))
            if lag <= i < n - 12:
                b.push_audio(speech[(i - lag) * chunk : (i - lag + 1) * chunk])
            a.drain()
            b.drain()
        records = list(a.stats.blocks)
        assert a.stats.dropped_frames == 0 and b.stats.frames > 0
        for rec in records:
            if rec.forced:
                continue
            need = a.core.need_samples(rec.first)
            ready_at = next(t for end, t in pushed_a if end >= need)
            assert rec.start == ready_at, f"block {rec.first} waited for another session"


def test_a_late_session_joins_the_next_batch_within_the_window(speech):
    """Offline: two sessions in step, a third whose audio comes later. The first two run
    together without it; once its audio is in, it runs alone until it is within one hop of
    them, and from then on all three run together."""
    models = _models()
    calls = count_calls(models)
    late_sessions = SESSIONS[:2] + [("sad", 13, False, 256, lambda a: a)]
    half = len(speech) // 2

    with StreamEngine(models, clock=None, max_batch=4) as engine:
        opened = [engine.open_session(None, emo, seed=seed, render=False)
                  for emo, seed, _, _, _ in late_sessions]  # fmt: skip
        with engine._cond:
            for s, (*_, audio_of) in zip(opened[:2], late_sessions[:2], strict=True):
                s.push_audio(audio_of(speech)[:half])
        for s in opened[:2]:
            assert s.drain(60)
        before = list(calls["emodiff"])
        refined_before = len(calls["refiner"])
        with engine._cond:
            for s, (*_, audio_of) in zip(opened, late_sessions, strict=True):
                s.push_audio(audio_of(speech)[half:] if s is not opened[2] else speech)
                s.flush()
        frames = [collect(s) for s in opened]
    pre = models.steps * 3
    assert set(before[pre:]) == {2}  # the two ready ones together, not waiting for the third
    # it caught up alone, then joined (the refiner runs every block; EmoDiff every other one,
    # so the late session's EmoDiff calls may fall between the others')
    after = calls["refiner"][refined_before:]
    assert 1 in after and 3 in after
    ref = render_motion(models, speech, emotion="sad", seed=13)
    np.testing.assert_allclose(motion(frames[2])[: len(ref)], ref, atol=MOTION_TOLERANCE, rtol=0)


# ---- closing --------------------------------------------------------------------------------
def test_closing_a_session_mid_batch_leaks_nothing(speech):
    """B is closed from another thread while its block is inside a batched EmoDiff call, and
    C by a frame callback of A on the worker thread (while it delivers a batch C is part of):
    neither hangs, the batch finishes for A (its frames are what they are alone), the closed
    sessions get nothing more, and once the engine is closed no thread, session or avatar
    is left."""
    models = _models()
    models.nets.denoiser = TorchRunner("emodiff_step", models.emodiff)
    baseline = threading.active_count()
    closer: list[threading.Thread] = []
    state: dict = {}

    def on_open(engine, opened):
        a, b, c = opened
        state.update(b=b, c=c, a_frames=0)
        denoiser = models.nets.denoiser

        def close_b_inside_the_call(*inputs):
            b = state.get("b")
            if inputs[0].shape[0] == 3 and b is not None and not closer:
                closer.append(threading.Thread(target=b.close))
                closer[0].start()
                while not b._closed:  # close() has begun: it waits for this batch to end
                    time.sleep(0.001)
            return denoiser(*inputs)

        def close_c_on_the_worker():
            state["a_frames"] += 1
            if state["a_frames"] == 10:
                state["c"].close()

        models.nets.denoiser = close_b_inside_the_call
        a.on_frames = close_c_on_the_worker

    opened, frames = run_together(models, speech, 4, sessions=SESSIONS[:3], on_open=on_open)
    a, b, c = opened
    closer[0].join(30)
    assert not closer[0].is_alive(), "closing mid-batch hung"
    assert b._closed and c._closed
    assert frames[1] == []  # closed inside its first batched block: nothing delivered
    assert 9 <= len(frames[2]) <= 10  # up to the frame slot in which A's callback closed it
    assert len(frames[0]) == -(-len(speech) // SAMPLES_PER_FRAME)
    ref = render_motion(models, speech, emotion="happy", seed=11)
    np.testing.assert_allclose(motion(frames[0])[: len(ref)], ref, atol=MOTION_TOLERANCE, rtol=0)
    assert threading.active_count() == baseline  # the engine closed: workers joined
    engine = a.engine
    assert not engine._sessions
    refs = [weakref.ref(s) for s in (a, b, c)]
    state.clear()
    del a, b, c, opened
    gc.collect()
    assert all(r() is None for r in refs), "a closed session is still referenced"
    assert len(engine._avatars) == 0


# ---- the benchmarks ---------------------------------------------------------------------------
def test_bench_stages_and_batch_print_their_json(capsys):
    """Smoke runs (PyTorch, 256 px, a second and a half of speech): the JSON has every stage
    of every combination, and the batch table both modes. Nothing about the figures."""
    import json

    argv = ["bench", "stages", "--backends", "torch", "--sizes", "256", "--sessions", "1,2",
            "--repeats", "2", "--seconds", "1.5", "--json"]  # fmt: skip
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    by_n = r["backends"]["torch"]["256"]
    assert set(by_n) == {"1", "2"}
    stages = {"features", "audio_encoder", "emodiff", "lip_refiner", "render", "encode",
              "e2e_frame", "e2e_block"}  # fmt: skip
    for n, ms in by_n.items():
        assert set(ms) == (stages if n == "1" else stages | {"render_batched"})
        assert all(v > 0 for v in ms.values())
    assert len(r["load_average"]["start"]) == 3 and r["ratios"] == {}

    argv = ["bench", "--json", "batch", "--backend", "torch", "--sessions", "2", "--seconds",
            "1.5"]  # fmt: skip
    assert main(argv) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [(x["sessions"], x["batching"], x["max_batch"]) for x in runs] == [
        (2, False, 1),
        (2, True, 2),
    ]
    assert all(x["fps_wall"] > 0 and x["fps_cpu"] > 0 for x in runs)


def test_bench_bad_input_is_refused_clearly(capsys, caplog):
    for argv, message in [
        (["bench", "stages", "--backends", "torch,bogus"], "unknown backend 'bogus': use one of"),
        (["bench", "stages", "--sizes", "300"], "300 is not a frame size"),
        (["bench", "stages", "--sessions", "0"], "--sessions must be at least 1"),
        (["bench", "batch", "--backend", "cuda"], "unknown backend 'cuda'"),
        (["bench", "batch", "--workers", "0"], "--workers must be at least 1"),
    ]:
        caplog.clear()
        assert main(argv) == 2, argv
        assert message in caplog.text
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "stages", "--sessions", "two"])
    assert exit_.value.code == 2 and "argument --sessions: 'two'" in capsys.readouterr().err
