"""The parts this server process gives each session (the consumer's wiring) and the file API."""

from __future__ import annotations

import functools
import time

from django.conf import settings

from monitoring.metrics import SessionMetrics
from monitoring.registry import registry
from stt.auth import rate_limiter
from stt.engine import SpeechEngine, get_engine
from stt.liveness import current_server_id
from stt.openai_api.catalog import ModelCatalog
from stt.openai_api.services import FileApiServices
from stt.openai_api.transcriber import FileSettings, FileTranscriber
from stt.persistence import history
from stt.runtime_config import store as runtime_store
from stt.session import SessionServices
from stt.engine.load import LoadFigures
from stt.session.budget import AudioBudget
from stt.session.capacity import CapacityGate
from stt.streaming.transcriber import segmenter_pool


@functools.cache
def _audio_budget() -> AudioBudget:
    return AudioBudget(lambda: settings.AUDIO_BUDGET_PER_SESSION)


def _engine_load() -> LoadFigures | None:
    engine = get_engine()  # looked up each time: tests replace the process's engine
    return engine.load.figures() if engine.loaded else None


@functools.cache
def process_capacity_gate() -> CapacityGate:
    """This process's admission by capacity (its policy read from settings each time)."""
    return CapacityGate(_engine_load)


def process_session_services(engine: SpeechEngine | None = None) -> SessionServices:
    """This process's services; `engine` defaults to the process's engine (get_engine),
    looked up on each call so that a replaced engine (tests) is the one sessions get."""
    return SessionServices(engine=engine or get_engine(), history=history, registry=registry,
                           rate_limiter=rate_limiter, audio_budget=_audio_budget(),
                           runtime=runtime_store, metrics=SessionMetrics(),
                           segmenter_executor=segmenter_pool(), server_id=current_server_id(),
                           capacity=process_capacity_gate())


@functools.cache
def _started_at() -> int:
    return int(time.time())


def _file_settings() -> FileSettings:
    return FileSettings(chunk_seconds=settings.FILE_CHUNK_SECONDS, store_audio=settings.STORE_AUDIO,
                        retries=settings.STT_FINAL_RETRIES, retry_base_delay=settings.STT_RETRY_BASE_DELAY,
                        server_id=current_server_id())


def process_model_catalog() -> ModelCatalog:
    """The model names the OpenAI-compatible endpoints answer to (file API and realtime)."""
    return ModelCatalog.from_settings(settings.STT_MODEL, settings.OPENAI_MODEL_ALIASES, _started_at())


def process_file_services(engine: SpeechEngine | None = None) -> FileApiServices:
    """The file API's services: the process's engine (looked up on each call, like
    process_session_services) and history, and the model names from the settings."""
    return FileApiServices(FileTranscriber(engine or get_engine(), history, _file_settings), process_model_catalog())
