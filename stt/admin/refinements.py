"""Re-transcriptions: queueing them from the utterance list, showing them, retrying failed ones."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from stt.models import Refinement
from stt.admin.base import ReadOnlyAdmin


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
