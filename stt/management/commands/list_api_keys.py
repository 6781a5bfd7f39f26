"""`manage.py list_api_keys [--all]`: the keys, never the keys themselves."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from stt.models import ApiKey


def when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


class Command(BaseCommand):
    help = "List the API keys (id, name, prefix, created, last used, limits); --all adds revoked ones."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--all", action="store_true", help="also the revoked keys")

    def handle(self, *args: Any, **options: Any) -> None:
        keys = ApiKey.objects.order_by("pk")
        if not options["all"]:
            keys = keys.filter(revoked_at__isnull=True)
        self.stdout.write(f"{'id':>5}  {'prefix':12}  {'created':16}  {'last used':16}  {'sessions':>8}  "
                          f"{'msg/s':>6}  {'revoked':16}  name")
        for key in keys:
            self.stdout.write(f"{key.pk:>5}  {key.prefix:12}  {when(key.created_at):16}  {when(key.last_used_at):16}  "
                              f"{key.max_concurrent_sessions or 'default':>8}  {key.max_messages_per_second or 'default':>6}  "
                              f"{when(key.revoked_at):16}  {key.name}")
