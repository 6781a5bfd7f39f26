"""The history: every final is in the database before the client sees it, with its
audio; sessions and errors are recorded; writes survive a database that fails."""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
import soundfile
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import OperationalError

from fasttalk.asgi import application
from stt.models import ErrorEvent, ErrorStatistic, SessionRecord, Utterance
from stt.persistence import APPLIERS, HistoryWriter, SessionFacts, Write, error_write, keep_in_journal, session_write
from tests.conftest import frames, silence

pytestmark = pytest.mark.django_db(transaction=True)


def utterance_row(utterance_id: str) -> Utterance | None:
    return Utterance.objects.select_related("session").filter(utterance_id=utterance_id).first()


async def connect_and_start(**config) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws/transcribe")
    assert (await communicator.connect(timeout=10))[0]
    await communicator.send_json_to({"type": "start_session", "session_config": config})
    assert (await communicator.receive_json_from(timeout=30))["type"] == "session_started"
    return communicator


async def test_every_final_is_stored_before_it_is_sent(engine, jfk_audio):
    communicator = await connect_and_start(session_id="persist-1", user_id="u-7", conversation_id="c-9")
    for frame in frames(np.concatenate([jfk_audio, silence(1)]), 4096):
        await communicator.send_to(bytes_data=frame)
    await communicator.send_json_to({"type": "end_session"})
    finals = []
    while True:
        output = await communicator.receive_output(timeout=60)
        if output["type"] == "websocket.close":
            break
        message = json.loads(output["text"])
        if message["type"] == "transcription_final":
            # At the moment the client has it, the database has it.
            row = await sync_to_async(utterance_row)(message["data"]["utterance_id"])
            assert row is not None, "stored before sent"
            finals.append((message["data"], row))
    assert len(finals) >= 3
    for data, row in finals:
        assert row.text == data["text"]
        assert (row.start_ms, row.end_ms, row.audio_duration_ms) == (data["start_ms"], data["end_ms"],
                                                                     data["audio_duration_ms"])
        assert row.words == data["timestamps"]
        assert row.confidence == data["confidence"] and row.reason == data["metadata"]["reason"]
        assert row.final_latency_ms >= 0 and row.model == "tiny.en"
        assert row.decode["beam_size"] == 5 and row.decode["word_timestamps"] is True
        audio, rate = await sync_to_async(lambda r=row: soundfile.read(io.BytesIO(r.audio.read())))()
        assert rate == 16000
        assert abs(audio.size / 16 - row.audio_duration_ms) <= 1, "the audio stored is the utterance's"
        assert row.session.session_id == "persist-1"
    await asyncio.sleep(0.5)  # the session summary is written after the close
    record = await sync_to_async(SessionRecord.objects.get)(session_id="persist-1")
    assert (record.user_id, record.conversation_id, record.close_reason) == ("u-7", "c-9", "end_session")
    assert record.finals == len(finals) and record.ended_at is not None
    assert record.config == {"session_id": "persist-1", "user_id": "u-7", "conversation_id": "c-9"}
    assert record.effective_config["final_chunk_duration"] == 0.5
    assert record.latency["final"]["count"] == len(finals)


async def test_errors_are_recorded_as_events_and_counted(engine):
    communicator = await connect_and_start(session_id="persist-err")
    for _ in range(2):
        await communicator.send_to(bytes_data=b"\x00\x01\x02")
        assert (await communicator.receive_json_from())["error"]["code"] == "invalid_audio_frame"
    await communicator.disconnect()
    await asyncio.sleep(0.5)
    events = await sync_to_async(list)(ErrorEvent.objects.filter(session_label="persist-err"))
    assert [e.code for e in events] == ["invalid_audio_frame"] * 2
    assert all(e.category == "audio_format" and e.session_id is not None for e in events)
    statistic = await sync_to_async(ErrorStatistic.objects.get)(category="audio_format", code="invalid_audio_frame")
    assert statistic.count == 2


async def test_a_client_that_leaves_mid_utterance_still_has_it_stored(engine, jfk_audio):
    # A fixed 2 s end silence keeps the phrase open through its pause (endpointing off).
    communicator = await connect_and_start(session_id="persist-gone", final_chunk_duration=2.0, endpointing="off")
    for frame in frames(jfk_audio[: int(2.5 * 16000)], 4096):
        await communicator.send_to(bytes_data=frame)
    await communicator.disconnect()
    for _ in range(100):
        # Its final replaces the row its onset wrote (status open: tests/stt/persistence/test_open_utterances.py).
        rows = await sync_to_async(list)(Utterance.objects.filter(session__session_id="persist-gone"))
        if rows and rows[0].status == "final":
            break
        await asyncio.sleep(0.1)
    assert len(rows) == 1 and rows[0].reason == "client_disconnected"
    assert "fellow americans" in rows[0].text.lower()


