"""`dreamtalk data synth`: a synthetic emotional speech -> ARKit motion corpus.

Each sample is planned from (seed, index) alone (`plan_sample`), so the corpus is the same for
the same seed however many workers make it. A plan draws its split first, then a voice and a
sentence from that split's pools: voices are held out by variant (a test voice's timbre is
never heard in training, in any accent) and sentences by id, so no test voice or sentence is
ever trained on. Then `make_sample`:

1. speaks the sentence with espeak-ng (accent, variant, rate, pitch, range, emphasis, pauses,
   all varied; emotion nudges rate, pitch and range the way emotional speech does) and gets
   every phoneme's timing from the C API; resamples to 16 kHz;
2. builds the motion target at 25 fps: coarticulated visemes (engine.data.visemes) plus a take
   of the emotion with prosody-driven head and brow motion, blinks and gaze
   (engine.data.expression); lip closure on bilabials is applied last;
3. augments the audio (noise, reverb, microphone/phone band, level; engine.data.augment) and
   precomputes its log-mel features (engine.features).

Some samples are pure listening: no speech, the emotion held, idle motion, noise for audio.
Work is cut into fixed chunks of sample indices; each chunk writes its own shards (tag
``c<chunk>``), and the manifest, written last, records the generator's version, seed, every
parameter, and each split's voice and sentence pools.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from tqdm import tqdm

from engine.blendshapes import MOTION_INDEX, NUM_BLENDSHAPES
from engine.data.augment import AugmentConfig, augment, resample, to_int16
from engine.data.corpus import SPLITS, Corpus, Phone, Sample, ShardWriter, write_manifest
from engine.data.espeak import get_espeak
from engine.data.expression import (
    INTENSITY_SCALE,
    PROFILES,
    analyze_prosody,
    draw_style,
    expression_motion,
    silent_prosody,
)
from engine.data.phonemes import is_silence
from engine.data.sentences import Sentence, sentence_pool
from engine.data.visemes import (
    ArticulationStyle,
    Timed,
    apply_lip_closure,
    articulation,
    mouth_blendshapes,
)
from engine.emotions import EMOTIONS
from engine.features import log_mel
from engine.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

GENERATOR = "dreamtalk.data.synth"
GENERATOR_VERSION = "1.0.0"

# espeak-ng's English accents (its gmw voices; the mbrola ones need extra packages).
ACCENTS: tuple[str, ...] = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)  # fmt: skip
# Voice variants (espeak-ng-data/voices/!v) that sound like people; the robotic, whispering
# and joke ones are left out.
MALE_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "Denis", "Diogo", "Gene", "Henrique",
    "Hugo", "Mario", "Michael", "Mike", "antonio", "david", "ed", "edward", "grandpa", "gustave",
    "iven", "marcelo", "michel", "miguel", "paul", "quincy", "rob", "robert", "travis", "victor",
    "max", "Alex", "Lee", "klatt", "klatt2", "klatt3",
)  # fmt: skip
FEMALE_VARIANTS: tuple[str, ...] = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda",
    "grandma", "linda", "steph", "steph2", "klatt4",
)  # fmt: skip
LISTEN_VOICE = "-"  # listening samples have no voice ...
LISTEN_SENTENCE = -1  # ... and no sentence

# How emotional speech differs (rate factor, pitch shift, range shift, volume factor) at
# intensity 3, after Scherer's vocal-affect findings: happy and fearful faster and higher,
# sad slower, lower and flatter, angry louder with a wide range, surprise widest.
VOICE_EMOTION: dict[str, tuple[float, float, float, float]] = {
    "neutral": (1.0, 0.0, 0.0, 1.0),
    "happy": (1.05, 8.0, 15.0, 1.05),
    "sad": (0.85, -8.0, -20.0, 0.85),
    "angry": (1.07, 3.0, 12.0, 1.25),
    "surprised": (1.0, 12.0, 25.0, 1.1),
    "fearful": (1.1, 10.0, 5.0, 0.95),
    "disgusted": (0.93, -3.0, -5.0, 1.0),
    "contempt": (0.92, -5.0, -10.0, 0.95),
}


INTENSITY_VOICE = {1: 0.4, 2: 0.7, 3: 1.0}  # how much of VOICE_EMOTION each intensity gets


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of the generator; recorded in the manifest."""

    hours: float = 10.0
    seed: int = 0
    split_shares: tuple[float, float, float] = (0.8, 0.1, 0.1)
    sentences_per_split: tuple[int, int, int] = (4000, 500, 500)
    held_out_male: int = 5  # variants per held-out split (val, test)
    held_out_female: int = 2
    listen_prob: float = 0.07
    listen_seconds: tuple[float, float] = (2.0, 8.0)
    speech_seconds: tuple[float, float] = (2.0, 8.0)  # aimed for, through the sentence length
    rate_wpm: tuple[float, float] = (120.0, 220.0)
    pitch: tuple[float, float] = (25.0, 75.0)  # espeak 0-100, 50 = the voice's own
    pitch_range: tuple[float, float] = (25.0, 85.0)
    lead_silence: tuple[float, float] = (0.05, 1.0)
    trail_silence: tuple[float, float] = (0.05, 1.0)
    long_silence_prob: float = 0.1  # a longer listening stretch before or after speaking
    emphasis_prob: float = 0.08  # per word
    comma_break_prob: float = 0.6
    word_break_prob: float = 0.03
    max_chunk: int = 48  # samples per unit of work (fewer for small corpora, to not overshoot)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def chunk_size(self) -> int:
        """Samples per chunk: a function of the config alone, so that the corpus does not
        depend on the number of workers."""
        return int(np.clip(round(self.hours * 3600 / 6.0 / 16), 4, self.max_chunk))

    def __post_init__(self) -> None:
        if not self.hours > 0:
            raise ValueError(f"--hours must be positive, got {self.hours}")
        if abs(sum(self.split_shares) - 1.0) > 1e-6:
            raise ValueError(f"split shares must sum to 1, got {self.split_shares}")


