"""What the engine measures of its own load, for the admission of new sessions
(stt/session/capacity.py) and for /health.

Over a sliding window (`window_seconds`), the meter keeps:
- how long each final took the engine, from the request to its answer: queue wait and
  decode, or nothing when a speculative decode had already answered it (cache, join);
- how long the workers were busy decoding, apart for the final path (finals and
  speculative finals, which must keep up) and for partials (which are elastic: under
  load a stream's partials come less often, so they fill whatever time is left).

From these, LoadFigures gives the finals' p50/p95 and the load: decode seconds per
second of wall time per worker. Workers record from their threads, the event loop
reads: everything goes under one lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class LoadFigures:
    """The engine's load over the last `span_seconds` (at most the meter's window)."""

    span_seconds: float
    workers: int
    finals: int  # finals answered within the span
    final_p50_seconds: float | None
    final_p95_seconds: float | None
    final_busy_seconds: float  # decode time of finals and speculative finals
    partial_busy_seconds: float

    @property
    def final_load(self) -> float:
        """Final-path decode seconds per wall second per worker (1.0: always busy with finals)."""
        return self._per_worker(self.final_busy_seconds)

    @property
    def partial_load(self) -> float:
        return self._per_worker(self.partial_busy_seconds)

    def _per_worker(self, seconds: float) -> float:
        return seconds / (self.span_seconds * self.workers) if self.span_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = {key: (round(value, 4) if isinstance(value, float) else value) for key, value in asdict(self).items()}
        return {**data, "final_load": round(self.final_load, 4), "partial_load": round(self.partial_load, 4)}


def quantile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank quantile (0 <= fraction <= 1) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


class LoadMeter:
    """Final latencies and busy time over a sliding window."""

    def __init__(self, workers: int, window_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.workers = max(1, workers)
        self.window_seconds = window_seconds
        self._clock = clock
        self._since = clock()
        self._finals: deque[tuple[float, float]] = deque()  # (answered at, seconds)
        self._batches: deque[tuple[float, bool, float]] = deque()  # (ended at, final path, seconds)
        self._lock = threading.Lock()

    def record_final(self, seconds: float) -> None:
        """A final was answered `seconds` after it was asked for."""
        with self._lock:
            self._finals.append((self._clock(), seconds))
            self._prune(self._clock())

    def record_batch(self, final_path: bool, seconds: float) -> None:
        """A worker decoded a batch for `seconds` (finals or speculative finals when
        `final_path`, else partials)."""
        with self._lock:
            self._batches.append((self._clock(), final_path, seconds))
            self._prune(self._clock())

    def figures(self) -> LoadFigures:
        now = self._clock()
        with self._lock:
            self._prune(now)
            latencies = [seconds for _, seconds in self._finals]
            start = now - self.window_seconds
            busy = {True: 0.0, False: 0.0}
            for ended, final_path, seconds in self._batches:
                busy[final_path] += min(seconds, ended - start)  # the part inside the window
        return LoadFigures(
            span_seconds=min(self.window_seconds, now - self._since), workers=self.workers,
            finals=len(latencies), final_p50_seconds=quantile(latencies, 0.5),
            final_p95_seconds=quantile(latencies, 0.95),
            final_busy_seconds=busy[True], partial_busy_seconds=busy[False])

    def _prune(self, now: float) -> None:
        start = now - self.window_seconds
        while self._finals and self._finals[0][0] < start:
            self._finals.popleft()
        while self._batches and self._batches[0][0] < start:
            self._batches.popleft()
