"""The process's engine: one per process, built from Django settings on first use."""

from __future__ import annotations

import atexit
import threading

from django.conf import settings

from stt.engine.speech_engine import SpeechEngine

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
        min_window_seconds=settings.STT_MIN_WINDOW_SECONDS,
        # Read at each request, as before the engine took it as an argument.
        transcription_timeout=lambda: settings.STT_TRANSCRIPTION_TIMEOUT,
        load_window_seconds=settings.CAPACITY_WINDOW_SECONDS,
        background_workers=settings.FILE_ENGINE_JOBS if settings.FILE_SEPARATE_MODEL else 0,
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
