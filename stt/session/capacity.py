"""Admission by measured capacity: a process that can no longer keep its sessions'
finals within bounds refuses new sessions (1013, `capacity_exhausted` with
`retry_after`), and its /health says `ready: false`, so that the load balancer or the
client goes to another process. Sessions already admitted are never touched.

The judgement rests on the engine's own measurements (stt/engine/load.py) over a
sliding window, not on a connection count:

- **Measured.** The engine's finals p95 (request to answer: queue wait and decode) over
  the window, once it holds `min_finals` finals, above `final_p95_bound`: the process
  is already late, it takes no one else.
- **Predicted.** Each session's demand on the final path: final-path decode seconds
  per session-second lived in the window, not counting each session's first
  `warmup_seconds` (a new session has not spoken yet: counting it would make the
  others look cheaper). The next session would bring the engine to
  (sessions + 1) x demand / workers; above `max_load`, it is refused. Partials do not
  count: they are elastic (under load a stream's partials come less often), but the
  load left to them is reported.
- **Before anything is measured**, a session's demand is taken to be `prior_demand`
  (a fresh process, or one that never saw a final): clients that connect together to
  an idle process are admitted up to what that prior predicts (max_load x workers /
  prior_demand, 8 on two workers with the defaults), not one per warmup. Until
  2026-12 a slow start admitted one session per warmup there, and refused 3 of 4
  clients that connected together to an idle server (issue 24 #4).
- **Over budget.** A session pushing audio faster than its audio budget
  (stt/session/budget.py) is slowed, and its decodes rank below other sessions' (the
  scheduler's over-budget rank); its work is elastic like partials. It is left out of
  the session count, of the session-seconds and (by the engine's meter) of the finals
  and final-path load that protect the others: a flooding client never locks out a
  real-time one.

The demand figure is kept after the window empties or goes silent (the last one
measured), so a quiet process remembers what a session costs. A process without
sessions always admits one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from django.conf import settings

from stt.engine.load import LoadFigures
from stt.errors import SttError


# Session-seconds past their warmup, in warmups, before a demand is measured from them:
# over the first ones it came out about three times its steady value (bench/capacity.py).
TRUSTED_WARMUPS = 3


@dataclass(frozen=True)
class CapacityPolicy:
    enabled: bool = True
    final_p95_bound: float = 0.8  # seconds, the engine's part of a final (request to answer)
    max_load: float = 0.25  # final-path decode seconds per wall second per worker
    min_finals: int = 8  # finals in the window before their p95 counts
    warmup_seconds: float = 5.0  # a session's first seconds, not counted in its demand
    prior_demand: float = 0.06  # a session's demand until one is measured
    retry_after: float = 5.0  # told to refused clients

    @classmethod
    def from_settings(cls) -> "CapacityPolicy":
        return cls(enabled=settings.CAPACITY_ADMISSION, final_p95_bound=settings.CAPACITY_FINAL_P95_BOUND,
                   max_load=settings.CAPACITY_MAX_LOAD, min_finals=settings.CAPACITY_MIN_FINALS,
                   warmup_seconds=settings.CAPACITY_WARMUP_SECONDS, prior_demand=settings.CAPACITY_PRIOR_DEMAND,
                   retry_after=settings.CAPACITY_RETRY_AFTER)


@dataclass(frozen=True)
class CapacityVerdict:
    """Whether the next session would be admitted, and the figures behind it."""

    full: bool
    reasons: tuple[str, ...]
    sessions: int  # within their audio budget (over-budget ones are elastic load)
    demand_per_session: float | None  # final-path decode seconds per session-second, measured
    projected_load: float | None  # with one more session (at the prior demand until one is measured)
    figures: LoadFigures | None
    retry_after: float
    over_budget: int = 0  # live sessions over their audio budget, not in `sessions`

    def as_dict(self) -> dict[str, Any]:
        return {
            "full": self.full,
            "reasons": list(self.reasons),
            "sessions": self.sessions,
            "over_budget_sessions": self.over_budget,
            "demand_measured": self.demand_per_session is not None,
            "demand_per_session": None if self.demand_per_session is None else round(self.demand_per_session, 4),
            "projected_load": None if self.projected_load is None else round(self.projected_load, 4),
            "retry_after": self.retry_after if self.full else None,
            **({"engine": self.figures.as_dict()} if self.figures is not None else {}),
        }


class SessionTimes:
    """When each live session joined, and the lifetimes of those that left within the
    window: the session-seconds lived in it. Sessions over their audio budget are left
    out while they are."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._live: dict[Any, float] = {}
        self._gone: deque[tuple[float, float]] = deque()  # (joined, left)
        self._over_budget: dict[Any, float] = {}  # live sessions over their budget, until when

    def joined(self, token: Any) -> None:
        self._live[token] = self._clock()

    def left(self, token: Any) -> None:
        joined = self._live.pop(token, None)
        over_budget_until = self._over_budget.pop(token, 0.0)
        if joined is not None and over_budget_until <= self._clock():  # a flood's lifetime is not demand
            self._gone.append((joined, self._clock()))

    def over_budget(self, token: Any, seconds: float) -> None:
        if token in self._live:
            self._over_budget[token] = self._clock() + seconds

    def _within_budget(self) -> dict[Any, float]:
        now = self._clock()
        return {token: joined for token, joined in self._live.items() if self._over_budget.get(token, 0.0) <= now}

    @property
    def count(self) -> int:
        """Live sessions within their audio budget."""
        return len(self._within_budget())

    @property
    def over_budget_count(self) -> int:
        return len(self._live) - self.count

    def lived(self, window: float, skip: float) -> float:
        """Session-seconds within the last `window` seconds, each session's first `skip`
        seconds left out (and live sessions over their budget)."""
        now = self._clock()
        start = now - window
        while self._gone and self._gone[0][1] < start:
            self._gone.popleft()
        spans = [(joined, now) for joined in self._within_budget().values()] + list(self._gone)
        return sum(max(0.0, left - max(start, joined + skip)) for joined, left in spans)


