"""Celery for real: a worker process on this machine's Redis re-transcribes what was
streamed over the WebSocket and builds the report the dashboard shows; a worker killed
in the middle of a task leaves it to be completed exactly once by the next one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import websockets

from fasttalk.celery import app as celery_app
from stt.evaluation import word_error_rate
from tests.conftest import JFK_PATH, JFK_TEXT, frames
from tests.servers import ROOT, AdminBrowser, Beat, ScratchDatabase, Server, TcpProxy, Worker, base_env

pytestmark = pytest.mark.realtime

PASSWORD = "s3cret-pass-phrase"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A server and a worker on a scratch PostgreSQL database, Redis, and one media folder;
    their own task queue, so nothing else on this Redis is consumed."""
    if not os.environ.get("REDIS_URL"):
        pytest.fail("REDIS_URL is not set: the worker tests run on real Redis (use bin/test)")
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    folder = tmp_path_factory.mktemp("celery")
    env = {**base_env(), "DATABASE_URL": database.url(), "REFINE_FINALS": "1", "MEDIA_ROOT": str(folder / "media"),
           "CELERY_QUEUE": f"fasttalk-test-{uuid.uuid4().hex[:8]}"}
    server = Server(env, folder)
    server.manage("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com",
                  env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD})
    worker = Worker(env, folder, "main")
    yield {"server": server, "worker": worker, "database": database, "env": env, "folder": folder}
    worker.stop()
    server.stop()
    database.drop()


def refinement_of(database: ScratchDatabase, utterance_id: str) -> dict | None:
    rows = database.query(
        "SELECT r.status, r.text, r.attempts, r.chunks_done, r.chunks_total, r.finished_at, r.error "
        "FROM stt_refinement r JOIN stt_utterance u ON u.id = r.utterance_id WHERE u.utterance_id = %s",
        uuid.UUID(utterance_id))
    if not rows:
        return None
    keys = ("status", "text", "attempts", "chunks_done", "chunks_total", "finished_at", "error")
    return dict(zip(keys, rows[0]))


def log_messages(path) -> list[str]:
    """The messages of a process's log (JSON lines; other lines as they are)."""
    messages = []
    for line in path.read_text().splitlines():
        try:
            messages.append(json.loads(line)["message"])
        except (ValueError, KeyError, TypeError):
            messages.append(line)
    return messages


def wait_for(check, limit: float, what: str):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {limit} s")


async def stream_file(url: str, audio) -> list[dict]:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"language": "en"}}))
        for frame in frames(audio):
            await ws.send(frame)
        await ws.send(json.dumps({"type": "end_session"}))
        return [json.loads(message) async for message in ws]


async def test_a_streamed_final_is_re_transcribed_and_reported(stack, jfk_audio):
    server, database = stack["server"], stack["database"]
    began = datetime.now(timezone.utc)
    messages = await stream_file(server.ws, jfk_audio)
    finals = [m["data"] for m in messages if m["type"] == "transcription_final"]
    assert finals, "the speech came out as finals"

    refinements = [
        wait_for(lambda: (r := refinement_of(database, final["utterance_id"])) and r["status"] == "done" and r,
                 120, "the refinement")
        for final in finals
    ]
    refined_text = " ".join(r["text"] for r in refinements)
    assert word_error_rate(JFK_TEXT, refined_text) <= 0.1
    assert all((r["attempts"], r["chunks_done"], r["chunks_total"]) == (1, 1, 1) for r in refinements)
    utterance_id = finals[0]["utterance_id"]

    # The report, built by the worker and shown on the dashboard.
    end = datetime.now(timezone.utc) + timedelta(seconds=1)
    result = celery_app.send_task("stt.tasks.build_report", args=[began.isoformat(), end.isoformat()],
                                  queue=stack["env"]["CELERY_QUEUE"])
    report_id = result.get(timeout=60)["report_id"]
    browser = AdminBrowser(server.base, "admin", PASSWORD)
    page = browser.get(f"/admin/stt/report/dashboard/?report={report_id}")
    assert f'id="figure-utterances">{len(finals)}<' in page and page.count('<svg role="img"') == 3
    assert 'id="figure-disagreement">' in page
    assert "utterances" in browser.get(f"/admin/stt/report/{report_id}/csv/").splitlines()[0]
    utterance_pk = database.query("SELECT id FROM stt_utterance WHERE utterance_id = %s", uuid.UUID(utterance_id))[0][0]
    utterance_page = browser.get(f"/admin/stt/utterance/{utterance_pk}/change/")
    assert 'class="refined-text"' in utterance_page and "Done (chunks 1/1, attempts 1)" in utterance_page
    loads = sum("refinement model base loaded" in m for m in log_messages(stack["worker"].log))
    assert loads == 1, "one model load per worker process, not per task"


