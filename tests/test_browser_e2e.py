"""The browser end to end: a real `dreamtalk serve`, Debian's Chromium (headless, through
Playwright) speaking a WAV into the page's microphone, the real trained weights.

One run of `dreamtalk.bench_e2e.run_e2e` (15 s of avatar) is shared by the tests below; each
checks one property of what the page received. Timing figures (the glass-to-glass latency)
are logged, not asserted: they are measured by `dreamtalk bench e2e` on a quiet machine.

Weights: ``$DREAMTALK_E2E_WEIGHTS`` or ``weights/``; the tests skip when the folder has no
``emodiff_student.pt`` (the default weights are still being trained), and when
``/usr/bin/chromium`` is missing (``apt-get install chromium``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from dreamtalk.bench_e2e import CHROMIUM, E2EResult, run_e2e

log = logging.getLogger(__name__)

SECONDS = 15.0

# Thresholds, from measurements (`dreamtalk bench e2e --runs 3`, the committed weights, 512 px,
# the mouth as the face mesh's lip gap; this 2-core machine with an evaluation running):
MIN_FPS = 20.0  # the requirement; live runs presented 25.0 fps
# Mouth opening vs input loudness at the best lag: live runs 0.66-0.78 (median 0.74). The
# ceiling is well below 1 (loudness is not lip opening: on an offline render of the same WAV
# the rig's own lip opening gives r = 0.81). A control with "deaf" weights (the audio
# encoder's weights shuffled) gave 0.36 on the 256 px interior measure.
MIN_CORRELATION = 0.5
# Silence frames (shifted by the measured lag) whose mouth shows its inside (teeth or cavity
# between the lips): live runs 0%; the deaf control 35%.
MAX_SILENCE_OPEN = 0.1


@pytest.fixture(scope="module")
def e2e(browser_weights: Path) -> E2EResult:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    result = run_e2e(browser_weights, seconds=SECONDS)
    log.info("end to end: %s", result.to_dict())
    return result


def test_remote_video_plays_at_20_fps_or_more(e2e: E2EResult) -> None:
    assert e2e.frames_captured > 0, f"no frame of the avatar was presented; {e2e.notes}"
    assert e2e.video_size[0] > 0 and e2e.video_size[1] > 0
    assert e2e.fps_rendered >= MIN_FPS, (
        f"the remote video was presented at {e2e.fps_rendered:.1f} fps "
        f"(decoded {e2e.fps_decoded:.1f} fps)"
    )


def test_remote_audio_arrives(e2e: E2EResult) -> None:
    assert e2e.audio_bytes > 0, "no remote audio bytes received"
    assert e2e.audio_energy > 0, "remote audio received but silent (totalAudioEnergy 0)"


def test_mouth_moves_with_the_speech(e2e: E2EResult) -> None:
    assert e2e.frames_tracked >= 0.9 * e2e.frames_captured, (
        f"the face tracker found the avatar's face in {e2e.frames_tracked} of "
        f"{e2e.frames_captured} frames"
    )
    assert e2e.mouth_env_corr >= MIN_CORRELATION, (
        f"mouth opening vs speech loudness: r = {e2e.mouth_env_corr:.3f} at the best lag "
        f"({e2e.lag_at_best_corr_ms} ms) in 0..800 ms; notes: {e2e.notes}"
    )


def test_mouth_stays_closed_in_silences(e2e: E2EResult) -> None:
    assert e2e.silence_open_fraction <= MAX_SILENCE_OPEN, (
        f"the mouth was open in {e2e.silence_open_fraction:.1%} of the frames during the "
        f"input's silences (rest {e2e.mouth_rest:.4f}, speaking {e2e.mouth_speaking:.4f} IOD^2)"
    )


def test_glass_to_glass_latency_is_measured(e2e: E2EResult) -> None:
    """The latency's value is reported, not asserted (the machine is shared and noisy);
    that it can be measured at all (the speech comes back and the mouth opens after speech
    onsets) is asserted."""
    latency = ", ".join(f"{x:.0f}" for x in e2e.latency_ms)
    message = (
        f"glass-to-glass latency over {len(e2e.latency_ms)} onsets ({latency} ms): p50 "
        f"{e2e.latency_p50_ms or math.nan:.0f} ms, p95 {e2e.latency_p95_ms or math.nan:.0f} ms "
        f"(target p50 <= 300 ms on loopback); onset to the mouth 30% open p50 "
        f"{e2e.opening_p50_ms or math.nan:.0f} ms; {e2e.fps_rendered:.1f} fps, mouth vs loudness "
        f"r = {e2e.mouth_env_corr:.3f} at {e2e.lag_at_best_corr_ms:.0f} ms, open in silences "
        f"{e2e.silence_open_fraction:.1%}"
    )
    log.warning("%s", message)
    print(message)
    assert e2e.onsets >= 3, f"only {e2e.onsets} speech onsets in {SECONDS:.0f} s of input"
    assert e2e.opening_ms, f"the mouth did not open after any speech onset; {e2e.notes}"
    assert e2e.latency_ms, f"no speech onset came back in the remote audio; {e2e.notes}"