class CapacityGate:
    """The process's admission by capacity. The session calls `joined`/`left` as it is
    admitted and finished; `verdict()` says whether another would be (also for
    /health), `refusal()` the error that turns it away."""

    def __init__(self, figures: Callable[[], LoadFigures | None],
                 policy: Callable[[], CapacityPolicy] = CapacityPolicy.from_settings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._figures = figures
        self._policy = policy
        self._times = SessionTimes(clock)
        self._demand: float | None = None
        self._lock = threading.Lock()

    def joined(self, token: Any) -> None:
        with self._lock:
            self._times.joined(token)

    def left(self, token: Any) -> None:
        with self._lock:
            self._times.left(token)

    def over_budget(self, token: Any, seconds: float) -> None:
        """The session is over its audio budget for the next `seconds` (see the module)."""
        with self._lock:
            self._times.over_budget(token, seconds)

    def verdict(self) -> CapacityVerdict:
        policy = self._policy()
        figures = self._figures()
        with self._lock:
            sessions, over_budget = self._times.count, self._times.over_budget_count
            if figures is not None and figures.span_seconds > 0:
                lived = self._times.lived(figures.span_seconds, policy.warmup_seconds)
                # A measure once sessions have lived past their warmup long enough
                # (the first seconds after a warmup cost more: a session's first
                # utterances close then) and the final path did some work; a silent
                # window keeps the last one.
                if lived >= TRUSTED_WARMUPS * policy.warmup_seconds and figures.final_busy_seconds > 0:
                    self._demand = figures.final_busy_seconds / lived
            demand = self._demand
        projected = None
        if figures is not None:
            assumed = policy.prior_demand if demand is None else demand
            projected = (sessions + 1) * assumed / figures.workers
        reasons: list[str] = []
        # An idle process always takes a session: nothing to protect, and refusing on
        # stale figures (or a demand larger than the bound) would leave it unused.
        if policy.enabled and figures is not None and sessions > 0:
            reasons = self._reasons(policy, figures, projected, measured=demand is not None)
        return CapacityVerdict(bool(reasons), tuple(reasons), sessions, demand, projected, figures,
                               policy.retry_after, over_budget)

    @staticmethod
    def _reasons(policy: CapacityPolicy, figures: LoadFigures, projected: float | None,
                 measured: bool) -> list[str]:
        reasons = []
        p95 = figures.final_p95_seconds
        if p95 is not None and figures.finals >= policy.min_finals and p95 > policy.final_p95_bound:
            reasons.append(f"finals p95 {p95:.2f} s is over the bound of {policy.final_p95_bound:g} s")
        if projected is not None and projected > policy.max_load:
            basis = "" if measured else f", at the {policy.prior_demand:g} assumed before a session is measured"
            reasons.append(f"one more session would load the engine to {projected:.0%} "
                           f"(bound {policy.max_load:.0%}{basis})")
        return reasons

    def refusal(self) -> SttError | None:
        """The error to refuse a new session with, or None to admit it."""
        verdict = self.verdict()
        if not verdict.full:
            return None
        return SttError("capacity_exhausted", "this server process is at capacity: " + "; ".join(verdict.reasons),
                        retry_after=verdict.retry_after)
