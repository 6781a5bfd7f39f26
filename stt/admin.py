"""Django admin: runtime profiles for admins; sessions, utterances and errors for analysts.

History is read-only here (it records what happened); staff with the delete
permission may still remove records. Utterance audio is served only through the
admin, to staff who may view utterances.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, Iterable, Iterator

from django.conf import settings
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone as django_timezone
from django.utils.html import format_html, format_html_join

from stt.models import (
    ApiKey, ErrorEvent, ErrorStatistic, Refinement, Report, RuntimeProfile, SessionRecord, Utterance,
)
from stt.runtime_config import RuntimeValues

admin.site.site_header = "Fasttalk STT administration"
admin.site.site_title = "Fasttalk STT"
admin.site.index_title = "Speech-to-text service"


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
# a year of audio.
MAX_REFINEMENTS_PER_ACTION = 500


@admin.action(description="Re-transcribe selected utterances with the refinement model",
              permissions=["queue_refinement"])
def refine_utterances(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    from stt.tasks import queue_refinements

    ids = [str(u) for u in queryset.values_list("utterance_id", flat=True)[:MAX_REFINEMENTS_PER_ACTION + 1]]
    if len(ids) > MAX_REFINEMENTS_PER_ACTION:
        modeladmin.message_user(request, f"Select at most {MAX_REFINEMENTS_PER_ACTION} utterances at a time.",
                                messages.ERROR)
        return
    queued = queue_refinements(ids)
    modeladmin.message_user(
        request, f"Queued {queued} re-transcription(s) with {settings.REFINE_MODEL}; "
                 f"{len(ids) - queued} already done or under way.", messages.SUCCESS)


def diff_html(diff: list[dict[str, Any]]) -> str:
    """The word diff with the live words struck out and the refined ones underlined."""
    parts = []
    for run in diff:
        live, refined = " ".join(run["live"]), " ".join(run["refined"])
        if run["op"] == "equal":
            parts.append(format_html("{}", live))
        else:
            if live:
                parts.append(format_html('<del class="live">{}</del>', live))
            if refined:
                parts.append(format_html('<ins class="refined">{}</ins>', refined))
    return format_html_join(" ", "{}", ((p,) for p in parts))


def refinement_summary(refinement: Refinement) -> str:
    header = format_html("<p><b>{}</b>: {} (chunks {}, attempts {})</p>", refinement.model,
                         refinement.get_status_display(), refinement.progress, refinement.attempts)
    if refinement.status != Refinement.Status.DONE:
        if not refinement.error:
            return header
        return format_html('{}<p class="refinement-error">{}</p>', header, refinement.error)
    return header + format_html(
        '<p class="refined-text">{}</p><p class="word-diff">{}</p>'
        "<p>word error rate of the live text against it: {}%; decoded in {} ms (real-time factor {})</p>",
        refinement.text, diff_html(refinement.diff), round((refinement.word_error_rate or 0) * 100, 1),
        refinement.processing_ms, refinement.real_time_factor)


# --- history: read-only -----------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """What happened is not edited; it may be deleted by staff allowed to."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def audio_player(utterance: Utterance) -> str:
    if not utterance.audio:
        return "(no audio stored)"
    url = reverse("admin:stt_utterance_audio", args=[utterance.pk])
    return format_html('<audio controls preload="none" src="{}"></audio>', url)


