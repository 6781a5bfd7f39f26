"""`manage.py revoke_api_key ID|PREFIX`."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from stt.keys import find_key, revoke_key


class Command(BaseCommand):
    help = "Revoke an API key, named by its id or its prefix (as list_api_keys shows them)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("key", help="its id, or its prefix (ftk_...)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key = find_key(options["key"])
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        if not revoke_key(key):
            self.stdout.write(f"API key {key.pk} ({key.name}) was already revoked.")
            return
        self.stdout.write(f"Revoked API key {key.pk} ({key.name}); new sessions with it are refused, and a process "
                          f"that admitted it lately may still take it for up to AUTH_CACHE_SECONDS "
                          f"({settings.AUTH_CACHE_SECONDS:g} s).")
