"""stt/engine/scheduler.py: finals first, one queued partial per stream, batches, joins,
the result cache, and every answer reaching the transcription breaker."""

import asyncio
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from stt.engine import DecodeOptions, EngineStats, SpeechEngine, Superseded
from stt.engine.breaker import CircuitBreaker
from stt.engine.decoding import Decoded
from stt.engine import jobs
from stt.engine.jobs import BatchLimit
from stt.engine.scheduler import Scheduler
from stt.errors import SttError
from tests.conftest import silence
from tests.stt.engine.helpers import unique


@pytest.fixture
async def one_worker():
    """An engine of its own with a single inference worker: the order of a queue is only
    seen when one worker takes from it (the process's engine may run several)."""
    engine = SpeechEngine(model="tiny.en", workers=1)
    await engine.ready()
    yield engine
    engine.close()


class TestPriorities:
    async def test_queued_finals_are_served_before_queued_partials(self, one_worker, jfk_audio, monkeypatch):
        # Partials that waited past their patience climb to the finals' rank
        # (tests/stt/engine/test_jobs.py); on a loaded machine the blocker's decode
        # outlasts it, so the patience is set out of reach here.
        monkeypatch.setattr(jobs, "PARTIAL_PATIENCE", (60.0, 120.0))
        engine = one_worker
        assert engine.workers == 1
        finished: list[str] = []

        async def run(name: str, options: DecodeOptions):
            await engine.transcribe(unique(jfk_audio[:32000]), options)
            finished.append(name)

        # The first request occupies the worker; the others wait in the queue.
        blocker = asyncio.create_task(run("blocker", DecodeOptions.final("en", True)))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(run(f"partial-{i}", DecodeOptions.partial("en"))) for i in range(3)]
        await asyncio.sleep(0.01)
        waiting.append(asyncio.create_task(run("final", DecodeOptions.final("en", False))))
        await asyncio.gather(blocker, *waiting)
        assert finished[:2] == ["blocker", "final"]

    async def test_a_slow_inference_times_out_and_counts_against_the_breaker(self, jfk_audio):
        slow = SpeechEngine(model="tiny.en", transcription_failure_threshold=1, transcription_reset_seconds=60,
                            transcription_timeout=0.001)
        await slow.ready()
        with pytest.raises(SttError) as caught:
            await slow.transcribe(unique(jfk_audio), DecodeOptions.final("en", True))
        assert (caught.value.code, caught.value.spec.category.value) == ("transcription_timeout", "timeout")
        with pytest.raises(SttError) as caught:
            await slow.transcribe(jfk_audio, DecodeOptions.final("en", True))
        assert caught.value.code == "transcription_unavailable"
        assert 0 < caught.value.retry_after <= 60
        assert slow.stats.timeouts == 1
        slow.close()


