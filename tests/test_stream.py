"""The streaming engine: chunk invariance, timestamps, idling, interrupt, emotion ramps,
independent sessions, odd input, threads. On small randomly initialised models (the streaming
mechanics do not need trained weights) and espeak-ng speech (synthetic speech without it).

Nothing here is timed: the live clock is a `ManualClock` the tests move by hand, so the live
code paths (forced idle, gaps, lead limit, late-frame drops) run deterministically.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from dreamtalk.bench_stream import random_models, speech_audio
from engine.blendshapes import MOTION_INDEX
from engine.stream import ManualClock, StreamConfig, StreamEngine, render_motion
from engine.stream.audio_input import PolyphaseResampler, to_mono_float
from engine.stream.idle import CLOSE, HOLD
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

JAW = MOTION_INDEX["jawOpen"]


@pytest.fixture(scope="module")
def models():
    return random_models(seed=0, tiny=True)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 3 s of speech (16 kHz float32) that ends in silence."""
    audio, _ = speech_audio(3.6)
    return audio


def speech_end_frame(audio: np.ndarray) -> int:
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return int(loud[-1]) // SAMPLES_PER_FRAME + 1


def run_offline(models, audio, chunk: int, rate=SAMPLE_RATE, seed=7, render=False, **kw):
    """Push ``audio`` in ``chunk``-sample pieces into an offline session, flush, collect."""
    with StreamEngine(models, clock=None) as engine:
        session = engine.open_session(None, seed=seed, render=render, **kw)
        for i in range(0, len(audio), chunk):
            session.push_audio(audio[i : i + chunk], rate)
        session.flush()
        return collect(session)


def collect(session, until: int | None = None) -> list:
    frames = []
    while True:
        assert session.drain(60)
        got = session.pull_frames()
        frames += got
        if not got and (until is None or len(frames) >= until):
            return frames


def motion(frames) -> np.ndarray:
    return np.stack([f.motion for f in frames])