# ---- Splits --------------------------------------------------------------------------------------


def voice_pools(cfg: SynthConfig) -> dict[str, list[str]]:
    """Voices of each split: every accent with that split's variants, variants held out whole."""
    r = np.random.default_rng([cfg.seed, 1])
    male = [str(v) for v in r.permutation(MALE_VARIANTS)]
    female = [str(v) for v in r.permutation(FEMALE_VARIANTS)]
    km, kf = cfg.held_out_male, cfg.held_out_female
    variants = {
        "test": male[:km] + female[:kf],
        "val": male[km : 2 * km] + female[kf : 2 * kf],
        "train": male[2 * km :] + female[2 * kf :],
    }
    return {s: [f"{a}+{v}" for v in variants[s] for a in ACCENTS] for s in SPLITS}


def sentence_pools(cfg: SynthConfig) -> tuple[list[Sentence], dict[str, list[int]]]:
    """All sentences and the ids of each split's (consecutive, disjoint) share of them."""
    pool = sentence_pool(cfg.seed, sum(cfg.sentences_per_split))
    ids: dict[str, list[int]] = {}
    start = 0
    for split, n in zip(SPLITS, cfg.sentences_per_split, strict=True):
        ids[split] = list(range(start, start + n))
        start += n
    return pool, ids


@dataclass(frozen=True)
class SampleSpec:
    """Everything drawn for one sample before any synthesis."""

    index: int
    split: str
    listening: bool
    voice: str
    sentence: int
    text: str
    emotion: str
    intensity: int
    rate: int
    pitch: int
    pitch_range: int
    volume: int
    word_gap: int
    lead: float
    trail: float
    listen_seconds: float

    @property
    def sample_id(self) -> str:
        return f"s{self.index:07d}"


