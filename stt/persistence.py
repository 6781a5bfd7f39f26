"""Writing the history: sessions, finals with their audio, errors.

Writes run on one dedicated thread, in order, never on the event loop. A final is
committed before it is sent (`await history.write(...)`). A write is plain data (kind
and JSON payload), so it can wait and be retried, or be kept in a journal file:

- The database cannot be reached (a connection or timeout error): the write joins a
  bounded backlog, the final is sent all the same, and a background task replays the
  backlog in order once the database answers. Every write is idempotent (keyed by
  connection, utterance and event ids), so replaying one that did land is harmless.
- The database refuses a write for good (bad data): it goes to the journal
  (HISTORY_JOURNAL, JSON lines) and out of the way, so one bad row cannot hold up
  the rest.
- The process exits with writes still waiting, or the backlog is full: they go to the
  journal too. `manage.py replay_history_journal` writes journaled rows later.

So nothing a client saw is lost from the history: it is in the database, on its way,
or in the journal, and each outcome is logged and counted.
"""

from __future__ import annotations

import asyncio
import atexit
import io
import json
import logging
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.db.models import F

logger = logging.getLogger(__name__)

# Failures worth retrying: the database (or the disk) is unreachable, not the data wrong.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, TimeoutError, ConnectionError, OSError)


@dataclass
class Write:
    kind: str  # "session", "final" or "error"
    payload: dict[str, Any]  # JSON-able: what the row(s) will hold
    audio: np.ndarray | None = None  # a final's audio until its file is saved

    @property
    def description(self) -> str:
        key = self.payload.get("utterance_id") or self.payload.get("event_id") or self.payload.get("connection_id")
        return f"{self.kind} {key}"


@dataclass
class HistoryStats:
    written: int = 0
    buffered: int = 0  # writes that had to wait for the database, ever
    journaled: int = 0  # writes put in the journal (refused, backlog full, or left at exit)
    failures: int = 0
    last_error: str = ""

    @property
    def dropped(self) -> int:
        """Kept for monitoring: writes that did not reach the database (all journaled)."""
        return self.journaled


class HistoryWriter:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-history")
        self._backlog: deque[Write] = deque()
        self._flusher: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()
        self.stats = HistoryStats()
        atexit.register(self.journal_backlog)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    async def write(self, item: Write) -> bool:
        """Commit `item` now; True if it is in the database, False if it waits or was journaled."""
        if self._backlog:  # keep the order: behind what is already waiting
            self._buffer(item)
            return False
        try:
            await self._run(item)
        except TRANSIENT_ERRORS as exc:
            self._note_failure(item, exc)
            self._buffer(item)
            return False
        except Exception as exc:
            self._note_failure(item, exc)
            self._journal(item, f"refused: {exc!r}")
            return False
        return True

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

    def close_connection(self) -> None:
        """Close the history thread's database connection (tests, shutdown)."""
        self._executor.submit(lambda: connection.close()).result(timeout=10)

    def journal_backlog(self) -> None:
        """Keep what still waits for the database in the journal (at process exit)."""
        while self._backlog:
            self._journal(self._backlog.popleft(), "still waiting for the database at exit")

    async def _run(self, item: Write) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, _apply, item)
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        async with asyncio.timeout(settings.PERSISTENCE_WRITE_TIMEOUT):
            await asyncio.shield(future)
        self.stats.written += 1

    def _note_failure(self, item: Write, exc: Exception) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(exc) or type(exc).__name__
        logger.warning("history write failed (%s): %s", item.description, self.stats.last_error)

    def _buffer(self, item: Write) -> None:
        if len(self._backlog) >= settings.PERSISTENCE_BACKLOG_LIMIT:
            self._journal(item, "backlog full")
            return
        self._backlog.append(item)
        self.stats.buffered += 1
        loop = asyncio.get_running_loop()
        if self._flusher is None or self._flusher.done() or self._flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())

    def _journal(self, item: Write, reason: str) -> None:
        self.stats.journaled += 1
        try:
            if item.kind == "final" and item.audio is not None:
                _save_audio(item)  # keep the audio with the row, if the disk takes it
        except Exception as exc:
            logger.error("could not save the audio of %s: %s", item.description, exc)
        try:
            path = Path(settings.HISTORY_JOURNAL)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as journal:
                journal.write(json.dumps({"kind": item.kind, "payload": item.payload, "reason": reason,
                                          "at": datetime.now(timezone.utc).isoformat()}) + "\n")
            logger.error("history write %s journaled (%s)", item.description, reason)
        except Exception as exc:
            logger.critical("history write %s LOST (%s; journal failed: %s)", item.description, reason, exc)

    async def _flush(self) -> None:
        task = asyncio.current_task()
        while self._backlog:
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            item = self._backlog[0]
            try:
                await self._run(item)
            except TRANSIENT_ERRORS as exc:
                self._note_failure(item, exc)
                await asyncio.sleep(settings.PERSISTENCE_RETRY_SECONDS)
                continue
            except Exception as exc:  # refused for good: out of the way
                self._note_failure(item, exc)
                self._journal(item, f"refused: {exc!r}")
            self._backlog.popleft()
        logger.info("history backlog replayed")


