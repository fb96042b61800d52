"""espeak-ng through its C API (ctypes): speech audio plus every phoneme's position in it.

The command line's ``-x``/``--ipa`` output lists phonemes without timing; the library, opened
with ``espeakINITIALIZE_PHONEME_EVENTS``, reports an ``espeakEVENT_PHONEME`` for each phoneme
with its position in the audio (ms), through the synth callback. Struct layouts and constants
follow ``/usr/include/espeak-ng/speak_lib.h`` (API revision 12, espeak-ng 1.51).

espeak-ng keeps one global state per process, so this module holds one `Espeak` per process
(`get_espeak`) behind a lock; parallel synthesis means one process per worker. Part of that
state carries over from one utterance to the next and cannot be reset (the wave generator's
pitch-flutter phase, a static in ``AdvanceParameters``): the same call gives slightly different
audio depending on what was spoken before. Reproducible output therefore needs the same
sequence of calls in a fresh process (engine.data.synth does exactly that).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `apt-get install espeak-ng libespeak-ng1`"
_DEBIAN_LIB = "/usr/lib/x86_64-linux-gnu/libespeak-ng.so.1"

# speak_lib.h enums and flags.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_CHARS_UTF8 = 1
_SSML = 0x10
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
_EE_OK = 0
_EE_NOT_FOUND = 2
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7

RATE_RANGE = (80, 450)  # espeakRATE_MINIMUM, espeakRATE_MAXIMUM (words per minute)
# Language tags `espeak_SetVoiceByName` does not resolve (the CLI's `-v` does, by properties):
# the voice file that speaks them.
_VOICE_FILE = {"en-gb": "en", "en-uk": "en"}


class EspeakError(OSError):
    """espeak-ng is missing or refused a request; the message says what to do."""


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),  # phoneme mnemonic, NUL-terminated unless 8 bytes long
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of the synthesised message
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class PhonemeEvent:
    """One phoneme: espeak's mnemonic (e.g. ``p``, ``aI``, ``_:`` for a pause) and its span."""

    symbol: str
    start: float  # seconds from the start of the audio
    end: float


@dataclass(frozen=True)
class WordEvent:
    start: float  # seconds
    text_position: int  # 1-based character position in the synthesised text (as espeak gives)
    length: int


@dataclass
class Utterance:
    audio: np.ndarray  # float32 mono in [-1, 1], at sample_rate
    sample_rate: int
    phonemes: list[PhonemeEvent] = field(default_factory=list)
    words: list[WordEvent] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


def find_library() -> str:
    """Path or soname of libespeak-ng, or EspeakError saying how to install it."""
    name = ctypes.util.find_library("espeak-ng")
    if name:
        return name
    if Path(_DEBIAN_LIB).exists():
        return _DEBIAN_LIB
    raise EspeakError(f"libespeak-ng not found; {INSTALL_HINT}")


