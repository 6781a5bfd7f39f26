"""Reports built by Celery beat or on demand: list, build, rebuild, download."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, Iterable

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone as django_timezone
from django.utils.html import format_html

from stt.models import Report
from stt.admin.base import ReadOnlyAdmin


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
