"""Retention: what is deleted once it is older than RETENTION_DAYS."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q

from stt.models import ErrorEvent, SessionRecord, Utterance

# A session with no end this long after its start never got one recorded (a crash):
# it is purged like an ended one.
STALE_OPEN_SESSION = timedelta(days=1)


def purge_before(cutoff: datetime, dry_run: bool = False, batch: int = 500) -> dict[str, int]:
    """Delete utterances (and their audio), sessions and error events from before `cutoff`.

    A session is kept while it has newer utterances or may still be running. Error
    statistics (running counts) are kept: they hold no transcript. Audio files are
    removed with their rows, once the deletion is committed (stt.signals).
    """
    utterances = Utterance.objects.filter(created_at__lt=cutoff)
    sessions = (SessionRecord.objects
                .filter(started_at__lt=cutoff)
                .filter(Q(ended_at__isnull=False) | Q(started_at__lt=cutoff - STALE_OPEN_SESSION))
                .exclude(utterance_set__created_at__gte=cutoff).distinct())
    errors = ErrorEvent.objects.filter(created_at__lt=cutoff)
    counts = {
        "utterances": utterances.count(),
        "audio_files": utterances.exclude(audio="").count(),
        "sessions": sessions.count(),
        "error_events": errors.count(),
    }
    if dry_run:
        return counts
    while True:
        chunk = list(utterances.order_by("pk").values_list("pk", flat=True)[:batch])
        if not chunk:
            break
        with transaction.atomic():
            for utterance in Utterance.objects.filter(pk__in=chunk):
                utterance.delete()  # one by one, so each removes its audio file
    with transaction.atomic():
        errors.delete()
        SessionRecord.objects.filter(pk__in=list(sessions.values_list("pk", flat=True))).delete()
    return counts
