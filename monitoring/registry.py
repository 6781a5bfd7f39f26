"""The live sessions of this server process and the figures behind /stats."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Iterable, Protocol

from monitoring import metrics

CONNECTION_STATES = ("connecting", "active", "processing", "buffering", "disconnecting", "error")
_LATENCY_WINDOW = 2000  # most recent latencies kept for averages and percentiles


class TrackedSession(Protocol):
    connection_id: str

    @property
    def state(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    def stats_entry(self) -> dict[str, Any]: ...

    @property
    def current_utterance_id(self) -> str | None: ...


def percentile(values: Iterable[float], fraction: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def _key_of(session: TrackedSession) -> int | None:
    return getattr(getattr(session, "principal", None), "key_id", None)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class SessionRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, TrackedSession] = {}
        # Connections accepted but not yet admitted, in arrival order: admission awaits
        # the runtime values, so a later connection can reach its limits check first.
        # Counting those ahead of it keeps the limits first come, first served.
        self._arriving: dict[str, TrackedSession] = {}
        self.started_at = time.time()
        self.draining = False  # shutting down: new connections are turned away
        self.total_connections = 0
        self.rejected_connections = 0
        self.utterances_processed = 0
        self.partial_latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.final_latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)

    def arrive(self, session: TrackedSession) -> None:
        """A connection joins the line for admission (before anything is awaited)."""
        with self._lock:
            self._arriving[session.connection_id] = session

    def leave_line(self, session: TrackedSession) -> None:
        """Admitted or refused: no longer ahead of anyone."""
        with self._lock:
            self._arriving.pop(session.connection_id, None)

    def _ahead_of(self, session: TrackedSession) -> list[TrackedSession]:
        ahead = []
        for connection_id, waiting in self._arriving.items():
            if connection_id == session.connection_id:
                return ahead
            ahead.append(waiting)
        return []  # not in line: nobody is ahead

    def try_register(self, session: TrackedSession, limit: int) -> bool:
        """Register a new connection unless `limit` connections are already live or
        ahead of it in line."""
        with self._lock:
            if len(self._live) + len(self._ahead_of(session)) >= limit:
                self.rejected_connections += 1
                metrics.connections_rejected.inc()
                return False
            self._live[session.connection_id] = session
            self.total_connections += 1
            metrics.connections_total.inc()
            metrics.connections_active.set(len(self._live))
            return True

    def count_rejection(self) -> None:
        """A connection turned away before registering (the process is at capacity)."""
        with self._lock:
            self.rejected_connections += 1
        metrics.connections_rejected.inc()

    def unregister(self, session: TrackedSession) -> None:
        with self._lock:
            self._live.pop(session.connection_id, None)
            metrics.connections_active.set(len(self._live))

    def record_partial(self, latency_seconds: float) -> None:
        metrics.partial_latency.observe(latency_seconds)
        with self._lock:
            self.partial_latencies.append(latency_seconds)

    def record_final(self, latency_seconds: float, real_time_factor: float | None = None) -> None:
        metrics.final_latency.observe(latency_seconds)
        metrics.utterances_total.inc()
        if real_time_factor is not None:
            metrics.real_time_factor.observe(real_time_factor)
        with self._lock:
            self.final_latencies.append(latency_seconds)
            self.utterances_processed += 1

    def sessions_of_key(self, key_id: int, counting_ahead_of: TrackedSession | None = None) -> int:
        """Live connections acting for one API key, plus those in line ahead of
        `counting_ahead_of`."""
        with self._lock:
            ahead = self._ahead_of(counting_ahead_of) if counting_ahead_of is not None else []
            return sum(1 for s in [*self._live.values(), *ahead] if _key_of(s) == key_id)

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._live)

    def sessions(self) -> list[TrackedSession]:
        with self._lock:
            return list(self._live.values())

    def snapshot(self, of_key: int | None = None) -> dict[str, Any]:
        """The design document's "Enhanced Connection Statistics" for this process. With
        `of_key`, `processing_stats` lists that API key's sessions only (a tenant sees no
        other tenant's ids); the counts and latency figures stay the process's (no ids in
        them, and `/` and `/ready` show the connection count publicly anyway)."""
        sessions = self.sessions()
        listed = sessions if of_key is None else [s for s in sessions if _key_of(s) == of_key]
        by_state = {state: 0 for state in CONNECTION_STATES}
        for session in sessions:
            by_state[session.state] = by_state.get(session.state, 0) + 1
        with self._lock:
            partial = list(self.partial_latencies)
            final = list(self.final_latencies)
            processed = self.utterances_processed
        return {
            "active_connections": len(sessions),
            "total_connections": self.total_connections,
            "rejected_connections": self.rejected_connections,
            "connections_by_state": by_state,
            # Keyed by the server's id: clients may pick the same session_id (the entry's label).
            "processing_stats": {s.connection_id: s.stats_entry() for s in listed},
            "processing_stats_scope": "process" if of_key is None else "api_key",
            "performance_metrics": {
                "avg_partial_latency_ms": _ms(_mean(partial)),
                "avg_final_latency_ms": _ms(_mean(final)),
                "p95_partial_latency_ms": _ms(percentile(partial, 0.95)),
                "p95_final_latency_ms": _ms(percentile(final, 0.95)),
                "total_utterances_processed": processed,
                "active_utterances": sum(1 for s in sessions if s.current_utterance_id),
            },
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }


registry = SessionRegistry()