def _apply(item: Write) -> None:
    """On the history thread: one write, on a healthy connection."""
    close_old_connections()
    reused = connection.connection is not None
    try:
        APPLIERS[item.kind](item)
    except (OperationalError, InterfaceError):
        connection.close()  # a broken connection must not poison the next write
        if not reused:
            raise
        # A persistent connection (CONN_MAX_AGE) that the database dropped while it was
        # idle, e.g. PostgreSQL restarted, fails its first query although the database
        # answers again. Once more on a new connection (writes are idempotent), so the
        # write lands now instead of waiting in the backlog while its final is sent.
        try:
            APPLIERS[item.kind](item)
        except Exception:
            connection.close()
            raise
    except Exception:
        connection.close()
        raise


history = HistoryWriter()


# --- building writes (on the event loop: cheap, data only) ------------------------------


def _clean(value: Any) -> Any:
    """Strings as PostgreSQL takes them (no NUL), recursively."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class SessionFacts:
    connection_id: str
    session_id: str
    user_id: str | None
    conversation_id: str | None
    client_address: str | None
    profile: str
    config: dict[str, Any]
    effective_config: dict[str, Any]
    model: str
    started_at: datetime
    ended_at: datetime | None = None
    close_reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The SessionRecord fields, JSON-able."""
        fields: dict[str, Any] = {
            "session_id": self.session_id,
            "user_id": (self.user_id or "")[:256],
            "conversation_id": (self.conversation_id or "")[:256],
            "client_address": (self.client_address or "")[:64],
            "profile": self.profile,
            "config": self.config,
            "effective_config": self.effective_config,
            "model": self.model,
            "started_at": self.started_at.isoformat(),
        }
        if self.ended_at is not None:
            summary = self.summary
            fields.update(
                ended_at=self.ended_at.isoformat(),
                close_reason=self.close_reason,
                utterances=summary.get("utterances", 0),
                finals=summary.get("finals", 0),
                failed_finals=summary.get("failed_finals", 0),
                partials=summary.get("partials", 0),
                speech_onsets=summary.get("speech_onsets", 0),
                errors=summary.get("errors", 0),
                audio_received_s=summary.get("audio_received_s", 0.0),
                audio_transcribed_s=summary.get("audio_transcribed_s", 0.0),
                latency=self.latency,
            )
        return _clean(fields)


def session_write(facts: SessionFacts) -> Write:
    return Write("session", {"connection_id": facts.connection_id, "row": facts.row()})


@dataclass
class FinalFacts:
    session: SessionFacts
    utterance_id: str
    text: str
    words: list[dict[str, Any]]
    confidence: float | None
    language: str | None
    start_ms: int
    end_ms: int
    reason: str
    partial_count: int
    first_partial_latency_ms: int | None
    final_latency_ms: int
    decode: dict[str, Any]
    audio: np.ndarray | None
    created_at: datetime


def final_write(facts: FinalFacts) -> Write:
    row = {
        "text": facts.text,
        "words": facts.words,
        "confidence": facts.confidence,
        "language": facts.language or "",
        "start_ms": facts.start_ms,
        "end_ms": facts.end_ms,
        "audio_duration_ms": facts.end_ms - facts.start_ms,
        "reason": facts.reason,
        "partial_count": facts.partial_count,
        "first_partial_latency_ms": facts.first_partial_latency_ms,
        "final_latency_ms": facts.final_latency_ms,
        "model": facts.session.model,
        "decode": facts.decode,
        "audio": "",
        "created_at": facts.created_at.isoformat(),
    }
    payload = {
        "utterance_id": facts.utterance_id,
        "connection_id": facts.session.connection_id,
        "session_row": facts.session.row(),
        "row": _clean(row),
    }
    audio = facts.audio if facts.audio is not None and facts.audio.size else None
    return Write("final", payload, audio)


