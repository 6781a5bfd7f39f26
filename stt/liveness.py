"""Which server process holds a session, and what becomes of the sessions of a process
that died.

Each `manage.py serve` process has an identity (a uuid) and a ServerProcess row that its
Heartbeat thread refreshes every SERVER_HEARTBEAT_SECONDS; a clean exit (after the
drain) marks the row stopped. A session's row names its process (SessionRecord.server_id).

A process killed outright (SIGKILL, out of memory, a lost host) writes nothing more: its
sessions stay open in the history, and so do the utterances its clients had heard of
(status `open`, written at the speech onset or first partial and replaced by the final).
`recover_lost_sessions` closes the open sessions of every process that stopped, or was
not seen for SERVER_LOST_SECONDS, with close_reason `server_lost`, and marks the open
utterances of ended sessions `interrupted`. Celery beat runs it every
SESSION_SWEEP_SECONDS, and each server process once when it starts (the embedded mode
has no beat); a starting process also knows its own host's dead at once: rows of its
hostname whose pid is its own (a restarted container) or no longer runs.

A process that is alive but cannot reach the database is not seen either. If it is swept
meanwhile, its later writes put the record right: a final replaces the interrupted row,
the session's end replaces `server_lost`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Q

logger = logging.getLogger(__name__)

LOST_REASON = "server_lost"
INTERRUPTED_ERROR = "no final: the server process holding the session was lost"


@dataclass(frozen=True)
class ProcessIdentity:
    server_id: str
    hostname: str
    pid: int
    port: int | None
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @classmethod
    def of_this_process(cls, port: int | None) -> "ProcessIdentity":
        return cls(server_id=str(uuid.uuid4()), hostname=socket.gethostname()[:255], pid=os.getpid(), port=port)


_current: ProcessIdentity | None = None


def current_server_id() -> str | None:
    """This process's id once its heartbeat runs (`manage.py serve`); None elsewhere
    (tests, shells): their sessions are never taken for lost."""
    return _current.server_id if _current is not None else None


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def dead_on_this_host(identity: ProcessIdentity) -> list[str]:
    """Earlier processes of this host that are certainly gone: their pid is ours (a
    container restarted in place) or runs no more."""
    from stt.models import ServerProcess

    rows = ServerProcess.objects.filter(hostname=identity.hostname, stopped_at__isnull=True,
                                        lost_at__isnull=True).exclude(server_id=identity.server_id)
    return [str(row.server_id) for row in rows if row.pid == identity.pid or not _pid_runs(row.pid)]


def recover_lost_sessions(lost_after: float, *, now: datetime | None = None,
                          known_dead: Iterable[str] = ()) -> dict[str, int]:
    """Close the sessions of lost processes and mark their open utterances interrupted."""
    from django.db.models import DateTimeField, F, Value
    from django.db.models.functions import Greatest

    from stt.models import ServerProcess, SessionRecord, Utterance

    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(seconds=lost_after)
    dead = [str(server_id) for server_id in known_dead]
    lost = ServerProcess.objects.filter(Q(stopped_at__isnull=False) | Q(last_seen__lt=cutoff) | Q(server_id__in=dead))
    newly_lost = lost.filter(stopped_at__isnull=True, lost_at__isnull=True).update(lost_at=now)
    sessions = 0
    orphaned = SessionRecord.objects.filter(ended_at__isnull=True, server_id__isnull=False)
    for process in lost.filter(server_id__in=orphaned.values("server_id")):
        last_known = process.stopped_at or process.last_seen
        sessions += orphaned.filter(server_id=process.server_id).update(
            ended_at=Greatest(F("started_at"), Value(last_known, output_field=DateTimeField())),
            close_reason=LOST_REASON)
    # A process that never got its row written (the database was away when it started).
    sessions += orphaned.filter(started_at__lt=cutoff).exclude(
        server_id__in=ServerProcess.objects.values("server_id")).update(ended_at=now, close_reason=LOST_REASON)
    interrupted = Utterance.objects.filter(status=Utterance.Status.OPEN, session__ended_at__isnull=False).update(
        status=Utterance.Status.INTERRUPTED, error=INTERRUPTED_ERROR)
    if settings.RETENTION_DAYS > 0:
        ServerProcess.objects.filter(last_seen__lt=now - timedelta(days=settings.RETENTION_DAYS)).delete()
    outcome = {"processes_lost": newly_lost, "sessions_closed": sessions, "utterances_interrupted": interrupted}
    if sessions or interrupted or newly_lost:
        logger.warning("lost server processes: %s", outcome, extra={"event": "sessions_recovered", **outcome})
    return outcome


class Heartbeat:
    """Keeps this process's ServerProcess row fresh, on a thread of its own; the first
    beat also sweeps (see the module's docstring). stop() marks the row stopped."""

    def __init__(self, identity: ProcessIdentity, interval: float, lost_after: float) -> None:
        self.identity = identity
        self.interval = interval
        self.lost_after = lost_after
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stt-heartbeat", daemon=True)
        self.beats = 0

    def start(self) -> None:
        global _current
        _current = self.identity
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """After the drain: the row is marked stopped (by the heartbeat thread, which
        holds the connection), so the sweep need not wait for SERVER_LOST_SECONDS."""
        global _current
        self._stopping.set()
        self._thread.join(timeout)
        if _current is self.identity:
            _current = None

    def _run(self) -> None:
        swept = False
        while True:
            stopping = self._stopping.is_set()
            try:
                close_old_connections()
                self._beat(stopped=stopping)
                if not swept and not stopping:
                    recover_lost_sessions(self.lost_after, known_dead=dead_on_this_host(self.identity))
                    swept = True
            except Exception as exc:  # the database is away: beat again later
                logger.warning("server heartbeat failed: %s", exc)
                connection.close()
            if stopping:
                connection.close()
                return
            self._stopping.wait(self.interval)

    def _beat(self, stopped: bool) -> None:
        from stt.models import ServerProcess

        now = datetime.now(timezone.utc)
        identity = self.identity
        ServerProcess.objects.update_or_create(server_id=identity.server_id, defaults={
            "hostname": identity.hostname, "pid": identity.pid, "port": identity.port,
            "started_at": identity.started_at, "last_seen": now, "stopped_at": now if stopped else None,
            "lost_at": None})
        self.beats += 1
