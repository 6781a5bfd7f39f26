"""Circuit breaker: stop calling a failing dependency for a while, then probe it."""

from __future__ import annotations

import threading
import time
from enum import Enum
from typing import Callable


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """closed -> open after `failure_threshold` consecutive failures; open -> half-open
    after `reset_seconds`; half-open lets one call through: success closes, failure
    opens again."""

    def __init__(
        self,
        name: str,
        failure_threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self._on_change = on_change  # (breaker name, new state), e.g. to a metric
        self.failure_threshold = max(1, failure_threshold)
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._advance()
            return self._state

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        with self._lock:
            self._advance()
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.reset_seconds - self._clock())

    def admit(self) -> str | None:
        """Admit a call: "call" while closed, "probe" for the one call a half-open
        breaker lets through, None when refused."""
        with self._lock:
            self._advance()
            if self._state is BreakerState.CLOSED:
                return "call"
            if self._state is BreakerState.HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return "probe"
            return None

    def allow(self) -> bool:
        """Whether a call may proceed now; in half-open, only one probe at a time."""
        return self.admit() is not None

    def release_probe(self) -> None:
        """The probe ended with no verdict on the dependency (it was cancelled): let
        the next call probe instead. Only the caller admitted as the probe calls this."""
        with self._lock:
            self._probe_in_flight = False

    def record_success(self) -> None:
        with self._lock:
            if self._state is BreakerState.OPEN:
                return  # a call admitted before the breaker opened: stale news
            self._set(BreakerState.CLOSED)
            self._consecutive_failures = 0
            self._probe_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive_failures += 1
            self._probe_in_flight = False
            if self._state is BreakerState.OPEN:
                return  # already open: the reset time is not extended
            if self._state is BreakerState.HALF_OPEN or self._consecutive_failures >= self.failure_threshold:
                self._set(BreakerState.OPEN)
                self._opened_at = self._clock()

    def _advance(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() >= self._opened_at + self.reset_seconds:
            self._set(BreakerState.HALF_OPEN)
            self._probe_in_flight = False

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(self.name, state.value)