class TestScheduling:
    """With one worker busy on a final, what waits in the queue and how it is served."""

    @staticmethod
    async def occupy(engine, audio):
        task = asyncio.create_task(engine.transcribe(unique(audio), DecodeOptions.final("en", True)))
        await asyncio.sleep(0.03)
        return task

    async def test_a_new_partial_replaces_the_queued_one_of_the_same_stream(self, one_worker, jfk_audio):
        engine = one_worker  # one worker: `occupy` holds it
        busy = await self.occupy(engine, jfk_audio)
        stale = asyncio.create_task(engine.transcribe(jfk_audio[:32000], DecodeOptions.partial("en"), stream_key="s1"))
        await asyncio.sleep(0.01)
        fresh = asyncio.create_task(engine.transcribe(jfk_audio[:40000], DecodeOptions.partial("en"), stream_key="s1"))
        with pytest.raises(Superseded):
            await stale
        assert "fellow americans" in (await fresh).text.lower()
        await busy

    async def test_a_partial_reads_the_latest_audio_when_a_worker_takes_it(self, one_worker, jfk_audio):
        engine = one_worker  # one worker: `occupy` holds it
        received = [jfk_audio[:16000]]
        busy = await self.occupy(engine, jfk_audio)
        pending = asyncio.create_task(engine.transcribe(lambda: np.concatenate(received), DecodeOptions.partial("en")))
        await asyncio.sleep(0.01)
        received.append(jfk_audio[16000:48000])  # audio that arrived while the job waited
        transcript = await pending
        assert transcript.audio_seconds == pytest.approx(3.0)
        assert "fellow americans" in transcript.text.lower()
        await busy

    async def test_partials_of_several_streams_share_one_batch(self, one_worker, jfk_audio):
        engine = one_worker  # one worker: `occupy` holds it
        busy = await self.occupy(engine, jfk_audio)
        parts = [unique(jfk_audio[:48000]), unique(jfk_audio[1000:49000]), unique(jfk_audio[2000:50000])]
        results = await asyncio.gather(*[
            engine.transcribe(part, DecodeOptions.partial("en"), stream_key=f"b{i}") for i, part in enumerate(parts)
        ])
        assert [r.batch_size for r in results] == [3, 3, 3]
        assert all("fellow americans" in r.text.lower() for r in results)
        await busy

    async def test_identical_audio_is_never_decoded_twice(self, engine, jfk_audio):
        audio = unique(jfk_audio[16000:60000])
        first = await engine.transcribe(audio, DecodeOptions.final("en", True))
        hits = engine.stats.cache_hits
        again = await engine.transcribe(audio.copy(), DecodeOptions.final("en", True))
        assert again.cached and again.text == first.text and again.words == first.words
        assert engine.stats.cache_hits == hits + 1

    async def test_a_final_joins_its_speculative_decode(self, engine, jfk_audio):
        audio = unique(jfk_audio[48000:100000])
        inferences = engine.stats.inferences
        engine.prefetch(audio, DecodeOptions.final("en", True))
        transcript = await engine.transcribe(audio, DecodeOptions.final("en", True))
        assert "country" in transcript.text.lower()
        assert engine.stats.inferences == inferences + 1, "decoded once, for both"

    async def test_cancelling_a_stream_drops_its_queued_work(self, one_worker, jfk_audio):
        engine = one_worker  # one worker: `occupy` holds it
        busy = await self.occupy(engine, jfk_audio)
        queued = asyncio.create_task(engine.transcribe(jfk_audio[:32000], DecodeOptions.partial("en"), stream_key="gone"))
        await asyncio.sleep(0.01)
        assert engine.cancel_stream("gone") == 1
        with pytest.raises((asyncio.CancelledError, Exception)):
            await queued
        await busy

    async def test_a_forced_prefix_is_kept_and_only_the_rest_is_new(self, engine, jfk_audio):
        tokenizer = engine.tokenizer("en")
        prefix = tuple(tokenizer.encode(" And so my"))
        transcript = await engine.transcribe(jfk_audio[:40000], DecodeOptions.partial("en", prefix))
        assert transcript.prefix_forced
        assert transcript.text.startswith("And so my")
        assert "".join(p.text for p in transcript.pieces).strip().lower().startswith("fellow")

class TestRobustness:
    async def test_a_waiter_giving_up_does_not_cancel_the_job_for_the_others(self, engine, jfk_audio):
        busy = asyncio.create_task(engine.transcribe(unique(jfk_audio), DecodeOptions.final("en", True)))
        await asyncio.sleep(0.03)
        audio = unique(jfk_audio[:48000])
        impatient = asyncio.create_task(engine.transcribe(audio, DecodeOptions.final("en", False)))
        patient = asyncio.create_task(engine.transcribe(audio.copy(), DecodeOptions.final("en", False)))
        await asyncio.sleep(0.01)
        impatient.cancel()
        assert "fellow americans" in (await patient).text.lower()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        await busy

    async def test_a_cancelled_probe_frees_the_half_open_breaker(self, jfk_audio):
        engine = SpeechEngine(model="tiny.en", transcription_failure_threshold=1, transcription_reset_seconds=0.05)
        await engine.ready()
        engine.transcription_breaker.record_failure()
        await asyncio.sleep(0.06)
        probe = asyncio.create_task(engine.transcribe(unique(jfk_audio), DecodeOptions.final("en", True)))
        await asyncio.sleep(0)  # the probe has taken the half-open slot
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert (await engine.transcribe(unique(jfk_audio[:32000]), DecodeOptions.partial("en"))).text
        engine.close()


@pytest.fixture
async def fragile_engine():
    """A real engine whose transcription breaker opens at one failure and half-opens
    50 ms later."""
    engine = SpeechEngine(model="tiny.en", transcription_failure_threshold=1, transcription_reset_seconds=0.05)
    await engine.ready()
    yield engine
    engine.close()


async def half_open(engine: SpeechEngine) -> None:
    engine.transcription_breaker.record_failure()
    await asyncio.sleep(0.06)
    assert engine.transcription_breaker.state.value == "half_open"


