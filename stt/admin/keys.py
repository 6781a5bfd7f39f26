"""API keys: created here (the key is shown once), revoked, never edited."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone as django_timezone
from django.utils.html import format_html

from stt.models import ApiKey


@admin.action(description="Revoke selected API keys")
def revoke_keys(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    revoked = queryset.filter(revoked_at__isnull=True).update(revoked_at=django_timezone.now())
    modeladmin.message_user(request, f"Revoked {revoked} key(s); their sessions are refused from now on.",
                            messages.SUCCESS)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "created_at", "last_used_at", "revoked_at", "max_concurrent_sessions",
                    "max_messages_per_second")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    fields = ("name", "max_concurrent_sessions", "max_messages_per_second", *readonly_fields)
    actions = (revoke_keys,)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        from stt.auth import generate_key

        if change:
            super().save_model(request, obj, form, change)
            return
        raw, obj.prefix, obj.key_hash = generate_key()
        super().save_model(request, obj, form, change)
        # The only time the key exists outside its user's hands: it is not stored.
        self.message_user(request, format_html(
            'The new API key is <code class="new-api-key">{}</code>. Copy it now: it is not shown again.', raw),
            messages.WARNING)
