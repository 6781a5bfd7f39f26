"""The history, read-only for analysts: utterances (with their audio), sessions, errors."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from stt.models import ErrorEvent, ErrorStatistic, ServerProcess, SessionRecord, Utterance
from stt.admin.base import ReadOnlyAdmin
from stt.admin.exports import export_sessions_csv, export_utterances_csv
from stt.admin.filters import ConfidenceFilter, ConversationFilter, FinalLatencyFilter, SessionIdFilter, UserFilter
from stt.admin.refinements import refine_utterances, refinement_summary


def audio_player(utterance: Utterance) -> str:
    if not utterance.audio:
        return "(no audio stored)"
    url = reverse("admin:stt_utterance_audio", args=[utterance.pk])
    return format_html('<audio controls preload="none" src="{}"></audio>', url)


@admin.register(Utterance)
class UtteranceAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "short_text", "session_link", "user", "source", "language", "confidence",
                    "final_latency_ms", "duration_s", "status")
    list_filter = (("created_at", admin.DateFieldListFilter), ("session__source", admin.ChoicesFieldListFilter),
                   SessionIdFilter, UserFilter, ConversationFilter,
                   "language", FinalLatencyFilter, ConfidenceFilter, "reason", "status")
    search_fields = ("text",)
    date_hierarchy = "created_at"
    list_select_related = ("session",)
    actions = (export_utterances_csv, refine_utterances)
    fieldsets = (
        (None, {"fields": ("text", "status", "error", "player", "word_timings")}),
        ("Refinement", {"fields": ("refinement_view",)}),
        ("Timing", {"fields": ("session_link", "start_ms", "end_ms", "audio_duration_ms", "reason",
                               "partial_count", "first_partial_latency_ms", "final_latency_ms", "created_at")}),
        ("Decode", {"fields": ("utterance_id", "language", "confidence", "model", "decode", "audio")}),
    )
    readonly_fields = ("text", "status", "error", "player", "word_timings", "refinement_view", "session_link", "start_ms", "end_ms", "audio_duration_ms",
                       "reason", "partial_count", "first_partial_latency_ms", "final_latency_ms", "created_at",
                       "utterance_id", "language", "confidence", "model", "decode", "audio")

    @admin.display(description="text")
    def short_text(self, obj: Utterance) -> str:
        return obj.text[:80] + ("…" if len(obj.text) > 80 else "") if obj.text else "(no text)"

    @admin.display(description="session", ordering="session__started_at")
    def session_link(self, obj: Utterance) -> str:
        url = reverse("admin:stt_sessionrecord_change", args=[obj.session_id])
        return format_html('<a href="{}">{}</a>', url, obj.session.session_id)

    @admin.display(description="user", ordering="session__user_id")
    def user(self, obj: Utterance) -> str:
        return obj.session.user_id

    @admin.display(description="source", ordering="session__source")
    def source(self, obj: Utterance) -> str:
        return obj.session.get_source_display()

    @admin.display(description="duration (s)", ordering="audio_duration_ms")
    def duration_s(self, obj: Utterance) -> float:
        return round(obj.audio_duration_ms / 1000, 2)

    @admin.display(description="audio")
    def player(self, obj: Utterance) -> str:
        return audio_player(obj)

    @admin.display(description="words")
    def word_timings(self, obj: Utterance) -> str:
        if not obj.words:
            return "(no word timestamps)"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((w.get("word", ""), w.get("start_ms", ""), w.get("end_ms", ""),
              obj.start_ms + int(w.get("start_ms", 0)), w.get("confidence", "")) for w in obj.words),
        )
        return format_html(
            '<table class="word-timings"><thead><tr><th>word</th><th>start ms</th><th>end ms</th>'
            "<th>session ms</th><th>confidence</th></tr></thead><tbody>{}</tbody></table>", rows)

    def has_queue_refinement_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("stt.queue_refinement")

    @admin.display(description="re-transcription")
    def refinement_view(self, obj: Utterance) -> str:
        refinements = list(obj.refinements.all())
        if not refinements:
            return "(not re-transcribed yet)"
        return format_html_join("", "{}", ((refinement_summary(r),) for r in refinements))

    def get_urls(self) -> list:
        return [
            path("<path:object_id>/audio/", self.admin_site.admin_view(self.audio_view), name="stt_utterance_audio"),
            *super().get_urls(),
        ]

    def audio_view(self, request: HttpRequest, object_id: str) -> FileResponse:
        utterance = self.get_object(request, object_id)
        if utterance is None or not utterance.audio:
            raise Http404("no audio for this utterance")
        if not self.has_view_permission(request, utterance):
            raise PermissionDenied
        try:
            handle = utterance.audio.open("rb")
        except FileNotFoundError:
            raise Http404("the audio file is gone") from None
        return FileResponse(handle, content_type="audio/flac",
                            filename=f"{utterance.utterance_id}.flac", as_attachment=False)


class UtteranceInline(admin.TabularInline):
    model = Utterance
    fields = ("start_ms", "utterance_link", "confidence", "final_latency_ms", "reason", "player")
    readonly_fields = fields
    ordering = ("start_ms",)
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="text")
    def utterance_link(self, obj: Utterance) -> str:
        url = reverse("admin:stt_utterance_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.text or "(no text)")

    @admin.display(description="audio")
    def player(self, obj: Utterance) -> str:
        return audio_player(obj)


@admin.register(SessionRecord)
class SessionRecordAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "session_id", "source", "user_id", "conversation_id", "utterances",
                    "close_reason", "duration_s", "profile")
    list_filter = (("started_at", admin.DateFieldListFilter), "source", "close_reason", "profile")
    search_fields = ("session_id", "user_id", "conversation_id", "client_address")
    date_hierarchy = "started_at"
    actions = (export_sessions_csv,)
    inlines = (UtteranceInline,)
    readonly_fields = ("connection_id", "session_id", "source", "user_id", "conversation_id", "client_address",
                       "profile", "model", "server_id", "started_at", "ended_at", "close_reason", "utterances",
                       "finals", "failed_finals",
                       "partials", "speech_onsets", "errors", "audio_received_s", "audio_transcribed_s",
                       "latency", "config", "effective_config")
    fields = readonly_fields

    @admin.display(description="duration (s)")
    def duration_s(self, obj: SessionRecord) -> float | None:
        if obj.ended_at is None:
            return None
        return round((obj.ended_at - obj.started_at).total_seconds(), 1)


@admin.register(ServerProcess)
class ServerProcessAdmin(ReadOnlyAdmin):
    """The server processes that held sessions, as their heartbeats left them
    (stt/liveness.py): a row lost without a clean stop had its sessions closed by the sweep."""

    list_display = ("hostname", "port", "pid", "started_at", "last_seen", "stopped_at", "lost_at")
    list_filter = (("started_at", admin.DateFieldListFilter),)
    search_fields = ("hostname", "server_id")
    readonly_fields = ("server_id", "hostname", "port", "pid", "started_at", "last_seen", "stopped_at", "lost_at")
    fields = readonly_fields


@admin.register(ErrorEvent)
class ErrorEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "code", "category", "severity", "recoverable", "session_label", "message")
    list_filter = ("category", "severity", "recoverable", ("created_at", admin.DateFieldListFilter))
    search_fields = ("code", "message", "session_label", "utterance_id")
    date_hierarchy = "created_at"
    readonly_fields = ("event_id", "created_at", "code", "category", "severity", "recoverable", "message",
                       "field", "utterance_id", "session", "session_label")
    fields = readonly_fields


@admin.register(ErrorStatistic)
class ErrorStatisticAdmin(ReadOnlyAdmin):
    list_display = ("category", "code", "count", "first_seen", "last_seen", "last_message")
    list_filter = ("category",)
    readonly_fields = ("category", "code", "count", "first_seen", "last_seen", "last_message")
    fields = readonly_fields


# --- runtime configuration: edited live -------------------------------------------------
