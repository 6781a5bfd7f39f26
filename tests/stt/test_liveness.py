"""Server processes seen through their heartbeats; the sessions of a process that died
are closed for it, and the utterances its clients were hearing marked interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from stt.liveness import (INTERRUPTED_ERROR, LOST_REASON, Heartbeat, ProcessIdentity, dead_on_this_host,
                          recover_lost_sessions)
from stt.models import ServerProcess, SessionRecord, Utterance
from stt.persistence import APPLIERS, FinalFacts, SessionFacts, final_write, utterance_discarded_write, \
    utterance_opened_write

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def process(seen_ago: float, stopped: bool = False, hostname: str = "host-a", pid: int = 4242) -> ServerProcess:
    return ServerProcess.objects.create(
        server_id=uuid.uuid4(), hostname=hostname, pid=pid, port=8000, started_at=NOW - timedelta(hours=1),
        last_seen=NOW - timedelta(seconds=seen_ago), stopped_at=NOW - timedelta(seconds=seen_ago) if stopped else None)


def facts(server: ServerProcess | None, started_ago: float = 60.0) -> SessionFacts:
    return SessionFacts(connection_id=str(uuid.uuid4()), session_id="s", user_id=None, conversation_id=None,
                        client_address=None, profile="", config={}, effective_config={}, model="tiny.en",
                        started_at=NOW - timedelta(seconds=started_ago),
                        server_id=str(server.server_id) if server else None)


def apply(write) -> None:
    APPLIERS[write.kind](write)


def opened(session: SessionFacts, start_ms: int = 1000) -> str:
    """A session row with one utterance its client heard of (no final yet)."""
    utterance_id = str(uuid.uuid4())
    apply(utterance_opened_write(session, utterance_id, start_ms))
    return utterance_id


def final(session: SessionFacts, utterance_id: str, text: str = "ask not") -> None:
    apply(final_write(FinalFacts(
        session=session, utterance_id=utterance_id, text=text, words=[], confidence=0.9, language="en",
        start_ms=800, end_ms=2400, reason="silence_detected", partial_count=2, first_partial_latency_ms=120,
        final_latency_ms=300, decode={"beam_size": 5}, audio=None, created_at=NOW)))


def status(utterance_id: str) -> str:
    return Utterance.objects.get(utterance_id=utterance_id).status


def test_an_announced_utterance_is_open_until_its_final_replaces_the_row():
    session = facts(process(seen_ago=1))
    utterance_id = opened(session)
    row = Utterance.objects.get(utterance_id=utterance_id)
    assert (row.status, row.text, row.start_ms) == ("open", "", 1000)
    final(session, utterance_id)
    assert Utterance.objects.filter(utterance_id=utterance_id).count() == 1
    row = Utterance.objects.get(utterance_id=utterance_id)
    assert (row.status, row.text, row.end_ms) == ("final", "ask not", 2400)
    apply(utterance_opened_write(session, utterance_id, 1000))  # late, out of order: the final stays
    assert status(utterance_id) == "final"


def test_an_utterance_the_client_interrupted_leaves_no_row_but_a_final_is_never_deleted():
    session = facts(process(seen_ago=1))
    dropped, kept = opened(session), opened(session, start_ms=5000)
    final(session, kept)
    apply(utterance_discarded_write(dropped))
    apply(utterance_discarded_write(kept))
    assert not Utterance.objects.filter(utterance_id=dropped).exists()
    assert status(kept) == "final"


def test_the_sessions_of_a_process_not_seen_for_the_lost_time_are_closed_and_their_open_utterances_interrupted():
    dead, alive = process(seen_ago=40), process(seen_ago=2)
    on_dead, on_alive = facts(dead), facts(alive)
    heard, finished = opened(on_dead), opened(on_dead, start_ms=4000)
    final(on_dead, finished)
    still_speaking = opened(on_alive)
    outcome = recover_lost_sessions(30, now=NOW)
    assert outcome == {"processes_lost": 1, "sessions_closed": 1, "utterances_interrupted": 1}
    closed = SessionRecord.objects.get(connection_id=on_dead.connection_id)
    assert closed.close_reason == LOST_REASON and closed.ended_at == dead.last_seen, "ended when last seen"
    interrupted = Utterance.objects.get(utterance_id=heard)
    assert (interrupted.status, interrupted.error) == ("interrupted", INTERRUPTED_ERROR)
    assert status(finished) == "final", "what the client received stays as it was"
    assert SessionRecord.objects.get(connection_id=on_alive.connection_id).ended_at is None
    assert status(still_speaking) == "open", "a live process's sessions are its own business"
    assert ServerProcess.objects.get(server_id=dead.server_id).lost_at == NOW
    assert recover_lost_sessions(30, now=NOW) == {"processes_lost": 0, "sessions_closed": 0,
                                                   "utterances_interrupted": 0}, "once"


def test_a_process_that_stopped_cleanly_with_a_session_left_over_is_swept_at_once():
    stopped = process(seen_ago=1, stopped=True)
    session = facts(stopped)
    heard = opened(session)
    assert recover_lost_sessions(30, now=NOW)["sessions_closed"] == 1
    assert status(heard) == "interrupted"


def test_a_final_written_after_the_sweep_puts_the_record_right():
    """A process that could not reach the database looked dead; its writes, when they
    land, replace what the sweep wrote."""
    partitioned = process(seen_ago=60)
    session = facts(partitioned)
    heard = opened(session)
    recover_lost_sessions(30, now=NOW)
    assert status(heard) == "interrupted"
    final(session, heard, text="what your country can do for you")
    row = Utterance.objects.get(utterance_id=heard)
    assert (row.status, row.text, row.error) == ("final", "what your country can do for you", "")


def test_sessions_of_a_process_without_a_row_are_closed_only_once_they_are_older_than_the_lost_time():
    unknown = ServerProcess(server_id=uuid.uuid4())
    young, old = facts(unknown, started_ago=5), facts(unknown, started_ago=120)
    opened(young)
    opened(old)
    assert recover_lost_sessions(30, now=NOW)["sessions_closed"] == 1
    assert SessionRecord.objects.get(connection_id=young.connection_id).ended_at is None
    assert SessionRecord.objects.get(connection_id=old.connection_id).close_reason == LOST_REASON


def test_sessions_of_no_server_process_are_never_swept():
    """Sessions run outside `manage.py serve` (tests, shells) name no process."""
    session = facts(None, started_ago=3600)
    heard = opened(session)
    recover_lost_sessions(30, now=NOW)
    assert status(heard) == "open" and SessionRecord.objects.get(connection_id=session.connection_id).ended_at is None


def test_a_starting_process_knows_the_dead_of_its_own_host():
    me = ProcessIdentity.of_this_process(port=8000)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        exited = process(seen_ago=1, hostname=me.hostname, pid=gone.pid)
        earlier_me = process(seen_ago=1, hostname=me.hostname, pid=me.pid)  # a container restarted in place
        sibling = process(seen_ago=1, hostname=me.hostname, pid=running.pid)
        elsewhere = process(seen_ago=1, hostname="another-host", pid=gone.pid)
        dead = set(dead_on_this_host(me))
    finally:
        running.kill()
        running.wait()
    assert dead == {str(exited.server_id), str(earlier_me.server_id)}
    assert str(sibling.server_id) not in dead and str(elsewhere.server_id) not in dead


def test_the_heartbeat_refreshes_its_row_and_a_clean_stop_marks_it_stopped():
    identity = ProcessIdentity.of_this_process(port=8123)
    heartbeat = Heartbeat(identity, interval=0.1, lost_after=1.0)
    heartbeat.start()
    try:
        deadline = time.monotonic() + 10
        while heartbeat.beats < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        row = ServerProcess.objects.get(server_id=identity.server_id)
        assert (row.hostname, row.pid, row.port, row.stopped_at) == (identity.hostname, os.getpid(), 8123, None)
        first_seen = row.last_seen
        time.sleep(0.3)
        assert ServerProcess.objects.get(server_id=identity.server_id).last_seen > first_seen
    finally:
        heartbeat.stop()
    assert ServerProcess.objects.get(server_id=identity.server_id).stopped_at is not None