class TestBreakerVerdicts:
    """Whatever answers a request, the transcription breaker hears of it: a half-open
    probe answered without the model frees the slot instead of holding it forever."""

    async def test_a_half_open_probe_answered_from_the_cache_frees_the_slot(self, fragile_engine, jfk_audio):
        audio = unique(jfk_audio[:32000])
        first = await fragile_engine.transcribe(audio, DecodeOptions.partial("en"))
        await half_open(fragile_engine)
        again = await fragile_engine.transcribe(audio.copy(), DecodeOptions.partial("en"))  # the probe
        assert again.cached and again.text == first.text
        later = await fragile_engine.transcribe(unique(jfk_audio[:40000]), DecodeOptions.partial("en"))
        assert "fellow" in later.text.lower()
        assert fragile_engine.transcription_breaker.state.value == "closed"

    async def test_a_half_open_probe_answered_from_the_cache_by_a_worker_frees_the_slot(self, fragile_engine,
                                                                                       jfk_audio):
        audio = unique(jfk_audio[:32000])
        await fragile_engine.transcribe(audio, DecodeOptions.partial("en"))
        await half_open(fragile_engine)
        # A callable source is read, and looked up in the cache, only when a worker takes it.
        again = await fragile_engine.transcribe(lambda: audio.copy(), DecodeOptions.partial("en"))
        assert again.cached
        later = await fragile_engine.transcribe(unique(jfk_audio[:40000]), DecodeOptions.partial("en"))
        assert "fellow" in later.text.lower()

    async def test_a_half_open_probe_answered_by_the_silence_shortcut_frees_the_slot(self, fragile_engine,
                                                                                     jfk_audio):
        await half_open(fragile_engine)
        quiet = await fragile_engine.transcribe(silence(1), DecodeOptions.final("en", True))  # the probe
        assert quiet.text == ""
        later = await fragile_engine.transcribe(unique(jfk_audio[:40000]), DecodeOptions.partial("en"))
        assert "fellow" in later.text.lower()
        assert fragile_engine.transcription_breaker.state.value == "closed"

    async def test_a_prefetch_is_not_decoded_while_the_breaker_is_open(self, fragile_engine, jfk_audio):
        fragile_engine.transcription_breaker.reset_seconds = 60
        fragile_engine.transcription_breaker.record_failure()
        inferences = fragile_engine.stats.inferences
        fragile_engine.prefetch(unique(jfk_audio[:32000]), DecodeOptions.final("en", True))
        assert fragile_engine.queue_depth == 0
        await asyncio.sleep(0.5)
        assert fragile_engine.stats.inferences == inferences, "a refused prefetch is not decoded"
        with pytest.raises(SttError) as caught:
            await fragile_engine.transcribe(unique(jfk_audio[:32000]), DecodeOptions.final("en", True))
        assert caught.value.code == "transcription_unavailable"

    async def test_a_prefetch_never_takes_the_half_open_slot_from_its_final(self, fragile_engine, jfk_audio):
        await half_open(fragile_engine)
        audio = unique(jfk_audio[:48000])
        fragile_engine.prefetch(audio, DecodeOptions.final("en", True))
        final = await fragile_engine.transcribe(audio, DecodeOptions.final("en", True))  # the probe
        assert "fellow americans" in final.text.lower()
        assert fragile_engine.transcription_breaker.state.value == "closed"

    async def test_a_probe_that_joins_a_decode_in_flight_gets_its_verdict(self, fragile_engine, jfk_audio):
        audio = unique(jfk_audio[:48000])
        running = asyncio.create_task(fragile_engine.transcribe(audio, DecodeOptions.final("en", True)))
        await asyncio.sleep(0.03)  # a worker is decoding it
        await half_open(fragile_engine)
        joined = await fragile_engine.transcribe(audio.copy(), DecodeOptions.final("en", True))  # the probe
        assert joined.text == (await running).text
        assert fragile_engine.transcription_breaker.state.value == "closed"


