"""Applying history writes to the database and to storage (on the history threads,
never on the event loop). Every write is idempotent, keyed by connection, utterance and
event ids, so applying one twice is harmless."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any, Callable

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.db.models import F

from stt.persistence.facts import Write

# Failures worth retrying: the database (or the disk) is unreachable, not the data wrong.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, TimeoutError, ConnectionError, OSError)


def encode_flac(audio: np.ndarray, sample_rate: int = 16000) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def save_audio(item: Write) -> None:
    """Encode and store a final's audio once, whichever thread comes first; then the
    write holds the file's name only."""
    with item.audio_lock:
        audio = item.audio
        if audio is None:
            return
        created_at = datetime.fromisoformat(item.payload["row"]["created_at"])
        name = f"utterances/{created_at:%Y/%m/%d}/{item.payload['utterance_id']}.flac"
        if not default_storage.exists(name):
            name = default_storage.save(name, ContentFile(encode_flac(audio)))
        item.payload["row"]["audio"] = name
        item.audio = None


def apply(item: Write) -> None:
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


def _dates(row: dict[str, Any], *names: str) -> dict[str, Any]:
    return {**row, **{n: datetime.fromisoformat(row[n]) for n in names if row.get(n)}}


def _apply_session(item: Write) -> None:
    from stt.models import SessionRecord

    row = _dates(item.payload["row"], "started_at", "ended_at")
    SessionRecord.objects.update_or_create(connection_id=item.payload["connection_id"], defaults=row)


def _apply_final(item: Write) -> None:
    from stt.models import SessionRecord, Utterance

    save_audio(item)
    with transaction.atomic():
        # The session row may still be in the backlog, or lost: make sure it exists.
        session, _ = SessionRecord.objects.get_or_create(
            connection_id=item.payload["connection_id"],
            defaults=_dates(item.payload["session_row"], "started_at", "ended_at"),
        )
        before = Utterance.objects.filter(utterance_id=item.payload["utterance_id"]).values_list(
            "status", flat=True).first()
        Utterance.objects.update_or_create(
            utterance_id=item.payload["utterance_id"],
            defaults={**_dates(item.payload["row"], "created_at"), "session": session},
        )
    # New, or only announced until now (open; interrupted if a sweep took its process for lost).
    created = before in (None, Utterance.Status.OPEN, Utterance.Status.INTERRUPTED)
    if created and item.payload["row"].get("audio"):
        from stt.tasks import queue_refinement_soon

        # Re-transcribe it with the larger model; a failed final gets its only transcript so.
        queue_refinement_soon(item.payload["utterance_id"])


def _apply_utterance_open(item: Write) -> None:
    from stt.models import SessionRecord, Utterance

    with transaction.atomic():
        session, _ = SessionRecord.objects.get_or_create(
            connection_id=item.payload["connection_id"],
            defaults=_dates(item.payload["session_row"], "started_at", "ended_at"),
        )
        # Never over a final (or failed) row that landed first.
        Utterance.objects.get_or_create(utterance_id=item.payload["utterance_id"],
                                        defaults={**_dates(item.payload["row"], "created_at"), "session": session})


def _apply_utterance_discarded(item: Write) -> None:
    from stt.models import Utterance

    Utterance.objects.filter(utterance_id=item.payload["utterance_id"], status=Utterance.Status.OPEN).delete()


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
    "utterance_open": _apply_utterance_open,
    "utterance_discarded": _apply_utterance_discarded,
    "error": _apply_error,
}
