"""stt/engine/types.py: decode options."""

from stt.engine import DecodeOptions, JobKind


def test_decode_options_follow_the_design_document():
    # Partials: greedy, no word times. Finals: beam 5 with word times (both from settings).
    assert DecodeOptions.partial("en") == DecodeOptions(JobKind.PARTIAL, 1, False, "en")
    assert DecodeOptions.final("en", True) == DecodeOptions(JobKind.FINAL, 5, True, "en")



def test_jobs_with_different_prompts_neither_batch_nor_share_results():
    plain, prompted = DecodeOptions.final("en", True), DecodeOptions.final("en", True, prompt="Siobhan")
    assert plain.batch_key != prompted.batch_key and plain.cache_key != prompted.cache_key
    with_prefix = DecodeOptions.partial("en", prefix=(1, 2))
    assert with_prefix.batch_key == DecodeOptions.partial("en").batch_key  # prefixes batch together
    assert with_prefix.cache_key != DecodeOptions.partial("en").cache_key


def test_a_files_chunk_is_decoded_like_a_final_but_queued_below_live_work():
    chunk = DecodeOptions.file("en", True, prompt="Fasttalk", temperature=0.2)
    assert chunk == DecodeOptions(JobKind.FILE, 5, True, "en", prompt="Fasttalk", temperature=0.2)
    assert JobKind.FILE > JobKind.PARTIAL
