"""Reports over a time range, from the history: what analysts see on the admin dashboard.

`build_report` is plain Django code (Celery's tasks call it); it is idempotent per
(kind, period): rebuilding a period replaces its row.
"""

from __future__ import annotations

import csv
import io
import math
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from django.conf import settings
from django.db import IntegrityError
from django.db.models import Count


def percentiles(values: Iterable[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles; {} for no values."""
    ordered = sorted(values)
    if not ordered:
        return {}
    result = {}
    for point in points:
        rank = max(1, math.ceil(point / 100 * len(ordered)))
        result[f"p{point}"] = float(ordered[rank - 1])
    return result


def build_report(start: datetime, end: datetime, kind: str = "manual") -> Any:
    from stt.models import ErrorEvent, Refinement, Report, SessionRecord, Utterance

    if end <= start:
        raise ValueError("the report's end must be after its start")
    began = time.perf_counter()
    # Finals sent; a failed final (kept for its audio) has no transcript or latency to count.
    utterances = Utterance.objects.filter(created_at__gte=start, created_at__lt=end, status=Utterance.Status.FINAL)
    # Only the columns needed (one JSON key, not the whole decode document).
    rows = list(utterances.values_list("created_at", "audio_duration_ms", "first_partial_latency_ms",
                                       "final_latency_ms", "decode__inference_ms"))
    audio_ms = sum(row[1] for row in rows)
    timed = [(float(row[4]), row[1]) for row in rows if row[4] is not None]
    hourly = [{"hour": hour, "utterances": 0, "audio_seconds": 0.0} for hour in range(24)]
    for created_at, duration_ms, *_ in rows:
        bucket = hourly[created_at.astimezone(timezone.utc).hour]
        bucket["utterances"] += 1
        bucket["audio_seconds"] = round(bucket["audio_seconds"] + duration_ms / 1000, 3)

    refined = Refinement.objects.filter(utterance__in=utterances, model=settings.REFINE_MODEL,
                                        status=Refinement.Status.DONE)
    refined_rows = list(refined.values_list("differs", "word_error_rate", "processing_ms",
                                            "utterance__audio_duration_ms"))
    refined_audio_ms = sum(row[3] for row in refined_rows if row[2] is not None)
    errors = dict(ErrorEvent.objects.filter(created_at__gte=start, created_at__lt=end)
                  .values_list("category").annotate(count=Count("id")).order_by("category"))

    values = {
        "built_at": datetime.now(timezone.utc),
        "sessions": SessionRecord.objects.filter(started_at__gte=start, started_at__lt=end).count(),
        "utterances": len(rows),
        "audio_hours": round(audio_ms / 3_600_000, 6),
        "partial_latency_ms": percentiles(row[2] for row in rows if row[2] is not None),
        "final_latency_ms": percentiles(row[3] for row in rows),
        "real_time_factor": (round(sum(ms for ms, _ in timed) / sum(d for _, d in timed), 4)
                             if timed and sum(d for _, d in timed) else None),
        "refined_real_time_factor": (round(sum(row[2] for row in refined_rows if row[2] is not None)
                                           / refined_audio_ms, 4) if refined_audio_ms else None),
        "errors_by_category": errors,
        "refined_utterances": len(refined_rows),
        "disagreement_rate": (round(sum(1 for row in refined_rows if row[0]) / len(refined_rows), 4)
                              if refined_rows else None),
        "mean_word_error_rate": (round(sum(row[1] or 0.0 for row in refined_rows) / len(refined_rows), 4)
                                 if refined_rows else None),
        "hourly": hourly,
    }
    values["build_ms"] = round((time.perf_counter() - began) * 1000)
    try:
        report, _ = Report.objects.update_or_create(kind=kind, period_start=start, period_end=end, defaults=values)
    except IntegrityError:  # built at the same moment by another request: update that one
        report, _ = Report.objects.update_or_create(kind=kind, period_start=start, period_end=end, defaults=values)
    return report


def scheduled_period(now: datetime, hours: int | None = None) -> tuple[datetime, datetime]:
    """The last complete period of REPORT_PERIOD_HOURS (a divisor of 24) before `now`,
    aligned to UTC midnight (24 h: yesterday; 1 h: the previous hour)."""
    hours = hours or settings.REPORT_PERIOD_HOURS
    if hours <= 0 or 24 % hours:
        raise ValueError("REPORT_PERIOD_HOURS must divide 24 (1, 2, 3, 4, 6, 8, 12 or 24)")
    now = now.astimezone(timezone.utc)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = int((now - midnight).total_seconds() // 3600)
    end = midnight + timedelta(hours=(elapsed // hours) * hours)
    return end - timedelta(hours=hours), end


def missing_periods(now: datetime, built: set[tuple[datetime, datetime]], limit: int = 7,
                    hours: int | None = None) -> list[tuple[datetime, datetime]]:
    """The last `limit` complete periods, oldest first, without a scheduled report:
    beat catches up on periods it missed while it was down."""
    hours = hours or settings.REPORT_PERIOD_HOURS
    start, end = scheduled_period(now, hours)
    periods = [(start - timedelta(hours=hours * back), end - timedelta(hours=hours * back)) for back in range(limit)]
    return [period for period in reversed(periods) if period not in built]


CSV_FIELDS = (
    "kind", "period_start", "period_end", "built_at", "sessions", "utterances", "audio_hours",
    "partial_latency_p50_ms", "partial_latency_p95_ms", "partial_latency_p99_ms",
    "final_latency_p50_ms", "final_latency_p95_ms", "final_latency_p99_ms",
    "real_time_factor", "refined_real_time_factor", "refined_utterances", "disagreement_rate",
    "mean_word_error_rate", "errors_by_category", "busiest_hours",
)


def reports_csv(reports: Iterable[Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for report in reports:
        writer.writerow([
            report.kind, report.period_start.isoformat(), report.period_end.isoformat(),
            report.built_at.isoformat(), report.sessions, report.utterances, report.audio_hours,
            *(report.partial_latency_ms.get(p, "") for p in ("p50", "p95", "p99")),
            *(report.final_latency_ms.get(p, "") for p in ("p50", "p95", "p99")),
            _blank(report.real_time_factor), _blank(report.refined_real_time_factor),
            report.refined_utterances, _blank(report.disagreement_rate), _blank(report.mean_word_error_rate),
            ";".join(f"{k}={v}" for k, v in sorted(report.errors_by_category.items())),
            ";".join(f"{h['hour']:02d}h={h['utterances']}" for h in report.busiest_hours),
        ])
    return out.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


# --- charts: inline SVG, so the dashboard needs nothing from the internet -------------


def bar_chart(labels: list[str], values: list[float], width: int = 640, height: int = 200,
              unit: str = "") -> dict[str, Any]:
    """Geometry of a bar chart for the dashboard template (rendered as inline SVG)."""
    top = max(values, default=0) or 1
    margin_bottom, margin_top = 24, 16
    plot_height = height - margin_bottom - margin_top
    slot = width / max(1, len(values))
    bars = []
    for index, (label, value) in enumerate(zip(labels, values)):
        bar_height = plot_height * value / top
        bar_width = min(slot * 0.7, 80.0)
        bars.append({
            "x": round(index * slot + (slot - bar_width) / 2, 1), "width": round(bar_width, 1),
            "y": round(margin_top + plot_height - bar_height, 1), "height": round(bar_height, 1),
            "label": label, "value": value, "text": f"{value:g}{unit}",
            "label_x": round(index * slot + slot / 2, 1), "label_y": height - 8,
            "value_y": round(margin_top + plot_height - bar_height - 4, 1),
        })
    return {"width": width, "height": height, "bars": bars, "baseline": height - margin_bottom}


def dashboard_charts(report: Any) -> list[dict[str, Any]]:
    hours = report.hourly or [{"hour": h, "utterances": 0} for h in range(24)]
    latency_labels, latency_values = [], []
    for name, data in (("partial", report.partial_latency_ms), ("final", report.final_latency_ms)):
        for point in ("p50", "p95", "p99"):
            latency_labels.append(f"{name} {point}")
            latency_values.append(float(data.get(point, 0)))
    errors = report.errors_by_category or {}
    return [
        {"title": "Utterances by hour of day (UTC)",
         "chart": bar_chart([f"{h['hour']:02d}" for h in hours], [h["utterances"] for h in hours])},
        {"title": "Latency percentiles (ms)",
         "chart": bar_chart(latency_labels, latency_values, unit="")},
        {"title": "Errors by category",
         "chart": bar_chart(list(errors) or ["none"], [float(v) for v in errors.values()] or [0.0])},
    ]

