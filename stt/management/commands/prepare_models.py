"""`manage.py prepare_models`: resolve (and for split models, join and verify) the
streaming and refinement models now, rather than at first use."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from stt.engine import resolve_model


class Command(BaseCommand):
    help = "Resolve STT_MODEL and REFINE_MODEL; join and verify bundled split models (Whisper base)."

    def handle(self, *args: Any, **options: Any) -> None:
        for setting in ("STT_MODEL", "REFINE_MODEL"):
            reference = getattr(settings, setting)
            self.stdout.write(f"{setting} {reference}: {resolve_model(reference)}")