def error_write(payload: dict[str, Any], connection_id: str | None, session_id: str) -> Write:
    return Write("error", _clean({
        "event_id": str(uuid.uuid4()),
        "connection_id": connection_id,
        "row": {
            "session_label": session_id[:128],
            "code": payload["code"],
            "category": payload["category"],
            "severity": payload["severity"],
            "recoverable": payload["recoverable"],
            "message": payload["message"],
            "field": (payload.get("field") or "")[:128],
            "utterance_id": (payload.get("utterance_id") or "")[:64],
            "created_at": datetime.now(timezone.utc).isoformat(),
        },
    }))


# --- applying writes (on the history thread) ---------------------------------------------


def encode_flac(audio: np.ndarray, sample_rate: int = 16000) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _dates(row: dict[str, Any], *names: str) -> dict[str, Any]:
    return {**row, **{n: datetime.fromisoformat(row[n]) for n in names if row.get(n)}}


def _save_audio(item: Write) -> None:
    """Encode and store a final's audio once; a retry only writes the row."""
    if item.audio is None:
        return
    created_at = datetime.fromisoformat(item.payload["row"]["created_at"])
    name = f"utterances/{created_at:%Y/%m/%d}/{item.payload['utterance_id']}.flac"
    if not default_storage.exists(name):
        name = default_storage.save(name, ContentFile(encode_flac(item.audio)))
    item.payload["row"]["audio"] = name
    item.audio = None  # the backlog keeps metadata only


def _apply_session(item: Write) -> None:
    from stt.models import SessionRecord

    row = _dates(item.payload["row"], "started_at", "ended_at")
    SessionRecord.objects.update_or_create(connection_id=item.payload["connection_id"], defaults=row)


def _apply_final(item: Write) -> None:
    from stt.models import SessionRecord, Utterance

    _save_audio(item)
    with transaction.atomic():
        # The session row may still be in the backlog, or lost: make sure it exists.
        session, _ = SessionRecord.objects.get_or_create(
            connection_id=item.payload["connection_id"],
            defaults=_dates(item.payload["session_row"], "started_at", "ended_at"),
        )
        _, created = Utterance.objects.update_or_create(
            utterance_id=item.payload["utterance_id"],
            defaults={**_dates(item.payload["row"], "created_at"), "session": session},
        )
    if created and item.payload["row"].get("audio"):
        from stt.tasks import queue_refinement_soon

        queue_refinement_soon(item.payload["utterance_id"])  # re-transcribe it with the larger model


def _apply_error(item: Write) -> None:
    from stt.models import ErrorEvent, ErrorStatistic, SessionRecord

    row = _dates(item.payload["row"], "created_at")
    with transaction.atomic():
        connection_id = item.payload.get("connection_id")
        session = SessionRecord.objects.filter(connection_id=connection_id).first() if connection_id else None
        _, created = ErrorEvent.objects.get_or_create(event_id=item.payload["event_id"],
                                                      defaults={**row, "session": session})
        if not created:
            return  # a replay of a write that had landed
        key = {"category": row["category"], "code": row["code"]}
        updated = ErrorStatistic.objects.filter(**key).update(
            count=F("count") + 1, last_seen=row["created_at"], last_message=row["message"])
        if not updated:
            statistic, made = ErrorStatistic.objects.select_for_update().get_or_create(**key, defaults={
                "count": 1, "first_seen": row["created_at"], "last_seen": row["created_at"],
                "last_message": row["message"]})
            if not made:
                ErrorStatistic.objects.filter(pk=statistic.pk).update(count=F("count") + 1,
                                                                     last_seen=row["created_at"])


APPLIERS: dict[str, Callable[[Write], None]] = {
    "session": _apply_session,
    "final": _apply_final,
    "error": _apply_error,
}


def replay_journal(path: Path) -> tuple[int, int]:
    """Apply the journal's writes (synchronously); keep the ones that fail. Returns
    (written, still failing)."""
    if not path.exists():
        return 0, 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept: list[str] = []
    written = 0
    for line in lines:
        entry = json.loads(line)
        try:
            APPLIERS[entry["kind"]](Write(entry["kind"], entry["payload"]))
            written += 1
        except Exception as exc:
            logger.error("journaled %s still fails: %s", entry["kind"], exc)
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    return written, len(kept)
