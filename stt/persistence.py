"""Writing the history: sessions, finals with their audio, errors.

Writes run on one dedicated thread, in order, never on the event loop. A final is
committed before it is sent (`await history.write(...)`). When the database cannot
take a write, the write joins a bounded backlog, the final is sent all the same, and
a background task replays the backlog in order once the database answers again; every
write is idempotent (keyed by connection, utterance and event ids), so a replay after
a write that did land but timed out does no harm. Nothing a client saw is missing from
the history afterwards, unless the backlog overflows, which is logged as an error and
counted.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import close_old_connections, connection, transaction
from django.db.models import F

logger = logging.getLogger(__name__)


@dataclass
class Write:
    description: str
    apply: Callable[[], None]


@dataclass
class HistoryStats:
    written: int = 0
    buffered: int = 0  # writes that had to wait for the database, ever
    dropped: int = 0  # writes lost because the backlog was full
    failures: int = 0
    last_error: str = ""


class HistoryWriter:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-history")
        self._backlog: deque[Write] = deque()
        self._flusher: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()
        self.stats = HistoryStats()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    async def write(self, item: Write) -> bool:
        """Commit `item` now; True if it is in the database, False if it waits in the backlog."""
        if self._backlog:  # keep the order: behind what is already waiting
            self._buffer(item)
            return False
        try:
            await self._run(item)
        except Exception as exc:
            self._note_failure(item, exc)
            self._buffer(item)
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
        logger.warning("history write failed (%s): %s; keeping it for a retry", item.description, self.stats.last_error)

    def _buffer(self, item: Write) -> None:
        if len(self._backlog) >= settings.PERSISTENCE_BACKLOG_LIMIT:
            self.stats.dropped += 1
            logger.error("history backlog full (%d writes): dropping %s", len(self._backlog), item.description)
            return
        self._backlog.append(item)
        self.stats.buffered += 1
        loop = asyncio.get_running_loop()
        if self._flusher is None or self._flusher.done() or self._flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())

    async def _flush(self) -> None:
        task = asyncio.current_task()
        while self._backlog:
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            item = self._backlog[0]
            try:
                await self._run(item)
            except Exception as exc:
                self._note_failure(item, exc)
                await asyncio.sleep(settings.PERSISTENCE_RETRY_SECONDS)
                continue
            self._backlog.popleft()
        logger.info("history backlog replayed")


def _apply(item: Write) -> None:
    """On the history thread: one write, on a healthy connection."""
    close_old_connections()
    try:
        item.apply()
    except Exception:
        connection.close()  # a broken connection must not poison the next write
        raise


history = HistoryWriter()


# --- the writes ---------------------------------------------------------------------


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


def _session_fields(facts: SessionFacts) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "session_id": facts.session_id,
        "user_id": facts.user_id or "",
        "conversation_id": facts.conversation_id or "",
        "client_address": facts.client_address or "",
        "profile": facts.profile,
        "config": facts.config,
        "effective_config": facts.effective_config,
        "model": facts.model,
        "started_at": facts.started_at,
    }
    if facts.ended_at is not None:
        summary = facts.summary
        fields.update(
            ended_at=facts.ended_at,
            close_reason=facts.close_reason,
            utterances=summary.get("utterances", 0),
            finals=summary.get("finals", 0),
            failed_finals=summary.get("failed_finals", 0),
            partials=summary.get("partials", 0),
            speech_onsets=summary.get("speech_onsets", 0),
            errors=summary.get("errors", 0),
            audio_received_s=summary.get("audio_received_s", 0.0),
            audio_transcribed_s=summary.get("audio_transcribed_s", 0.0),
            latency=facts.latency,
        )
    return fields


def session_write(facts: SessionFacts) -> Write:
    def apply() -> None:
        from stt.models import SessionRecord

        SessionRecord.objects.update_or_create(connection_id=facts.connection_id, defaults=_session_fields(facts))

    return Write(f"session {facts.session_id}", apply)


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


def encode_flac(audio: np.ndarray, sample_rate: int = 16000) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def final_write(facts: FinalFacts) -> Write:
    # Encoded once, here, so a replay writes the same bytes.
    flac = encode_flac(facts.audio) if facts.audio is not None and facts.audio.size else None

    def apply() -> None:
        from stt.models import SessionRecord, Utterance

        audio_name = ""
        if flac is not None:
            audio_name = f"utterances/{facts.created_at:%Y/%m/%d}/{facts.utterance_id}.flac"
            if not default_storage.exists(audio_name):
                audio_name = default_storage.save(audio_name, ContentFile(flac))
        with transaction.atomic():
            # The session row may still be in the backlog, or lost: make sure it exists.
            session, _ = SessionRecord.objects.get_or_create(
                connection_id=facts.session.connection_id, defaults=_session_fields(facts.session)
            )
            Utterance.objects.update_or_create(
                utterance_id=facts.utterance_id,
                defaults={
                    "session": session,
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
                    "audio": audio_name,
                    "created_at": facts.created_at,
                },
            )

    return Write(f"utterance {facts.utterance_id}", apply)


def error_write(payload: dict[str, Any], connection_id: str | None, session_id: str,
                session_known: bool) -> Write:
    event_id = uuid.uuid4()
    created_at = datetime.now(timezone.utc)

    def apply() -> None:
        from stt.models import ErrorEvent, ErrorStatistic, SessionRecord

        with transaction.atomic():
            session = None
            if session_known and connection_id:
                session = SessionRecord.objects.filter(connection_id=connection_id).first()
            _, created = ErrorEvent.objects.get_or_create(event_id=event_id, defaults={
                "session": session,
                "session_label": session_id,
                "code": payload["code"],
                "category": payload["category"],
                "severity": payload["severity"],
                "recoverable": payload["recoverable"],
                "message": payload["message"],
                "field": payload.get("field") or "",
                "utterance_id": payload.get("utterance_id") or "",
                "created_at": created_at,
            })
            if not created:
                return  # a replay of a write that had landed
            updated = ErrorStatistic.objects.filter(category=payload["category"], code=payload["code"]).update(
                count=F("count") + 1, last_seen=created_at, last_message=payload["message"])
            if not updated:
                statistic, made = ErrorStatistic.objects.select_for_update().get_or_create(
                    category=payload["category"], code=payload["code"],
                    defaults={"count": 1, "first_seen": created_at, "last_seen": created_at,
                              "last_message": payload["message"]})
                if not made:
                    ErrorStatistic.objects.filter(pk=statistic.pk).update(count=F("count") + 1, last_seen=created_at)

    return Write(f"error {payload['code']}", apply)
