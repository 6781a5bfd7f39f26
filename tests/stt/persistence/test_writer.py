"""The history writer while PostgreSQL is away: what waits for it is bounded in bytes,
a final's audio goes to disk instead of memory, and neither FLAC encoding nor any
file I/O happens on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import threading
import time
import tracemalloc
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
import soundfile
from asgiref.sync import sync_to_async
from django.db import connection

from stt.models import Utterance
from stt.persistence import FinalFacts, HistoryWriter, SessionFacts, error_write, final_write
from tests.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)

SECONDS = 8  # of audio per final: 512 KB as float32


@contextlib.contextmanager
def database_away(writer: HistoryWriter):
    """The writer's history thread reaches PostgreSQL on a port where nothing listens
    (connection refused, as when the server is down), until the block ends."""

    def point_at(port: object) -> None:
        connection.close()
        connection.settings_dict = {**connection.settings_dict, "PORT": port}

    real_port = connection.settings_dict["PORT"]
    writer._executor.submit(point_at, free_port()).result(timeout=10)
    try:
        yield
    finally:
        writer._executor.submit(point_at, real_port).result(timeout=10)


def final(number: int) -> tuple[str, object]:
    now = datetime.now(timezone.utc)
    session = SessionFacts(connection_id=str(uuid.uuid4()), session_id=f"away-{number}", user_id=None,
                           conversation_id=None, client_address=None, profile="", config={}, effective_config={},
                           model="tiny.en", started_at=now)
    audio = np.random.default_rng(number).uniform(-0.5, 0.5, SECONDS * 16000).astype(np.float32)
    utterance_id = str(uuid.uuid4())
    return utterance_id, final_write(FinalFacts(
        session=session, utterance_id=utterance_id, text=f"final {number}", words=[], confidence=0.9,
        language="en", start_ms=0, end_ms=SECONDS * 1000, reason="silence_detected", partial_count=1,
        first_partial_latency_ms=100, final_latency_ms=300, decode={}, audio=audio, created_at=now))


def stored_audio_seconds(utterance_id: str) -> float | None:
    row = Utterance.objects.filter(utterance_id=utterance_id).first()
    if row is None or not row.audio:
        return None
    audio, rate = soundfile.read(io.BytesIO(row.audio.read()))
    return audio.size / rate


async def test_finals_waiting_for_the_database_keep_their_audio_on_disk_not_in_memory(settings):
    settings.PERSISTENCE_RETRY_SECONDS = 0.1
    writer = HistoryWriter()
    count = 40  # 20 MB of audio
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        ids = []
        with database_away(writer):
            for number in range(count):
                utterance_id, write = final(number)
                ids.append(utterance_id)
                assert await writer.write(write) is False, "waits for the database"
                del write
            held = tracemalloc.get_traced_memory()[0] - baseline
            deadline = time.monotonic() + 20
            while held > 4_000_000 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                held = tracemalloc.get_traced_memory()[0] - baseline
            assert writer.backlog == count
        assert held <= 4_000_000, f"the backlog holds {held / 1e6:.1f} MB for {count} finals"
    finally:
        tracemalloc.stop()
    assert await writer.drain(timeout=30)
    for utterance_id in ids:
        assert await sync_to_async(stored_audio_seconds)(utterance_id) == SECONDS, "stored with its audio"
    await sync_to_async(writer.close_connection)()


async def test_the_backlog_holds_at_most_its_bytes_even_when_the_disk_lags(settings, tmp_path):
    settings.PERSISTENCE_RETRY_SECONDS = 0.1
    settings.PERSISTENCE_BACKLOG_BYTES = 2_000_000
    settings.HISTORY_JOURNAL = str(tmp_path / "journal.jsonl")
    writer = HistoryWriter()
    disk_stuck = threading.Event()
    # The disk's thread is busy (a slow or stalled disk): nothing can be spilled for now.
    writer._disk.submit(disk_stuck.wait, 60)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        with database_away(writer):
            for number in range(30):  # 15 MB of audio
                await writer.write(final(number)[1])
            held = tracemalloc.get_traced_memory()[0] - baseline
            disk_stuck.set()
        assert held <= 2_000_000 + 1_000_000, f"{held / 1e6:.1f} MB held, beyond PERSISTENCE_BACKLOG_BYTES"
    finally:
        tracemalloc.stop()
        disk_stuck.set()
    assert await writer.drain(timeout=30)
    await sync_to_async(writer.close_connection)()


class LoopWatch:
    """Records FLAC encodes and file opens under a folder made on the event loop's thread."""

    hooked: "LoopWatch | None" = None

    def __init__(self, folder: str) -> None:
        self.folder, self.loop_thread, self.on_loop = folder, threading.get_ident(), []
        if LoopWatch.hooked is None:
            sys.addaudithook(lambda event, args: LoopWatch.hooked and LoopWatch.hooked.audit(event, args))
        LoopWatch.hooked = self

    def audit(self, event: str, args: tuple) -> None:
        if event == "open" and str(args[0]).startswith(self.folder) and threading.get_ident() == self.loop_thread:
            self.on_loop.append(f"open {args[0]}")

    def encoding(self, encode):
        def watched(*args, **kwargs):
            if threading.get_ident() == self.loop_thread:
                self.on_loop.append("FLAC encode")
            return encode(*args, **kwargs)
        return watched


