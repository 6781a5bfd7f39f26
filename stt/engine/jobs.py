"""The scheduler's parts: a queued job and its rank, the result cache, the batch size
limit, and a request's admission through the transcription breaker."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from stt.engine.types import AudioSource, DecodeOptions, JobKind, Transcript

# Seconds after which a queued partial ranks with speculative finals, then with finals,
# so partials keep coming (at least every second) when many streams end utterances
# at once. Finals have slack: the end-of-utterance silence already hides part of them.
PARTIAL_PATIENCE = (0.3, 0.6)
# Seconds after which a queued chunk of an uploaded file ranks with partials (never
# higher): live work always goes first, yet a file moves on while streams keep the
# model busy, taking turns like one more stream's partials.
FILE_PATIENCE = 2.0
# A stream over its audio budget (a client pushing audio faster than real time) has its
# jobs ranked below every live stream's, just above files' chunks (ORDER_OVER_BUDGET),
# for this long after they were queued: its work yields to streams within their budget
# yet is never starved (after that its jobs rank as their kind).
OVER_BUDGET_PATIENCE = 2.0
ORDER_OVER_BUDGET = int(JobKind.PARTIAL) + 0.5
# After an out-of-memory error halved the batch, this many clean batches double it
# again (up to the configured size).
BATCH_REGROW_AFTER = 200


class Verdict(Enum):
    """What an answer says about the model."""

    WORKED = "worked"  # the model decoded it
    FAILED = "failed"  # the model raised, or hung
    NONE = "none"  # answered without the model (cache, silence), or not answered at all


class Admission:
    """One request's pass through the transcription breaker: a plain call, or the one
    probe a half-open breaker lets through. Settled exactly once."""

    def __init__(self, probe: bool) -> None:
        self.probe = probe
        self._settled = False
        self._lock = threading.Lock()

    def settle(self) -> bool:
        """Mark it settled; True the first time only."""
        with self._lock:
            first, self._settled = not self._settled, True
            return first


@dataclass(eq=False)
class Job:
    kind: JobKind
    sequence: int
    source: AudioSource
    options: DecodeOptions
    future: Future
    enqueued_at: float
    stream_key: Any = None
    audio: np.ndarray | None = None
    key: tuple | None = None
    waiters: int = 1
    started: bool = False  # a worker took it (a timeout before that is overload, not a fault)
    started_at: float | None = None  # time.perf_counter() when a worker took it
    admissions: list[Admission] = field(default_factory=list)  # of the requests waiting on it

    def order(self, now: float, over_budget: bool = False) -> tuple[float, int]:
        """Its place in the queue (lowest first); `over_budget`: its stream is over its
        audio budget (see OVER_BUDGET_PATIENCE)."""
        rank: float = int(self.kind)
        if over_budget and self.kind is not JobKind.FILE and now - self.enqueued_at <= OVER_BUDGET_PATIENCE:
            return (ORDER_OVER_BUDGET, self.sequence)
        if self.kind is JobKind.FILE:
            if now - self.enqueued_at > FILE_PATIENCE:
                rank = int(JobKind.PARTIAL)
        elif self.kind is JobKind.PARTIAL:
            # A partial that has waited long climbs: level with speculative finals, then
            # with finals (older jobs first), so a stream's partials never stall.
            waited = now - self.enqueued_at
            if waited > PARTIAL_PATIENCE[1]:
                rank = int(JobKind.FINAL)
            elif waited > PARTIAL_PATIENCE[0]:
                rank = int(JobKind.SPECULATIVE)
        return (rank, self.sequence)


class OverBudgetStreams:
    """Streams over their audio budget, and until when (the scheduler's clock)."""

    def __init__(self) -> None:
        self._until: dict[Any, float] = {}

    def mark(self, stream_key: Any, seconds: float, now: float) -> None:
        if len(self._until) > 64:  # forget streams whose time ran out
            self._until = {key: until for key, until in self._until.items() if until > now}
        self._until[stream_key] = max(self._until.get(stream_key, 0.0), now + seconds)

    def holds(self, stream_key: Any, now: float) -> bool:
        until = self._until.get(stream_key) if stream_key is not None else None
        return until is not None and until > now


def batch_group(kind: JobKind) -> str:
    """Jobs share an inference only within their group: a partial never delays a final,
    and a file's chunk never rides along with (and slows) a live final."""
    if kind is JobKind.PARTIAL:
        return "partial"
    return "file" if kind is JobKind.FILE else "final"


class ResultCache:
    """The latest `size` transcripts by (audio digest, options); 0 keeps none."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple, Transcript] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Transcript | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, value: Transcript) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def digest(audio: np.ndarray) -> bytes:
    return hashlib.blake2b(audio.tobytes(), digest_size=16).digest()


class BatchLimit:
    """How many jobs may share one inference: the full size once the model is loaded,
    halved by a CUDA out-of-memory error, doubled again after BATCH_REGROW_AFTER clean
    batches (the error was a spike)."""

    def __init__(self) -> None:
        self.current = self.full = 1
        self._clean_batches = 0  # batches decoded since the last out-of-memory

    def set_full(self, size: int) -> None:
        self.current = self.full = size

    def clean_batch(self) -> None:
        self._clean_batches += 1
        if self._clean_batches >= BATCH_REGROW_AFTER and self.current < self.full:
            self.current = min(self.full, self.current * 2)
            self._clean_batches = 0

    def out_of_memory(self, batch_size: int) -> None:
        self._clean_batches = 0
        self.current = max(1, min(self.current, batch_size // 2))
