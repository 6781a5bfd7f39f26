"""The admin, through Django's test client: analysts browse history, admins tune profiles."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import soundfile
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from stt.models import ErrorEvent, ErrorStatistic, RuntimeProfile, ServerProcess, SessionRecord, Utterance
from stt.persistence import encode_flac

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def history(jfk_audio):
    session = SessionRecord.objects.create(
        session_id="call-1", user_id="alice", conversation_id="conv-1", client_address="10.0.0.1:5000",
        started_at=NOW, ended_at=NOW + timedelta(seconds=30), close_reason="end_session", utterances=2, finals=2,
        latency={"final": {"count": 2, "avg_ms": 600.0, "p50_ms": 550.0, "p95_ms": 900.0}},
    )
    other = SessionRecord.objects.create(session_id="call-2", user_id="bob", conversation_id="conv-2",
                                         started_at=NOW, ended_at=NOW + timedelta(seconds=5),
                                         source=SessionRecord.Source.FILE)
    name = default_storage.save("utterances/test/first.flac", ContentFile(encode_flac(jfk_audio[:40000])))
    first = Utterance.objects.create(
        utterance_id=uuid.uuid4(), session=session, text="And so my fellow Americans.", language="en",
        words=[{"word": "And", "start_ms": 0, "end_ms": 700, "confidence": 0.67},
               {"word": "so", "start_ms": 700, "end_ms": 1100, "confidence": 0.97}],
        confidence=0.9, start_ms=100, end_ms=2600, audio_duration_ms=2500, reason="silence_detected",
        partial_count=4, final_latency_ms=250, model="tiny.en", decode={"beam_size": 5}, audio=name,
        created_at=NOW,
    )
    second = Utterance.objects.create(
        utterance_id=uuid.uuid4(), session=session, text="Ask not what your country can do for you.",
        language="en", confidence=0.4, start_ms=3000, end_ms=6000, audio_duration_ms=3000, reason="silence_detected",
        final_latency_ms=1800, model="tiny.en", created_at=NOW + timedelta(seconds=5),
    )
    third = Utterance.objects.create(
        utterance_id=uuid.uuid4(), session=other, text="Completely different words.", language="en",
        confidence=0.85, start_ms=0, end_ms=1000, audio_duration_ms=1000, final_latency_ms=500, model="tiny.en",
        created_at=NOW - timedelta(days=3),
    )
    ErrorEvent.objects.create(session=session, session_label="call-1", code="audio_not_finite",
                              category="audio_format", severity="low", recoverable=True, message="NaN", created_at=NOW)
    ErrorStatistic.objects.create(category="audio_format", code="audio_not_finite", count=3, first_seen=NOW,
                                  last_seen=NOW)
    return {"session": session, "first": first, "second": second, "third": third}


def listed(response) -> str:
    assert response.status_code == 200
    return response.content.decode()


class TestUtteranceHistory:
    url = reverse("admin:stt_utterance_changelist")

    def test_the_list_shows_every_utterance(self, admin_client, history):
        page = listed(admin_client.get(self.url))
        for key in ("first", "second", "third"):
            assert history[key].text[:40] in page

    @pytest.mark.parametrize("query, expected", [
        ({"q": "fellow"}, {"first"}),
        ({"session_id": "call-2"}, {"third"}),
        ({"user": "alice"}, {"first", "second"}),
        ({"conversation": "conv-2"}, {"third"}),
        ({"language": "en"}, {"first", "second", "third"}),
        ({"final_latency": "fast"}, {"first"}),
        ({"final_latency": "late"}, {"second"}),
        ({"confidence": "low"}, {"second"}),
        ({"confidence": "high"}, {"first", "third"}),
        ({"session__source": "file"}, {"third"}),
        ({"session__source": "websocket"}, {"first", "second"}),
        ({"created_at__gte": "2026-11-19 00:00:00+00:00", "created_at__lt": "2026-11-21 00:00:00+00:00"},
         {"first", "second"}),
    ])
    def test_search_and_filters(self, admin_client, history, query, expected):
        page = listed(admin_client.get(self.url, query))
        shown = {key for key in ("first", "second", "third") if history[key].text[:40] in page}
        assert shown == expected

    def test_the_utterance_page_plays_its_audio_and_lists_its_words(self, admin_client, history):
        first = history["first"]
        page = listed(admin_client.get(reverse("admin:stt_utterance_change", args=[first.pk])))
        audio_url = reverse("admin:stt_utterance_audio", args=[first.pk])
        assert f'<audio controls preload="none" src="{audio_url}">' in page
        assert "<td>And</td><td>0</td><td>700</td><td>100</td><td>0.67</td>" in page
        response = admin_client.get(audio_url)
        assert response.status_code == 200 and response["Content-Type"] == "audio/flac"
        audio, rate = soundfile.read(io.BytesIO(b"".join(response.streaming_content)))
        assert (rate, audio.size) == (16000, 40000)

    def test_audio_is_for_staff_only(self, client, history):
        response = client.get(reverse("admin:stt_utterance_audio", args=[history["first"].pk]))
        assert response.status_code == 302 and "/admin/login/" in response["Location"]

    def test_history_is_read_only(self, admin_client, history):
        assert admin_client.get(reverse("admin:stt_utterance_add")).status_code == 403
        page = listed(admin_client.get(reverse("admin:stt_utterance_change", args=[history["first"].pk])))
        assert 'name="_save"' not in page

    def test_csv_export(self, admin_client, history):
        response = admin_client.post(self.url, {
            "action": "export_utterances_csv",
            "_selected_action": [history["first"].pk, history["third"].pk],
        })
        rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
        assert rows[0][:6] == ["created_at", "session_id", "user_id", "conversation_id", "utterance_id", "text"]
        assert [row[5] for row in rows[1:]] == [history["third"].text, history["first"].text]


class TestSessions:
    def test_sessions_show_and_filter_by_their_source(self, admin_client, history):
        url = reverse("admin:stt_sessionrecord_changelist")
        page = listed(admin_client.get(url, {"source": "file"}))
        assert "call-2" in page and "call-1" not in page
        page = listed(admin_client.get(url))
        assert ">WebSocket<" in page and ">File<" in page

    def test_a_session_page_lists_its_utterances_in_order(self, admin_client, history):
        page = listed(admin_client.get(reverse("admin:stt_sessionrecord_change", args=[history["session"].pk])))
        assert page.index(history["first"].text) < page.index(history["second"].text)
        assert "alice" in page and "conv-1" in page

    def test_sessions_export_as_csv(self, admin_client, history):
        response = admin_client.post(reverse("admin:stt_sessionrecord_changelist"), {
            "action": "export_sessions_csv", "_selected_action": [history["session"].pk],
        })
        rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
        assert rows[1][2:5] == ["call-1", "alice", "conv-1"]
        assert rows[1][-2:] == ["550.0", "900.0"]

    def test_server_processes_are_listed_and_a_lost_ones_interrupted_utterance_is_found_by_status(
            self, admin_client, history):
        server_id = uuid.uuid4()
        ServerProcess.objects.create(server_id=server_id, hostname="stt-a", pid=41, port=8000, started_at=NOW,
                                     last_seen=NOW + timedelta(seconds=20), lost_at=NOW + timedelta(seconds=60))
        lost = SessionRecord.objects.create(session_id="call-lost", started_at=NOW, server_id=server_id,
                                            ended_at=NOW + timedelta(seconds=20), close_reason="server_lost")
        Utterance.objects.create(utterance_id=uuid.uuid4(), session=lost, text="", start_ms=900, end_ms=900,
                                 audio_duration_ms=0, final_latency_ms=0, created_at=NOW, status="interrupted",
                                 error="no final: the server process holding the session was lost")
        page = listed(admin_client.get(reverse("admin:stt_serverprocess_changelist")))
        assert "stt-a" in page and "8000" in page
        assert str(server_id) in listed(admin_client.get(reverse("admin:stt_sessionrecord_change", args=[lost.pk])))
        page = listed(admin_client.get(reverse("admin:stt_utterance_changelist") + "?status__exact=interrupted"))
        assert "call-lost" in page and "Ask not" not in page

    def test_errors_and_their_statistics_are_listed(self, admin_client, history):
        assert "audio_not_finite" in listed(admin_client.get(reverse("admin:stt_errorevent_changelist")))
        assert "audio_not_finite" in listed(admin_client.get(reverse("admin:stt_errorstatistic_changelist")))


class TestRuntimeProfiles:
    url = reverse("admin:stt_runtimeprofile_add")

    def form(self, **values) -> dict:
        data = {"name": "office", "description": "", "default_language": ""}
        data.update(values)
        return data

    def test_a_valid_profile_is_saved(self, admin_client):
        response = admin_client.post(self.url, self.form(is_default="on", vad_threshold="0.6", final_beam_size="3"))
        assert response.status_code == 302
        profile = RuntimeProfile.objects.get(name="office")
        assert (profile.is_default, profile.vad_threshold, profile.final_beam_size) == (True, 0.6, 3)
        assert profile.partial_beam_size is None, "left empty: inherits the server setting"

    @pytest.mark.parametrize("values, field, message", [
        ({"vad_threshold": "1.5"}, "vad_threshold", "less than or equal to 0.95"),
        ({"final_chunk_duration": "1.5", "max_silence_duration": "1.0"}, "final_chunk_duration", "at most"),
        ({"default_language": "klingon"}, "default_language", "unknown language"),
        ({"final_beam_size": "0"}, "final_beam_size", "greater than or equal to 1"),
        ({"vocabulary": "Zyphora\n" + "x" * 65}, "vocabulary", "line 2 is longer than 64 characters"),
        ({"vocabulary": "\n".join(f"term {i}" for i in range(101))}, "vocabulary", "at most 100 terms"),
    ])
    def test_invalid_values_are_refused_with_a_message(self, admin_client, values, field, message):
        response = admin_client.post(self.url, self.form(**values))
        assert response.status_code == 200, "the form comes back"
        errors = response.context["adminform"].form.errors
        assert field in errors and message in " ".join(errors[field])
        assert not RuntimeProfile.objects.exists()

    def test_a_vocabulary_is_typed_one_term_per_line(self, admin_client):
        response = admin_client.post(self.url, self.form(vocabulary="Siobhan  Nakamura\r\n\r\nZyphora\r\n"))
        assert response.status_code == 302
        profile = RuntimeProfile.objects.get(name="office")
        assert profile.overrides()["vocabulary"] == ("Siobhan Nakamura", "Zyphora")
        page = listed(admin_client.get(reverse("admin:stt_runtimeprofile_change", args=[profile.pk])))
        assert "Siobhan Nakamura" in page and "<code>vocabulary</code>" in page

    def test_a_new_default_replaces_the_old_one_from_the_admin(self, admin_client):
        RuntimeProfile.objects.create(name="old", is_default=True)
        response = admin_client.post(self.url, self.form(name="new", is_default="on"))
        assert response.status_code == 302, response.content.decode()[:500]
        assert list(RuntimeProfile.objects.filter(is_default=True).values_list("name", flat=True)) == ["new"]

    def test_the_change_page_shows_the_values_in_force(self, admin_client, settings):
        profile = RuntimeProfile.objects.create(name="office", vad_threshold=0.6)
        page = listed(admin_client.get(reverse("admin:stt_runtimeprofile_change", args=[profile.pk])))
        assert "<code>vad_threshold</code> = 0.6</div>" in page
        assert f"<code>final_beam_size</code> = {settings.STT_FINAL_BEAM_SIZE} (server setting)" in page

    def test_the_form_offers_the_endpointing_eagerness_and_saves_it(self, admin_client):
        page = listed(admin_client.get(self.url))
        assert '<select name="endpointing_eagerness"' in page
        for level in ("off", "low", "medium", "high"):
            assert f'<option value="{level}">' in page
        assert page.index('name="final_chunk_duration"') < page.index('name="endpointing_eagerness"'), \
            "beside the end silence it replaces"
        assert admin_client.post(self.url, self.form(endpointing_eagerness="high")).status_code == 302
        profile = RuntimeProfile.objects.get(name="office")
        assert profile.endpointing_eagerness == "high"
        page = listed(admin_client.get(reverse("admin:stt_runtimeprofile_change", args=[profile.pk])))
        assert '<option value="high" selected>' in page
        assert "<code>endpointing_eagerness</code> = high</div>" in page

    def test_left_blank_the_endpointing_eagerness_is_the_servers(self, admin_client, settings):
        settings.ENDPOINTING_EAGERNESS = "low"
        assert admin_client.post(self.url, self.form()).status_code == 302
        profile = RuntimeProfile.objects.get(name="office")
        page = listed(admin_client.get(reverse("admin:stt_runtimeprofile_change", args=[profile.pk])))
        assert "<code>endpointing_eagerness</code> = low (server setting)</div>" in page

    def test_an_unknown_endpointing_eagerness_is_refused(self, admin_client):
        response = admin_client.post(self.url, self.form(endpointing_eagerness="auto"))
        errors = response.context["adminform"].form.errors
        assert "endpointing_eagerness" in errors and "not one of the available choices" in " ".join(
            errors["endpointing_eagerness"])
        assert not RuntimeProfile.objects.exists()

