"""Write assets/sample_blendshapes.csv: 6 s of talking-like motion in Live Link Face's format.

Syllables open the jaw at about 4 Hz with varied height, some close the lips hard (p/b/m),
some round them (oo); a smile grows in the middle, the brows lift on an emphasis, the eyes
blink twice, and the head nods and turns a little. Deterministic (fixed seed).
"""

from pathlib import Path

import numpy as np

from engine.blendshapes import MOTION_DIM, MOTION_INDEX
from engine.motion_csv import write_motion_csv

FPS = 25
SECONDS = 6.0


def bump(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - centre) / width) ** 2)


def main() -> None:
    rng = np.random.default_rng(7)
    t = np.arange(int(SECONDS * FPS)) / FPS
    m = np.zeros((len(t), MOTION_DIM), np.float32)

    def add(name: str, curve: np.ndarray) -> None:
        m[:, MOTION_INDEX[name]] += curve.astype(np.float32)

    speaking = (t > 0.4) & (t < 5.4)
    syllable = 0.0
    while syllable < SECONDS:
        syllable += rng.uniform(0.18, 0.32)
        if not 0.5 < syllable < 5.3:
            continue
        kind = rng.choice(["open", "open", "round", "closed"])
        if kind == "open":
            add("jawOpen", rng.uniform(0.25, 0.7) * bump(t, syllable, 0.06))
            add("mouthLowerDownLeft", 0.2 * bump(t, syllable, 0.06))
            add("mouthLowerDownRight", 0.2 * bump(t, syllable, 0.06))
        elif kind == "round":
            add("jawOpen", 0.2 * bump(t, syllable, 0.07))
            add("mouthFunnel", 0.6 * bump(t, syllable, 0.08))
            add("mouthPucker", 0.5 * bump(t, syllable - 0.03, 0.08))
        else:
            add("mouthPressLeft", 0.5 * bump(t, syllable, 0.04))
            add("mouthPressRight", 0.5 * bump(t, syllable, 0.04))
    m[~speaking, MOTION_INDEX["jawOpen"]] *= 0.0

    smile = 0.7 * np.clip((t - 2.0) / 0.6, 0, 1) * np.clip((4.6 - t) / 0.6, 0, 1)
    add("mouthSmileLeft", smile)
    add("mouthSmileRight", smile * 0.9)
    add("cheekSquintLeft", smile * 0.5)
    add("cheekSquintRight", smile * 0.5)
    add("browInnerUp", 0.8 * bump(t, 1.3, 0.2))
    add("browOuterUpLeft", 0.6 * bump(t, 1.3, 0.2))
    add("browOuterUpRight", 0.6 * bump(t, 1.3, 0.2))
    for blink in (0.9, 3.6):
        add("eyeBlinkLeft", bump(t, blink, 0.05) / bump(0.0, 0.0, 0.05))
        add("eyeBlinkRight", bump(t, blink, 0.05) / bump(0.0, 0.0, 0.05))
    add("eyeLookOutLeft", 0.4 * bump(t, 4.8, 0.3))
    add("eyeLookInRight", 0.4 * bump(t, 4.8, 0.3))
    add("headPitch", 0.06 * np.sin(2 * np.pi * 0.5 * t) + 0.05 * bump(t, 1.3, 0.15))
    add("headYaw", 0.12 * np.sin(2 * np.pi * 0.17 * t))
    add("headRoll", 0.04 * np.sin(2 * np.pi * 0.23 * t + 1.0))
    m[:, : MOTION_INDEX["headPitch"]] = np.clip(m[:, : MOTION_INDEX["headPitch"]], 0, 1)

    out = Path(__file__).resolve().parent.parent / "assets" / "sample_blendshapes.csv"
    write_motion_csv(out, m, fps=FPS)
    print(out)


if __name__ == "__main__":
    main()