class TestBacklogAndJournal:
    """The writer's own rules, with writes whose outcome the test controls."""

    @pytest.fixture
    def probe(self, settings, tmp_path):
        settings.PERSISTENCE_RETRY_SECONDS = 0.05
        settings.HISTORY_JOURNAL = str(tmp_path / "journal.jsonl")
        state = {"up": False, "applied": []}

        def apply(item: Write) -> None:
            if item.payload.get("poison"):
                raise ValueError("this row can never be written")
            if not state["up"]:
                raise OperationalError("could not connect to server")
            state["applied"].append(item.payload["n"])

        APPLIERS["probe"] = apply
        yield state
        del APPLIERS["probe"]

    async def test_writes_wait_while_the_database_is_down_and_go_in_order_when_it_returns(self, probe):
        writer = HistoryWriter()
        assert await writer.write(Write("probe", {"n": 1})) is False
        assert await writer.write(Write("probe", {"n": 2})) is False, "queued behind the first, in order"
        assert writer.backlog == 2 and writer.stats.failures >= 1
        probe["up"] = True
        assert await writer.drain(timeout=5)
        assert probe["applied"] == [1, 2]
        assert await writer.write(Write("probe", {"n": 3})) is True
        assert probe["applied"] == [1, 2, 3]

    async def test_a_refused_write_goes_to_the_journal_and_does_not_block_the_others(self, probe, settings):
        writer = HistoryWriter()
        await writer.write(Write("probe", {"n": 1}))  # the database is down: waits
        await writer.write(Write("probe", {"n": 2, "poison": True}))
        await writer.write(Write("probe", {"n": 3}))
        probe["up"] = True
        assert await writer.drain(timeout=5)
        assert probe["applied"] == [1, 3]
        journal = [json.loads(line) for line in open(settings.HISTORY_JOURNAL)]
        assert [entry["payload"]["n"] for entry in journal] == [2]
        assert "this row can never be written" in journal[0]["reason"]
        assert writer.stats.journaled == 1

    async def test_a_full_backlog_and_an_exit_keep_writes_in_the_journal(self, probe, settings):
        settings.PERSISTENCE_BACKLOG_LIMIT = 2
        settings.PERSISTENCE_RETRY_SECONDS = 60
        writer = HistoryWriter()
        for n in range(4):
            await writer.write(Write("probe", {"n": n}))
        assert writer.backlog == 2 and writer.stats.journaled == 2
        writer.journal_backlog()  # what the process does at exit
        journal = [json.loads(line)["payload"]["n"] for line in open(settings.HISTORY_JOURNAL)]
        assert sorted(journal) == [0, 1, 2, 3]


async def test_postgresql_refusing_a_row_does_not_hold_up_the_history(settings, tmp_path):
    settings.HISTORY_JOURNAL = str(tmp_path / "journal.jsonl")
    writer = HistoryWriter()
    too_long = {"code": "x" * 100, "category": "connection", "severity": "low", "recoverable": True,
                "message": "a code longer than its column"}
    assert await writer.write(error_write(too_long, None, "s")) is False
    fine = {**too_long, "code": "invalid_json"}
    assert await writer.write(error_write(fine, None, "s")) is True
    assert await sync_to_async(ErrorEvent.objects.filter(code="invalid_json").count)() == 1
    assert writer.stats.journaled == 1 and os.path.getsize(settings.HISTORY_JOURNAL) > 0
    await sync_to_async(writer.close_connection)()


def test_journaled_rows_are_written_by_the_replay_command(settings, tmp_path, capsys):
    from django.core.management import call_command

    settings.HISTORY_JOURNAL = str(tmp_path / "journal.jsonl")
    facts = SessionFacts(connection_id=str(uuid.uuid4()), session_id="journaled", user_id="u", conversation_id=None,
                         client_address=None, profile="", config={}, effective_config={}, model="tiny.en",
                         started_at=datetime.now(timezone.utc))
    keep_in_journal(session_write(facts), "test")
    call_command("replay_history_journal")
    assert "Wrote 1 journaled rows; 0 still fail" in capsys.readouterr().out
    assert SessionRecord.objects.get(session_id="journaled").user_id == "u"