LONG_UTTERANCE = """
import uuid, numpy as np
from datetime import datetime, timezone
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from faster_whisper.audio import decode_audio
from stt.models import SessionRecord, Utterance
from stt.persistence import encode_flac
speech = decode_audio({path!r}, sampling_rate=16000)
audio = np.concatenate([np.concatenate([speech, np.zeros(8000, np.float32)])] * {repeats})
now = datetime.now(timezone.utc)
session = SessionRecord.objects.create(session_id="long", started_at=now, ended_at=now)
utterance_id = uuid.uuid4()
name = default_storage.save(f"utterances/long/{{utterance_id}}.flac", ContentFile(encode_flac(audio)))
Utterance.objects.create(utterance_id=utterance_id, session=session, text="", language="en", start_ms=0,
    end_ms=len(audio) // 16, audio_duration_ms=len(audio) // 16, final_latency_ms=0, audio=name, created_at=now)
print(utterance_id)
"""


def create_utterance(env: dict[str, str], repeats: int) -> str:
    """An utterance of jfk.flac said `repeats` times, stored by the server's own code."""
    created = subprocess.run([sys.executable, "manage.py", "shell", "-c",
                              LONG_UTTERANCE.format(path=str(JFK_PATH), repeats=repeats)],
                             cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return created.stdout.strip().splitlines()[-1]


def test_a_worker_killed_mid_task_leaves_it_to_complete_exactly_once(stack):
    """The whole worker is SIGKILLed while it is part-way through a long re-transcription;
    the unacknowledged task goes back on the queue once its visibility timeout passes,
    and the next worker completes it. Its result is written once."""
    database, folder = stack["database"], stack["folder"]
    env = {**stack["env"], "CELERY_QUEUE": f"fasttalk-test-{uuid.uuid4().hex[:8]}", "REFINE_CHUNK_SECONDS": "5",
           "CELERY_TASK_TIME_LIMIT": "25", "CELERY_VISIBILITY_TIMEOUT": "30"}
    utterance_id = create_utterance(env, repeats=4)

    doomed = Worker(env, folder, "doomed")
    celery_app.send_task("stt.tasks.refine_utterance", args=[utterance_id, "base"], queue=env["CELERY_QUEUE"])
    wait_for(lambda: (r := refinement_of(database, utterance_id)) and r["status"] == "running"
             and r["chunks_done"] >= 2, 60, "the first attempt reaching its second chunk")
    doomed.kill()
    killed_at = time.monotonic()
    interrupted = refinement_of(database, utterance_id)
    assert interrupted["status"] == "running" and interrupted["chunks_done"] < interrupted["chunks_total"]

    successor = Worker(env, folder, "successor")
    try:
        done = wait_for(lambda: (r := refinement_of(database, utterance_id)) and r["status"] == "done" and r,
                        90, "the redelivered task completing")
        assert time.monotonic() - killed_at >= 25, "redelivered only after the visibility timeout"
        assert done["attempts"] == 2 and done["chunks_done"] == done["chunks_total"] == interrupted["chunks_total"]
        assert word_error_rate(" ".join([JFK_TEXT] * 4), done["text"]) <= 0.05

        # Delivered again after it finished (as if acknowledging had failed): nothing changes.
        again = celery_app.send_task("stt.tasks.refine_utterance", args=[utterance_id, "base"],
                                     queue=env["CELERY_QUEUE"]).get(timeout=60)
        assert again["already_done"] is True
        after = refinement_of(database, utterance_id)
        assert (after["attempts"], after["finished_at"], after["text"]) == (2, done["finished_at"], done["text"])
        assert database.query("SELECT count(*) FROM stt_refinement r JOIN stt_utterance u ON u.id = r.utterance_id "
                              "WHERE u.utterance_id = %s", uuid.UUID(utterance_id))[0][0] == 1
    finally:
        successor.stop()


def test_a_task_that_meets_a_database_outage_is_retried_with_backoff(stack, jfk_audio):
    """The worker reaches PostgreSQL through a proxy that the test cuts: the task fails
    with a connection error, is retried with growing delays, and completes once the
    database is back."""
    database, folder = stack["database"], stack["folder"]
    proxy = TcpProxy(database.port)
    env = {**stack["env"], "CELERY_QUEUE": f"fasttalk-test-{uuid.uuid4().hex[:8]}",
           "DATABASE_URL": database.url(proxy.port), "TASK_RETRY_JITTER": "0"}
    utterance_id = create_utterance(env, repeats=1)
    worker = Worker(env, folder, "outage")
    try:
        proxy.cut()
        result = celery_app.send_task("stt.tasks.refine_utterance", args=[utterance_id, "base"],
                                      queue=env["CELERY_QUEUE"])
        retries = lambda: [m for m in log_messages(worker.log) if " retry: Retry in " in m]  # noqa: E731
        wait_for(lambda: len(retries()) >= 3, 60, "three retries")
        delays = [float(re.search(r"Retry in (\d+(?:\.\d+)?)s", m).group(1)) for m in retries()]
        assert delays[:3] == [2, 4, 8], f"exponential backoff from 2 s: {delays}"
        assert refinement_of(database, utterance_id) is None, "nothing written while the database is away"
        proxy.restore()
        outcome = result.get(timeout=120)
        assert outcome["status"] == "done" and outcome["completed"] is True
        assert refinement_of(database, utterance_id)["attempts"] == 1
    finally:
        worker.stop()
        proxy.close()


def test_a_task_over_its_time_limit_is_stopped_and_recorded(stack):
    database, folder = stack["database"], stack["folder"]
    """The soft limit (80% of the hard one) interrupts the task between two chunks; the
    refinement is marked failed with the reason, part-way through."""
    env = {**stack["env"], "CELERY_QUEUE": f"fasttalk-test-{uuid.uuid4().hex[:8]}", "REFINE_CHUNK_SECONDS": "4",
           "CELERY_TASK_TIME_LIMIT": "8", "CELERY_VISIBILITY_TIMEOUT": "60"}
    utterance_id = create_utterance(env, repeats=6)
    worker = Worker(env, folder, "slow")
    try:
        # A sender that has the task registered puts its own time limits in the message;
        # None leaves the limits to the worker's settings, which this test is about.
        result = celery_app.send_task("stt.tasks.refine_utterance", args=[utterance_id, "base"],
                                      queue=env["CELERY_QUEUE"], time_limit=None, soft_time_limit=None)
        with pytest.raises(Exception) as failure:
            result.get(timeout=60)
        assert "SoftTimeLimitExceeded" in type(failure.value).__name__ + repr(failure.value)
        refinement = refinement_of(database, utterance_id)
        assert refinement["status"] == "failed" and "time limit" in refinement["error"]
        assert refinement["chunks_done"] < refinement["chunks_total"]
    finally:
        worker.stop()


def test_beat_builds_the_report_of_the_last_period(stack):
    database, folder = stack["database"], stack["folder"]
    env = {**stack["env"], "CELERY_QUEUE": f"fasttalk-test-{uuid.uuid4().hex[:8]}", "REPORT_PERIOD_HOURS": "1",
           "REPORT_CHECK_SECONDS": "1"}
    worker = Worker(env, folder, "reports")
    beat = Beat(env, folder, "reports")
    try:
        query = "SELECT period_start, period_end FROM stt_report WHERE kind = 'scheduled' ORDER BY period_start"
        rows = wait_for(lambda: len(rows := database.query(query)) >= 168 and rows, 60, "the scheduled reports")
        now = datetime.now(timezone.utc)
        start, end = rows[-1]
        assert end - start == timedelta(hours=1) and timedelta(0) <= now - end < timedelta(hours=1)
        assert len(rows) == 168, "the last week of hourly periods, caught up"
        time.sleep(3)  # beat runs the task every second meanwhile
        assert len(database.query(query)) == 168, "each built once"
    finally:
        beat.stop()
        worker.stop()
