"""Graceful shutdown of a server process (SIGTERM): stop admitting sessions and uploads
(503 with Retry-After), finish every active session (pending speech becomes finals,
stored then sent; session_ended; close 1012) and upload (its transcript, or else an
error: stt/openai_api/uploads.py), write the history backlog, queue the refinements (in-process: finish the
one in progress or leave it queued), then stop, all within SHUTDOWN_GRACE_SECONDS.
The process then exits 0 (stt/management/commands/serve.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from django.conf import settings

from monitoring.registry import registry
from stt.openai_api.uploads import process_uploads
from stt.persistence import history
from stt.tasks import stop_refinement_dispatch

logger = logging.getLogger(__name__)

CLOSE_FLUSH_SECONDS = 0.5


async def drain_sessions(grace_seconds: float | None = None) -> dict[str, int]:
    """Finish every live session; returns how many ended in time and how many did not."""
    grace = settings.SHUTDOWN_GRACE_SECONDS if grace_seconds is None else grace_seconds
    started = time.monotonic()
    registry.draining = True
    sessions = registry.sessions()
    logger.warning("shutting down: finishing %d session(s) within %.0f s", len(sessions), grace,
                   extra={"event": "shutdown", "sessions": len(sessions)})
    uploads = asyncio.ensure_future(process_uploads().drain(grace))
    tasks = [asyncio.ensure_future(session.shutdown()) for session in sessions]
    done, pending = (await asyncio.wait(tasks, timeout=grace)) if tasks else (set(), set())
    upload_outcome = await uploads  # within the grace period too (it stops what is left)
    remaining = max(1.0, grace - (time.monotonic() - started))
    await history.drain_or_journal(timeout=remaining)  # what the database did not take: journaled
    # Then the refinements of those finals: queued, or (in-process) finished or left queued.
    remaining = max(0.5, grace - (time.monotonic() - started))
    refinements = await asyncio.to_thread(stop_refinement_dispatch, remaining)
    outcome = {"sessions": len(sessions), "finished": len(done), "unfinished": len(pending), **upload_outcome,
               **refinements}
    logger.warning("shutdown: %s", outcome, extra={"event": "shutdown_done", **outcome})
    return outcome


def install_sigterm_handler(stop: Callable[[], None]) -> None:
    """On SIGTERM (and SIGINT), drain on the running asyncio loop, then call `stop`."""
    import signal

    loop = asyncio.get_event_loop()
    state = {"draining": False}

    async def drain_then_stop() -> None:
        try:
            await drain_sessions()
            await asyncio.sleep(CLOSE_FLUSH_SECONDS)  # let the close frames leave before the sockets go
        finally:
            stop()

    def on_signal() -> None:
        if state["draining"]:
            stop()  # a second signal: stop now
            return
        state["draining"] = True
        asyncio.ensure_future(drain_then_stop())

    # Through the loop, which also delivers Twisted's own handlers (they would stop at
    # once): registering ours replaces them.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
