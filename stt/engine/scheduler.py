"""Scheduling: one priority queue, batches, joins, a result cache, worker threads, and
the transcription breaker's verdicts.

- One queue, finals first, then speculative finals, then partials, then chunks of
  uploaded files (which climb to the partials' rank after FILE_PATIENCE, never above;
  their time limit counts from when a worker takes them). A stream has at most one
  queued partial (a new one replaces it), and a partial reads its stream's
  latest audio only when a worker takes it: under load partials come less often, not
  later.
- Batching. Jobs of one kind and window bucket are encoded and decoded together.
- Caching. Results are kept by (audio digest, options); an identical request is
  answered from the cache or joins the one in flight, so nothing is decoded twice.
- The breaker. A request is admitted by the transcription breaker before it is
  queued. Whatever answers it (a decode, the cache, the silence shortcut, a job it
  joined) or leaves it unanswered (replaced, withdrawn, timed out) reports through
  Scheduler._report: a decode gives the verdict, once per inference however many
  wait on it; an answer without the model releases a half-open probe slot instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, Callable, Iterable

import numpy as np

from monitoring import metrics
from stt.engine.breaker import BreakerState, CircuitBreaker
from stt.engine.decoding import Decoded, bucket, is_silent
from stt.engine.jobs import Admission, BatchLimit, Job, OverBudgetStreams, ResultCache, Verdict, batch_group, digest
from stt.engine.load import LoadMeter
from stt.engine.types import (
    SAMPLE_RATE,
    AudioSource,
    DecodeOptions,
    EngineStats,
    JobKind,
    Superseded,
    Transcript,
)
from stt.errors import SttError

logger = logging.getLogger(__name__)

# Decodes a batch of jobs that share options and window; raises when the model fails.
BatchDecoder = Callable[[list[Job]], list[Decoded]]


class Scheduler:
    """The queue and the worker threads in front of a BatchDecoder."""

    def __init__(self, decode: BatchDecoder, breaker: CircuitBreaker, stats: EngineStats,
                 batch_limit: BatchLimit, cache_size: int, min_window: float,
                 timeout: Callable[[], float], load: LoadMeter | None = None,
                 publish_queue_depth: bool = True) -> None:
        self._decode = decode
        self.breaker = breaker
        self.stats = stats
        self.batch_limit = batch_limit
        self._cache = ResultCache(cache_size)
        self._min_window = min_window
        self._timeout = timeout  # seconds an inference may take, read per request
        self.load = load or LoadMeter(1)  # final latencies and busy time, for admission
        self._queue: list[Job] = []
        self._queued_partials: dict[Any, Job] = {}
        self._in_flight: dict[tuple, Job] = {}  # by key: queued or running, joinable
        self._cond = threading.Condition()
        self._sequence = itertools.count()
        self.threads: list[threading.Thread] = []
        self._running = 0
        self.closed = False
        self._publish_queue_depth = publish_queue_depth  # the live queue's gauge (one per process)
        # Streams over their audio budget: their jobs rank below the others' (Job.order),
        # never take the last worker, and are not the load admission protects.
        self._over_budget = OverBudgetStreams()
        self._running_over_budget = 0  # batches of such streams being decoded

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._running

    @property
    def finals_waiting(self) -> int:
        """Queued finals and speculative finals: above zero, the workers are behind on them."""
        with self._cond:
            return sum(1 for job in self._queue if job.kind < JobKind.PARTIAL)

    def start(self, workers: int, name: str = "stt-inference", on_start: Callable[[], None] | None = None) -> None:
        """`workers` threads named `name`-N; each runs `on_start` first (its priority)."""
        for index in range(workers):
            thread = threading.Thread(target=self._work, args=(on_start,), name=f"{name}-{index}", daemon=True)
            thread.start()
            self.threads.append(thread)

    # --- requests ------------------------------------------------------------------

    def over_budget(self, stream_key: Any, seconds: float) -> None:
        """The stream is over its audio budget for the next `seconds`: its work yields to
        streams within theirs (Job.order), and counts as elastic in the load figures."""
        with self._cond:
            self._over_budget.mark(stream_key, seconds, time.perf_counter())

    def is_over_budget(self, stream_key: Any, now: float | None = None) -> bool:
        return self._over_budget.holds(stream_key, time.perf_counter() if now is None else now)

    async def request(self, source: AudioSource, options: DecodeOptions, stream_key: Any = None,
                      health_probe: bool = False) -> Transcript:
        """Queue a decode and wait for it (see SpeechEngine.transcribe)."""
        admission = self._admit(health_probe)
        asked = time.perf_counter()
        future, job = self._submit(source, options, stream_key, admission)
        timeout = self._timeout()
        try:
            transcript = await self._wait(future, job, timeout)
            if options.kind is JobKind.FINAL and not health_probe and not self.is_over_budget(stream_key):
                self.load.record_final(time.perf_counter() - asked)
            return transcript
        except asyncio.TimeoutError:
            if job is not None:
                self._withdraw(job)
            if options.kind is JobKind.FINAL and not health_probe and not self.is_over_budget(stream_key):
                self.load.record_final(time.perf_counter() - asked)  # late at least this much
            self.stats.timeouts += 1
            # The model hung; a job still queued is overload, and a health probe not a client's.
            hung = job is not None and job.started and not health_probe
            self._report(Verdict.FAILED if hung else Verdict.NONE, [admission])
            raise SttError("transcription_timeout", f"transcription took longer than {timeout} s") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                if job is not None:
                    self._withdraw(job)
                raise  # our caller is being cancelled
            raise Superseded() from None  # the job was withdrawn under us
        finally:
            # Answered or not, the admission is settled; a no-op when the path that
            # answered already reported it.
            self._report(Verdict.NONE, [admission])

    @staticmethod
    async def _wait(future: Future, job: Job | None, timeout: float) -> Transcript:
        """The job's result within `timeout`. A file's chunk may queue behind live work
        for as long as that takes: its limit counts from when a worker takes it."""
        answer = asyncio.wrap_future(future)
        limit = timeout
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                async with asyncio.timeout(limit):
                    return await asyncio.shield(answer)
            except asyncio.TimeoutError:
                if job is None or job.kind is not JobKind.FILE or future.done():
                    raise
                started_at = job.started_at
                if started_at is None:
                    continue  # still queued: live work goes first
                limit = started_at + timeout - time.perf_counter()
                if limit <= 0:
                    raise

    def prefetch(self, audio: np.ndarray, options: DecodeOptions, stream_key: Any = None) -> None:
        """Start decoding audio whose result will probably be asked for soon. It
        outranks partials only; skipped when finals already fill a batch, and while
        the transcription breaker is not closed (then the final itself is the call
        the breaker admits, and a prefetch must not take its half-open slot)."""
        if self.closed or self.breaker.state is not BreakerState.CLOSED:
            return
        with self._cond:
            if sum(1 for job in self._queue if job.kind < JobKind.PARTIAL) >= self.batch_limit.current:
                return
        future, job = self._submit(audio, options, stream_key, None, kind=JobKind.SPECULATIVE)
        if job is not None:
            job.waiters -= 1  # nobody waits on a prefetch yet

    def cancel_stream(self, stream_key: Any) -> int:
        """Drop the stream's queued partials and speculative finals; returns how many."""
        with self._cond:
            dropped = [j for j in self._queue
                       if j.stream_key == stream_key and j.kind is not JobKind.FINAL]
            for job in dropped:
                self._remove_queued(job)
                job.future.cancel()
        return len(dropped)

    def close(self, timeout: float) -> bool:
        """Stop the workers; True when all of them stopped within `timeout`."""
        with self._cond:
            self.closed = True
            for job in self._queue:
                job.future.cancel()
            self._queue.clear()
            self._cond.notify_all()
        for thread in self.threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self.threads)

    def _admit(self, health_probe: bool) -> Admission:
        """A health probe bypasses admission: it must not take the half-open probe slot
        from a client."""
        if health_probe:
            return Admission(probe=False)
        admitted = self.breaker.admit()
        if admitted is None:
            raise SttError("transcription_unavailable", "transcription is paused after repeated failures",
                           retry_after=round(self.breaker.retry_after(), 1))
        return Admission(probe=admitted == "probe")

    def _report(self, verdict: Verdict, admissions: Iterable[Admission]) -> None:
        """The one place where answers reach the transcription breaker. A decode's
        outcome is the model's verdict, recorded once per inference; each admission
        is settled once, and a half-open probe answered without the model (cache,
        silence, replaced, withdrawn) frees its slot for the next call."""
        if verdict is Verdict.WORKED:
            self.breaker.record_success()
        elif verdict is Verdict.FAILED:
            self.breaker.record_failure()
        for admission in admissions:
            if admission.settle() and admission.probe and verdict is Verdict.NONE:
                self.breaker.release_probe()

    def _submit(self, source: AudioSource, options: DecodeOptions, stream_key: Any,
                admission: Admission | None, kind: JobKind | None = None) -> tuple[Future, Job | None]:
        """Queue a job, or join an identical one in flight, or answer from the cache.
        Returns the future to wait on and the job (None when answered at once)."""
        kind = options.kind if kind is None else kind
        admissions = [admission] if admission is not None else []
        job = Job(kind, next(self._sequence), source, options, Future(), time.perf_counter(), stream_key,
                  admissions=admissions)
        if isinstance(source, np.ndarray):
            self._snapshot(job, source)
            cached = self._cache.get(job.key)
            if cached is not None:
                self.stats.cache_hits += 1
                self._report(Verdict.NONE, admissions)
                job.future.set_result(replace(cached, cached=True, queue_seconds=0.0))
                return job.future, None
        with self._cond:
            joined = self._in_flight.get(job.key) if job.key is not None else None
            if joined is not None:
                joined.waiters += 1
                joined.admissions.extend(admissions)
                if kind < joined.kind:  # a final now waits for it: let it jump the queue
                    joined.kind = kind
                self.stats.cache_hits += 1
                return joined.future, joined
            if kind is JobKind.PARTIAL and stream_key is not None:
                self._replace_queued_partial(stream_key, job)
            if job.key is not None:
                self._in_flight[job.key] = job
            self._queue.append(job)
            self._queue_depth_changed()
            self._cond.notify()
        return job.future, job

    def _queue_depth_changed(self) -> None:
        if self._publish_queue_depth:
            metrics.queue_depth.set(len(self._queue))

    def _replace_queued_partial(self, stream_key: Any, job: Job) -> None:
        stale = self._queued_partials.get(stream_key)
        if stale is not None:
            self._remove_queued(stale)
            self.stats.superseded += 1
            self._fail(stale, Superseded())
        self._queued_partials[stream_key] = job

    def _withdraw(self, job: Job) -> None:
        """A waiter gave up; a queued job nobody waits for any more is dropped."""
        with self._cond:
            job.waiters -= 1
            if job.waiters <= 0 and job in self._queue:
                self._remove_queued(job)
                job.future.cancel()

    def _remove_queued(self, job: Job) -> None:
        if job in self._queue:
            self._queue.remove(job)
            self._queue_depth_changed()
        if self._queued_partials.get(job.stream_key) is job:
            del self._queued_partials[job.stream_key]
        if job.key is not None and self._in_flight.get(job.key) is job:
            del self._in_flight[job.key]

    # --- workers ---------------------------------------------------------------------

    def _work(self, on_start: Callable[[], None] | None = None) -> None:
        if on_start is not None:
            on_start()
        while True:
            batch: list[Job] = []
            over_budget = False
            try:
                with self._cond:
                    while not self.closed and not self._can_take():
                        # Over-budget work may wait for its turn: look again when it may.
                        self._cond.wait(None if not self._queue else 0.05)
                    if self.closed:
                        return
                    batch = self._take_batch()
                    over_budget = self._yields(batch[0], time.perf_counter())
                    self._running += len(batch)
                    self._running_over_budget += over_budget
                self._run_batch(batch)
            except Exception as exc:  # never let the worker thread die quietly
                logger.exception("engine worker fault")
                for job in batch:
                    self._fail(job, SttError("transcription_failed", f"the engine failed: {exc}"))
            finally:
                with self._cond:
                    self._running -= len(batch)
                    self._running_over_budget -= over_budget
                    if over_budget:
                        self._cond.notify()

    def _over_budget_may_run(self) -> bool:
        """With several workers, work of streams over their budget never takes the last
        one: it stays free for streams within theirs."""
        return len(self.threads) <= 1 or self._running_over_budget < len(self.threads) - 1

    def _can_take(self) -> bool:
        if not self._queue:
            return False
        if self._over_budget_may_run():
            return True
        now = time.perf_counter()
        return any(not self._yields(job, now) for job in self._queue)

    def _yields(self, job: Job, now: float) -> bool:
        """Whether a queued job yields its place (its stream is over its budget)."""
        return job.kind is not JobKind.FILE and self.is_over_budget(job.stream_key, now)

    def _take_batch(self) -> list[Job]:
        """The most urgent job and queued jobs that can share its inference."""
        now = time.perf_counter()
        self._queue.sort(key=lambda j: j.order(now, self._yields(j, now)))
        first = self._queue[0]
        if not self._over_budget_may_run():
            first = next(job for job in self._queue if not self._yields(job, now))
        batch = [first]
        self._remove_queued(first)
        self._materialize(first)
        for job in list(self._queue):
            if len(batch) >= self.batch_limit.current:
                break
            if batch_group(job.kind) != batch_group(first.kind):
                continue
            if job.options.batch_key != first.options.batch_key:
                continue
            fresh = job.audio is None
            self._materialize(job)
            if self._bucket(job) == self._bucket(first):
                self._remove_queued(job)
                batch.append(job)
            elif fresh:
                # Not taken: forget the snapshot, so it reads the latest audio when it runs.
                job.audio = job.key = None
        for job in batch:
            if job.key is not None and job.key not in self._in_flight:
                self._in_flight[job.key] = job  # joinable while it runs
        return batch

    def _materialize(self, job: Job) -> None:
        if job.audio is None:
            self._snapshot(job, job.source() if callable(job.source) else job.source)

    @staticmethod
    def _snapshot(job: Job, audio: np.ndarray) -> None:
        job.audio = np.ascontiguousarray(audio, dtype=np.float32)
        job.key = (digest(job.audio), job.options.cache_key)

    def _bucket(self, job: Job) -> int | None:
        return bucket(job.audio, self._min_window)

    def _run_batch(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        todo = [job for job in batch if self._needs_the_model(job, started)]
        if not todo:
            return
        with self._cond:
            admissions = [admission for job in todo for admission in job.admissions]
        try:
            results = self._decode(todo)
        except Exception as exc:
            logger.exception("inference failed")
            self.load.record_batch(self._on_final_path(todo, started), time.perf_counter() - started)
            self.stats.failures += 1
            self._report(Verdict.FAILED, admissions)
            for job in todo:
                self._fail(job, SttError("transcription_failed", f"the model failed: {exc}"))
            return
        elapsed = time.perf_counter() - started
        self.load.record_batch(self._on_final_path(todo, started), elapsed)
        self.stats.batches += 1
        self.stats.last_inference_at = time.monotonic()
        self._report(Verdict.WORKED, admissions)
        self.batch_limit.clean_batch()
        self.stats.fallbacks += sum(1 for result in results if result.redone)
        for job, result in zip(todo, results):
            audio_seconds = job.audio.size / SAMPLE_RATE
            self.stats.inferences += 1
            self.stats.audio_seconds += audio_seconds
            self.stats.inference_seconds += elapsed / len(todo)
            self.stats.count_kind(job.kind.name.lower(), 1, elapsed / len(todo))
            transcript = Transcript(result.text, result.words, result.pieces, result.language,
                                    result.confidence, audio_seconds, started - job.enqueued_at, elapsed,
                                    batch_size=len(todo), prefix_forced=result.prefix_forced,
                                    window_seconds=self._bucket(job), suspicious=result.suspicious)
            self._cache.put(job.key, transcript)
            self._finish(job, transcript)

    def _on_final_path(self, batch: list[Job], now: float) -> bool:
        """Whether a batch's decode time is final-path load (what admission protects):
        finals and speculative finals, unless every one is of a stream over its budget
        (that work yields, like partials)."""
        if batch[0].kind is JobKind.PARTIAL:
            return False
        return not all(self.is_over_budget(job.stream_key, now) for job in batch)

    def _needs_the_model(self, job: Job, started: float) -> bool:
        """Start a taken job; False when it needs no decode (withdrawn meanwhile, or
        answered here from the cache or, for digital silence, with no text)."""
        if not job.future.set_running_or_notify_cancel():
            return False
        job.started, job.started_at = True, started
        cached = self._cache.get(job.key)
        if cached is not None:
            self.stats.cache_hits += 1
            self._finish(job, replace(cached, cached=True, queue_seconds=started - job.enqueued_at))
        elif is_silent(job.audio):
            self._finish(job, Transcript("", (), (), job.options.language, 0.0, job.audio.size / SAMPLE_RATE,
                                         started - job.enqueued_at, 0.0))
        else:
            return True
        return False

    def _finish(self, job: Job, transcript: Transcript) -> None:
        self._settle(job, lambda: job.future.set_result(transcript))

    def _fail(self, job: Job, error: Exception) -> None:
        self._settle(job, lambda: job.future.set_exception(error))

    def _settle(self, job: Job, complete: Callable[[], None]) -> None:
        """Answer a job's waiters. Admissions a decode verdict has not settled are
        settled here with none, before anyone is told."""
        with self._cond:
            if job.key is not None and self._in_flight.get(job.key) is job:
                del self._in_flight[job.key]
            admissions = list(job.admissions)
        self._report(Verdict.NONE, admissions)
        if not job.future.done():
            complete()
