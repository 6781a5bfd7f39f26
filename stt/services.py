"""The parts this server process gives each session, built once (the consumer's wiring)."""

from __future__ import annotations

import functools

from django.conf import settings

from monitoring.metrics import SessionMetrics
from monitoring.registry import registry
from stt.auth import rate_limiter
from stt.engine import SpeechEngine, get_engine
from stt.liveness import current_server_id
from stt.persistence import history
from stt.runtime_config import store as runtime_store
from stt.session import SessionServices
from stt.session.budget import AudioBudget
from stt.streaming.transcriber import segmenter_pool


@functools.cache
def _audio_budget() -> AudioBudget:
    return AudioBudget(lambda: settings.AUDIO_BUDGET_PER_SESSION)


def process_session_services(engine: SpeechEngine | None = None) -> SessionServices:
    """This process's services; `engine` defaults to the process's engine (get_engine),
    looked up on each call so that a replaced engine (tests) is the one sessions get."""
    return SessionServices(engine=engine or get_engine(), history=history, registry=registry,
                           rate_limiter=rate_limiter, audio_budget=_audio_budget(),
                           runtime=runtime_store, metrics=SessionMetrics(),
                           segmenter_executor=segmenter_pool(), server_id=current_server_id())
