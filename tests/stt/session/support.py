"""Building sessions for tests: the real parts a test is about, small fakes for the rest."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import numpy as np

from monitoring.registry import SessionRegistry
from stt.auth import RateLimiter
from stt.persistence import Write, history
from stt.runtime_config import RuntimeValues, store as runtime_store
from stt.session import SessionServices, SttSession
from stt.session.budget import AudioBudget
from tests.conftest import frames


class Transport:
    """Stands in for the WebSocket: records what the session sends and how it closes."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, message: dict) -> None:
        json.dumps(message)  # everything sent must be JSON-serializable
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.sent if m["type"] == kind]

    def types(self) -> list[str]:
        return [m["type"] for m in self.sent]

    def errors(self) -> list[dict]:
        return [m["error"] for m in self.of("error")]


class MetricsRecorder:
    """What a session counted."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.started = 0
        self.ended: list[str] = []

    def error_sent(self, category: str, code: str) -> None:
        self.errors.append((category, code))

    def session_started(self) -> None:
        self.started += 1

    def session_ended(self, reason: str) -> None:
        self.ended.append(reason)


class HistoryRecorder:
    """Keeps a session's history writes in memory."""

    def __init__(self) -> None:
        self.writes: list[Write] = []

    def write_later(self, item: Write) -> None:
        self.writes.append(item)

    async def write(self, item: Write) -> None:
        self.writes.append(item)


class SettingsRuntime:
    """The runtime tunables straight from settings (no profiles)."""

    async def values(self, profile: str | None = None) -> RuntimeValues:
        return RuntimeValues.from_settings()


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def session_services(engine: Any, **parts: Any) -> SessionServices:
    """The process's history and runtime store (PostgreSQL), a registry and limiters of
    the test's own, no audio budget (tests push audio at full speed), a metrics recorder;
    `parts` replace any of them."""
    services = SessionServices(engine=engine, history=history, registry=SessionRegistry(),
                               rate_limiter=RateLimiter(), audio_budget=AudioBudget(lambda: 0.0),
                               runtime=runtime_store, metrics=MetricsRecorder(), clock=time.monotonic)
    return replace(services, **parts)


async def open_session(engine: Any, start: bool = True, services: SessionServices | None = None,
                       **config: Any) -> tuple[SttSession, Transport]:
    transport = Transport()
    session = SttSession(transport.send, transport.close, services or session_services(engine),
                         client="127.0.0.1:5000")
    assert await session.open()
    if start:
        await session.on_text(json.dumps({"type": "start_session", "session_config": config}))
    return session, transport


async def feed(session: SttSession, audio: np.ndarray) -> None:
    for frame in frames(audio):
        await session.on_audio(frame)


async def send(session: SttSession, message: dict) -> None:
    await session.on_text(json.dumps(message))
