"""What a session works with, handed to it rather than imported: the engine, the
history, the registry of live sessions, the limiters, the runtime config, the metrics,
the clock and the capacity gate. The server builds one SessionServices per process (stt/services.py);
a test builds its own from real parts and small fakes."""

from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from monitoring.registry import SessionRegistry
from stt.auth import RateLimiter
from stt.engine import SpeechEngine
from stt.runtime_config import RuntimeValues
from stt.session.budget import AudioBudget
from stt.session.capacity import CapacityGate


class HistorySink(Protocol):
    """Where a session's records go (stt.persistence.HistoryWriter)."""

    def write_later(self, item: Any) -> None: ...  # a stt.persistence.Write, queued

    async def write(self, item: Any) -> Any: ...  # written (or journaled) before it returns


class RuntimeSource(Protocol):
    """The tunables of a runtime profile (stt.runtime_config.RuntimeConfigStore)."""

    async def values(self, profile: str | None = None) -> RuntimeValues: ...


class MetricsSink(Protocol):
    """What a session counts (monitoring.metrics.SessionMetrics)."""

    def error_sent(self, category: str, code: str) -> None: ...

    def session_started(self) -> None: ...

    def session_ended(self, reason: str) -> None: ...


@dataclass(frozen=True)
class SessionServices:
    engine: SpeechEngine
    history: HistorySink
    registry: SessionRegistry
    rate_limiter: RateLimiter
    audio_budget: AudioBudget
    runtime: RuntimeSource
    metrics: MetricsSink
    # Where a stream's segmenter (VAD, utterance decisions) runs, off the event loop;
    # None: the process's shared pool (stt.streaming.transcriber.segmenter_pool).
    segmenter_executor: Executor | None = None
    clock: Callable[[], float] = field(default=time.monotonic)
    # The server process's id (stt/liveness.py), written with each session's row.
    server_id: str | None = None
    # Admission by measured capacity (stt/session/capacity.py); None: not judged.
    capacity: CapacityGate | None = None
