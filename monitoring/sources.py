"""What the monitoring endpoints report on, handed in by the project (fasttalk/sources.py)
so that monitoring never imports the service it watches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable


async def _no_key(authorization: str) -> Any:
    return None


@dataclass(frozen=True)
class ServiceSources:
    engine: Callable[[], Any]  # the process's speech engine, looked up per request
    history: Any  # the history writer: backlog and counters
    celery_app: Any  # whose broker /health pings
    probe_options: Any  # decode options of the health probe
    protocol_version: str
    sample_rate: int
    # The API key an `Authorization` header names, or None; looked up off the event loop
    # on threads of its own (never queued behind uploads' work).
    api_key_of: Callable[[str], Awaitable[Any]] = _no_key
    # Whether this process takes new sessions by its measured capacity: a dict with at
    # least `full` (bool) and `retry_after`, or None when it is not judged.
    capacity: Callable[[], dict[str, Any] | None] = lambda: None
