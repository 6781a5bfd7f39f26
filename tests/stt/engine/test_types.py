"""stt/engine/types.py: decode options."""

from stt.engine import DecodeOptions, JobKind


def test_decode_options_follow_the_design_document():
    # Partials: greedy, no word times. Finals: beam 5 with word times (both from settings).
    assert DecodeOptions.partial("en") == DecodeOptions(JobKind.PARTIAL, 1, False, "en")
    assert DecodeOptions.final("en", True) == DecodeOptions(JobKind.FINAL, 5, True, "en")

