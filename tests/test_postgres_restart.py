"""PostgreSQL itself restarts (fast shutdown, a pause, start) under sessions that are
streaming speech: the sessions go on, /health says the database is away and then back,
and every final the clients received is in the history afterwards."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
import websockets

from tests.conftest import frames, silence
from tests.servers import PostgresServer, Server, base_env, get_json

pytestmark = pytest.mark.realtime

DATABASE = "fasttalk"
DOWN_SECONDS = 2.0
PACE = 2.0  # times real time
FRAME = 2048


@pytest.fixture(scope="module")
def cluster():
    cluster = PostgresServer()
    yield cluster
    cluster.cleanup()


def server_env(cluster: PostgresServer, database: str, folder: Path) -> dict[str, str]:
    cluster.create_database(database)
    return {
        **base_env(),
        "DATABASE_URL": cluster.url(database),
        "DATABASE_CONNECT_TIMEOUT": "1",
        "PERSISTENCE_RETRY_SECONDS": "0.5",
        "MEDIA_ROOT": str(folder / "media"),
        "HISTORY_JOURNAL": str(folder / "journal.jsonl"),
    }


@pytest.fixture(scope="module")
def cluster_and_server(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pg-restart")
    server = Server(server_env(cluster, DATABASE, folder), folder)  # migrates the cluster's database first
    yield cluster, server, folder
    server.stop()


class Stream:
    """One client session: what it received, and when."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages: list[tuple[float, dict]] = []
        self.close_code: int | None = None

    @property
    def finals(self) -> list[dict]:
        return [m["data"] for _, m in self.messages if m["type"] == "transcription_final"]

    def finals_between(self, start: float, end: float) -> int:
        return sum(1 for at, m in self.messages if m["type"] == "transcription_final" and start <= at <= end)


async def stream(url: str, session_id: str, audio: np.ndarray, record: Stream, pace: float = PACE) -> None:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "start_session",
                                  "session_config": {"language": "en", "session_id": session_id}}))

        async def reader() -> None:
            async for raw in ws:
                record.messages.append((time.monotonic(), json.loads(raw)))

        reading = asyncio.create_task(reader())
        t0 = time.monotonic()
        for index, frame in enumerate(frames(audio, FRAME)):
            await ws.send(frame)
            delay = t0 + (index + 1) * FRAME / 16000 / pace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(json.dumps({"type": "end_session"}))
        await asyncio.wait_for(reading, 90)
        record.close_code = ws.close_code


def stored(cluster: PostgresServer, session_id: str) -> dict[str, str]:
    rows = cluster.query(DATABASE, "SELECT u.utterance_id::text, u.text FROM stt_utterance u "
                                   "JOIN stt_sessionrecord s ON u.session_id = s.connection_id "
                                   "WHERE s.session_id = %s", session_id)
    return dict(rows)


def session_row(cluster: PostgresServer, session_id: str) -> list[tuple]:
    return cluster.query(DATABASE, "SELECT close_reason, finals, ended_at IS NOT NULL FROM stt_sessionrecord "
                                   "WHERE session_id = %s", session_id)