async def test_no_flac_encode_or_file_io_happens_on_the_event_loop(settings, tmp_path, monkeypatch):
    settings.PERSISTENCE_RETRY_SECONDS = 0.1
    settings.PERSISTENCE_BACKLOG_LIMIT = 2
    settings.HISTORY_JOURNAL = str(tmp_path / "journal.jsonl")
    watch = LoopWatch(str(tmp_path))
    monkeypatch.setattr(soundfile, "write", watch.encoding(soundfile.write))
    writer = HistoryWriter()
    try:
        with database_away(writer):
            for number in range(4):  # two wait in the backlog, two go to the journal
                await writer.write(final(number)[1])
        too_long = {"code": "x" * 100, "category": "connection", "severity": "low", "recoverable": True,
                    "message": "a code longer than its column: refused, journaled"}
        assert await writer.write(error_write(too_long, None, "s")) is False
        assert await writer.drain(timeout=30)
    finally:
        LoopWatch.hooked = None
    assert watch.on_loop == []
    journal = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert len(journal) == 3
    await sync_to_async(writer.close_connection)()


async def test_a_burst_past_the_byte_bound_keeps_every_audio_while_the_disk_is_healthy(settings, tmp_path):
    """Finals arriving faster than the disk thread's callbacks reach the loop pass the
    byte bound; the disk is fine, so each keeps its audio (its caller waits for the
    spill) and the memory stays bounded."""
    settings.PERSISTENCE_RETRY_SECONDS = 0.1
    settings.PERSISTENCE_BACKLOG_BYTES = 2_000_000
    settings.HISTORY_JOURNAL = str(tmp_path / "journal.jsonl")
    writer = HistoryWriter()
    ids = []
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        with database_away(writer):
            for number in range(12):  # 6 MB of audio: three times the bound, in one burst
                utterance_id, write = final(number)
                ids.append(utterance_id)
                await writer.write(write)
                del write
            held = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert held <= 2_000_000 + 1_000_000, f"{held / 1e6:.1f} MB held, beyond PERSISTENCE_BACKLOG_BYTES"
    assert writer.stats.audio_lost == 0, "the disk was healthy: no audio dropped"
    assert await writer.drain(timeout=30)
    for utterance_id in ids:
        assert await sync_to_async(stored_audio_seconds)(utterance_id) == SECONDS, "stored with its audio"
    assert writer.condition() == "ok", "nothing journaled, nothing lost"
    await sync_to_async(writer.close_connection)()


def lost_metric(what: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("fasttalk_history_lost_total", {"what": what}) or 0.0


async def test_writes_are_lost_only_when_the_disk_refuses_the_journal_and_each_loss_counts(settings, tmp_path):
    """A journal and a storage the disk cannot take (their folder is a file): what
    cannot wait for the database is lost, and says so in the writer's figures, its
    condition and the Prometheus counters."""
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    settings.HISTORY_JOURNAL = str(not_a_folder / "journal.jsonl")
    settings.MEDIA_ROOT = str(not_a_folder / "media")
    settings.PERSISTENCE_BACKLOG_LIMIT = 1
    settings.PERSISTENCE_RETRY_SECONDS = 0.1
    writer = HistoryWriter()
    rows_before = lost_metric("write")
    with database_away(writer):
        for number in range(3):  # one waits in the backlog, two must go to the journal
            await writer.write(final(number)[1])
        deadline = time.monotonic() + 20
        while writer.stats.lost < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (writer.stats.lost, writer.stats.journaled) == (2, 0), "the journal took nothing"
        assert lost_metric("write") - rows_before == 2
        assert writer.condition() == "dropping"
        settings.MEDIA_ROOT = str(tmp_path / "media")  # the disk is back for the one that waits
    assert await writer.drain(timeout=30)
    await sync_to_async(writer.close_connection)()


async def test_a_stalled_disk_loses_audio_not_memory_and_the_writer_says_so(settings, tmp_path):
    settings.PERSISTENCE_RETRY_SECONDS = 0.1
    settings.PERSISTENCE_WRITE_TIMEOUT = 0.5
    settings.PERSISTENCE_BACKLOG_BYTES = 2_000_000
    settings.HISTORY_JOURNAL = str(tmp_path / "journal.jsonl")
    writer = HistoryWriter()
    disk_stuck = threading.Event()
    writer._disk.submit(disk_stuck.wait, 60)
    try:
        with database_away(writer):
            started = time.monotonic()
            for number in range(10):
                await writer.write(final(number)[1])
            took = time.monotonic() - started
            assert writer.stats.audio_lost >= 5 and writer.condition() == "dropping"
            assert writer.backlog_bytes <= 2_000_000 + 600_000
            disk_stuck.set()
    finally:
        disk_stuck.set()
    assert took < 3 * settings.PERSISTENCE_WRITE_TIMEOUT, "one wait for the stalled disk, not one per final"
    assert await writer.drain(timeout=30)
    await sync_to_async(writer.close_connection)()
