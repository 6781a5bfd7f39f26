"""The speech engine: one model, its scheduler and its breakers, behind a small API.

  await engine.ready()                  load the model (once, in a thread)
  await engine.transcribe(audio, opts)  queue an inference, get a Transcript
  engine.prefetch(audio, opts)          start an inference whose result may be asked for soon
  engine.cancel_stream(key)             drop a stream's queued work (barge-in)

It takes its settings as constructor arguments; stt/engine/holder.py builds the
process's engine from Django settings.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

from monitoring import metrics
from stt.engine.breaker import CircuitBreaker
from stt.engine.decoding import DEFAULT_MIN_WINDOW, Decoded, decode_batch
from stt.engine.gpu import GpuGuard
from stt.engine.jobs import BatchLimit, Job
from stt.engine.load import LoadMeter
from stt.engine.loading import LoadedModel, ModelFactory, ModelLoader, create_model, inference_layout, pick_device
from stt.engine.scheduler import Scheduler
from stt.engine.types import AudioSource, DecodeOptions, EngineInfo, EngineStats, JobKind, Transcript
from stt.errors import SttError

logger = logging.getLogger(__name__)


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
        min_window_seconds: float = DEFAULT_MIN_WINDOW,
        transcription_timeout: float | Callable[[], float] = 30.0,
        model_factory: ModelFactory = create_model,
        load_window_seconds: float = 30.0,
        background_workers: int = 0,
    ) -> None:
        """`transcription_timeout` is seconds, or a callable read at each request (the
        process engine follows STT_TRANSCRIPTION_TIMEOUT as it changes). `model_factory`
        builds the faster-whisper model for a path, device and compute type.
        `load_window_seconds`: the span of the load figures (`load`, stt/engine/load.py).
        `workers` and `cpu_threads` of 0 are chosen for the device (inference_layout).
        `background_workers` > 0: on a CPU, chunks of uploaded files (JobKind.FILE) run
        on a copy of the model of their own, with that many workers whose compute threads
        run at the background CPU priority (nice +10, stt/engine/priority.py), so they
        yield the cores to live streams; 0, or a GPU: they queue below live work on the
        model's own workers."""
        self.model_reference = model
        self.workers, self.cpu_threads = inference_layout(pick_device(device), workers, cpu_threads,
                                                          os.cpu_count() or 1)
        self.requested_max_batch = max_batch
        self.transcription_breaker = CircuitBreaker(
            "transcription", transcription_failure_threshold, transcription_reset_seconds,
            on_change=_breaker_changed,
        )
        self.gpu_breaker = CircuitBreaker("gpu", gpu_failure_threshold, gpu_reset_seconds,
                                          on_change=_breaker_changed)
        for breaker in (self.transcription_breaker, self.gpu_breaker):
            metrics.set_breaker_state(breaker.name, breaker.state.value)
        self.stats = EngineStats()
        self._min_window = min_window_seconds
        self._batch_limit = BatchLimit()
        self._loaded: LoadedModel | None = None
        self._gpu_guard: GpuGuard | None = None
        self._loader = ModelLoader(model, device, compute_type, self.cpu_threads, self.workers,
                                   model_factory, self._start_serving)
        timeout = transcription_timeout if callable(transcription_timeout) else (lambda: transcription_timeout)
        self.load = LoadMeter(self.workers, load_window_seconds)
        self.scheduler = Scheduler(self._decode, self.transcription_breaker, self.stats, self._batch_limit,
                                   cache_size, min_window_seconds, timeout, self.load)
        self.background_workers = max(0, background_workers)
        self.background: Scheduler | None = None  # the uploads' lane, once serving on a CPU
        # The uploads' lane has a breaker of its own: a chunk that runs past its time limit
        # because live streams took the CPU is not a failure of the live model.
        self.background_breaker = CircuitBreaker("background_transcription", transcription_failure_threshold,
                                                 transcription_reset_seconds, on_change=_breaker_changed)
        self._background = self._uploads_lane(cache_size, timeout, load_window_seconds)

    def _uploads_lane(self, cache_size: int, timeout: Callable[[], float],
                      load_window_seconds: float) -> Scheduler | None:
        """The scheduler of the uploads' lane (its workers start with serving on a CPU);
        None without background workers."""
        if not self.background_workers:
            return None
        batch_limit = BatchLimit()
        batch_limit.set_full(self.background_workers)
        return Scheduler(self._decode_in_background, self.background_breaker, self.stats, batch_limit, cache_size,
                         self._min_window, timeout, LoadMeter(self.background_workers, load_window_seconds),
                         publish_queue_depth=False)

    def set_failure_thresholds(self, transcription: int, gpu: int) -> None:
        """Breaker thresholds from the runtime configuration (they change at run time)."""
        self.transcription_breaker.failure_threshold = max(1, transcription)
        self.background_breaker.failure_threshold = max(1, transcription)
        self.gpu_breaker.failure_threshold = max(1, gpu)

    # --- loading -----------------------------------------------------------------

    @property
    def info(self) -> EngineInfo | None:
        return self._loaded.info if self._loaded is not None else None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def load_error(self) -> BaseException | None:
        return self._loader.error

    @property
    def loading(self) -> bool:
        """The model is being loaded now (not before the first start_loading or session)."""
        return self._loader.loading

    def start_loading(self) -> Future:
        """Begin loading in a background thread (idempotent); a failed load is retried."""
        return self._loader.start()

    async def ready(self, timeout: float | None = None) -> EngineInfo:
        """The loaded model's info, loading it first if needed; SttError if it cannot load."""
        return await self._loader.ready(timeout)

    def tokenizer(self, language: str | None) -> Any:
        """The model's tokenizer set up for `language` (English for English-only models)."""
        assert self._loaded is not None
        return self._loaded.tokenizer(language)

    def _start_serving(self, loaded: LoadedModel) -> None:
        self._loaded = loaded
        on_gpu = loaded.info.device == "cuda"
        # A GPU batches far more before it saturates than two CPU cores do.
        self._batch_limit.set_full(self.requested_max_batch or (16 if on_gpu else 4))
        if on_gpu:
            self._gpu_guard = GpuGuard(self._decode_on_gpu, self._decode_on_cpu, self.gpu_breaker,
                                       self._batch_limit, self.stats)
        self.scheduler.start(self.workers)
        if self._background is not None and not on_gpu:
            self.background = self._background
            self.background.start(self.background_workers, "stt-background-inference")

    # --- requests ------------------------------------------------------------------

    @property
    def max_batch(self) -> int:
        return self._batch_limit.current

    @property
    def queue_depth(self) -> int:
        return self.scheduler.queue_depth

    @property
    def in_flight(self) -> int:
        return self.scheduler.in_flight

    @property
    def finals_waiting(self) -> int:
        return self.scheduler.finals_waiting

    async def transcribe(self, source: AudioSource, options: DecodeOptions, stream_key: Any = None,
                         health_probe: bool = False) -> Transcript:
        """Transcribe 16 kHz mono float32 audio (or a callable giving the latest audio,
        read when a worker takes the job). Raises SttError; raises Superseded when the
        job was replaced by a newer partial of the stream or withdrawn (cancel_stream).
        A health probe bypasses the transcription breaker's admission (it must not
        take the half-open probe slot from a client)."""
        if self.scheduler.closed:
            raise SttError("model_unavailable", "the speech engine is shut down")
        await self.ready()
        lane = self.background if options.kind is JobKind.FILE and self.background is not None else self.scheduler
        return await lane.request(source, options, stream_key, health_probe)

    def prefetch(self, audio: np.ndarray, options: DecodeOptions, stream_key: Any = None) -> None:
        """Start decoding audio whose result will probably be asked for soon (a final
        while the silence that confirms it is still running out); see Scheduler.prefetch."""
        if self._loaded is None:
            return
        self.scheduler.prefetch(audio, options, stream_key)

    def over_budget(self, stream_key: Any, seconds: float) -> None:
        """The stream is over its audio budget for the next `seconds` (a client pushing
        audio faster than real time): its work ranks below other streams' and is not
        counted as the load admission protects (Scheduler.over_budget)."""
        self.scheduler.over_budget(stream_key, seconds)

    def cancel_stream(self, stream_key: Any) -> int:
        """Drop the stream's queued partials and speculative finals; returns how many."""
        return self.scheduler.cancel_stream(stream_key)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers and release the model.

        Waits for inferences in progress, so that the model is never destroyed under a
        running inference (CTranslate2 aborts the process if it is).
        """
        stopped = self.scheduler.close(timeout)
        if self.background is not None:
            stopped = self.background.close(timeout) and stopped
        if stopped and self._loaded is not None:
            self._loaded.release()  # else leave it to the process exit

    # --- decoding ------------------------------------------------------------------

    def _decode(self, jobs: list[Job]) -> list[Decoded]:
        if self._gpu_guard is not None:
            return self._gpu_guard.decode(jobs)
        assert self._loaded is not None
        return self._decode_with(self._loaded.model, jobs, encoder_to_cpu=False)

    def _decode_on_gpu(self, jobs: list[Job]) -> list[Decoded]:
        assert self._loaded is not None
        return self._decode_with(self._loaded.model, jobs, encoder_to_cpu=self.workers > 1)

    def _decode_on_cpu(self, jobs: list[Job]) -> list[Decoded]:
        assert self._loaded is not None
        return self._decode_with(self._loaded.cpu_copy(), jobs, encoder_to_cpu=False)

    def _decode_in_background(self, jobs: list[Job]) -> list[Decoded]:
        assert self._loaded is not None
        return self._decode_with(self._loaded.background_copy(self.background_workers), jobs, encoder_to_cpu=False)

    def _decode_with(self, model: Any, jobs: list[Job], encoder_to_cpu: bool) -> list[Decoded]:
        assert self._loaded is not None
        return decode_batch(model, self._loaded.tokenizer(jobs[0].options.language), jobs,
                            self._loaded.info.multilingual, self._min_window, encoder_to_cpu)


def _breaker_changed(name: str, state: str) -> None:
    metrics.set_breaker_state(name, state)
    logger.warning("circuit breaker %s is now %s", name, state)
