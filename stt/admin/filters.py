"""List filters of the history admins: free-text inputs and value ranges."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest



# --- filters ----------------------------------------------------------------------------


class InputFilter(admin.SimpleListFilter):
    """A free-text filter (exact match), for ids with too many values to list."""

    template = "admin/stt/input_filter.html"
    field_path = ""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> Iterable[tuple[str, str]]:
        return (("", ""),)  # the filter needs one lookup to be shown

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(**{self.field_path: value.strip()}) if value else queryset

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        params = changelist.get_filters_params()
        kept = []
        for key, values in params.items():
            if key == self.parameter_name:
                continue
            for value in values if isinstance(values, list) else [values]:
                kept.append((key, value))
        yield {"selected": self.value() is None, "query_parts": kept, "value": self.value() or ""}


class SessionIdFilter(InputFilter):
    title = "session id"
    parameter_name = "session_id"
    field_path = "session__session_id"


class UserFilter(InputFilter):
    title = "user"
    parameter_name = "user"
    field_path = "session__user_id"


class ConversationFilter(InputFilter):
    title = "conversation"
    parameter_name = "conversation"
    field_path = "session__conversation_id"


class RangeFilter(admin.SimpleListFilter):
    """Buckets of a numeric field: (key, label, low inclusive, high exclusive)."""

    field_path = ""
    buckets: tuple[tuple[str, str, float | None, float | None], ...] = ()

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> Iterable[tuple[str, str]]:
        return [(key, label) for key, label, _, _ in self.buckets]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        for key, _, low, high in self.buckets:
            if self.value() == key:
                if low is not None:
                    queryset = queryset.filter(**{f"{self.field_path}__gte": low})
                if high is not None:
                    queryset = queryset.filter(**{f"{self.field_path}__lt": high})
        return queryset


class FinalLatencyFilter(RangeFilter):
    title = "final latency"
    parameter_name = "final_latency"
    field_path = "final_latency_ms"
    buckets = (
        ("fast", "under 300 ms", None, 300),
        ("target", "300-700 ms", 300, 700),
        ("slow", "700-1500 ms", 700, 1500),
        ("late", "1.5 s or more", 1500, None),
    )


class ConfidenceFilter(RangeFilter):
    title = "confidence"
    parameter_name = "confidence"
    field_path = "confidence"
    buckets = (
        ("low", "below 0.5", None, 0.5),
        ("medium", "0.5-0.8", 0.5, 0.8),
        ("high", "0.8 or more", 0.8, None),
    )


# --- CSV export -------------------------------------------------------------------------