class ScriptedDecoder:
    """A stand-in for the model (the scheduler is under test here, not decoding): it
    records the batches it is given, holds them while `gate` is closed, and raises
    while `error` is set."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.error: str | None = None

    def __call__(self, jobs: list) -> list[Decoded]:
        self.gate.wait(10)
        self.batches.append(len(jobs))
        if self.error is not None:
            raise RuntimeError(self.error)
        return [Decoded(f"{job.audio.size} samples", (), (), "en", 1.0, False) for job in jobs]


@pytest.fixture
def scripted():
    decoder = ScriptedDecoder()
    limit = BatchLimit()
    limit.set_full(4)
    scheduler = Scheduler(decoder, CircuitBreaker("transcription", 3, 60), EngineStats(), limit,
                          cache_size=16, min_window=10.0, timeout=lambda: 10.0)
    scheduler.start(1)
    yield SimpleNamespace(decoder=decoder, scheduler=scheduler)
    decoder.gate.set()
    scheduler.close(5)


def noise(seconds: float) -> np.ndarray:
    return (np.random.default_rng().standard_normal(int(seconds * 16000)) * 0.05).astype(np.float32)


class TestWithoutTheModel:
    async def test_a_failed_batch_counts_once_against_the_breaker_however_many_jobs_it_held(self, scripted):
        scheduler, decoder = scripted.scheduler, scripted.decoder
        decoder.gate.clear()
        decoder.error = "forced failure"
        requests = [asyncio.create_task(scheduler.request(noise(1), DecodeOptions.partial("en"), "s0"))]
        await asyncio.sleep(0.05)  # taken alone; the four below wait and will share a batch
        requests += [asyncio.create_task(scheduler.request(noise(1), DecodeOptions.partial("en"), f"s{i}"))
                     for i in range(1, 5)]
        await asyncio.sleep(0.01)
        decoder.gate.set()
        results = await asyncio.gather(*requests, return_exceptions=True)
        assert all(isinstance(r, SttError) and r.code == "transcription_failed" for r in results)
        assert decoder.batches == [1, 4]
        assert scheduler.breaker.state.value == "closed", "two verdicts of failure, under the threshold of 3"
        assert scheduler.stats.failures == 2

    async def test_silence_and_cached_audio_are_answered_without_the_model(self, scripted):
        scheduler, decoder = scripted.scheduler, scripted.decoder
        audio = noise(1)
        await scheduler.request(audio, DecodeOptions.final("en", True))
        assert decoder.batches == [1]
        again = await scheduler.request(audio.copy(), DecodeOptions.final("en", True))
        quiet = await scheduler.request(silence(1), DecodeOptions.final("en", True))
        assert again.cached and quiet.text == "" and decoder.batches == [1]
        assert scheduler.stats.cache_hits == 1

    async def test_a_prefetch_is_skipped_when_finals_already_fill_a_batch(self, scripted):
        scheduler, decoder = scripted.scheduler, scripted.decoder
        decoder.gate.clear()
        busy = asyncio.create_task(scheduler.request(noise(1), DecodeOptions.final("en", True)))
        await asyncio.sleep(0.05)
        finals = [asyncio.create_task(scheduler.request(noise(1), DecodeOptions.final("en", True)))
                  for _ in range(4)]
        await asyncio.sleep(0.01)
        scheduler.prefetch(noise(1), DecodeOptions.final("en", True))
        assert scheduler.queue_depth == 4
        decoder.gate.set()
        await asyncio.gather(busy, *finals)
        assert decoder.batches == [1, 4]


def answering_into(scheduler: Scheduler, order: list[str]):
    """A request of 1 s of noise that appends its name to `order` once answered."""

    async def run(name: str, options: DecodeOptions, key: str) -> None:
        await scheduler.request(noise(1), options, key)
        order.append(name)

    return run


async def until(condition, timeout: float = 10.0) -> None:
    """Wait (polling) until `condition()` holds; fails past `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.01)


class TestStreamsOverBudget:
    """Issue 24 #4: a client flooding audio is slowed by its budget; its work then yields
    to streams within theirs and is not the load admission protects."""

    async def test_a_final_of_a_stream_over_its_budget_runs_after_live_partials(self, scripted):
        scheduler, decoder = scripted.scheduler, scripted.decoder
        decoder.gate.clear()
        order: list[str] = []
        run = answering_into(scheduler, order)

        scheduler.over_budget("flood", 5.0)
        busy = asyncio.create_task(run("busy", DecodeOptions.final("en", True), "s0"))
        await asyncio.sleep(0.05)
        flooded = asyncio.create_task(run("flood final", DecodeOptions.final("en", True), "flood"))
        await asyncio.sleep(0.01)
        live = asyncio.create_task(run("live partial", DecodeOptions.partial("en"), "s1"))
        await asyncio.sleep(0.01)
        decoder.gate.set()
        await asyncio.gather(busy, flooded, live)
        assert order == ["busy", "live partial", "flood final"]

    async def test_with_two_workers_its_work_never_takes_both(self):
        decoder = ScriptedDecoder()
        started: list[str] = []
        scheduler = Scheduler(lambda jobs: (started.append(jobs[0].stream_key), decoder(jobs))[1],
                              CircuitBreaker("transcription", 3, 60), EngineStats(), BatchLimit(), cache_size=0,
                              min_window=10.0, timeout=lambda: 10.0)
        scheduler.start(2)
        try:
            decoder.gate.clear()
            scheduler.over_budget("flood", 5.0)
            flooded = [asyncio.create_task(scheduler.request(noise(1), DecodeOptions.final("en", True), "flood"))
                       for _ in range(2)]
            await until(lambda: len(started) == 1)
            await asyncio.sleep(0.2)  # time for the second worker to take the other one, were it allowed
            assert started == ["flood"], "the second worker stays free"
            live = asyncio.create_task(scheduler.request(noise(1), DecodeOptions.final("en", True), "live"))
            await until(lambda: len(started) == 2)
            assert started == ["flood", "live"], "and takes the live stream's final while the flood's waits"
            decoder.gate.set()
            await asyncio.gather(*flooded, live)
            assert started == ["flood", "live", "flood"]
        finally:
            decoder.gate.set()
            scheduler.close(5)

    async def test_its_finals_count_neither_in_the_finals_latencies_nor_in_the_final_path_load(self, scripted):
        scheduler = scripted.scheduler
        scheduler.over_budget("flood", 5.0)
        await scheduler.request(noise(1), DecodeOptions.final("en", True), "flood")
        figures = scheduler.load.figures()
        assert (figures.finals, figures.final_busy_seconds) == (0, 0.0) and figures.partial_busy_seconds > 0
        await scheduler.request(noise(1), DecodeOptions.final("en", True), "live")
        figures = scheduler.load.figures()
        assert figures.finals == 1 and figures.final_busy_seconds > 0

    async def test_a_stream_is_over_its_budget_only_for_the_time_it_was_told(self, scripted):
        scheduler = scripted.scheduler
        scheduler.over_budget("flood", 0.05)
        assert scheduler.is_over_budget("flood") and not scheduler.is_over_budget("live")
        await asyncio.sleep(0.1)
        assert not scheduler.is_over_budget("flood")


class TestFileChunks:
    async def test_a_files_chunk_never_joins_a_finals_batch_and_runs_after_live_work(self, scripted):
        scheduler, decoder = scripted.scheduler, scripted.decoder
        decoder.gate.clear()
        order: list[str] = []
        run = answering_into(scheduler, order)

        busy = asyncio.create_task(run("busy", DecodeOptions.final("en", True), "s0"))
        await asyncio.sleep(0.05)
        chunk = asyncio.create_task(run("chunk", DecodeOptions.file("en", True), "file"))
        await asyncio.sleep(0.01)
        live = [asyncio.create_task(run("final", DecodeOptions.final("en", True), "s1")),
                asyncio.create_task(run("partial", DecodeOptions.partial("en"), "s2"))]
        await asyncio.sleep(0.01)
        decoder.gate.set()
        await asyncio.gather(busy, chunk, *live)
        assert order == ["busy", "final", "partial", "chunk"]
        assert decoder.batches == [1, 1, 1, 1], "same options and window, yet the chunk decodes alone"

    async def test_a_prefetch_is_not_held_back_by_queued_file_chunks(self, scripted):
        scheduler, decoder = scripted.scheduler, scripted.decoder
        decoder.gate.clear()
        busy = asyncio.create_task(scheduler.request(noise(1), DecodeOptions.final("en", True)))
        await asyncio.sleep(0.05)
        chunks = [asyncio.create_task(scheduler.request(noise(1), DecodeOptions.file("en", True), f"f{i}"))
                  for i in range(4)]
        await asyncio.sleep(0.01)
        scheduler.prefetch(noise(1), DecodeOptions.final("en", True))
        assert scheduler.queue_depth == 5
        decoder.gate.set()
        await asyncio.gather(busy, *chunks)

    async def test_a_chunks_time_limit_counts_from_when_a_worker_takes_it(self):
        decoder = ScriptedDecoder()
        limit = BatchLimit()
        limit.set_full(1)
        scheduler = Scheduler(decoder, CircuitBreaker("transcription", 3, 60), EngineStats(), limit,
                              cache_size=0, min_window=10.0, timeout=lambda: 0.3)
        scheduler.start(1)
        try:
            decoder.gate.clear()
            live = asyncio.create_task(scheduler.request(noise(1), DecodeOptions.final("en", True)))
            await asyncio.sleep(0.05)
            chunk = asyncio.create_task(scheduler.request(noise(1), DecodeOptions.file("en", True), "file"))
            partial = asyncio.create_task(scheduler.request(noise(1), DecodeOptions.partial("en"), "s1"))
            await asyncio.sleep(0.5)  # the worker is held past every limit
            decoder.gate.set()
            results = await asyncio.gather(live, partial, chunk, return_exceptions=True)
            assert isinstance(results[0], SttError) and results[0].code == "transcription_timeout"
            assert isinstance(results[1], SttError) and results[1].code == "transcription_timeout"
            assert results[2].text == "16000 samples", "queued behind live work, not timed out"
        finally:
            decoder.gate.set()
            scheduler.close(5)
