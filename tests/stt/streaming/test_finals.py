"""The final path's pure decisions: what a final repeats of its context."""

from __future__ import annotations

import pytest

from stt.streaming.finals import repeats

CONTEXT = "Go forward 10 meters. Today only platforms one and three are used."


@pytest.mark.parametrize("text", [
    "Today only platforms one and three are used.", "today, only platforms one", "Go forward 10 meters.",
])
def test_a_final_that_reads_back_three_or_more_words_of_the_context_repeats_it(text):
    assert repeats(CONTEXT, text)


@pytest.mark.parametrize("text", ["Yes.", "Go forward.", "Today only platforms two are used.", "", "meters today only X"])
def test_short_or_new_text_does_not(text):
    assert not repeats(CONTEXT, text)
