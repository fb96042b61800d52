"""The emotion contract: MEAD's eight emotions and three intensities, in one place."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = (
    "neutral", "happy", "sad", "angry", "surprised", "fearful", "disgusted", "contempt",
)  # fmt: skip
EMOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}
NUM_EMOTIONS = len(EMOTIONS)
INTENSITIES: tuple[int, ...] = (1, 2, 3)

# MEAD names its folders and files with these spellings (e.g. "level_2", "surprised").
MEAD_ALIASES: dict[str, str] = {"surprise": "surprised", "fear": "fearful", "disgust": "disgusted"}


def emotion_index(name: str) -> int:
    """Index of an emotion name (case-insensitive, MEAD spellings accepted).

    Raises ValueError listing the valid names, so a typo on the command line says what to type.
    """
    key = name.strip().lower()
    key = MEAD_ALIASES.get(key, key)
    if key not in EMOTION_INDEX:
        raise ValueError(f"unknown emotion {name!r}; valid emotions: {', '.join(EMOTIONS)}")
    return EMOTION_INDEX[key]


def check_intensity(intensity: int) -> int:
    """Return ``intensity`` if it is 1, 2 or 3, else raise ValueError saying so."""
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity must be 1, 2 or 3, got {intensity!r}")
    return int(intensity)
