"""The synthetic corpus: real espeak-ng, real motion targets, real shards.

Timing: espeak's phoneme events must land on the audio (a bilabial is an energy dip). Lip
sync: the lips close on every bilabial, by the same `lip_opening` the face rig renders.
Emotion: each emotion moves the features it should, intensity scales them, and two takes of
one sentence differ. Splits: no voice or sentence is shared. Plus the corpus end to end,
determinism across worker counts, and the CLI.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamtalk.cli import main
from engine.avatar import DEFAULT_PORTRAIT, load_avatar
from engine.blendshapes import BLENDSHAPE_INDEX, MOTION_DIM, MOTION_INDEX, NUM_BLENDSHAPES
from engine.data.augment import AugmentConfig, augment, resample
from engine.data.corpus import SPLITS, Corpus
from engine.data.espeak import get_espeak
from engine.data.phonemes import is_bilabial, is_known, is_vowel
from engine.data.synth import (
    ACCENTS,
    LISTEN_VOICE,
    Planner,
    SynthConfig,
    corpus_stats,
    make_sample,
    synth_corpus,
    voice_pools,
)
from engine.data.visemes import (
    LIPS_CLOSED_IOD,
    Timed,
    articulation,
    bilabial_closure_rate,
    lip_opening,
    mouth_blendshapes,
)
from engine.face_rig import deform
from engine.features import MELS_PER_FRAME
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from engine.video_io import probe_media

BILABIAL_TEXT = "Maybe a baby ate a mamba. Obey Papa, Emma and Abby. Tommy has a happy puppy."
CLEAN = AugmentConfig(noise_prob=0.0, reverb_prob=0.0, phone_prob=0.0, mic_prob=0.0, clip_prob=0.0)


def _energy_db(audio: np.ndarray, rate: int, hop_s: float = 0.005, win_s: float = 0.015):
    hop, win = int(hop_s * rate), int(win_s * rate)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(audio, (win // 2, win)), win)[::hop]
    return 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10), hop_s


def _bilabial_dips(audio, rate, phones, shift=0.0) -> tuple[int, int]:
    """(bilabials between two vowels whose span holds an energy dip >= 6 dB under the
    neighbouring vowels' peaks, how many such bilabials)."""
    energy, hop = _energy_db(audio, rate)

    def at(t0: float, t1: float) -> np.ndarray:
        a, b = int(max(t0 + shift, 0) / hop), int(max(t1 + shift, 0) / hop) + 1
        return energy[a:b]

    dips = total = 0
    for k in range(1, len(phones) - 1):
        prev, ph, nxt = phones[k - 1], phones[k], phones[k + 1]
        if not (is_bilabial(ph.symbol) and is_vowel(prev.symbol) and is_vowel(nxt.symbol)):
            continue
        total += 1
        inside = at(ph.start - 0.01, ph.end + 0.005)
        vowel_peak = min(at(prev.start, prev.end).max(), at(nxt.start, nxt.end).max())
        dips += bool(len(inside) and inside.min() < vowel_peak - 6.0)
    return dips, total


# ---- espeak ------------------------------------------------------------------------------------


def test_espeak_phoneme_events_line_up_with_the_audio():
    utt = get_espeak().synthesize(BILABIAL_TEXT, "en-us+m3", rate=160)
    assert utt.sample_rate == 22050 and len(utt.audio) > utt.sample_rate
    starts = [p.start for p in utt.phonemes]
    assert starts == sorted(starts) and utt.phonemes[-1].end == pytest.approx(utt.duration)
    dips, total = _bilabial_dips(utt.audio, utt.sample_rate, utt.phonemes)
    assert total >= 8
    assert dips == total
    # The check can fail: timings shifted by 70 ms no longer find the dips.
    shifted, _ = _bilabial_dips(utt.audio, utt.sample_rate, utt.phonemes, shift=0.07)
    assert shifted < total * 0.6


def test_espeak_rejects_unknown_voices_and_empty_text():
    es = get_espeak()
    with pytest.raises(ValueError, match="unknown espeak-ng voice"):
        es.synthesize("hello", "xx-nowhere")
    with pytest.raises(ValueError, match="variant"):
        es.synthesize("hello", "en-us+nobody")
    with pytest.raises(ValueError, match="empty"):
        es.synthesize("  ", "en-us")


def test_every_phoneme_espeak_says_is_classified():
    planner = Planner(SynthConfig(hours=1))
    unknown = set()
    for accent in ACCENTS:
        for sentence in planner.sentences[:15]:
            for p in get_espeak().synthesize(sentence.text, accent).phonemes:
                if not is_known(p.symbol):
                    unknown.add((accent, p.symbol))
    assert not unknown


def test_sample_phones_line_up_with_the_stored_audio():
    """Through resampling, leading silence and int16: the stored phones still sit on the dips."""
    cfg = SynthConfig(hours=1, augment=CLEAN)
    spec = _speech_spec(cfg, text=BILABIAL_TEXT)
    sample, _ = make_sample(spec, cfg)
    assert len(sample.audio) == sample.num_frames * SAMPLES_PER_FRAME
    assert sample.phones[0].start >= spec.lead - 1e-3
    dips, total = _bilabial_dips(sample.audio.astype(np.float32), SAMPLE_RATE, sample.phones)
    assert total >= 8 and dips == total


# ---- lips --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def portrait_copy(tmp_path_factory) -> Path:
    """The default portrait in a temporary folder: the avatar file that `load_avatar` caches
    beside it lands there, not in the repository, and is built once for this module."""
    path = tmp_path_factory.mktemp("portrait") / DEFAULT_PORTRAIT.name
    shutil.copyfile(DEFAULT_PORTRAIT, path)
    return path


def test_lip_opening_matches_the_face_rig(portrait_copy):
    """`lip_opening` is what evaluation calls "lips closed": it must agree with the renderer."""
    rig = load_avatar(portrait_copy, 256).rig.tensors()
    rng = np.random.default_rng(0)
    n = 400
    w = np.zeros((n, NUM_BLENDSHAPES), np.float32)
    for name in ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthShrugUpper"):
        w[:, BLENDSHAPE_INDEX[name]] = rng.uniform(0, 1, n) * (rng.random(n) < 0.6)
    for name in ("mouthLowerDown", "mouthUpperUp", "mouthSmile", "mouthPress", "mouthStretch"):
        v = rng.uniform(0, 1, n) * (rng.random(n) < 0.5)
        w[:, BLENDSHAPE_INDEX[name + "Left"]] = v
        w[:, BLENDSHAPE_INDEX[name + "Right"]] = v
    with torch.no_grad():
        points = deform(torch.from_numpy(w), rig).numpy()
    rendered = points[:, 14, 1] - points[:, 13, 1]  # inner lip centres, in IOD
    motion = np.zeros((n, MOTION_DIM), np.float32)
    motion[:, :NUM_BLENDSHAPES] = w
    predicted = lip_opening(motion)
    assert np.corrcoef(predicted, rendered)[0, 1] > 0.97
    assert np.abs(predicted - rendered).max() < 0.03
    closed = rendered < LIPS_CLOSED_IOD
    assert closed.any() and (~closed).any()
    assert np.mean((predicted < LIPS_CLOSED_IOD) == closed) > 0.95


def test_lips_close_on_every_bilabial_whatever_the_emotion():
    cfg = SynthConfig(hours=1)
    total = 0
    for k, emotion in enumerate(("neutral", "happy", "surprised", "angry", "fearful", "disgusted")):
        for i in range(3):
            spec = replace(_speech_spec(cfg, index=10 * k + i), emotion=emotion, intensity=3)
            sample, _ = make_sample(spec, cfg)
            rate, n = bilabial_closure_rate(sample.motion, sample.phones)
            assert rate == 1.0, (emotion, spec.text)
            total += n
            # ... and the mouth does open on vowels: closure is not everywhere.
            t = (np.arange(sample.num_frames) + 0.5) / FPS
            vowel = np.zeros(sample.num_frames, bool)
            for p in sample.phones:
                if is_vowel(p.symbol) and p.end - p.start > 0.06:
                    vowel |= (t > p.start + 0.02) & (t < p.end - 0.02)
            assert np.mean(lip_opening(sample.motion[vowel]) > LIPS_CLOSED_IOD) > 0.8
    assert total > 30


def test_rounding_starts_before_its_vowel_and_jaw_follows_vowel_height():
    utt = get_espeak().synthesize("see the tall stool", "en-us", rate=150)
    phones = [Timed(p.symbol, p.start, p.end) for p in utt.phonemes]
    frames = int(np.ceil(utt.duration * FPS))
    params, _ = articulation(phones, frames)
    mouth = mouth_blendshapes(params)
    t = (np.arange(frames) + 0.5) / FPS
    pucker, jaw = mouth[:, MOTION_INDEX["mouthPucker"]], mouth[:, MOTION_INDEX["jawOpen"]]
    oo = next(p for p in phones if p.symbol == "u:")
    peak = pucker[(t >= oo.start) & (t < oo.end)].max()
    assert peak > 0.5
    before = pucker[(t >= oo.start - 0.12) & (t < oo.start - 0.06)]  # in the preceding "st"
    assert before.max() > 0.35 * peak
    ee = next(p for p in phones if p.symbol == "i:")
    aw = next(p for p in phones if p.symbol in ("O:", "A:", "0"))
    assert jaw[(t >= aw.start) & (t < aw.end)].max() > 2 * jaw[(t >= ee.start) & (t < ee.end)].max()
    assert pucker[(t >= ee.start) & (t < ee.end)].max() < 0.2 * peak


# ---- emotions ----------------------------------------------------------------------------------


def _speech_spec(cfg: SynthConfig, index: int = 0, text: str | None = None):
    planner = Planner(cfg)
    i = index
    while (spec := planner.plan(i)).listening:
        i += 1000
    spec = replace(spec, voice="en-gb+m3", rate=170, lead=0.3, trail=0.3)
    return replace(spec, text=text) if text else spec


def _takes(cfg, spec, emotion, intensity, n=4):
    """``n`` takes of one utterance: the same speech, other draws of the motion."""
    specs = replace(spec, emotion=emotion, intensity=intensity)
    return [make_sample(specs, cfg, motion_seed=[5, k])[0].motion for k in range(n)]


def _feature(motions, *names):
    cols = [MOTION_INDEX[n] for n in names]
    return float(np.mean([m[:, cols].mean() for m in motions]))


def test_emotions_move_the_features_they_should_and_intensity_scales_them():
    cfg = SynthConfig(hours=1)
    spec = _speech_spec(cfg, index=3)
    neutral = _takes(cfg, spec, "neutral", 1)
    checks = {  # emotion: (feature channels, how far above neutral at intensity 3)
        "happy": (("mouthSmileLeft", "mouthSmileRight", "cheekSquintLeft"), 0.3),
        "surprised": (("browInnerUp", "browOuterUpLeft", "browOuterUpRight", "eyeWideLeft"), 0.4),
        "sad": (("mouthFrownLeft", "mouthFrownRight", "browInnerUp"), 0.35),
        "angry": (("browDownLeft", "browDownRight", "mouthPressLeft"), 0.35),
        "fearful": (("mouthStretchLeft", "mouthStretchRight", "eyeWideRight"), 0.3),
        "disgusted": (("noseSneerLeft", "noseSneerRight", "mouthUpperUpLeft"), 0.3),
    }
    for emotion, (names, margin) in checks.items():
        strong = _feature(_takes(cfg, spec, emotion, 3), *names)
        weak = _feature(_takes(cfg, spec, emotion, 1), *names)
        base = _feature(neutral, *names)
        assert strong > base + margin, emotion
        assert weak > base + 0.3 * margin, emotion
        assert strong > weak + 0.25 * margin, emotion
    # Sad lowers the head (positive pitch is down); surprise lifts it.
    assert (
        _feature(_takes(cfg, spec, "sad", 3), "headPitch") > _feature(neutral, "headPitch") + 0.08
    )
    # Contempt is one-sided.
    smile = [MOTION_INDEX["mouthSmileLeft"], MOTION_INDEX["mouthSmileRight"]]
    lopsided = [abs(np.diff(m[:, smile].mean(0)))[0] for m in _takes(cfg, spec, "contempt", 3)]
    assert min(lopsided) > 0.3
    assert max(abs(np.diff(m[:, smile].mean(0)))[0] for m in neutral) < 0.1


def test_two_takes_of_one_sentence_and_emotion_differ():
    cfg = SynthConfig(hours=1)
    spec = replace(_speech_spec(cfg, index=7), emotion="happy", intensity=2)
    a, b = _takes(cfg, spec, "happy", 2, n=2)
    n = min(len(a), len(b))
    assert n > 50 and abs(len(a) - len(b)) <= 1  # the same speech
    a, b = a[:n], b[:n]
    diff = np.abs(a - b)
    assert diff[:, :NUM_BLENDSHAPES].mean() > 0.02
    assert diff[:, MOTION_INDEX["headPitch"] :].mean() > 0.005  # head moves differently
    blink = MOTION_INDEX["eyeBlinkLeft"]
    assert not np.allclose(a[:, blink], b[:, blink], atol=0.1)  # blinks at other times
    # ... yet both keep the mouth on the speech: jaw curves still correlate.
    jaw = MOTION_INDEX["jawOpen"]
    assert np.corrcoef(a[:, jaw], b[:, jaw])[0, 1] > 0.6


def test_blinks_come_at_natural_rates():
    cfg = SynthConfig(hours=1)
    spec = replace(_speech_spec(cfg, index=2), listening=True, listen_seconds=60.0)
    counts = []
    for k in range(3):
        sample, _ = make_sample(spec, cfg, motion_seed=[9, k])
        closed = sample.motion[:, MOTION_INDEX["eyeBlinkLeft"]] > 0.6
        counts.append(int(np.sum(closed[1:] & ~closed[:-1])))
    assert all(6 <= c <= 32 for c in counts), counts


# ---- audio -------------------------------------------------------------------------------------


def test_resample_and_noise_at_the_asked_snr():
    t = np.arange(22050) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    y = resample(tone, 22050, SAMPLE_RATE)
    assert len(y) == SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(y[2000:-2000] * np.hanning(len(y) - 4000)))
    assert np.argmax(spectrum) * SAMPLE_RATE / (len(y) - 4000) == pytest.approx(1000, abs=2)
    assert y[2000:-2000].std() * np.sqrt(2) == pytest.approx(0.5, rel=0.01)

    speech = np.zeros(5 * SAMPLE_RATE, np.float32)
    speech[SAMPLE_RATE : 4 * SAMPLE_RATE] = np.sin(np.arange(3 * SAMPLE_RATE) * 0.3) * 0.2
    mask = speech != 0
    cfg = replace(CLEAN, noise_prob=1.0, snr_db=(12.0, 12.0))
    noisy, info = augment(speech, np.random.default_rng(1), cfg, speech_mask=mask)
    gain = 10 ** (info["level_dbfs"] / 20) / np.sqrt(np.mean(speech[mask] ** 2))
    noise = noisy - speech * gain  # the level step scales both alike
    snr = 10 * np.log10(np.mean((speech[mask] * gain) ** 2) / np.mean(noise[mask] ** 2))
    assert snr == pytest.approx(12.0, abs=0.6)