@admin.register(Utterance)
class UtteranceAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "short_text", "session_link", "user", "language", "confidence",
                    "final_latency_ms", "duration_s", "status")
    list_filter = (("created_at", admin.DateFieldListFilter), SessionIdFilter, UserFilter, ConversationFilter,
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
    list_display = ("started_at", "session_id", "user_id", "conversation_id", "utterances", "close_reason",
                    "duration_s", "profile")
    list_filter = (("started_at", admin.DateFieldListFilter), "close_reason", "profile")
    search_fields = ("session_id", "user_id", "conversation_id", "client_address")
    date_hierarchy = "started_at"
    actions = (export_sessions_csv,)
    inlines = (UtteranceInline,)
    readonly_fields = ("connection_id", "session_id", "user_id", "conversation_id", "client_address", "profile",
                       "model", "started_at", "ended_at", "close_reason", "utterances", "finals", "failed_finals",
                       "partials", "speech_onsets", "errors", "audio_received_s", "audio_transcribed_s",
                       "latency", "config", "effective_config")
    fields = readonly_fields

    @admin.display(description="duration (s)")
    def duration_s(self, obj: SessionRecord) -> float | None:
        if obj.ended_at is None:
            return None
        return round((obj.ended_at - obj.started_at).total_seconds(), 1)


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


@admin.register(RuntimeProfile)
class RuntimeProfileAdmin(admin.ModelAdmin):
    list_display = ("name", "is_default", "description", "vad_threshold", "partial_chunk_duration",
                    "final_chunk_duration", "final_beam_size", "updated_at")
    list_editable = ()
    search_fields = ("name", "description")
    readonly_fields = ("effective_values", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "is_default")}),
        ("Voice activity detection", {"fields": ("vad_threshold", "vad_min_speech_ms", "vad_speech_pad_ms")}),
        ("Partial and final triggers", {"fields": ("min_audio_length", "partial_chunk_duration",
                                                   "final_chunk_duration", "max_silence_duration",
                                                   "max_utterance_duration")}),
        ("Decoding", {"fields": ("partial_beam_size", "final_beam_size", "default_language")}),
        ("Limits and error thresholds", {"fields": ("max_connections", "max_session_errors",
                                                    "transcription_failure_threshold", "gpu_failure_threshold")}),
        ("In force", {"fields": ("effective_values", "updated_at"),
                      "description": "New sessions pick up a saved change within "
                                     "RUNTIME_CONFIG_REFRESH_SECONDS, in every server process."}),
    )

    @admin.display(description="effective values (empty fields inherit the server settings)")
    def effective_values(self, obj: RuntimeProfile) -> str:
        base = RuntimeValues.from_settings()
        values = base.overlaid(obj.name, obj.overrides()) if obj.pk else base
        return format_html_join(
            "", "<div><code>{}</code> = {}{}</div>",
            ((key, value, "" if obj.pk and key in obj.overrides() else " (server setting)")
             for key, value in values.as_dict().items() if key != "profile"),
        )


# --- re-transcriptions and reports (Celery) ---------------------------------------------


@admin.action(description="Queue failed re-transcriptions again", permissions=["queue_refinement"])
def retry_refinements(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    from stt.tasks import queue_refinements

    queued = 0
    for model_name in set(queryset.values_list("model", flat=True)):
        ids = [str(u) for u in queryset.filter(model=model_name, status=Refinement.Status.FAILED)
               .values_list("utterance__utterance_id", flat=True)]
        queued += queue_refinements(ids, model=model_name)
    modeladmin.message_user(request, f"Queued {queued} failed re-transcription(s) again.", messages.SUCCESS)


@admin.register(Refinement)
class RefinementAdmin(ReadOnlyAdmin):
    list_display = ("queued_at", "utterance_link", "model", "status", "progress", "attempts", "differs",
                    "word_error_rate", "real_time_factor", "finished_at")
    list_filter = ("status", "model", "differs", ("finished_at", admin.DateFieldListFilter))
    search_fields = ("text", "utterance__text", "utterance__utterance_id")
    list_select_related = ("utterance",)
    actions = (retry_refinements,)

    def has_queue_refinement_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("stt.queue_refinement")

    readonly_fields = ("utterance_link", "model", "status", "progress", "attempts", "summary", "language",
                       "word_error_rate", "differs", "processing_ms", "real_time_factor", "task_id", "error",
                       "queued_at", "started_at", "finished_at")
    fields = readonly_fields

    @admin.display(description="utterance")
    def utterance_link(self, obj: Refinement) -> str:
        url = reverse("admin:stt_utterance_change", args=[obj.utterance_id])
        return format_html('<a href="{}">{}</a>', url, obj.utterance.text[:80] or "(no text)")

    @admin.display(description="chunks done")
    def progress(self, obj: Refinement) -> str:
        return obj.progress

    @admin.display(description="result")
    def summary(self, obj: Refinement) -> str:
        return refinement_summary(obj)


class BuildReportForm(forms.Form):
    start = forms.DateTimeField(widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
                                help_text="UTC")
    end = forms.DateTimeField(widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), help_text="UTC")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end:
            if end <= start:
                raise forms.ValidationError("The end must be after the start.")
            if end - start > timedelta(days=366):
                raise forms.ValidationError("A report covers at most 366 days.")
        return data


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=dt_timezone.utc) if value.tzinfo is None else value.astimezone(dt_timezone.utc)


