"""Reports over a time range, their CSV, and the admin dashboard that shows them."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from django.urls import reverse

from stt.models import ErrorEvent, Refinement, Report, SessionRecord, Utterance
from stt.reports import build_report, missing_periods, percentiles, reports_csv, scheduled_period

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)


@pytest.fixture
def day_of_history(settings):
    """Ten utterances on DAY (final latencies 100..1000 ms), one the day before."""
    settings.REFINE_MODEL = "base"
    session = SessionRecord.objects.create(session_id="s", started_at=DAY + timedelta(hours=9))
    for index in range(10):
        hour = 9 if index < 6 else 14
        utterance = Utterance.objects.create(
            utterance_id=uuid.uuid4(), session=session, text=f"utterance {index}", start_ms=0, end_ms=2000,
            audio_duration_ms=2000, first_partial_latency_ms=50 * (index + 1), final_latency_ms=100 * (index + 1),
            decode={"inference_ms": 200}, created_at=DAY + timedelta(hours=hour, minutes=index))
        if index < 4:  # four refined, one of them different
            Refinement.objects.create(utterance=utterance, model="base", status="done", text="x",
                                      differs=index == 0, word_error_rate=0.5 if index == 0 else 0.0,
                                      processing_ms=400)
    Utterance.objects.create(utterance_id=uuid.uuid4(), session=session, text="yesterday", start_ms=0, end_ms=1000,
                             audio_duration_ms=1000, final_latency_ms=9999, created_at=DAY - timedelta(hours=2))
    for category in ("audio_format", "audio_format", "processing"):
        ErrorEvent.objects.create(code="c", category=category, severity="low", recoverable=True, message="m",
                                  created_at=DAY + timedelta(hours=10))



def test_percentiles_are_nearest_rank():
    assert percentiles(range(1, 101)) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert percentiles([7]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    assert percentiles([]) == {}


class TestBuildReport:
    def test_the_figures_cover_the_range_and_nothing_else(self, day_of_history):
        report = build_report(DAY, DAY + timedelta(days=1))
        assert (report.utterances, report.sessions) == (10, 1)
        assert report.audio_hours == pytest.approx(20 / 3600, abs=1e-6)
        assert report.final_latency_ms == {"p50": 500.0, "p95": 1000.0, "p99": 1000.0}
        assert report.partial_latency_ms == {"p50": 250.0, "p95": 500.0, "p99": 500.0}
        assert report.real_time_factor == 0.1  # 200 ms of decoding per 2 s of audio
        assert report.refined_real_time_factor == 0.2
        assert report.errors_by_category == {"audio_format": 2, "processing": 1}
        assert (report.refined_utterances, report.disagreement_rate, report.mean_word_error_rate) == (4, 0.25, 0.125)

    def test_busiest_hours_come_from_the_hourly_counts(self, day_of_history):
        report = build_report(DAY, DAY + timedelta(days=1))
        assert len(report.hourly) == 24 and report.hourly[9]["utterances"] == 6
        assert [(h["hour"], h["utterances"]) for h in report.busiest_hours] == [(9, 6), (14, 4)]

    def test_rebuilding_a_period_replaces_its_report(self, day_of_history):
        first = build_report(DAY, DAY + timedelta(days=1))
        second = build_report(DAY, DAY + timedelta(days=1))
        assert first.pk == second.pk and Report.objects.count() == 1

    def test_an_empty_range_gives_an_empty_report(self, db):
        report = build_report(DAY, DAY + timedelta(hours=1))
        assert report.utterances == 0 and report.final_latency_ms == {} and report.disagreement_rate is None

    def test_a_backwards_range_is_refused(self, db):
        with pytest.raises(ValueError):
            build_report(DAY, DAY)


def test_the_scheduled_period_is_the_last_complete_one():
    now = datetime(2026, 11, 20, 13, 25, tzinfo=timezone.utc)
    assert scheduled_period(now, 24) == (DAY - timedelta(days=1), DAY)
    assert scheduled_period(now, 1) == (DAY + timedelta(hours=12), DAY + timedelta(hours=13))
    assert scheduled_period(now, 6) == (DAY + timedelta(hours=6), DAY + timedelta(hours=12))
    with pytest.raises(ValueError):
        scheduled_period(now, 5)  # would overlap across midnight


def test_missing_periods_are_the_recent_ones_without_a_report_oldest_first():
    now = datetime(2026, 11, 20, 13, 25, tzinfo=timezone.utc)
    built = {(DAY + timedelta(hours=10), DAY + timedelta(hours=11))}
    periods = missing_periods(now, built, limit=4, hours=1)
    assert [start.hour for start, _ in periods] == [9, 11, 12]


def test_the_csv_has_one_row_per_report(day_of_history):
    report = build_report(DAY, DAY + timedelta(days=1))
    rows = list(csv.DictReader(io.StringIO(reports_csv([report]))))
    assert len(rows) == 1
    assert rows[0]["utterances"] == "10" and rows[0]["final_latency_p95_ms"] == "1000.0"
    assert rows[0]["errors_by_category"] == "audio_format=2;processing=1"
    assert rows[0]["busiest_hours"] == "09h=6;14h=4"


class TestDashboard:
    url = reverse("admin:stt_report_dashboard")

    def test_it_draws_the_report_as_inline_svg(self, admin_client, day_of_history):
        report = build_report(DAY, DAY + timedelta(days=1))
        page = admin_client.get(f"{self.url}?report={report.pk}").content.decode()
        assert 'id="figure-utterances">10<' in page and 'id="figure-disagreement">25%<' in page
        assert page.count('<svg role="img"') == 3 and page.count('class="bar"') == 24 + 6 + 2
        assert "<script" not in page.split('id="content-main"')[1], "charts need no script"
        assert not re.search(r'(src|href)="https?://', page), "nothing is fetched from the internet"

    def test_without_reports_it_says_so(self, admin_client):
        assert 'id="no-report"' in admin_client.get(self.url).content.decode()

    def test_a_report_over_a_chosen_range_is_built_from_the_form(self, admin_client, day_of_history, eager_celery):
        response = admin_client.post(self.url, {"start": "2026-11-20T00:00", "end": "2026-11-21T00:00"})
        assert response.status_code == 302
        report = Report.objects.get()
        assert (report.kind, report.utterances, report.period_start) == ("manual", 10, DAY)
        assert f"?report={report.pk}" in response["Location"]

    def test_a_backwards_range_is_refused_by_the_form(self, admin_client, db):
        page = admin_client.post(self.url, {"start": "2026-11-21T00:00", "end": "2026-11-20T00:00"})
        assert "The end must be after the start." in page.content.decode() and not Report.objects.exists()

    def test_each_report_downloads_as_csv(self, admin_client, day_of_history):
        report = build_report(DAY, DAY + timedelta(days=1))
        response = admin_client.get(reverse("admin:stt_report_csv", args=[report.pk]))
        assert response["Content-Type"].startswith("text/csv")
        assert list(csv.DictReader(io.StringIO(response.content.decode())))[0]["utterances"] == "10"

    def test_staff_who_may_only_view_see_reports_but_cannot_build_them(self, client, django_user_model,
                                                                         day_of_history):
        from django.contrib.auth.models import Permission

        viewer = django_user_model.objects.create_user("viewer", password="pw-viewer-1", is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_report"))
        client.force_login(viewer)
        report = build_report(DAY, DAY + timedelta(days=1))
        page = client.get(f"{self.url}?report={report.pk}").content.decode()
        assert 'id="figure-utterances">10<' in page and "build-report" not in page
        denied = client.post(self.url, {"start": "2026-11-20T00:00", "end": "2026-11-21T00:00"})
        assert denied.status_code == 403 and Report.objects.count() == 1

    def test_the_dashboard_is_for_staff_only(self, client, db):
        assert client.get(self.url).status_code == 302  # to the login page
