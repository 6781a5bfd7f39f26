"""stt/engine/jobs.py: a job's rank in the queue, the result cache, the batch limit
and admissions."""

from concurrent.futures import Future

import numpy as np

from stt.engine import DecodeOptions, JobKind, Transcript
from stt.engine.jobs import (
    BATCH_REGROW_AFTER,
    FILE_PATIENCE,
    OVER_BUDGET_PATIENCE,
    Admission,
    BatchLimit,
    Job,
    ResultCache,
    batch_group,
    digest,
)


def job(kind: JobKind, sequence: int, enqueued_at: float = 0.0) -> Job:
    options = DecodeOptions(kind, 1, False, "en")
    return Job(kind, sequence, np.zeros(16, dtype=np.float32), options, Future(), enqueued_at)


def transcript(text: str) -> Transcript:
    return Transcript(text, (), (), "en", 1.0, 1.0, 0.0, 0.1)


class TestRank:
    def test_finals_then_speculative_finals_then_partials(self):
        jobs = [job(JobKind.PARTIAL, 0), job(JobKind.SPECULATIVE, 1), job(JobKind.FINAL, 2)]
        assert [j.kind for j in sorted(jobs, key=lambda j: j.order(0.1))] == [
            JobKind.FINAL, JobKind.SPECULATIVE, JobKind.PARTIAL]

    def test_a_partial_that_waits_climbs_to_speculative_then_final_rank(self):
        partial = job(JobKind.PARTIAL, 7)
        assert partial.order(0.2) == (int(JobKind.PARTIAL), 7)
        assert partial.order(0.4) == (int(JobKind.SPECULATIVE), 7)
        assert partial.order(0.7) == (int(JobKind.FINAL), 7)
        assert job(JobKind.FINAL, 9).order(0.7) > partial.order(0.7), "older first among equals"

    def test_finals_never_change_rank(self):
        assert job(JobKind.FINAL, 3).order(100.0) == (int(JobKind.FINAL), 3)
        assert job(JobKind.SPECULATIVE, 3).order(100.0) == (int(JobKind.SPECULATIVE), 3)


    def test_a_files_chunk_waits_below_partials_then_ranks_with_them_and_never_higher(self):
        chunk = job(JobKind.FILE, 1)
        partial = job(JobKind.PARTIAL, 5, enqueued_at=FILE_PATIENCE)
        assert chunk.order(0.1) > partial.order(0.1), "below a newer partial at first"
        assert chunk.order(FILE_PATIENCE + 0.1) == (int(JobKind.PARTIAL), 1)
        assert chunk.order(FILE_PATIENCE + 0.1) < partial.order(FILE_PATIENCE + 0.1), "then older first"
        assert chunk.order(1000.0) == (int(JobKind.PARTIAL), 1), "never above a partial's own rank"
        assert chunk.order(1000.0) > job(JobKind.SPECULATIVE, 9).order(1000.0)

    def test_a_stream_over_its_budget_ranks_below_live_partials_and_above_files_until_its_patience(self):
        flooded = job(JobKind.FINAL, 1)
        live_partial, chunk = job(JobKind.PARTIAL, 5), job(JobKind.FILE, 6)
        assert live_partial.order(0.1) < flooded.order(0.1, over_budget=True) < chunk.order(0.1)
        assert flooded.order(OVER_BUDGET_PATIENCE + 0.1, over_budget=True) == (int(JobKind.FINAL), 1), \
            "never starved: after its patience it ranks as its kind"
        assert chunk.order(0.1, over_budget=True) == chunk.order(0.1), "files have a lane of their own"

    def test_files_partials_and_finals_never_share_an_inference(self):
        groups = {kind: batch_group(kind) for kind in JobKind}
        assert groups[JobKind.FINAL] == groups[JobKind.SPECULATIVE]
        assert len({groups[JobKind.FINAL], groups[JobKind.PARTIAL], groups[JobKind.FILE]}) == 3


class TestResultCache:
    def test_the_least_recently_used_result_goes_first(self):
        cache = ResultCache(2)
        cache.put(("a",), transcript("a"))
        cache.put(("b",), transcript("b"))
        assert cache.get(("a",)).text == "a"  # now b is the oldest
        cache.put(("c",), transcript("c"))
        assert cache.get(("b",)) is None
        assert [cache.get((k,)).text for k in "ac"] == ["a", "c"]

    def test_a_cache_of_size_zero_keeps_nothing(self):
        cache = ResultCache(0)
        cache.put(("a",), transcript("a"))
        assert cache.get(("a",)) is None

    def test_the_digest_tells_audio_apart_by_its_bytes(self):
        audio = np.linspace(-1, 1, 1000, dtype=np.float32)
        assert digest(audio) == digest(audio.copy())
        assert digest(audio) != digest(audio * np.float32(0.999))


class TestBatchLimit:
    def test_out_of_memory_halves_the_limit_down_to_one(self):
        limit = BatchLimit()
        limit.set_full(16)
        limit.out_of_memory(16)
        assert (limit.current, limit.full) == (8, 16)
        limit.out_of_memory(16)  # a batch larger than the limit does not raise it
        assert limit.current == 8
        limit.out_of_memory(1)
        assert limit.current == 1

    def test_clean_batches_grow_it_back_to_the_full_size_and_no_further(self):
        limit = BatchLimit()
        limit.set_full(4)
        limit.out_of_memory(4)
        for _ in range(BATCH_REGROW_AFTER - 1):
            limit.clean_batch()
        assert limit.current == 2
        limit.clean_batch()
        assert limit.current == 4
        for _ in range(2 * BATCH_REGROW_AFTER):
            limit.clean_batch()
        assert limit.current == 4

    def test_an_out_of_memory_restarts_the_count_of_clean_batches(self):
        limit = BatchLimit()
        limit.set_full(4)
        limit.out_of_memory(4)
        for _ in range(BATCH_REGROW_AFTER - 1):
            limit.clean_batch()
        limit.out_of_memory(2)
        limit.clean_batch()
        assert limit.current == 1


def test_an_admission_is_settled_once():
    admission = Admission(probe=True)
    assert admission.settle() is True
    assert admission.settle() is False