async def test_sessions_stream_through_a_postgres_restart_and_lose_no_final(cluster_and_server, jfk_audio, speak):
    cluster, server, folder = cluster_and_server
    sentences = [speak("Turn on the kitchen lights please."), speak("What is the weather tomorrow?"),
                 speak("Play some music in the living room."), speak("Remind me to call my mother tonight.")]

    def speech(variant: int) -> np.ndarray:
        # Each session its own gain: no result is shared through the engine's cache.
        gain = np.float32(1.0 - 0.05 * variant)
        parts = [silence(0.3), jfk_audio, silence(0.8)]
        for sentence in sentences[variant:] + sentences[:variant]:
            parts += [sentence, silence(0.8)]
        parts += [jfk_audio, silence(1.0)]
        return np.concatenate(parts) * gain

    records = [Stream(f"pg-restart-{n}") for n in range(2)]
    during = Stream("pg-restart-during")
    health: list[tuple[float, int, dict]] = []
    timings: dict[str, float] = {}
    polling = True

    async def poll_health() -> None:
        while polling:
            status, report = await asyncio.to_thread(get_json, f"{server.base}/health")
            health.append((time.monotonic(), status, report))
            await asyncio.sleep(0.25)

    async def restart() -> None:
        while min(len(r.finals) for r in records) < 1:  # some finals stored before the outage
            await asyncio.sleep(0.05)
        timings["stop_at"] = time.monotonic()
        await asyncio.to_thread(cluster.stop)
        timings["stopped_at"] = time.monotonic()
        # A session that starts and ends while the database is away.
        await stream(server.ws, during.name, np.concatenate([silence(0.3), sentences[0], silence(0.8)]),
                     during, pace=4.0)
        await asyncio.sleep(max(0.0, timings["stopped_at"] + DOWN_SECONDS - time.monotonic()))
        timings["start_at"] = time.monotonic()
        await asyncio.to_thread(cluster.start)
        timings["started_at"] = time.monotonic()

    poller = asyncio.create_task(poll_health())
    restarting = asyncio.create_task(restart())
    await asyncio.gather(*(stream(server.ws, r.name, speech(n), r) for n, r in enumerate(records)))
    await restarting

    # Recovery: every final a client received is written, text for text.
    everyone = [*records, during]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(stored(cluster, r.name) == {f["utterance_id"]: f["text"] for f in r.finals} for r in everyone):
            break
        await asyncio.sleep(0.25)
    timings["stored_at"] = time.monotonic()
    while time.monotonic() < deadline and not (health and health[-1][2]["status"] == "healthy"):
        await asyncio.sleep(0.25)
    polling = False
    await poller

    # A session after the recovery is recorded as usual.
    after = Stream("pg-restart-after")
    await stream(server.ws, after.name, np.concatenate([silence(0.3), sentences[1], silence(0.8)]), after, 4.0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and session_row(cluster, after.name) != [("end_session", 1, True)]:
        await asyncio.sleep(0.2)
    timings["after_stored_at"] = time.monotonic()

    down_from, up_at = timings["stop_at"], timings["started_at"]
    while_down = [(status, report) for at, status, report in health if timings["stopped_at"] <= at <= timings["start_at"]]
    healthy_again = next((at for at, status, report in health
                          if at > up_at and report["checks"]["database"]["status"] == "ok"), None)
    replayed = next((at for at, status, report in health
                     if at > up_at and report["checks"]["database"]["history_backlog"] == 0), None)

    def since_start(at: float | None) -> str:
        return f"{at - up_at:.2f} s" if at is not None else "never"

    print(f"\nPostgreSQL stop {timings['stopped_at'] - down_from:.2f} s, down {timings['start_at'] - timings['stopped_at']:.2f} s, "
          f"start {timings['started_at'] - timings['start_at']:.2f} s; after the start: /health database ok "
          f"{since_start(healthy_again)}, history backlog replayed {since_start(replayed)}; "
          f"a new session streamed and stored in {timings['after_stored_at'] - timings['stored_at']:.2f} s")
    for r in everyone + [after]:
        print(f"{r.name}: {len(r.finals)} finals, {r.finals_between(down_from, up_at)} while the database was away, "
              f"close {r.close_code}; stored {len(stored(cluster, r.name))}")
    print("/health while down: " + ", ".join(sorted({f"{status} {report['status']} "
                                                      f"db={report['checks']['database']['status']}"
                                                      for status, report in while_down})))
    print(f"backlog peak {max(report['checks']['database']['history_backlog'] for _, _, report in health)}")

    for r in everyone + [after]:
        kinds = [m["type"] for _, m in r.messages]
        assert r.close_code == 1000 and kinds[0] == "session_started" and kinds[-1] == "session_ended", (r.name, kinds)
        assert "error" not in kinds, [m for _, m in r.messages if m["type"] == "error"]
        assert stored(cluster, r.name) == {f["utterance_id"]: f["text"] for f in r.finals}, r.name
        assert session_row(cluster, r.name) == [("end_session", len(r.finals), True)], r.name
    assert all(len(r.finals) >= 6 for r in records), "the streams kept being transcribed"
    assert sum(r.finals_between(down_from, up_at) for r in records) >= 1, "finals were made while the database was away"
    assert len(during.finals) == 1
    assert while_down and all(status == 200 and report["status"] == "degraded"
                              and report["checks"]["database"]["status"] == "error" for status, report in while_down)
    assert healthy_again is not None
    assert health[-1][1] == 200 and health[-1][2]["status"] == "healthy"
    assert health[-1][2]["checks"]["database"]["history_backlog"] == 0
    assert not (folder / "journal.jsonl").exists(), "nothing was journaled"


async def test_the_first_history_write_after_a_quiet_restart_goes_straight_through(cluster_and_server, speak):
    """PostgreSQL restarts while nobody talks: the history thread's persistent
    connection is dead without knowing it. The next session's writes must still land
    at once (a final is stored before it is sent), not fail over to the backlog."""
    cluster, server, _ = cluster_and_server
    audio = np.concatenate([silence(0.3), speak("Open the garage door."), silence(0.8)])
    before = Stream("quiet-before")
    await stream(server.ws, before.name, audio, before, pace=4.0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and session_row(cluster, before.name) != [("end_session", 1, True)]:
        await asyncio.sleep(0.2)
    history = get_json(f"{server.base}/stats")[1]["history"]

    cluster.stop()
    cluster.start()  # nothing touched the database in between

    after = Stream("quiet-after")
    await stream(server.ws, after.name, audio * np.float32(0.9), after, pace=4.0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and session_row(cluster, after.name) != [("end_session", 1, True)]:
        await asyncio.sleep(0.2)
    history_after = get_json(f"{server.base}/stats")[1]["history"]
    print(f"\nhistory before the quiet restart {history}, after the next session {history_after}")
    assert session_row(cluster, after.name) == [("end_session", 1, True)]
    assert stored(cluster, after.name) == {f["utterance_id"]: f["text"] for f in after.finals}
    assert history_after["failures"] == history["failures"], "a write failed on the dead connection"
    assert history_after["buffered_total"] == history["buffered_total"], "a write had to wait in the backlog"
    assert history_after["written"] >= history["written"] + 3  # the session twice, its final


@pytest.fixture(scope="module")
def secured_server(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pg-restart-auth")
    env = {**server_env(cluster, "fasttalk_auth", folder), "AUTH_REQUIRED": "1"}
    server = Server(env, folder)
    yield server, server.create_api_key("restart")
    server.stop()


async def test_an_api_key_opens_a_session_right_after_a_quiet_restart(cluster, secured_server):
    server, key = secured_server
    headers = {"Authorization": f"Bearer {key}"}

    async def start() -> str:
        async with websockets.connect(server.ws, additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "start_session"}))
            return json.loads(await ws.recv())["type"]

    assert await start() == "session_started"
    cluster.stop()
    cluster.start()
    assert await start() == "session_started"  # was: InvalidStatus, HTTP 403