@admin.action(description="Download selected reports as CSV")
def export_reports_csv(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
    return report_csv_response(queryset.order_by("period_start"), "reports.csv")


@admin.action(description="Rebuild selected reports", permissions=["build_report"])
def rebuild_reports(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    from stt.tasks import build_report

    for report in queryset:
        build_report.delay(report.period_start.isoformat(), report.period_end.isoformat(), report.kind)
    modeladmin.message_user(request, f"Rebuilding {queryset.count()} report(s).", messages.SUCCESS)


def report_csv_response(reports: Iterable[Report], filename: str) -> HttpResponse:
    from stt.reports import reports_csv

    response = HttpResponse(reports_csv(reports), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@admin.register(Report)
class ReportAdmin(ReadOnlyAdmin):
    list_display = ("period_start", "period_end", "kind", "utterances", "audio_hours", "disagreement_rate",
                    "built_at", "dashboard_link")
    list_filter = ("kind", ("period_start", admin.DateFieldListFilter))
    date_hierarchy = "period_start"
    actions = (export_reports_csv, rebuild_reports)
    change_list_template = "admin/stt/report/change_list.html"
    readonly_fields = ("kind", "period_start", "period_end", "built_at", "build_ms", "sessions", "utterances",
                       "audio_hours", "partial_latency_ms", "final_latency_ms", "real_time_factor",
                       "refined_real_time_factor", "errors_by_category", "refined_utterances",
                       "disagreement_rate", "mean_word_error_rate", "hourly", "dashboard_link")
    fields = readonly_fields

    def has_build_report_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("stt.build_report")

    @admin.display(description="dashboard")
    def dashboard_link(self, obj: Report) -> str:
        return format_html('<a href="{}?report={}">chart</a>', reverse("admin:stt_report_dashboard"), obj.pk)

    def get_urls(self) -> list:
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="stt_report_dashboard"),
            path("<int:report_id>/csv/", self.admin_site.admin_view(self.csv_view), name="stt_report_csv"),
            *super().get_urls(),
        ]

    def csv_view(self, request: HttpRequest, report_id: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        report = Report.objects.filter(pk=report_id).first()
        if report is None:
            raise Http404("no such report")
        return report_csv_response([report], f"report-{report.period_start:%Y%m%d%H%M}.csv")

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        from stt.reports import dashboard_charts
        from stt.tasks import build_report

        if not self.has_view_permission(request):
            raise PermissionDenied
        may_build = self.has_build_report_permission(request)
        if request.method == "POST":
            if not may_build:
                raise PermissionDenied
            form = BuildReportForm(request.POST)
            if form.is_valid():
                start, end = _as_utc(form.cleaned_data["start"]), _as_utc(form.cleaned_data["end"])
                result = build_report.delay(start.isoformat(), end.isoformat(), Report.Kind.MANUAL)
                if build_report.app.conf.task_always_eager:  # embedded mode: built already
                    return redirect(f"{reverse('admin:stt_report_dashboard')}?report={result.get()['report_id']}")
                self.message_user(request, "The report is being built by a worker; this page shows it "
                                           "when you reload.", messages.SUCCESS)
                return redirect(reverse("admin:stt_report_dashboard"))
        else:
            now = django_timezone.now().astimezone(dt_timezone.utc).replace(second=0, microsecond=0)
            form = BuildReportForm(initial={"start": (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
                                            "end": now.strftime("%Y-%m-%dT%H:%M")})
        reports = Report.objects.all()
        report = None
        if request.GET.get("report", "").isdigit():
            report = reports.filter(pk=int(request.GET["report"])).first()
        report = report or reports.order_by("-built_at").first()
        context = {
            **self.admin_site.each_context(request),
            "title": "Reports dashboard",
            "opts": self.model._meta,
            "form": form if may_build else None,
            "report": report,
            "charts": dashboard_charts(report) if report else [],
            "recent": reports.order_by("-built_at")[:20],
        }
        return TemplateResponse(request, "admin/stt/report_dashboard.html", context)


# --- API keys -----------------------------------------------------------------------------


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
