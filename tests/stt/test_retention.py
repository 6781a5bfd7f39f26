"""Retention: manage.py purge_history deletes what is older than RETENTION_DAYS."""

import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.utils import timezone

from stt.models import ErrorEvent, SessionRecord, Utterance
from stt.persistence import encode_flac

pytestmark = pytest.mark.django_db


def make_session(days_ago: float, utterance_days_ago: list[float], ended: bool = True) -> SessionRecord:
    started = timezone.now() - timedelta(days=days_ago)
    session = SessionRecord.objects.create(session_id=f"s-{days_ago}", started_at=started,
                                           ended_at=started + timedelta(minutes=5) if ended else None)
    for age in utterance_days_ago:
        name = default_storage.save(f"utterances/{uuid.uuid4()}.flac", ContentFile(encode_flac(np.zeros(1600))))
        Utterance.objects.create(utterance_id=uuid.uuid4(), session=session, text=f"{age} days old", start_ms=0,
                                 end_ms=100, audio_duration_ms=100, final_latency_ms=1, audio=name,
                                 created_at=timezone.now() - timedelta(days=age))
    ErrorEvent.objects.create(session=session, session_label=session.session_id, code="invalid_json",
                              category="connection", severity="low", recoverable=True, message="x",
                              created_at=started)
    return session


def test_old_history_and_its_audio_go_new_history_stays(settings, capsys, django_capture_on_commit_callbacks):
    settings.RETENTION_DAYS = 30
    old = make_session(40, [40, 40])
    new = make_session(2, [2])
    old_files = [u.audio.name for u in old.utterance_set.all()]
    with django_capture_on_commit_callbacks(execute=True):  # files go once the deletion commits
        call_command("purge_history")
    assert "Deleted 1 sessions, 2 utterances (2 audio files) and 1 error events" in capsys.readouterr().out
    assert not SessionRecord.objects.filter(pk=old.pk).exists()
    assert list(Utterance.objects.values_list("text", flat=True)) == ["2 days old"]
    assert not any(default_storage.exists(name) for name in old_files)
    assert default_storage.exists(new.utterance_set.get().audio.name)


def test_a_long_session_keeps_its_recent_utterances(settings):
    session = make_session(40, [40, 1])
    call_command("purge_history", days=30)
    session.refresh_from_db()
    assert list(session.utterance_set.values_list("text", flat=True)) == ["1 days old"]


def test_a_session_that_may_still_run_is_kept_one_that_never_ended_goes(settings):
    running = make_session(30.5, [], ended=False)
    crashed = make_session(40, [], ended=False)
    call_command("purge_history", days=30)
    assert SessionRecord.objects.filter(pk=running.pk).exists()
    assert not SessionRecord.objects.filter(pk=crashed.pk).exists()


def test_deleting_an_utterance_anywhere_removes_its_audio(django_capture_on_commit_callbacks):
    session = make_session(1, [1])
    name = session.utterance_set.get().audio.name
    with django_capture_on_commit_callbacks(execute=True):
        session.delete()  # e.g. an admin deleting a session: its utterances cascade
    assert not default_storage.exists(name)


def test_dry_run_and_keep_forever(capsys):
    make_session(40, [40])
    call_command("purge_history", days=30, dry_run=True)
    assert "Would delete 1 sessions, 1 utterances" in capsys.readouterr().out
    assert Utterance.objects.count() == 1
    call_command("purge_history", days=0)
    assert Utterance.objects.count() == 1
