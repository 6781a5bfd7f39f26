"""Retention: what is deleted once it is older than RETENTION_DAYS."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from stt.models import ErrorEvent, SessionRecord, Utterance


def purge_before(cutoff: datetime, dry_run: bool = False, batch: int = 500) -> dict[str, int]:
    """Delete utterances (and their audio), ended sessions and error events from before `cutoff`.

    Sessions still open are kept, whatever their age. Error statistics (running counts)
    are kept: they hold no transcript. Audio files go after their rows are committed.
    """
    utterances = Utterance.objects.filter(created_at__lt=cutoff)
    # A session with newer utterances stays, with them.
    sessions = (SessionRecord.objects.filter(started_at__lt=cutoff, ended_at__isnull=False)
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
        chunk = list(utterances.order_by("pk")[:batch])
        if not chunk:
            break
        files = [u.audio for u in chunk if u.audio]
        with transaction.atomic():
            Utterance.objects.filter(pk__in=[u.pk for u in chunk]).delete()
        for audio in files:
            audio.storage.delete(audio.name)
    with transaction.atomic():
        errors.delete()
        SessionRecord.objects.filter(pk__in=list(sessions.values_list("pk", flat=True))).delete()
    return counts
