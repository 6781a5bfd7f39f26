"""The audio budget: seconds of audio per second of wall time, per key."""

from __future__ import annotations

import pytest

from stt.session.budget import BURST_SECONDS, AudioBudget


def budget(rate: float = 1.25) -> AudioBudget:
    return AudioBudget(lambda: rate)


def test_audio_within_the_burst_waits_nothing_and_beyond_it_waits_its_time_at_the_rate():
    audio = budget(1.25)
    audio.join("key")
    assert audio.wait_for("key", 1.25 * BURST_SECONDS, now=0.0) == 0.0
    assert audio.wait_for("key", 2.5, now=0.0) == pytest.approx(2.0)  # 2.5 s of audio at 1.25/s
    assert audio.wait_for("key", 1.25, now=2.0) == pytest.approx(1.0), "behind the audio already waiting"


def test_the_budget_refills_with_wall_time_up_to_the_burst():
    audio = budget(1.0)
    audio.join("key")
    audio.wait_for("key", BURST_SECONDS, now=0.0)
    assert audio.wait_for("key", 1.0, now=1.0) == 0.0
    assert audio.wait_for("key", BURST_SECONDS, now=100.0) == 0.0, "idle time refills the burst only"
    assert audio.wait_for("key", 1.0, now=100.0) == pytest.approx(1.0)


def test_a_key_gets_the_rate_once_for_each_live_session():
    audio = budget(1.0)
    audio.join("key")
    audio.join("key")
    audio.wait_for("key", 2 * BURST_SECONDS, now=0.0)
    assert audio.wait_for("key", 2.0, now=0.0) == pytest.approx(1.0)  # at 2 s of audio per second
    audio.leave("key")
    # One session left: the 2 s still owed less 1 s refilled, plus 1 s more, at 1 s/s.
    assert audio.wait_for("key", 1.0, now=1.0) == pytest.approx(2.0)


def test_a_key_over_its_budget_does_not_hold_back_another():
    audio = budget(1.0)
    audio.join("flooding")
    audio.join("steady")
    assert audio.wait_for("flooding", 60.0, now=0.0) > 50
    assert audio.wait_for("steady", 0.5, now=0.0) == 0.0


def test_a_rate_of_zero_turns_the_budget_off():
    assert budget(0.0).wait_for("key", 3600.0, now=0.0) == 0.0


def test_a_key_whose_sessions_all_left_starts_afresh():
    audio = budget(1.0)
    audio.join("key")
    audio.wait_for("key", 30.0, now=0.0)
    audio.leave("key")
    audio.join("key")
    assert audio.wait_for("key", 1.0, now=0.0) == 0.0


def test_audio_given_back_refills_the_balance_up_to_the_burst():
    audio = budget(1.0)
    audio.join("key")
    assert audio.wait_for("key", BURST_SECONDS + 3.0, now=0.0) == pytest.approx(3.0)
    audio.refund("key", 3.0)  # the frame was not taken after all (its session ended)
    assert audio.wait_for("key", 1.0, now=1.0) == 0.0, "owing nothing: the second refilled pays for it"
    audio.refund("key", 100.0)
    assert audio.wait_for("key", BURST_SECONDS + 1.0, now=1.0) == pytest.approx(1.0), "no more than the burst"
    audio.refund("nobody", 1.0)  # an account already gone: nothing to give back