class Planner:
    """Draws `SampleSpec`s; holds the pools so that drawing many is cheap."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.voices = voice_pools(cfg)
        self.sentences, self.sentence_ids = sentence_pools(cfg)
        # Per split, sentence ids by word count, to pick a sentence of a wanted length.
        self.by_words: dict[str, dict[int, list[int]]] = {}
        for split, ids in self.sentence_ids.items():
            table: dict[int, list[int]] = defaultdict(list)
            for i in ids:
                table[self.sentences[i].num_words].append(i)
            self.by_words[split] = dict(table)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, 7, index])

    def plan(self, index: int) -> SampleSpec:
        cfg, r = self.cfg, self.rng(index)
        split = SPLITS[int(r.choice(len(SPLITS), p=cfg.split_shares))]
        emotion = EMOTIONS[int(r.integers(len(EMOTIONS)))]
        intensity = 1 if emotion == "neutral" else int(r.integers(1, 4))  # as MEAD records it
        listening = bool(r.random() < cfg.listen_prob)
        k = INTENSITY_VOICE[intensity]
        rate_f, pitch_d, range_d, vol_f = VOICE_EMOTION[emotion]
        rate = float(r.uniform(*cfg.rate_wpm)) * (1 + (rate_f - 1) * k)
        rate = int(np.clip(rate, *cfg.rate_wpm))
        voice, sentence, text = LISTEN_VOICE, LISTEN_SENTENCE, ""
        if not listening:
            voice = str(r.choice(self.voices[split]))
            want = float(r.uniform(*cfg.speech_seconds)) * rate / 60.0
            table = self.by_words[split]
            counts = np.array(sorted(table))
            near = counts[np.abs(counts - want) <= max(2.0, np.abs(counts - want).min())]
            sentence = int(r.choice(table[int(r.choice(near))]))
            text = self.sentences[sentence].text
        lead = float(r.uniform(*cfg.lead_silence))
        trail = float(r.uniform(*cfg.trail_silence))
        if r.random() < cfg.long_silence_prob:
            if r.random() < 0.5:
                lead += float(r.uniform(1.0, 3.0))
            else:
                trail += float(r.uniform(1.0, 3.0))
        return SampleSpec(
            index=index,
            split=split,
            listening=listening,
            voice=voice,
            sentence=sentence,
            text=text,
            emotion=emotion,
            intensity=intensity,
            rate=rate,
            pitch=int(np.clip(r.uniform(*cfg.pitch) + pitch_d * k, 0, 100)),
            pitch_range=int(np.clip(r.uniform(*cfg.pitch_range) + range_d * k, 0, 100)),
            volume=int(np.clip(100 * (1 + (vol_f - 1) * k) * r.uniform(0.9, 1.1), 50, 150)),
            word_gap=int(r.choice([0, 0, 0, 1, 2])),
            lead=lead,
            trail=trail,
            listen_seconds=float(r.uniform(*cfg.listen_seconds)),
        )


# ---- One sample ----------------------------------------------------------------------------------


def to_ssml(text: str, cfg: SynthConfig, rng: np.random.Generator) -> str:
    """The sentence with emphasis on a few words and pauses at commas and here and there."""
    out = []
    for word in text.split():
        w = escape(word)
        core = w.rstrip(",.!?")
        if core and rng.random() < cfg.emphasis_prob:
            w = f"<emphasis>{core}</emphasis>{w[len(core) :]}"
        out.append(w)
        if word.endswith(",") and rng.random() < cfg.comma_break_prob:
            out.append(f'<break time="{int(rng.uniform(120, 500))}ms"/>')
        elif word.endswith((".", "!", "?")) and rng.random() < 0.4:
            out.append(f'<break time="{int(rng.uniform(150, 700))}ms"/>')
        elif rng.random() < cfg.word_break_prob:
            out.append(f'<break time="{int(rng.uniform(150, 600))}ms"/>')
    return "<speak>" + " ".join(out) + "</speak>"


def _compose_motion(
    phones: list[Timed], clean: np.ndarray, num_frames: int, spec: SampleSpec,
    rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    prosody = analyze_prosody(clean, phones, num_frames) if phones else silent_prosody(num_frames)
    style = draw_style(rng, spec.emotion, spec.intensity)
    art = ArticulationStyle.draw(rng)
    jaw_g, round_g, spread_g = style.articulation
    art = replace(
        art,
        jaw_gain=art.jaw_gain * jaw_g,
        round_gain=art.round_gain * round_g,
        spread_gain=art.spread_gain * spread_g,
    )
    params, closure = articulation(phones, num_frames, art, rng, prosody.prominence)
    motion = expression_motion(style, prosody, num_frames, rng)
    mouth = mouth_blendshapes(params, art)
    # Smiling lips resist rounding: a smile takes some of the pucker away.
    smile = 0.5 * (
        motion[:, MOTION_INDEX["mouthSmileLeft"]] + motion[:, MOTION_INDEX["mouthSmileRight"]]
    )
    for name in ("mouthPucker", "mouthFunnel"):
        mouth[:, MOTION_INDEX[name]] *= np.clip(1.0 - 0.5 * smile, 0.4, 1.0)
    # The jaw can only open so far: the emotion's and the speech's openings combine softly.
    jaw = MOTION_INDEX["jawOpen"]
    held_jaw = np.clip(motion[:, jaw], 0.0, 1.0)
    motion = motion + mouth
    motion[:, jaw] -= held_jaw * np.clip(mouth[:, jaw], 0.0, 1.0)
    motion[:, :NUM_BLENDSHAPES] = np.clip(motion[:, :NUM_BLENDSHAPES], 0.0, 1.0)
    motion = apply_lip_closure(motion, closure, art.close_level)
    motion[:, :NUM_BLENDSHAPES] = np.clip(motion[:, :NUM_BLENDSHAPES], 0.0, 1.0)
    return motion.astype(np.float32)


def make_sample(
    spec: SampleSpec, cfg: SynthConfig, motion_seed: int | list[int] | None = None
) -> tuple[Sample, dict[str, Any]]:
    """Synthesise one planned sample: audio, phones, motion, features.

    Speech, augmentation and motion draw from separate random streams of (seed, index), so
    that ``motion_seed`` gives another take of the motion over the very same speech.
    """
    speech_rng = np.random.default_rng([cfg.seed, 11, spec.index])
    audio_rng = np.random.default_rng([cfg.seed, 13, spec.index])
    motion_rng = np.random.default_rng(
        [cfg.seed, 17, spec.index] if motion_seed is None else motion_seed
    )
    phones: list[Timed] = []
    if spec.listening:
        clean = np.zeros(int(spec.listen_seconds * SAMPLE_RATE), np.float32)
    else:
        utt = get_espeak().synthesize(
            to_ssml(spec.text, cfg, speech_rng),
            spec.voice,
            rate=spec.rate,
            pitch=spec.pitch,
            pitch_range=spec.pitch_range,
            volume=spec.volume,
            word_gap=spec.word_gap,
            ssml=True,
        )
        speech = resample(utt.audio, utt.sample_rate, SAMPLE_RATE)
        lead = int(spec.lead * SAMPLE_RATE)
        clean = np.concatenate(
            [
                np.zeros(lead, np.float32),
                speech,
                np.zeros(int(spec.trail * SAMPLE_RATE), np.float32),
            ]
        )
        offset = lead / SAMPLE_RATE
        phones = [Timed(p.symbol, p.start + offset, p.end + offset) for p in utt.phonemes]
    num_frames = max(1, math.ceil(len(clean) / SAMPLES_PER_FRAME))
    clean = np.pad(clean, (0, num_frames * SAMPLES_PER_FRAME - len(clean)))

    motion = _compose_motion(phones, clean, num_frames, spec, motion_rng)

    mask = np.zeros(len(clean), bool)
    for p in phones:
        if not is_silence(p.symbol):
            mask[int(p.start * SAMPLE_RATE) : int(p.end * SAMPLE_RATE)] = True
    noisy, aug_info = augment(clean, audio_rng, cfg.augment, speech_mask=mask)
    audio = to_int16(noisy)
    mel = log_mel(audio.astype(np.float32) / 32768.0, num_frames)
    sample = Sample(
        sample_id=spec.sample_id,
        motion=motion,
        mel=mel,
        emotion=EMOTIONS.index(spec.emotion),
        intensity=spec.intensity,
        voice=spec.voice,
        sentence=spec.sentence,
        text=spec.text,
        audio=audio,
        phones=[Phone(p.symbol, p.start, p.end) for p in phones],
    )
    return sample, aug_info


# ---- The corpus ----------------------------------------------------------------------------------


@dataclass
class Record:
    """What the manifest and the progress bar need to know about a written sample."""

    sample_id: str
    split: str
    frames: int
    emotion: str
    intensity: int
    voice: str
    sentence: int
    listening: bool

    @property
    def seconds(self) -> float:
        return self.frames / FPS


def _run_chunk(job: tuple[SynthConfig, str, int]) -> list[Record]:
    cfg, out_dir, chunk = job
    planner = _planner(cfg)
    records = []
    size = cfg.chunk_size
    writer = ShardWriter(out_dir, tag=f"c{chunk:05d}", samples_per_shard=10 * size)
    for index in range(chunk * size, (chunk + 1) * size):
        spec = planner.plan(index)
        sample, _ = make_sample(spec, cfg)
        writer.add(spec.split, sample)
        records.append(
            Record(
                spec.sample_id,
                spec.split,
                sample.num_frames,
                spec.emotion,
                spec.intensity,
                spec.voice,
                spec.sentence,
                spec.listening,
            )
        )
    writer.close()
    return records


_PLANNERS: dict[SynthConfig, Planner] = {}


def _planner(cfg: SynthConfig) -> Planner:
    if cfg not in _PLANNERS:
        _PLANNERS.clear()
        _PLANNERS[cfg] = Planner(cfg)
    return _PLANNERS[cfg]


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"--out {out} is not empty; pass --overwrite to replace its corpus")
        if not (out / "manifest.json").is_file() and not (out / "shards").is_dir():
            raise ValueError(f"--out {out} holds other files than a corpus; not overwriting it")
        shutil.rmtree(out / "shards", ignore_errors=True)
        (out / "manifest.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def check_voices(voices: list[str]) -> None:
    """Fail early, in this process, if espeak-ng or one of the voices is missing."""
    es = get_espeak()
    for v in voices:
        es.set_voice(v)


def synth_corpus(
    out_dir: str | Path,
    cfg: SynthConfig,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate at least ``cfg.hours`` of samples into ``out_dir``; return the manifest."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    planner = _planner(cfg)
    check_voices(sorted({v for vs in planner.voices.values() for v in vs}))
    target = cfg.hours * 3600.0
    started = time.perf_counter()
    records: list[Record] = []
    bar = tqdm(total=round(target), unit="s", desc="synth", disable=not progress)
    # Every chunk runs in a fresh process forked from a clean server: espeak-ng carries state
    # from one utterance to the next, so a chunk's audio is reproducible only when the chunk
    # starts from a freshly initialised library, whoever runs it and whatever ran before.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["engine.data.synth"])
    pool = ctx.Pool(workers, maxtasksperchild=1)
    try:
        # Whole frames add up exactly in any order: how many rounds run never depends on
        # which worker finished first.
        target_frames = math.ceil(target * FPS)
        next_chunk, mean = 0, 6.6 * FPS  # frames per sample: a guess until a round says
        while (done := sum(r.frames for r in records)) < target_frames:
            need = math.ceil((target_frames - done) / mean * 1.01 / cfg.chunk_size)
            jobs = [(cfg, str(out), c) for c in range(next_chunk, next_chunk + max(1, need))]
            next_chunk += len(jobs)
            for chunk_records in pool.imap_unordered(_run_chunk, jobs):
                records.extend(chunk_records)
                bar.update(round(sum(r.seconds for r in chunk_records)))
            mean = sum(r.frames for r in records) / len(records)
    except BaseException:
        pool.terminate()  # a failed chunk or Ctrl-C: do not wait for the rest
        raise
    finally:
        bar.close()
        pool.close()
        pool.join()
    elapsed = time.perf_counter() - started
    records.sort(key=lambda r: r.sample_id)
    total = sum(r.seconds for r in records)
    log.info("synthesised %.2f h in %d samples in %.0f s (%.0fx real time, %d workers)",
             total / 3600, len(records), elapsed, total / max(elapsed, 1e-9), workers)  # fmt: skip
    meta = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "params": _jsonable(asdict(cfg)),
        "espeak": {"version": get_espeak().version, "accents": list(ACCENTS)},
        "emotion_profiles": _jsonable({k: asdict(v) for k, v in PROFILES.items()}),
        "intensity_scale": INTENSITY_SCALE,
        "voice_emotion": VOICE_EMOTION,
        "intensity_voice": INTENSITY_VOICE,
        "num_samples": len(records),
        "hours": round(total / 3600, 4),
        "voices": {s: sorted(planner.voices[s]) for s in SPLITS},
        "sentences": {s: planner.sentence_ids[s] for s in SPLITS},
        "sentence_texts": [s.text for s in planner.sentences],
        "stats": _stats_from_records(records),
    }
    return write_manifest(out, meta)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=list))


def _stats_from_records(records: list[Record]) -> dict[str, Any]:
    hours: dict[str, Any] = {s: 0.0 for s in SPLITS}
    count: dict[str, int] = {s: 0 for s in SPLITS}
    listen: dict[str, float] = {s: 0.0 for s in SPLITS}
    for r in records:
        hours[r.split] += r.seconds / 3600
        count[r.split] += 1
        if r.listening:
            listen[r.split] += r.seconds / 3600
    return {
        "samples": count,
        "hours": {s: round(h, 4) for s, h in hours.items()},
        "listening_hours": {s: round(h, 4) for s, h in listen.items()},
    }


# ---- Inspection ----------------------------------------------------------------------------------


def corpus_stats(root: str | Path) -> dict[str, Any]:
    """Hours per split, per emotion (and intensity) and per voice, read from the shards."""
    corpus = Corpus(root)
    by_split: dict[str, dict[str, float]] = {}
    by_emotion: dict[str, dict[str, float]] = {e: {s: 0.0 for s in SPLITS} for e in EMOTIONS}
    by_intensity: dict[int, dict[str, float]] = {i: {s: 0.0 for s in SPLITS} for i in (1, 2, 3)}
    by_voice: dict[str, dict[str, float]] = defaultdict(lambda: {s: 0.0 for s in SPLITS})
    for split in SPLITS:
        n = frames = listen = 0
        sentences: set[int] = set()
        for path in corpus.shard_paths(split):
            with np.load(path) as z:
                fo, emo, inten = z["frame_offsets"], z["emotion"], z["intensity"]
                voice, sent = z["voice"], z["sentence"]
            lengths = np.diff(fo)
            n += len(lengths)
            frames += int(lengths.sum())
            for k, f in enumerate(lengths):
                h = float(f) / FPS / 3600
                by_emotion[EMOTIONS[int(emo[k])]][split] += h
                by_intensity[int(inten[k])][split] += h
                by_voice[str(voice[k])][split] += h
                if str(voice[k]) == LISTEN_VOICE:
                    listen += int(f)
                else:
                    sentences.add(int(sent[k]))
        by_split[split] = {
            "samples": n,
            "hours": frames / FPS / 3600,
            "listening_hours": listen / FPS / 3600,
            "voices": sum(
                1 for name, v in by_voice.items() if v[split] > 0 and name != LISTEN_VOICE
            ),
            "sentences": len(sentences),
        }
    return {
        "root": str(corpus.root),
        "generator": corpus.manifest.get("generator"),
        "version": corpus.manifest.get("version"),
        "seed": corpus.manifest.get("seed"),
        "splits": by_split,
        "emotions": by_emotion,
        "intensities": {str(k): v for k, v in by_intensity.items()},
        "voices": dict(sorted(by_voice.items())),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """`corpus_stats` as the tables `dreamtalk data stats` prints."""
    lines = [f"corpus {stats['root']} ({stats['generator']} {stats['version']}, "
             f"seed {stats['seed']})", ""]  # fmt: skip
    width = max([16] + [len(v) + 2 for v in stats["voices"]])
    head = f"{'':<{width}}" + "".join(f"{s:>10}" for s in SPLITS) + f"{'total':>10}"

    def row(name: str, values: dict[str, float], fmt: str = "{:>10.2f}", k: float = 1.0) -> str:
        cells = [values[s] * k for s in SPLITS] + [sum(values.values()) * k]
        return f"{name:<{width}}" + "".join(fmt.format(c) for c in cells)

    sp = stats["splits"]
    lines += ["hours per split", head]
    lines.append(row("hours", {s: sp[s]["hours"] for s in SPLITS}))
    lines.append(row("  listening", {s: sp[s]["listening_hours"] for s in SPLITS}))
    lines.append(row("samples", {s: sp[s]["samples"] for s in SPLITS}, "{:>10.0f}"))
    lines.append(row("voices", {s: sp[s]["voices"] for s in SPLITS}, "{:>10.0f}"))
    lines.append(row("sentences", {s: sp[s]["sentences"] for s in SPLITS}, "{:>10.0f}"))
    lines += ["", "hours per emotion", head]
    lines += [row(e, v) for e, v in stats["emotions"].items()]
    lines += ["", "hours per intensity", head]
    lines += [row(f"level {k}", v) for k, v in stats["intensities"].items()]
    accents: dict[str, dict[str, float]] = defaultdict(lambda: {s: 0.0 for s in SPLITS})
    for name, v in stats["voices"].items():
        accent = name.split("+")[0] if name != LISTEN_VOICE else "(listening)"
        for split in SPLITS:
            accents[accent][split] += v[split]
    lines += ["", "hours per accent", head]
    lines += [row(name, v) for name, v in sorted(accents.items())]
    lines += ["", "minutes per voice", head]
    lines += [row(name if name != LISTEN_VOICE else "(listening)", v, "{:>10.1f}", 60.0)
              for name, v in stats["voices"].items()]  # fmt: skip
    return "\n".join(lines)


def show_sample(
    root: str | Path,
    sample_id: str,
    out: str | Path,
    portrait: str | Path | None = None,
    size: int = 256,
    progress: bool = True,
) -> Path:
    """Render one sample's target motion on a portrait (the default one), with its audio."""
    from engine.animate import render_motion_to_mp4

    sample = Corpus(root).get(sample_id, with_audio=True)
    audio = None if sample.audio is None else sample.audio.astype(np.float32) / 32768.0
    log.info("%s: %s, %s %d, %.1f s: %r", sample_id, sample.voice, EMOTIONS[sample.emotion],
             sample.intensity, sample.num_frames / FPS, sample.text)  # fmt: skip
    return render_motion_to_mp4(
        sample.motion, out, audio=audio, portrait=portrait, size=size, progress=progress
    )
