"""CSV exports of the history: streamed row by row, never built in memory."""

from __future__ import annotations

import csv
from typing import Any, Iterable, Iterator

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse



class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_response(filename: str, header: list[str], rows: Iterable[list[Any]]) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    lines = (writer.writerow(row) for row in _prepend(header, rows))
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _prepend(first: list[Any], rest: Iterable[list[Any]]) -> Iterator[list[Any]]:
    yield first
    yield from rest


UTTERANCE_COLUMNS = [
    "created_at", "session_id", "user_id", "conversation_id", "utterance_id", "text", "language",
    "confidence", "start_ms", "end_ms", "audio_duration_ms", "reason", "partial_count",
    "first_partial_latency_ms", "final_latency_ms", "model",
]


@admin.action(description="Export selected utterances as CSV")
def export_utterances_csv(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
    rows = (
        [u.created_at.isoformat(), u.session.session_id, u.session.user_id, u.session.conversation_id,
         str(u.utterance_id), u.text, u.language, u.confidence, u.start_ms, u.end_ms, u.audio_duration_ms,
         u.reason, u.partial_count, u.first_partial_latency_ms, u.final_latency_ms, u.model]
        for u in queryset.select_related("session").order_by("created_at").iterator()
    )
    return csv_response("utterances.csv", UTTERANCE_COLUMNS, rows)


SESSION_COLUMNS = [
    "started_at", "ended_at", "session_id", "user_id", "conversation_id", "client_address", "profile",
    "close_reason", "utterances", "finals", "failed_finals", "partials", "errors",
    "audio_received_s", "audio_transcribed_s", "final_p50_ms", "final_p95_ms",
]


@admin.action(description="Export selected sessions as CSV")
def export_sessions_csv(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
    rows = (
        [s.started_at.isoformat(), s.ended_at.isoformat() if s.ended_at else "", s.session_id, s.user_id,
         s.conversation_id, s.client_address, s.profile, s.close_reason, s.utterances, s.finals,
         s.failed_finals, s.partials, s.errors, s.audio_received_s, s.audio_transcribed_s,
         (s.latency.get("final") or {}).get("p50_ms", ""), (s.latency.get("final") or {}).get("p95_ms", "")]
        for s in queryset.order_by("started_at").iterator()
    )
    return csv_response("sessions.csv", SESSION_COLUMNS, rows)


# One action queues at most this many: a slip of the select-all box should not queue
