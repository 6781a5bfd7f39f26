"""The history writer: commits writes in order on a thread of its own, and holds what
the database cannot take yet (stt/persistence/__init__.py tells the whole story).

Two threads, so the event loop never waits for I/O:
- `stt-history`: database writes, in order (a final's FLAC is saved just before its
  row); a write the database refuses is journaled there too.
- `stt-history-disk`: audio of finals that wait for the database, spilled to storage,
  and journal lines of writes that cannot wait (backlog full, process exit). It does
  not queue behind a database that takes seconds to refuse a connection.

Past PERSISTENCE_BACKLOG_BYTES a final's writer waits (at most PERSISTENCE_WRITE_TIMEOUT)
for the disk thread to take its audio out of memory: a healthy disk always does, so
audio is dropped only when the disk refuses it or has stalled that long. `condition()`
says whether writes went to the journal or were lost lately (/health).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from django.conf import settings
from django.db import connection

from monitoring import metrics
from stt.persistence.backlog import Backlog
from stt.persistence.facts import Write
from stt.persistence.journal import Kept, apply_or_journal, keep_in_journal
from stt.persistence.rows import TRANSIENT_ERRORS, save_audio

logger = logging.getLogger(__name__)

AT_EXIT = "still waiting for the database at exit"
BACKLOG_FULL = "backlog full"
# The reason label of fasttalk_history_journaled_total (a refused write's reason names its error).
_REASON_LABELS = {AT_EXIT: "exit", BACKLOG_FULL: "backlog_full"}


@dataclass
class HistoryStats:
    written: int = 0
    buffered: int = 0  # writes that had to wait for the database, ever
    journaled: int = 0  # writes put in the journal (refused, backlog full, or left at exit)
    failures: int = 0
    audio_lost: int = 0  # finals kept without their audio (the disk refused it, or stalled)
    lost: int = 0  # writes not even the journal took (the disk refused it)
    last_error: str = ""
    last_journaled_at: float | None = None  # time.monotonic()
    last_lost_at: float | None = None

    @property
    def dropped(self) -> int:
        """Writes that did not reach the database: journaled, or lost."""
        return self.journaled + self.lost

    def journaling(self) -> None:
        """A write is on its way to the journal: counted at once (`kept` corrects it)."""
        self.journaled += 1
        self.last_journaled_at = time.monotonic()

    def kept(self, kept: Kept, reason: str, counted: bool = False) -> None:
        """Count a write that went the journal's way (on the loop, or the disk thread at
        exit); `counted`: `journaling()` counted it already."""
        if not counted:
            self.journaling()
        if kept is Kept.LOST:
            self.journaled -= 1
            self.lost += 1
            self.last_lost_at = time.monotonic()
            metrics.history_lost_total.labels(what="write").inc()
            return
        label = "refused" if reason.startswith("refused") else _REASON_LABELS.get(reason, "other")
        metrics.history_journaled_total.labels(reason=label).inc()
        if kept is Kept.WITHOUT_AUDIO:
            self.audio_dropped()

    def audio_dropped(self) -> None:
        self.audio_lost += 1
        self.last_lost_at = time.monotonic()
        metrics.history_lost_total.labels(what="audio").inc()

    def condition(self, window: float) -> str:
        """"dropping" if a write or a final's audio was lost within `window` seconds,
        "journaling" if a write went to the journal within it, else "ok"."""
        now = time.monotonic()
        if self.last_lost_at is not None and now - self.last_lost_at < window:
            return "dropping"
        if self.last_journaled_at is not None and now - self.last_journaled_at < window:
            return "journaling"
        return "ok"


class HistoryWriter:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-history")
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-history-disk")
        self._backlog = Backlog()
        self._flusher: asyncio.Task | None = None
        self._pending: set[asyncio.Future] = set()  # queued writes and disk work
        # A final's writer waited PERSISTENCE_WRITE_TIMEOUT for the disk in vain; no other
        # waits until the disk thread finishes something.
        self._disk_stalled = False
        self.stats = HistoryStats()
        atexit.register(self.journal_backlog)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    @property
    def backlog_bytes(self) -> int:
        return self._backlog.held_bytes

    def condition(self) -> str:
        """What /health reports of the history (its database check is degraded unless
        "ok"): "dropping" (a write or a final's audio lost within
        PERSISTENCE_DEGRADED_SECONDS), "journaling" (a write journaled within it, or the
        backlog full so the next one will be), or "ok"."""
        condition = self.stats.condition(settings.PERSISTENCE_DEGRADED_SECONDS)
        if condition == "ok" and self._backlog.full():
            return "journaling"
        return condition

    async def write(self, item: Write) -> bool:
        """Commit `item` now; True if it is in the database, False if it waits (the
        database is away, or slower than PERSISTENCE_WRITE_TIMEOUT) or was journaled."""
        if self._backlog:  # keep the order: behind what is already waiting
            await self._buffer(item)
            return False
        try:
            return await self._run(item)
        except TRANSIENT_ERRORS as exc:
            self._note_failure(item, exc)
            await self._buffer(item)
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
            self.stats.kept(keep_in_journal(item, reason), reason)

    async def _run(self, item: Write) -> bool:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, apply_or_journal, item)
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        async with asyncio.timeout(settings.PERSISTENCE_WRITE_TIMEOUT):
            refusal = await asyncio.shield(future)
        if refusal is not None:  # refused for good: journaled, out of the way
            self._note_failure(item, refusal.error)
            self.stats.kept(refusal.kept, "refused")
            return False
        self.stats.written += 1
        return True

    def _note_failure(self, item: Write, exc: BaseException) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(exc) or type(exc).__name__
        logger.warning("history write failed (%s): %s", item.description, self.stats.last_error)

    async def _buffer(self, item: Write) -> None:
        """Hold `item` for the database (or journal it: backlog full), in order. Past
        PERSISTENCE_BACKLOG_BYTES its writer waits for the disk to take its audio out of
        memory, so the bound holds without dropping audio a healthy disk takes."""
        on_disk = self._hold(item)
        if on_disk is not None and item.audio is not None and self._backlog.over_bytes():
            await self._wait_for_disk(item, on_disk)

    def _hold(self, item: Write) -> asyncio.Future | None:
        """Synchronous, so writes keep their order; the disk work started for `item`."""
        if not self._backlog.has_room(item):
            return self._journal_later(item, BACKLOG_FULL)
        self._backlog.append(item)
        self.stats.buffered += 1
        on_disk = None
        if item.audio is not None:
            on_disk = self._on_disk(save_audio, item, lambda _: self._backlog.recount(item))
        loop = asyncio.get_running_loop()
        if self._flusher is None or self._flusher.done() or self._flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())
        return on_disk

    def _journal_later(self, item: Write, reason: str) -> asyncio.Future:
        self._backlog.hold(item)  # counted until the line is on disk
        self.stats.journaling()

        def kept(outcome: Kept | None) -> None:
            self._backlog.release(item)
            self.stats.kept(outcome or Kept.LOST, reason, counted=True)

        return self._on_disk(keep_in_journal, item, kept, reason)

    async def _wait_for_disk(self, item: Write, on_disk: asyncio.Future) -> None:
        """Wait for the disk thread to take `item`'s audio (all queued before it first),
        at most PERSISTENCE_WRITE_TIMEOUT; a disk that refused it or stalled loses it."""
        if not self._disk_stalled:
            try:
                async with asyncio.timeout(settings.PERSISTENCE_WRITE_TIMEOUT):
                    await asyncio.shield(on_disk)
            except TimeoutError:
                self._disk_stalled = True
                logger.error("history disk stalled: no audio saved within PERSISTENCE_WRITE_TIMEOUT; "
                             "finals past PERSISTENCE_BACKLOG_BYTES lose their audio until it moves")
            except Exception:
                pass  # the disk refused it: logged where it finished, the audio dropped below
        if item.audio is not None:
            self._drop_audio(item)

    def _drop_audio(self, item: Write) -> None:
        """Keep the row, lose the audio: memory is the bound and the disk did not take it."""
        if not item.audio_lock.acquire(blocking=False):
            return  # the disk thread is saving it this moment: it will be on disk
        try:
            if item.audio is None:
                return
            item.audio = None
        finally:
            item.audio_lock.release()
        self._backlog.recount(item)
        self.stats.audio_dropped()
        logger.error("audio of %s dropped: PERSISTENCE_BACKLOG_BYTES reached and the disk did not take it",
                     item.description)

    def _on_disk(self, work: Callable[..., Any], item: Write, then: Callable[[Any], None],
                 *args: object) -> asyncio.Future:
        """Run `work(item, *args)` on the disk thread; `then(its result, or None)` on the loop."""
        future = asyncio.get_running_loop().run_in_executor(self._disk, work, item, *args)
        self._pending.add(future)

        def done(finished: Future) -> None:
            self._pending.discard(finished)
            self._disk_stalled = False  # it finished something: it moves again
            result = None
            if finished.cancelled():
                pass
            elif finished.exception() is not None:
                logger.error("history disk work for %s failed: %s", item.description, finished.exception())
            else:
                result = finished.result()
            then(result)

        future.add_done_callback(done)
        return future

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