class Espeak:
    """One initialised espeak-ng library with phoneme events enabled."""

    def __init__(self, library: str | None = None):
        path = library or find_library()
        try:
            self._lib = ctypes.CDLL(path)
        except OSError as err:
            raise EspeakError(f"cannot load {path} ({err}); {INSTALL_HINT}") from err
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p

        # DONT_EXIT is deliberately not set: without its data espeak would exit the process,
        # so check for the data first and fail with a message instead.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate}); {INSTALL_HINT}")
        self.sample_rate = int(rate)
        data_path = ctypes.c_char_p()
        self.version = lib.espeak_Info(ctypes.byref(data_path)).decode()
        self.data_path = Path((data_path.value or b"").decode())

        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int, bytes]] = []
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = _SynthCallback(self._on_synth)
        lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self.variants = self._list_variants()

    def _on_synth(self, wav, num_samples: int, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            symbol = bytes(e.id.string).split(b"\0", 1)[0] if e.type == _EVENT_PHONEME else b""
            self._events.append((e.type, e.audio_position, e.text_position, e.length, symbol))
            i += 1
        return 0

    def _list_variants(self) -> set[str]:
        folder = self.data_path / "voices" / "!v"
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    def set_voice(self, voice: str) -> None:
        """Select ``language[+variant]``, e.g. ``en-gb-scotland+f3``; ValueError if unknown.

        Always reloads (0.1 ms): SSML in the previous text may have changed the voice.
        """
        base, _, variant = voice.partition("+")
        if variant and self.variants and variant not in self.variants:
            raise ValueError(f"unknown espeak-ng voice variant {variant!r} in {voice!r}")
        name = _VOICE_FILE.get(base.lower(), base) + (f"+{variant}" if variant else "")
        if self._lib.espeak_SetVoiceByName(name.encode()) != _EE_OK:
            raise ValueError(
                f"unknown espeak-ng voice {voice!r} (list them with `espeak-ng --voices=en`)"
            )

    def synthesize(
        self,
        text: str,
        voice: str = "en-us",
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        volume: int = 100,
        word_gap: int = 0,
        ssml: bool = False,
    ) -> Utterance:
        """Speak ``text``; return the audio (float32 at `sample_rate`) and the phoneme timings.

        ``rate`` in words per minute (80-450), ``pitch`` and ``pitch_range`` 0-100 (50 is the
        voice's normal), ``volume`` 0-200, ``word_gap`` extra pause between words in 10 ms
        units. With ``ssml`` the text may use SSML (``<break time="300ms"/>``, ``<emphasis>``).
        """
        if not text.strip():
            raise ValueError("nothing to synthesise: empty text")
        if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
            raise ValueError(f"rate must be within {RATE_RANGE} words a minute, got {rate}")
        with self._lock:
            self.set_voice(voice)
            for param, value in (
                (_PARAM_RATE, rate),
                (_PARAM_PITCH, pitch),
                (_PARAM_RANGE, pitch_range),
                (_PARAM_VOLUME, volume),
                (_PARAM_WORDGAP, word_gap),
            ):
                self._lib.espeak_SetParameter(param, int(value), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8") + b"\0"
            flags = _CHARS_UTF8 | (_SSML if ssml else 0)
            err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
            if err != _EE_OK:
                raise EspeakError(f"espeak_Synth failed with error {err}")
            self._lib.espeak_Synchronize()
            chunks, events = self._chunks, self._events
            self._chunks, self._events = [], []
        audio = (
            np.concatenate(chunks).astype(np.float32) / 32768.0
            if chunks
            else np.zeros(0, np.float32)
        )
        return Utterance(audio, self.sample_rate, *_timeline(events, len(audio), self.sample_rate))


def _timeline(
    events: list[tuple[int, int, int, int, bytes]], num_samples: int, rate: int
) -> tuple[list[PhonemeEvent], list[WordEvent]]:
    """Phonemes as spans: each ends where the next begins (or at the end of the audio)."""
    total = num_samples / rate
    starts: list[tuple[float, str]] = []
    words: list[WordEvent] = []
    for kind, ms, text_pos, length, symbol in events:
        t = min(ms / 1000.0, total)
        if kind == _EVENT_PHONEME and symbol:
            starts.append((t, symbol.decode("utf-8", "replace")))
        elif kind == _EVENT_WORD:
            words.append(WordEvent(t, text_pos, length))
    phonemes = []
    for k, (t, symbol) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else total
        if end > t:  # espeak emits zero-length events at clause joins; they occupy no audio
            phonemes.append(PhonemeEvent(symbol, t, end))
    return phonemes, words


_INSTANCE: Espeak | None = None
_INSTANCE_LOCK = threading.Lock()


def get_espeak() -> Espeak:
    """This process's espeak-ng (initialised on first use)."""
    global _INSTANCE
    with _INSTANCE_LOCK:
        if _INSTANCE is None:
            _INSTANCE = Espeak()
            log.debug("espeak-ng %s at %s, %d Hz", _INSTANCE.version, _INSTANCE.data_path,
                      _INSTANCE.sample_rate)  # fmt: skip
        return _INSTANCE


def synthesize(text: str, voice: str = "en-us", **params: int | bool) -> Utterance:
    """`Espeak.synthesize` on this process's instance."""
    return get_espeak().synthesize(text, voice, **params)  # type: ignore[arg-type]