# ---- splits and the corpus ---------------------------------------------------------------------


def test_splits_share_no_voice_and_no_sentence():
    cfg = SynthConfig(hours=1, seed=3)
    pools = voice_pools(cfg)
    variants = {s: {v.split("+")[1] for v in pools[s]} for s in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not variants[a] & variants[b]
    planner = Planner(cfg)
    seen: dict[str, tuple[set, set]] = {s: (set(), set()) for s in SPLITS}
    for i in range(3000):
        spec = planner.plan(i)
        if spec.listening:
            continue
        assert spec.voice in pools[spec.split]
        assert spec.sentence in planner.sentence_ids[spec.split]
        seen[spec.split][0].add(spec.voice)
        seen[spec.split][1].add(spec.sentence)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not seen[a][0] & seen[b][0]
        assert not seen[a][1] & seen[b][1]
        texts_a = {planner.sentences[i].text for i in seen[a][1]}
        assert not texts_a & {planner.sentences[i].text for i in seen[b][1]}
    assert all(seen[s][0] and seen[s][1] for s in SPLITS)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "synth"
    synth_corpus(out, SynthConfig(hours=0.02, seed=5), workers=1, progress=False)
    return out


def test_corpus_end_to_end(corpus_dir):
    corpus = Corpus(corpus_dir)
    m = corpus.manifest
    assert m["generator"] == "dreamtalk.data.synth" and m["version"] and m["seed"] == 5
    assert m["params"]["hours"] == 0.02 and "augment" in m["params"]
    assert m["hours"] >= 0.02
    for split in SPLITS:
        assert set(m["voices"][split]) and set(m["sentences"][split])
    seconds, voices, sentences = 0.0, {}, {}
    for split in SPLITS:
        voices[split], sentences[split] = set(), set()
        for s in corpus.samples(split, with_audio=True):
            f = s.num_frames
            assert s.motion.shape == (f, MOTION_DIM) and s.mel.shape == (f * MELS_PER_FRAME, 80)
            assert s.audio.dtype == np.int16 and len(s.audio) == f * SAMPLES_PER_FRAME
            assert np.isfinite(s.mel).all()
            assert (s.motion[:, :NUM_BLENDSHAPES] >= 0).all()
            assert (s.motion[:, :NUM_BLENDSHAPES] <= 1).all()
            seconds += f / FPS
            if s.voice != LISTEN_VOICE:
                assert s.voice in m["voices"][split] and s.sentence in m["sentences"][split]
                voices[split].add(s.voice)
                sentences[split].add(s.sentence)
                assert s.phones and s.phones[-1].end <= f / FPS + 1e-3
    assert seconds / 3600 == pytest.approx(m["hours"], abs=1e-3)
    assert not voices["train"] & (voices["val"] | voices["test"])
    assert not sentences["train"] & (sentences["val"] | sentences["test"])
    stats = corpus_stats(corpus_dir)
    assert sum(v["hours"] for v in stats["splits"].values()) == pytest.approx(m["hours"], abs=1e-3)
    assert set(stats["emotions"]) >= {"neutral", "happy", "contempt"}


def test_same_seed_same_corpus_whatever_the_workers(corpus_dir, tmp_path):
    again = tmp_path / "again"
    synth_corpus(again, SynthConfig(hours=0.02, seed=5), workers=2, progress=False)
    a, b = Corpus(corpus_dir), Corpus(again)
    assert a.manifest == b.manifest
    for split in SPLITS:
        assert [p.name for p in a.shard_paths(split)] == [p.name for p in b.shard_paths(split)]
        for pa, pb in zip(a.shard_paths(split), b.shard_paths(split), strict=True):
            with np.load(pa) as za, np.load(pb) as zb:
                for key in za.files:
                    np.testing.assert_array_equal(za[key], zb[key], err_msg=f"{pa.name}:{key}")


# ---- CLI ---------------------------------------------------------------------------------------


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_cli_synth_refuses_bad_input(tmp_path, caplog, corpus_dir):
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--hours", "0"]) == 2
    assert "--hours must be positive" in _errors(caplog)[-1]
    assert main(["data", "synth", "--out", str(corpus_dir), "--hours", "0.01"]) == 2
    assert "not empty" in _errors(caplog)[-1] and "--overwrite" in _errors(caplog)[-1]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["data", "synth", "--out", str(other), "--hours", "0.01", "--overwrite"]) == 2
    assert (other / "notes.txt").exists()
    assert main(["data", "stats", str(tmp_path / "missing")]) == 2
    assert "manifest.json" in _errors(caplog)[-1]
    assert (
        main(["data", "show", str(corpus_dir), "s9999999", "--out", str(tmp_path / "a.mp4")]) == 2
    )
    assert "s9999999" in _errors(caplog)[-1]


def test_cli_stats_and_show(corpus_dir, tmp_path, capsys, monkeypatch, portrait_copy):
    assert main(["data", "stats", str(corpus_dir)]) == 0
    out = capsys.readouterr().out
    assert "hours per split" in out and "hours per emotion" in out and "minutes per voice" in out
    assert main(["data", "stats", str(corpus_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 5

    monkeypatch.setattr("engine.avatar.DEFAULT_PORTRAIT", portrait_copy)
    corpus = Corpus(corpus_dir)
    sample = min(corpus.samples("train"), key=lambda s: s.num_frames)
    mp4 = tmp_path / "show.mp4"
    args = ["data", "show", str(corpus_dir), sample.sample_id, "--out", str(mp4), "--no-progress"]
    assert main(args) == 0
    info = probe_media(mp4)
    assert info["num_frames"] == sample.num_frames and info["has_audio"]
    assert info["audio_duration"] == pytest.approx(sample.num_frames / FPS, abs=0.1)
