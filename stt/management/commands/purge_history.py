"""`manage.py purge_history`: delete audio, transcripts and error events past retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from stt.retention import purge_before


class Command(BaseCommand):
    help = "Delete sessions, utterances (with their audio files) and error events older than RETENTION_DAYS."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--days", type=int, default=None, help="keep this many days (default: RETENTION_DAYS)")
        parser.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"] if options["days"] is not None else settings.RETENTION_DAYS
        if days < 0:
            raise CommandError("--days must be 0 or more")
        if days == 0:
            self.stdout.write("Retention is 0 (keep everything): nothing to delete.")
            return
        cutoff = timezone.now() - timedelta(days=days)
        counts = purge_before(cutoff, dry_run=options["dry_run"])
        verb = "Would delete" if options["dry_run"] else "Deleted"
        self.stdout.write(
            f"{verb} {counts['sessions']} sessions, {counts['utterances']} utterances "
            f"({counts['audio_files']} audio files) and {counts['error_events']} error events "
            f"older than {cutoff:%Y-%m-%d %H:%M} UTC."
        )