# ---- audio input ----------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampler_is_chunk_invariant_and_accurate(rate):
    rng = np.random.default_rng(rate)
    t = np.arange(rate) / rate
    x = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(rate)).astype(np.float32)
    whole = PolyphaseResampler(rate)
    ref = np.concatenate([whole.process(x), whole.finish()])
    assert len(ref) == SAMPLE_RATE
    pieces, rs, i = [], PolyphaseResampler(rate), 0
    while i < len(x):
        n = int(rng.integers(0, rate // 10))
        pieces.append(rs.process(x[i : i + n]))
        i += n
    pieces.append(rs.finish())
    assert np.array_equal(np.concatenate(pieces), ref)  # bit for bit
    sine = 0.5 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    mid = slice(SAMPLE_RATE // 4, 3 * SAMPLE_RATE // 4)
    assert np.abs(ref[mid] - sine[mid]).max() < 0.05  # the tone, at its level, in time


def test_sample_formats():
    pcm = (np.arange(-4, 4) * 4096).astype(np.int16)
    as_float, bad = to_mono_float(pcm)
    assert bad == 0 and np.allclose(as_float, pcm / 32768.0)
    assert np.array_equal(to_mono_float(pcm.tobytes())[0], as_float)
    stereo = np.stack([pcm, np.zeros_like(pcm)], axis=1)
    assert np.allclose(to_mono_float(stereo)[0], as_float / 2)
    assert np.allclose(to_mono_float(stereo.reshape(-1), channels=2)[0], as_float / 2)
    with_nan = np.array([0.1, np.nan, np.inf, -0.2], np.float32)
    out, bad = to_mono_float(with_nan)
    assert bad == 2 and np.array_equal(out, np.array([0.1, 0, 0, -0.2], np.float32))
    for wrong, match in [
        (pcm.astype(np.float32), "integer PCM"),
        (np.zeros((2, 1000), np.float32), "transpose"),
        (np.zeros((2, 2, 2)), "1-D"),
        (np.array(["a"]), "dtype"),
        (b"\x00\x01\x02", "even"),
    ]:
        with pytest.raises(ValueError, match=match):
            to_mono_float(wrong)


# ---- the session ----------------------------------------------------------------------------
def test_chunk_size_invariance_and_timestamps(models, speech):
    """10 ms and 500 ms chunks, same seed: the same frames, bit for bit, pictures included,
    and the same motion as the offline path; pts n / 25 without a gap."""
    a = run_offline(models, speech, SAMPLE_RATE // 100, render=True)
    b = run_offline(models, speech, SAMPLE_RATE // 2, render=True)
    n = -(-len(speech) // SAMPLES_PER_FRAME)
    assert len(a) >= n and len(a) == len(b)
    assert [f.index for f in a] == list(range(len(a)))
    assert all(f.pts == f.index / FPS for f in a)
    assert np.array_equal(motion(a), motion(b))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert a[0].image.shape == (256, 256, 3) and a[0].image.dtype == np.uint8
    offline = render_motion(models, speech, seed=7)
    assert np.array_equal(motion(a)[:n], offline)
    other_seed = render_motion(models, speech, seed=8)
    assert not np.allclose(offline, other_seed)


def test_silence_idles_with_the_mouth_closed(models, speech):
    """Speech, then 4 s of room noise with a breath in it: after the hangover the mouth is
    closed and still, the eyes blink and the head breathes; the breath does not open it."""
    rng = np.random.default_rng(0)
    quiet = rng.normal(0.0, 10 ** (-60 / 20), 4 * SAMPLE_RATE).astype(np.float32)
    breath = rng.normal(0.0, 10 ** (-35 / 20), 6000).astype(np.float32)
    quiet[SAMPLE_RATE : SAMPLE_RATE + 6000] += breath * np.hanning(6000).astype(np.float32)
    audio = np.concatenate([speech, quiet])
    frames = run_offline(models, audio, 4000, seed=3)
    m = motion(frames)
    speech_w = np.array([f.speech for f in frames])
    end = speech_end_frame(speech)
    assert speech_w[: end - 5].max() == 1.0  # talking during the speech
    settled = end + 5 + 4 + 2  # hangover 200 ms, release 160 ms, margin
    silent = slice(settled, len(speech) // SAMPLES_PER_FRAME + 4 * FPS)
    assert np.all(speech_w[silent] == 0.0)
    assert np.all(m[silent][:, CLOSE] == 0.0)  # jaw shut, lips closed, no articulation
    assert np.abs(np.diff(m[silent][:, HOLD], axis=0)).max() < 0.01  # the emotion's mouth, still
    blink = m[silent, MOTION_INDEX["eyeBlinkLeft"]]
    assert blink.max() - blink.min() > 0.5  # blinks
    assert m[silent, MOTION_INDEX["headPitch"]].std() > 1e-3  # breathing sway


def test_no_audio_keeps_frames_coming_and_audio_after_a_gap_starts_now(models, speech):
    clock = ManualClock()
    with StreamEngine(models, clock=clock) as engine:
        session = engine.open_session(None, seed=1, render=False)
        for _ in range(50):  # 2 s of an assistant that is thinking
            clock.advance(0.04)
            session.drain()
        idle = session.pull_frames()
        assert len(idle) >= 40
        assert [f.index for f in idle] == list(range(len(idle)))
        assert all(f.filled and f.speech == 0.0 for f in idle)
        assert np.all(motion(idle)[:, CLOSE] == 0.0)
        # speech arrives in real time, 20 ms at a time: it is placed at the clock, not queued
        # behind the silence; then it continues seamlessly
        chunk = SAMPLE_RATE // 50
        first = session.push_audio(speech[:chunk])
        assert first.start_sample == round(clock() * SAMPLE_RATE)
        second = session.push_audio(speech[chunk : 2 * chunk])
        assert second.start_sample == first.start_sample + chunk
        for i in range(2, len(speech) // chunk):
            clock.advance(0.02)
            session.push_audio(speech[i * chunk : (i + 1) * chunk])
            session.drain()
        for _ in range(25):
            clock.advance(0.04)
            session.drain()
        talk = session.pull_frames()
        frames = idle + talk
        assert [f.index for f in frames] == list(range(len(frames)))
        start = first.start_sample // SAMPLES_PER_FRAME
        assert max(f.speech for f in talk if f.index >= start) == 1.0
        assert session.stats.dropped_frames == 0


def test_interrupt_mid_utterance(models, speech):
    """A TTS burst (3 s at once), interrupted after 1 s: the queued audio is dropped, the mouth
    closes within 200 ms of the cut, smoothly, and the face goes on idling."""
    clock = ManualClock()
    with StreamEngine(models, clock=clock) as engine:
        session = engine.open_session(None, seed=5, render=False)
        session.push_audio(speech)
        for _ in range(25):
            clock.advance(0.04)
            session.drain()
        cut_pts = session.interrupt()
        cut = round(cut_pts * FPS)
        assert 1.0 <= cut_pts <= 1.0 + engine.config.max_lead_ms / 1000 + 0.08
        assert session.stats.dropped_samples > SAMPLE_RATE  # the rest of the utterance
        for _ in range(40):
            clock.advance(0.04)
            session.drain()
        frames = session.pull_frames()
    assert [f.index for f in frames] == list(range(len(frames)))
    m, w = motion(frames), np.array([f.speech for f in frames])
    assert w[cut - 10 : cut].max() == 1.0  # it was talking
    closed = cut + 5  # interrupt_ms = 200
    assert np.all(w[closed:] == 0.0) and np.all(m[closed:, CLOSE] == 0.0)
    assert np.all(np.diff(w[cut - 1 : closed + 1]) <= 0) and np.all(np.diff(w) >= -0.5)
    # no jump: the mouth moves no faster closing than it did while talking
    step = np.abs(np.diff(m[:, CLOSE], axis=0)).max(axis=1)
    assert step[cut - 1 : closed + 1].max() <= step[: cut - 1].max()


def test_emotion_change_takes_effect_smoothly(models, speech):
    """set_emotion mid-utterance: frames before its pts are untouched, the style has fully
    ramped 0.5 s later, and the face moves no faster than without the change."""
    split = len(speech) // 2
    with StreamEngine(models, clock=None) as engine:
        happy = engine.open_session(None, "happy", 3, seed=2, render=False)
        change = engine.open_session(None, "happy", 3, seed=2, render=False)
        for s in (happy, change):
            s.push_audio(speech[:split])
            s.drain()
        at = round(change.set_emotion("sad", 1) * FPS)
        for s in (happy, change):
            s.push_audio(speech[split:])
            s.flush()
        a, b = motion(collect(happy)), motion(collect(change))
        sad = models.style_from_emotion("sad", 1)
        ramp = round(engine.config.emotion_ramp_ms * FPS / 1000)
        assert ramp <= 0.5 * FPS
        assert np.allclose(change.core.style_at(at + ramp - 1), sad)
        assert not np.allclose(change.core.style_at(at + ramp // 2), sad)
    assert np.array_equal(a[:at], b[:at])
    assert not np.allclose(a[at + ramp :], b[at + ramp :])
    non_mouth = [i for i in range(a.shape[1]) if i not in set(CLOSE) | set(HOLD)]
    jump = np.abs(np.diff(b[:, non_mouth], axis=0)).max(axis=1)
    usual = np.abs(np.diff(a[:, non_mouth], axis=0)).max(axis=1)
    assert jump[at - 1 : at + ramp + 2].max() <= 1.5 * usual.max()


def test_sessions_do_not_affect_each_other(models, speech):
    """Two sessions on two workers, interleaved pushes of different audio, different seeds and
    emotions: each gives exactly what it gives alone."""
    other = speech[::-1].copy()
    with StreamEngine(models, clock=None, workers=2) as engine:
        s1 = engine.open_session(None, "happy", seed=11, render=False)
        s2 = engine.open_session(None, "angry", seed=12, render=False)
        chunk = 1234
        for i in range(0, len(speech), chunk):
            s1.push_audio(speech[i : i + chunk])
            s2.push_audio(other[i : i + chunk])
        s1.flush()
        s2.flush()
        m1, m2 = motion(collect(s1)), motion(collect(s2))
    n = len(render_motion(models, speech, seed=11))
    assert np.array_equal(m1[:n], render_motion(models, speech, emotion="happy", seed=11))
    assert np.array_equal(m2[:n], render_motion(models, other, emotion="angry", seed=12))


def test_odd_input(models, speech):
    """Empty chunks, NaN samples, 8 kHz, 44.1 kHz stereo, PCM bytes and one 30 s chunk are
    handled; bad input is refused with a ValueError that says why, and the session goes on."""
    rng = np.random.default_rng(0)
    pcm8k = (rng.standard_normal(8000) * 3000).astype(np.int16)
    # 8 kHz in odd chunks equals the offline path over the same samples
    frames8k = run_offline(models, pcm8k, 333, rate=8000)
    assert np.array_equal(motion(frames8k)[:25], render_motion(models, pcm8k, 8000, seed=7))
    # 44.1 kHz stereo: the channels are averaged, chunking does not matter
    stereo = (rng.standard_normal((44100, 2)) * 3000).astype(np.int16)
    frames441 = run_offline(models, stereo, 441 * 7, rate=44100)
    assert np.array_equal(motion(frames441)[:25], render_motion(models, stereo, 44100, seed=7))

    with StreamEngine(models, clock=None) as engine:
        session = engine.open_session(None, seed=7, render=False)
        empty = session.push_audio(np.zeros(0, np.float32))
        assert empty.num_samples == 0 and empty.start_sample == 0
        bad = speech[:8000].copy()
        bad[100:200] = np.nan
        assert session.push_audio(bad).nonfinite == 100
        assert session.push_audio(bad[:0].tobytes() or b"", 16000).num_samples == 0
        for wrong, match in [
            ((speech[:100], 0), "sample_rate"),
            ((speech[:100], 44100.5), "integer"),
            ((speech[:100], 10**7), "sample_rate"),
            ((speech[8000:9000] * 30000, 16000), "integer PCM"),
            ((np.zeros((2, 5000), np.float32), 16000), "transpose"),
        ]:
            with pytest.raises(ValueError, match=match):
                session.push_audio(*wrong)
        with pytest.raises(ValueError, match="unknown emotion"):
            session.set_emotion("elated")
        with pytest.raises(ValueError, match="intensity"):
            session.set_emotion("happy", 4)
        # still usable; then a 30 s chunk at once, as int16 bytes
        long = np.tile(speech, 1 + 30 * SAMPLE_RATE // len(speech))[: 30 * SAMPLE_RATE]
        placed = session.push_audio((long * 32767).astype(np.int16).tobytes())
        assert placed.start_sample == 8000 and placed.num_samples == 30 * SAMPLE_RATE
        session.flush()
        frames = collect(session)
        assert len(frames) >= (8000 + 30 * SAMPLE_RATE) // SAMPLES_PER_FRAME
        assert [f.index for f in frames] == list(range(len(frames)))
        assert np.isfinite(motion(frames)).all()
        session.close()
        with pytest.raises(RuntimeError, match="closed"):
            session.push_audio(speech[:100])


def test_late_frames_are_dropped_not_delayed(models, speech):
    """The clock jumps 3 s while the session had 2 s of audio: frames already past their due
    time are counted as dropped (not rendered), the rest arrive on time, gap-free after."""
    clock = ManualClock()
    with StreamEngine(models, clock=clock) as engine:
        session = engine.open_session(None, seed=4, render=True)
        session.push_audio(speech[: 2 * SAMPLE_RATE])
        clock.advance(3.0)
        session.drain()
        for _ in range(10):
            clock.advance(0.04)
            session.drain()
        frames = session.pull_frames()
        stats = session.stats
    assert stats.dropped_frames > 0
    first = frames[0].index
    assert first == stats.dropped_frames  # exactly the late ones are missing
    assert [f.index for f in frames] == list(range(first, first + len(frames)))
    due = [session.t0 + f.index / FPS + session.playout_delay for f in frames]
    assert all(f.ready_time <= d for f, d in zip(frames, due, strict=True))
    assert all(f.image is not None for f in frames)


def test_threads_are_joined_on_close(models, speech):
    baseline = threading.active_count()
    engine = StreamEngine(models, clock=None, workers=2)
    a = engine.open_session(None, seed=1, render=False)
    b = engine.open_session(None, seed=2, render=False)
    assert threading.active_count() == baseline + 2
    a.push_audio(speech[:8000])
    b.push_audio(speech[:8000])
    a.close()
    assert threading.active_count() == baseline + 2  # b still needs them
    b.close()
    assert threading.active_count() == baseline
    c = engine.open_session(None, seed=3, render=False)  # workers come back on demand
    assert threading.active_count() == baseline + 2
    engine.close()
    assert threading.active_count() == baseline
    assert c._closed


def test_config_is_checked(models):
    # EmoDiff's hop defaults to the smallest multiple of the block of at least 4 frames
    assert [StreamConfig(hop_frames=h).motion_hop for h in (1, 2, 3, 4, 8)] == [4, 4, 6, 4, 8]
    with pytest.raises(ValueError, match="hop_frames"):
        StreamConfig(hop_frames=0)
    with pytest.raises(ValueError, match="motion_hop_frames must be a multiple of hop_frames"):
        StreamConfig(hop_frames=2, motion_hop_frames=3)
    with pytest.raises(ValueError, match="motion_hop_frames must be below"):
        StreamEngine(models, StreamConfig(motion_hop_frames=16), clock=None).open_session(
            None, render=False
        )
    with pytest.raises(ValueError, match="look"):
        StreamEngine(models, StreamConfig(lookahead_frames=5), clock=None).open_session(
            None, render=False
        )


@pytest.mark.parametrize("motion_hop", [2, 4, 6])
def test_emodiff_generates_motion_hop_frames_per_call(models, speech, motion_hop, monkeypatch):
    """Blocks stay H = 2 frames (the mouth's latency); EmoDiff runs on every E / H-th block
    and generates E frames, the whole overlap S - E known. The output is chunk-invariant."""
    from engine.stream.core import SessionCore

    calls = []
    sample = models.sample_window

    def counted(feats, style, known, *args, **kw):
        calls.append(0 if known is None else known.shape[1])
        return sample(feats, style, known, *args, **kw)

    monkeypatch.setattr(models, "sample_window", counted)
    cfg = StreamConfig(motion_hop_frames=motion_hop)

    def run(chunk: int) -> list:
        with StreamEngine(models, cfg, clock=None) as engine:
            session = engine.open_session(None, seed=7, render=False)
            for i in range(0, len(speech), chunk):
                session.push_audio(speech[i : i + chunk])
            session.flush()
            return collect(session)

    frames = run(3200)
    blocks = len(frames) // cfg.hop_frames
    per = motion_hop // cfg.hop_frames
    assert calls[0] == 0  # the pre-roll knows nothing
    assert calls[1:] == [models.seq_len - motion_hop] * -(-blocks // per)
    assert SessionCore(models, cfg, models.style_from_emotion("neutral", 1), 0).O == 16 - motion_hop
    calls.clear()
    np.testing.assert_allclose(motion(run(1000)), motion(frames), atol=1e-5)


@pytest.mark.parametrize("lip_lookahead", [None, 3])
def test_streamed_lip_refinement_equals_refining_the_whole_utterance(
    models, speech, monkeypatch, lip_lookahead
):
    """The causal refiner gets its whole receptive field: what a session emits (gate, idle and
    smoothing off) is the refiner run once over all of EmoDiff's output, pre-roll included.
    With an encoder of its own that looks further ahead than EmoDiff's (3 frames against 2),
    the blocks wait for that audio and its features are those of the whole utterance."""
    from engine.stream.core import SessionCore
    from engine.stream.idle import GateConfig, IdleConfig

    if lip_lookahead is not None:
        models = random_models(seed=0, tiny=True, lip_lookahead=lip_lookahead)
        assert models.lip_lookahead == 3 and models.lookahead == 2
        assert models.audio_lookahead == 3 and models.lip_left_context == 13

    monkeypatch.setattr(SessionCore, "_trim", lambda self: None)  # keep every frame to compare
    off = dict(idle=IdleConfig(enabled=False), gate=GateConfig(enabled=False), smooth_ms=0.0)
    cfg = StreamConfig(**off)
    style = models.style_from_emotion("happy", 2)
    core = SessionCore(models, cfg, style, seed=0)
    assert core.R == models.refiner_context > 0
    core.push(speech)
    core.finish_input()
    frames = []
    while core.next_emit < len(speech) // SAMPLES_PER_FRAME:
        frames += core.step()
    n, start = len(frames), core.raw.start
    raw = torch.from_numpy(core.raw.get(start, n))[None]
    feats = torch.from_numpy(core.lip_feats.get(start, n))[None]  # the refiner's features
    whole = models.refine_lips(feats, raw, style)[0, -n:].numpy()
    np.testing.assert_allclose(motion(frames), whole, atol=1e-5)
    # the features themselves: the lip encoder's over the whole utterance, silence after it
    from engine.features import log_mel

    offline = models.encode_lip_utterance(log_mel(speech, len(speech) // SAMPLES_PER_FRAME))[0]
    m = min(n, len(offline)) - 4  # the last frames: where the utterance's padding begins
    np.testing.assert_allclose(feats[0, -n:][:m].numpy(), offline[:m].numpy(), atol=1e-4)
    # a block waits for the audio of its last frame and of the larger look-ahead
    assert core.need_samples(10) >= SAMPLES_PER_FRAME * (10 + core.H + models.audio_lookahead)
    if lip_lookahead is not None:  # asked to wait less: the refiner's last frame reads silence
        short = SessionCore(models, StreamConfig(lookahead_frames=2, **off), style, seed=0)
        assert short.need_samples(10) < core.need_samples(10)
        short.push(speech)
        short.finish_input()
        out = [f for _ in range(8) for f in short.step()]
        assert len(out) == 8 and np.isfinite(motion(out)).all()
        assert np.abs(motion(out) - motion(frames[:8])).max() > 0  # it did read less


def test_style_clip_and_bad_clip(models, speech):
    rng = np.random.default_rng(0)
    clip = rng.uniform(0.0, 0.5, (90, 58)).astype(np.float32)
    with StreamEngine(models, clock=None) as engine:
        s = engine.open_session(None, style_clip=clip, seed=1, render=False)
        s.push_audio(speech[:16000])
        s.drain()
        at = s.set_style_clip(clip[::-1].copy())
        assert at == s.pull_frames()[-1].pts + 1 / FPS  # from the first frame not generated
        with pytest.raises(ValueError, match="style clip"):
            s.set_style_clip(np.zeros((10, 3)))
        s.flush()
        assert len(collect(s)) > 0


def test_listening_nods_and_keeps_eye_contact_in_silence():
    """Listening shows on an idle face (nods, tilt, raised brows, fewer glances) and fades out;
    a session that never listens idles exactly as before (its own random stream)."""
    from engine.blendshapes import MOTION_INDEX
    from engine.stream.idle import IdleConfig, IdleMotion

    plain, listener = IdleMotion(IdleConfig(), 7), IdleMotion(IdleConfig(), 7)
    before = [plain.next() for _ in range(50)], [listener.next() for _ in range(50)]
    assert np.array_equal(np.stack(before[0]), np.stack(before[1]))
    listener.listening = True
    on = np.stack([listener.next() for _ in range(250)])[25:]
    off_ref = np.stack([plain.next() for _ in range(250)])[25:]
    pitch, roll, brow = (MOTION_INDEX[n] for n in ("headPitch", "headRoll", "browInnerUp"))
    assert on[:, brow].mean() > 0.15 and abs(off_ref[:, brow]).max() == 0
    assert on[:, roll].mean() > 0.03
    nods = on[:, pitch] - off_ref[:, pitch]
    assert nods.max() > 0.03  # a nod dips the head down
    listener.listening = False
    after = np.stack([listener.next() for _ in range(100)])
    assert after[-1, brow] < 0.01  # faded out


def test_sessions_opening_and_closing_from_many_threads_never_hang(models):
    """The last session closing stops the workers while another thread opens one: neither may
    wait forever (a shared stop flag once let a worker miss its stop and the join hang)."""
    import threading

    engine = StreamEngine(models, workers=2)
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(15):
                engine.open_session(render=False).close()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "open/close from several threads hung"
    assert not errors, errors
    session = engine.open_session(render=False)  # and the engine still works
    session.push_audio(np.zeros(16000, np.float32))
    session.flush()
    assert session.drain(30) and session.pull_frames()
    engine.close()
