"""The Celery tasks and how finals are queued for re-transcription, run in-process
(eager) here; tests/test_celery_worker.py runs them on a real worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from stt import tasks
from stt.evaluation import word_error_rate
from stt.models import Refinement, Report, SessionRecord, Utterance
from stt.persistence import encode_flac
from stt.reports import scheduled_period
from tests.conftest import JFK_TEXT



def stored_utterance(audio, text: str, created_at: datetime) -> Utterance:
    session = SessionRecord.objects.create(session_id="s", started_at=created_at)
    utterance_id = uuid.uuid4()
    name = default_storage.save(f"utterances/t/{utterance_id}.flac", ContentFile(encode_flac(audio)))
    return Utterance.objects.create(utterance_id=utterance_id, session=session, text=text, language="en",
                                    start_ms=0, end_ms=1000, audio_duration_ms=1000, final_latency_ms=300,
                                    audio=name, created_at=created_at)


@pytest.mark.django_db
class TestQueueing:
    def test_a_queued_utterance_is_refined_once(self, eager_celery, jfk_audio):
        utterance = stored_utterance(jfk_audio, JFK_TEXT, datetime.now(timezone.utc))
        assert tasks.queue_refinements([str(utterance.utterance_id)]) == 1
        assert tasks.queue_refinements([str(utterance.utterance_id)]) == 0, "done: not queued again"
        refinement = Refinement.objects.get()
        assert refinement.status == "done" and refinement.attempts == 1

    def test_a_failed_refinement_is_queued_again(self, eager_celery, jfk_audio):
        utterance = stored_utterance(jfk_audio, JFK_TEXT, datetime.now(timezone.utc))
        Refinement.objects.create(utterance=utterance, model="base", status="failed", error="worker lost")
        assert tasks.queue_refinements([str(utterance.utterance_id)]) == 1
        assert Refinement.objects.get().status == "done"

    def test_the_sweep_queues_recent_finals_that_have_no_refinement(self, eager_celery, settings, jfk_audio):
        settings.REFINE_FINALS = True
        now = datetime.now(timezone.utc)
        missed = stored_utterance(jfk_audio[:48000], "and so my fellow", now - timedelta(minutes=5))
        too_old = stored_utterance(jfk_audio[:16000], "and", now - timedelta(days=3))
        assert tasks.refine_missed_finals.delay().get() == {"queued": 1, "abandoned": 0, "gave_up": 0}
        assert list(Refinement.objects.values_list("utterance", flat=True)) == [missed.pk]
        assert not too_old.refinements.exists()

    def test_the_sweep_queues_abandoned_refinements_again_a_bounded_number_of_times(self, eager_celery, settings,
                                                                                   jfk_audio):
        settings.REFINE_FINALS, settings.REFINE_MAX_ATTEMPTS = True, 3
        now = datetime.now(timezone.utc)
        long_ago = now - timedelta(seconds=settings.CELERY_VISIBILITY_TIMEOUT + settings.CELERY_TASK_TIME_LIMIT + 60)
        killed = stored_utterance(jfk_audio[:48000], "and so my fellow", now - timedelta(minutes=5))
        Refinement.objects.create(utterance=killed, model="base", status="running", attempts=1, queued_at=long_ago)
        hopeless = stored_utterance(jfk_audio[:16000], "and", now - timedelta(minutes=5))
        Refinement.objects.create(utterance=hopeless, model="base", status="running", attempts=3, queued_at=long_ago)
        fresh = stored_utterance(jfk_audio[:16000], "and", now - timedelta(minutes=5))
        Refinement.objects.create(utterance=fresh, model="base", status="running", attempts=1, queued_at=now)
        assert tasks.refine_missed_finals.delay().get() == {"queued": 1, "abandoned": 1, "gave_up": 1}
        statuses = dict(Refinement.objects.values_list("utterance", "status"))
        assert statuses == {killed.pk: "done", hopeless.pk: "failed", fresh.pk: "running"}
        assert Refinement.objects.get(utterance=hopeless).error == "gave up after 3 attempts without a result"

    def test_the_admin_action_queues_the_selection(self, eager_celery, admin_client, jfk_audio):
        live = "And so my fellow Americans ask not what your county can do for you"
        utterance = stored_utterance(jfk_audio, live, datetime.now(timezone.utc))
        response = admin_client.post(reverse("admin:stt_utterance_changelist"), {
            "action": "refine_utterances", "_selected_action": [utterance.pk]}, follow=True)
        assert "Queued 1 re-transcription(s)" in response.content.decode()
        page = admin_client.get(reverse("admin:stt_utterance_change", args=[utterance.pk])).content.decode()
        assert '<del class="live">county</del>' in page and '<ins class="refined">country</ins>' in page
        listing = admin_client.get(reverse("admin:stt_refinement_changelist")).content.decode()
        assert '<td class="field-progress">1/1</td>' in listing, "progress in chunks is shown"

    def test_a_refinement_under_way_renders_as_html_not_as_escaped_tags(self, admin_client, jfk_audio):
        utterance = stored_utterance(jfk_audio, JFK_TEXT, datetime.now(timezone.utc))
        Refinement.objects.create(utterance=utterance, model="base", status="running", chunks_total=3,
                                  chunks_done=1, attempts=1)
        page = admin_client.get(reverse("admin:stt_utterance_change", args=[utterance.pk])).content.decode()
        assert "<p><b>base</b>: Running (chunks 1/3, attempts 1)</p>" in page and "&lt;p&gt;" not in page

    def test_queueing_needs_its_own_permission_not_just_view(self, client, django_user_model, jfk_audio):
        from django.contrib.auth.models import Permission

        viewer = django_user_model.objects.create_user("viewer", password="pw-viewer-1", is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_utterance"))
        client.force_login(viewer)
        utterance = stored_utterance(jfk_audio, JFK_TEXT, datetime.now(timezone.utc))
        page = client.get(reverse("admin:stt_utterance_changelist")).content.decode()
        assert "refine_utterances" not in page, "the action is not offered"
        client.post(reverse("admin:stt_utterance_changelist"),
                    {"action": "refine_utterances", "_selected_action": [utterance.pk]})
        assert not Refinement.objects.exists()

    def test_a_corrupt_audio_file_fails_the_refinement_with_its_reason(self, eager_celery, jfk_audio):
        utterance = stored_utterance(jfk_audio, JFK_TEXT, datetime.now(timezone.utc))
        with default_storage.open(utterance.audio.name, "wb") as handle:
            handle.write(b"fLaC this is not audio")
        assert tasks.queue_refinements([str(utterance.utterance_id)]) == 1
        refinement = Refinement.objects.get()
        assert refinement.status == "failed" and refinement.finished_at is not None
        assert "Error" in refinement.error, refinement.error

    def test_a_refinement_is_decoded_by_the_model_it_is_keyed_by(self, eager_celery, settings, jfk_audio):
        settings.REFINE_MODEL = "base"
        utterance = stored_utterance(jfk_audio, JFK_TEXT, datetime.now(timezone.utc))
        assert tasks.queue_refinements([str(utterance.utterance_id)], model="tiny.en") == 1
        refinement = Refinement.objects.get()
        assert refinement.model == "tiny.en" and refinement.status == "done"
        from stt.refinement import get_refiner

        assert get_refiner("tiny.en").loads == 1, "tiny.en decoded it, not REFINE_MODEL"


@pytest.mark.django_db
class TestPeriodicTasks:
    def test_the_scheduled_reports_are_built_once_per_period_catching_up_a_week(self, eager_celery, settings):
        settings.REPORT_PERIOD_HOURS = 24
        first = tasks.build_scheduled_reports.delay().get()
        assert first["built"] == 7, "beat catches up on the last week of periods"
        assert tasks.build_scheduled_reports.delay().get()["built"] == 0
        latest = Report.objects.order_by("-period_start").first()
        start, end = scheduled_period(datetime.now(timezone.utc))
        assert (latest.kind, latest.period_start, latest.period_end) == ("scheduled", start, end)
        starts = sorted(Report.objects.values_list("period_start", flat=True))
        assert all(b - a == timedelta(days=1) for a, b in zip(starts, starts[1:])), "consecutive, no overlap"

    def test_the_retention_task_purges_old_history(self, eager_celery, settings, jfk_audio):
        settings.RETENTION_DAYS = 7
        old = stored_utterance(jfk_audio[:16000], "old", datetime.now(timezone.utc) - timedelta(days=30))
        old.session.ended_at = old.created_at
        old.session.save()
        counts = tasks.purge_history.delay().get()
        assert counts["utterances"] == 1 and not Utterance.objects.exists()


@pytest.mark.django_db(transaction=True)
async def test_a_streamed_final_is_queued_for_refinement_once_written(eager_celery, settings, jfk_audio):
    """The history writer queues each new final; in the embedded mode the task runs
    on the dispatch thread, never on the event loop."""
    from channels.db import database_sync_to_async
    from stt.persistence import FinalFacts, SessionFacts, final_write, history

    settings.REFINE_FINALS = True
    now = datetime.now(timezone.utc)
    session = SessionFacts(connection_id=str(uuid.uuid4()), session_id="s-9", user_id=None, conversation_id=None,
                           client_address=None, profile="", config={}, effective_config={}, model="tiny.en",
                           started_at=now)
    utterance_id = str(uuid.uuid4())
    facts = FinalFacts(session=session, utterance_id=utterance_id, text=JFK_TEXT, words=[], confidence=0.9,
                       language="en", start_ms=0, end_ms=11000, reason="end_session", partial_count=3,
                       first_partial_latency_ms=200, final_latency_ms=500, decode={}, audio=jfk_audio,
                       created_at=now)
    assert await history.write(final_write(facts))

    def refined() -> Refinement | None:
        return Refinement.objects.filter(utterance__utterance_id=utterance_id, status="done").first()

    deadline = time.monotonic() + 60
    refinement = None
    while refinement is None and time.monotonic() < deadline:
        refinement = await database_sync_to_async(refined)()
        await asyncio.sleep(0.2)
    assert refinement is not None, "the final was re-transcribed"
    assert word_error_rate(JFK_TEXT, refinement.text) == 0.0
