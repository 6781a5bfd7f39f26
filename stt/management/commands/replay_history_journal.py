"""`manage.py replay_history_journal`: write the journaled history rows to the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from stt.persistence import replay_journal


class Command(BaseCommand):
    help = "Write history rows kept in the journal (refused or left at exit) to the database."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--path", default=None, help="journal file (default: HISTORY_JOURNAL)")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"] or settings.HISTORY_JOURNAL)
        written, failing = replay_journal(path)
        self.stdout.write(f"Wrote {written} journaled rows; {failing} still fail and stay in {path}.")
