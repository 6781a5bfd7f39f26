"""The uploads a server process has in hand: admission (per key and per process), their
blocking work on the file pool, and their drain at shutdown.

- An upload is admitted when its key has fewer than FILE_MAX_UPLOADS_PER_KEY (open
  mode has no keys: the process's limit alone) and the process fewer than
  FILE_MAX_UPLOADS uploads in hand; otherwise 429
  `rate_limit_exceeded` with Retry-After (FILE_RETRY_AFTER). While the process drains,
  503 `server_shutting_down` with Retry-After.
- Its slot is held until its request is answered (a streamed one: until its stream
  ends) and its work on the file pool has returned: a decode that hangs keeps its slot,
  so hung work can never take more threads than the limit.
- Its work stops when its client goes away (the view's task is cancelled: the work's
  stop check turns true) and when a decode passes FILE_DECODE_TIMEOUT.
- At SIGTERM (stt/shutdown.py) the uploads in hand are left to finish until shortly
  before the grace period ends; the rest are told to stop and end with an error
  (a plain upload: 503; a streamed one: an `error` event), their history rows closed
  with `server_shutdown`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from django.conf import settings

from stt.audio import DecodeStopped
from stt.openai_api.errors import SERVER_ERROR, ApiError
from stt.openai_api.work import FileWorkPool

logger = logging.getLogger(__name__)

SHUTDOWN_REASON = "server_shutdown"
# What is kept of the grace period for stopping the uploads still running, and for
# their error answers to leave, at most.
STOP_MARGIN_SECONDS = 2.0


@dataclass(frozen=True)
class UploadLimits:
    max_uploads: int  # per process; also the file pool's threads
    max_per_key: int
    decode_timeout: float
    retry_after: float
    engine_jobs: int = 1  # chunks of all uploads in the engine at once


def limits_from_settings() -> UploadLimits:
    return UploadLimits(settings.FILE_MAX_UPLOADS, settings.FILE_MAX_UPLOADS_PER_KEY,
                        settings.FILE_DECODE_TIMEOUT, settings.FILE_RETRY_AFTER, settings.FILE_ENGINE_JOBS)


class UploadStopped(Exception):
    """The upload was ended by the server before its transcript was complete."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UploadTicket:
    """One admitted upload: its stop signals and its slot."""

    def __init__(self, owner: "Uploads", key: Any, decode_timeout: float) -> None:
        self.key = key
        self.decode_timeout = decode_timeout
        self.stopping = asyncio.Event()  # the server ends it (shutdown)
        self.stop_reason: str | None = None
        self.answered = asyncio.Event()  # its request is over
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._stop_work = threading.Event()  # its work in a thread is to stop
        self._working = 0

    def should_stop(self) -> bool:
        """For the work in a thread: true once its client left or the server ends it."""
        return self._stop_work.is_set()

    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        self._stop_work.set()
        self.stopping.set()

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` on the file pool. If the caller is cancelled (its client
        left), the work is told to stop; the slot stays held until it returns."""
        future = self._owner.pool.submit(function, *args)
        self._working += 1
        future.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._work_done))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self._stop_work.set()
            raise

    async def decode(self, decoder: Callable[..., Any], source: Any, max_seconds: float) -> Any:
        """The file decoded on the pool within the decode time limit: ApiError (400
        `decode_timeout`) past it; the decoder is told to stop at its next read."""
        deadline = time.monotonic() + self.decode_timeout
        timed_out = threading.Event()

        def should_stop() -> bool:
            if time.monotonic() > deadline:
                timed_out.set()
            return timed_out.is_set() or self.should_stop()

        work = asyncio.ensure_future(self.run(decoder, source, max_seconds, should_stop))
        try:
            done, _ = await asyncio.wait({work}, timeout=self.decode_timeout + 1.0)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if timed_out.is_set() or not done:
            timed_out.set()
            work.cancel()  # a decoder that does not stop keeps its thread, and the slot
            raise ApiError(400, f"decoding the file took longer than {self.decode_timeout:g} s "
                                "(FILE_DECODE_TIMEOUT)", "decode_timeout", "file")
        try:
            return work.result()
        except DecodeStopped:
            raise UploadStopped(self.stop_reason or "client_disconnected") from None

    def end_request(self) -> None:
        """The request is over (idempotent; from any thread)."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if not on_loop:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self.end_request)
            return
        if not self.answered.is_set():
            self.answered.set()
            self._stop_work.set()  # whatever of its work still runs is of no use now
            self._owner._release_if_idle(self)

    def end_with(self, target: object) -> None:
        """The request ends when `target` (a streamed response's generator) is gone, at
        the latest: a stream never iterated never runs its own end."""
        weakref.finalize(target, self.end_request)

    async def in_engine_turn(self, work: Any) -> Any:
        """`work` (a chunk's engine job) once one of the uploads' engine turns is free."""
        async with self._owner.engine_turns():
            return await work

    def _work_done(self) -> None:
        self._working -= 1
        self._owner._release_if_idle(self)

    @property
    def idle(self) -> bool:
        return self.answered.is_set() and self._working == 0


class Uploads:
    """The uploads of this process (see the module's docstring)."""

    def __init__(self, limits: Callable[[], UploadLimits] = limits_from_settings) -> None:
        self._limits = limits
        self._pool: FileWorkPool | None = None
        self._tickets: set[UploadTicket] = set()
        self._engine_turns: asyncio.Semaphore | None = None
        self.draining = False

    def engine_turns(self) -> asyncio.Semaphore:
        """Turns in the engine, shared by all uploads (FILE_ENGINE_JOBS): the other
        inference workers stay free for live streams' finals and partials."""
        if self._engine_turns is None:
            self._engine_turns = asyncio.Semaphore(max(1, self._limits().engine_jobs))
        return self._engine_turns

    @property
    def pool(self) -> FileWorkPool:
        if self._pool is None:
            self._pool = FileWorkPool(max(1, self._limits().max_uploads))
        return self._pool

    def admit(self, key: Any) -> UploadTicket:
        """A ticket for one more upload of `key`, or ApiError (429, or 503 while draining)."""
        limits = self._limits()
        if self.draining:
            raise ApiError(503, "the server is shutting down; send the file again", "server_shutting_down",
                           None, SERVER_ERROR, retry_after=limits.retry_after)
        held = Counter(ticket.key for ticket in self._tickets)
        if key is not None and held[key] >= limits.max_per_key:  # None: open mode, no keys
            raise _too_many(f"this API key already has {limits.max_per_key} uploads in progress "
                            "(FILE_MAX_UPLOADS_PER_KEY)", limits)
        if len(self._tickets) >= limits.max_uploads:
            raise _too_many(f"the server already has {limits.max_uploads} uploads in progress (FILE_MAX_UPLOADS)",
                            limits)
        self.pool  # sized before the first work
        ticket = UploadTicket(self, key, limits.decode_timeout)
        self._tickets.add(ticket)
        return ticket

    def retry_after(self) -> float:
        return self._limits().retry_after

    def in_hand(self) -> int:
        return len(self._tickets)

    def _release_if_idle(self, ticket: UploadTicket) -> None:
        if ticket.idle:
            self._tickets.discard(ticket)

    async def drain(self, grace: float) -> dict[str, int]:
        """Refuse new uploads; let those in hand finish until STOP_MARGIN_SECONDS (at most
        a quarter of `grace`) before `grace` runs out, then stop the rest (they end with
        an error) and wait for their answers. Returns how many finished and were stopped."""
        self.draining = True
        margin = min(STOP_MARGIN_SECONDS, grace / 4)
        answering = [ticket for ticket in self._tickets if not ticket.answered.is_set()]
        waits = {asyncio.ensure_future(ticket.answered.wait()): ticket for ticket in answering}
        if not waits:
            return {"uploads": 0, "uploads_finished": 0, "uploads_stopped": 0}
        logger.warning("shutting down: %d upload(s) in progress", len(waits), extra={"event": "shutdown_uploads"})
        done, pending = await asyncio.wait(waits, timeout=max(0.0, grace - margin))
        for wait in pending:
            waits[wait].stop(SHUTDOWN_REASON)
        if pending:
            await asyncio.wait(pending, timeout=margin)
        for wait in pending:
            wait.cancel()
        return {"uploads": len(waits), "uploads_finished": len(done), "uploads_stopped": len(pending)}


def _too_many(message: str, limits: UploadLimits) -> ApiError:
    """OpenAI's rate-limit error (its clients raise RateLimitError)."""
    return ApiError(429, message, "rate_limit_exceeded", None, "requests", retry_after=limits.retry_after)


@functools.cache
def process_uploads() -> Uploads:
    """This process's uploads (limits read from the settings at each admission)."""
    return Uploads()
