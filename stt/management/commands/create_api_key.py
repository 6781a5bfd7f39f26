"""`manage.py create_api_key NAME [--max-concurrent-sessions N] [--max-messages-per-second N]`."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from stt.keys import create_key


class Command(BaseCommand):
    help = ("Create an API key and print it, once, alone on standard output (KEY=$(manage.py create_api_key "
            "backend)); only its hash is kept.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="who uses it, e.g. the voice-assistant backend")
        parser.add_argument("--max-concurrent-sessions", type=int, default=None,
                            help="open sessions at once, per server process (default: AUTH_MAX_SESSIONS_PER_KEY)")
        parser.add_argument("--max-messages-per-second", type=int, default=None,
                            help="messages per second over its sessions, per process "
                                 "(default: AUTH_MAX_MESSAGES_PER_SECOND)")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["name"].strip():
            raise CommandError("the key needs a name")
        try:
            created = create_key(options["name"], options["max_concurrent_sessions"],
                                 options["max_messages_per_second"])
        except ValidationError as error:
            raise CommandError("; ".join(f"{field}: {' '.join(messages)}"
                                         for field, messages in error.message_dict.items())) from None
        self.stdout.write(created.key)
        self.stderr.write(f"API key {created.record.pk} ({created.record.name}, {created.record.prefix}...) created; "
                          "this is the only time it is shown.")
