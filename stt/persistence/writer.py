"""The history writer: commits writes in order on a thread of its own, and holds what
the database cannot take yet (stt/persistence/__init__.py tells the whole story).

Two threads, so the event loop never waits for I/O:
- `stt-history`: database writes, in order (a final's FLAC is saved just before its
  row); a write the database refuses is journaled there too.
- `stt-history-disk`: audio of finals that wait for the database, spilled to storage,
  and journal lines of writes that cannot wait (backlog full, process exit). It does
  not queue behind a database that takes seconds to refuse a connection.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from django.conf import settings
from django.db import connection

from stt.persistence.backlog import Backlog
from stt.persistence.facts import Write
from stt.persistence.journal import apply_or_journal, keep_in_journal
from stt.persistence.rows import TRANSIENT_ERRORS, save_audio

logger = logging.getLogger(__name__)

AT_EXIT = "still waiting for the database at exit"


@dataclass
class HistoryStats:
    written: int = 0
    buffered: int = 0  # writes that had to wait for the database, ever
    journaled: int = 0  # writes put in the journal (refused, backlog full, or left at exit)
    failures: int = 0
    audio_lost: int = 0  # finals journaled without their audio (memory bound, disk stalled)
    last_error: str = ""

    @property
    def dropped(self) -> int:
        """Kept for monitoring: writes that did not reach the database (all journaled)."""
        return self.journaled


class HistoryWriter:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-history")
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-history-disk")
        self._backlog = Backlog()
        self._flusher: asyncio.Task | None = None
        self._pending: set[asyncio.Future] = set()  # queued writes and disk work
        self.stats = HistoryStats()
        atexit.register(self.journal_backlog)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    @property
    def backlog_bytes(self) -> int:
        return self._backlog.held_bytes

    async def write(self, item: Write) -> bool:
        """Commit `item` now; True if it is in the database, False if it waits (the
        database is away, or slower than PERSISTENCE_WRITE_TIMEOUT) or was journaled."""
        if self._backlog:  # keep the order: behind what is already waiting
            self._buffer(item)
            return False
        try:
            return await self._run(item)
        except TRANSIENT_ERRORS as exc:
            self._note_failure(item, exc)
            self._buffer(item)
            return False

    def write_later(self, item: Write) -> None:
        """Queue a write without waiting for it (error events, session summaries)."""
        task = asyncio.ensure_future(self.write(item))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until queued and backlogged writes are done; True if nothing is left."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._pending or self._backlog:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def drain_or_journal(self, timeout: float) -> bool:
        """Drain; what the database did not take by then goes to the journal (shutdown).
        True if everything was written."""
        if await self.drain(timeout):
            return True
        if self._flusher is not None:
            self._flusher.cancel()
        items = self._backlog.take_all()
        await asyncio.get_running_loop().run_in_executor(self._disk, self._journal_all, items, AT_EXIT)
        return False

    def close_connection(self) -> None:
        """Close the history thread's database connection (tests, shutdown)."""
        self._executor.submit(lambda: connection.close()).result(timeout=10)

    def journal_backlog(self) -> None:
        """Keep what still waits for the database in the journal (at process exit). Off
        the loop: after the disk thread's own work, on it while it runs."""
        items = self._backlog.take_all()
        try:
            self._disk.submit(self._journal_all, items, AT_EXIT).result(timeout=600)
        except RuntimeError:  # the interpreter is shutting down: its threads are done
            self._journal_all(items, AT_EXIT)

    def _journal_all(self, items: list[Write], reason: str) -> None:
        for item in items:
            keep_in_journal(item, reason)
        self.stats.journaled += len(items)

    async def _run(self, item: Write) -> bool:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, apply_or_journal, item)
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        async with asyncio.timeout(settings.PERSISTENCE_WRITE_TIMEOUT):
            refusal = await asyncio.shield(future)
        if refusal is not None:  # refused for good: journaled, out of the way
            self._note_failure(item, refusal)
            self.stats.journaled += 1
            return False
        self.stats.written += 1
        return True

    def _note_failure(self, item: Write, exc: BaseException) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(exc) or type(exc).__name__
        logger.warning("history write failed (%s): %s", item.description, self.stats.last_error)

    def _buffer(self, item: Write) -> None:
        if not self._backlog.has_room(item):
            self._journal_later(item, "backlog full")
            return
        self._backlog.append(item)
        self.stats.buffered += 1
        if item.audio is not None:
            self._on_disk(save_audio, item, lambda: self._backlog.recount(item))
        loop = asyncio.get_running_loop()
        if self._flusher is None or self._flusher.done() or self._flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())

    def _journal_later(self, item: Write, reason: str) -> None:
        if not self._backlog.can_hold(item) and item.audio is not None:
            # Memory is the bound and the disk is behind: keep the row, lose the audio.
            item.audio = None
            self.stats.audio_lost += 1
            logger.error("audio of %s dropped: PERSISTENCE_BACKLOG_BYTES reached", item.description)
        self._backlog.hold(item)
        self.stats.journaled += 1
        self._on_disk(keep_in_journal, item, lambda: self._backlog.release(item), reason)

    def _on_disk(self, work: Callable[..., None], item: Write, then: Callable[[], None], *args: object) -> None:
        future = asyncio.get_running_loop().run_in_executor(self._disk, work, item, *args)
        self._pending.add(future)

        def done(finished: Future) -> None:
            self._pending.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                logger.error("history disk work for %s failed: %s", item.description, finished.exception())
            then()

        future.add_done_callback(done)

    async def _flush(self) -> None:
        task = asyncio.current_task()
        while self._backlog:
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            item = self._backlog.head()
            try:
                await self._run(item)
            except TRANSIENT_ERRORS as exc:
                self._note_failure(item, exc)
                await asyncio.sleep(settings.PERSISTENCE_RETRY_SECONDS)
                continue
            if self._backlog and self._backlog.head() is item:
                self._backlog.pop()
        logger.info("history backlog replayed")
