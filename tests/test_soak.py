"""A bounded soak of one real server process (Daphne, Redis channel layer on a private
redis-server, PostgreSQL): hundreds of connections come and go, normally, abruptly,
refused at the handshake and refused over the connection limit. Afterwards nothing
may be left behind: memory stops growing after a warm-up, the channel layer's Redis
keys are back to their baseline, no connection is counted as active, and every
session that started is closed in the history.

Run with -s to see the figures."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis
import websockets

from tests.conftest import frames, silence
from tests.servers import RedisServer, ScratchDatabase, Server, base_env, get_json

pytestmark = pytest.mark.realtime

LIMIT = 6  # WEBSOCKET_MAX_CONNECTIONS of the server under soak
ROUNDS = int(os.environ.get("SOAK_ROUNDS", 24))  # by hand, longer: SOAK_ROUNDS=100 pytest -s ...
WARMUP_ROUNDS = 6
# Each round: FULL sessions and ABRUPT ones at once, one handshake with a bad key, then
# LIMIT + 1 connections held together (the last one, at least, refused with 1013).
FULL, ABRUPT = 4, 2
# RSS may grow this much per round after the warm-up. A started session costs the
# process about 175 KB while it lives (bench/connections.py: 30 KB the connection,
# 145 KB the session), and a round runs FULL + ABRUPT = 6 of them, each with up to 1 s
# of audio, a final, its FLAC and history rows: sessions leaking even half of that
# would add 0.5 MB a round, for ever. What is measured is 0.15-0.2 MB a round at first,
# flattening later (90 rounds: +9.7 MB, the last 30 rounds +1 MB), and it is memory
# the allocator keeps, not objects: Python's object count and tracemalloc stay flat,
# and malloc_trim(0) in the server brings RSS back to its warm-up level. A leak grows
# linearly with the rounds, so the bound does too.
RSS_GROWTH_PER_ROUND_MB = 0.5
# glibc's dynamic mmap threshold: once a large block (an audio buffer, the model file
# read at start) has been freed, later large blocks come from the heap, which keeps
# what is freed there. RSS then creeps with no leak (60 rounds with the defaults:
# malloc's in-use bytes +0.1 MB while RSS grew 10 MB; malloc_trim(0) gave back 67 MB).
# A fixed threshold hands large blocks back to the system when they are freed, so RSS
# follows what the process holds (and starts ~90 MB lower).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}

def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def soaked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("soak")
    redis_server = RedisServer(folder)
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    env = {
        **base_env(),
        "DATABASE_URL": database.url(),
        "REDIS_URL": redis_server.url,
        "CHANNEL_LAYER_PREFIX": "fasttalk-soak",
        "AUTH_REQUIRED": "1",
        "WEBSOCKET_MAX_CONNECTIONS": str(LIMIT),
        "AUTH_MAX_SESSIONS_PER_KEY": "100",
        "AUTH_MAX_MESSAGES_PER_SECOND": "100000",
        "MEDIA_ROOT": str(folder / "media"),
        "HISTORY_JOURNAL": str(folder / "journal.jsonl"),
        "LOG_FORMAT": "plain",
        **MALLOC_ENV,
    }
    env.pop("CELERY_BROKER_URL", None)  # the broker is the private Redis too
    server = Server(env, folder)
    key = server.create_api_key("soak")
    server.stats_headers = {"Authorization": f"Bearer {key}"}  # /stats needs a key with AUTH_REQUIRED
    yield server, redis_server, database, key, folder
    server.stop()
    redis_server.stop()
    database.drop()


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.finals_received = 0
        self.failures: list[str] = []

    def fail(self, what: str) -> None:
        self.failures.append(what)


async def full_session(url: str, key: str, audio: np.ndarray, tally: Tally) -> None:
    """connect, start_session, a little audio, end_session: every message, then 1000."""
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"language": "en"}}))
        for frame in frames(audio, 2048):
            await ws.send(frame)
        await ws.send(json.dumps({"type": "end_session"}))
        kinds = [json.loads(raw)["type"] async for raw in ws]
    tally.finals_received += kinds.count("transcription_final")
    if kinds[:1] != ["session_started"] or kinds[-1:] != ["session_ended"] or ws.close_code != 1000:
        tally.fail(f"full session: {kinds} close {ws.close_code}")
    tally.counts["full"] += 1


async def abrupt_session(url: str, key: str, audio: np.ndarray, tally: Tally) -> None:
    """connect, start_session, some audio, then the socket is dropped: no close frame."""
    ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"})
    await ws.send(json.dumps({"type": "start_session", "session_config": {"language": "en"}}))
    if json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] != "session_started":
        tally.fail("abrupt session not started")
    for frame in frames(audio, 2048):
        await ws.send(frame)
    ws.transport.abort()
    tally.counts["abrupt"] += 1


async def bad_key(url: str, tally: Tally) -> None:
    try:
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer ftk_not_a_real_key"}):
            tally.fail("a bad key opened a WebSocket")
    except websockets.InvalidStatus as refused:
        if refused.response.status_code != 403:
            tally.fail(f"bad key: HTTP {refused.response.status_code}")
    tally.counts["refused_403"] += 1


async def over_the_limit(url: str, key: str, tally: Tally) -> None:
    """LIMIT + 1 connections held at once: at most LIMIT stay open (sessions that are
    still being finished count too); the others get server_overloaded and 1013."""
    headers = {"Authorization": f"Bearer {key}"}
    sockets = [await websockets.connect(url, additional_headers=headers) for _ in range(LIMIT + 1)]
    held = refused = 0
    for ws in sockets:
        message: dict = {}
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), 0.3))
            await asyncio.wait_for(ws.recv(), 5)
            tally.fail(f"over the limit: a second message after {message}")
        except asyncio.TimeoutError:
            held += 1
        except websockets.ConnectionClosed:
            refused += 1
            if ws.close_code != 1013 or message.get("error", {}).get("code") != "server_overloaded":
                tally.fail(f"over the limit: {message} close {ws.close_code}")
    if held > LIMIT or refused < 1:
        tally.fail(f"over the limit: {held} held, {refused} refused")
    await asyncio.gather(*(ws.close() for ws in sockets))
    tally.counts["held_at_limit"] += held
    tally.counts["refused_1013"] += refused


def redis_keys(client: redis.Redis) -> list[str]:
    return sorted(key.decode() for key in client.scan_iter(count=1000))


async def settled(server: Server, timeout: float = 30) -> dict:
    """/stats once no connection is active any more (departed sessions finish in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        _, stats = get_json(f"{server.base}/stats", getattr(server, "stats_headers", None))
        if stats["active_connections"] == 0 or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.2)


async def test_hundreds_of_connections_leave_nothing_behind(soaked, jfk_audio):
    server, redis_server, database, key, folder = soaked
    client = redis.Redis.from_url(redis_server.url)
    pid = server.process.pid
    # A little speech each: four pieces of the recording (one has the words "And so my
    # fellow"), then silence for the session's last utterance to end on.
    pieces = [np.concatenate([jfk_audio[start:start + 12000], silence(0.2)])
              for start in (0, 16000, 48000, 96000)]
    tally = Tally()
    samples: list[tuple[int, float]] = []
    baseline_keys: list[str] = []
    rss_after_warmup = 0.0
    started = time.monotonic()
    for number in range(ROUNDS):
        if number == WARMUP_ROUNDS:
            stats = await settled(server)
            assert stats["active_connections"] == 0
            await asyncio.sleep(1.0)
            rss_after_warmup = rss_mb(pid)
            baseline_keys = redis_keys(client)
        work = [full_session(server.ws, key, pieces[(number + i) % len(pieces)], tally) for i in range(FULL)]
        work += [abrupt_session(server.ws, key, pieces[(number + i) % len(pieces)], tally) for i in range(ABRUPT)]
        work.append(bad_key(server.ws, tally))
        await asyncio.gather(*work)
        await over_the_limit(server.ws, key, tally)
        samples.append((number, rss_mb(pid)))
    elapsed = time.monotonic() - started

    stats = await settled(server)
    await asyncio.sleep(1.0)
    rss_end = rss_mb(pid)
    deadline = time.monotonic() + 15
    while (keys := redis_keys(client)) != baseline_keys and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    started_sessions = tally.counts["full"] + tally.counts["abrupt"]
    rows: list[tuple] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = database.query("SELECT close_reason, count(*), count(ended_at) FROM stt_sessionrecord "
                              "GROUP BY close_reason ORDER BY close_reason")
        if sum(row[1] for row in rows) == started_sessions and all(row[1] == row[2] for row in rows):
            break
        await asyncio.sleep(0.5)
    stored_finals = database.query(
        "SELECT count(*) FROM stt_utterance u JOIN stt_sessionrecord s ON u.session_id = s.connection_id "
        "WHERE s.close_reason = 'end_session'")[0][0]
    _, health = get_json(f"{server.base}/health")

    connections = sum(tally.counts.values())
    rss_limit = RSS_GROWTH_PER_ROUND_MB * (ROUNDS - WARMUP_ROUNDS)
    print(f"\nsoak: {connections} connections in {elapsed:.1f} s ({ROUNDS} rounds, {WARMUP_ROUNDS} warm-up): "
          f"{dict(tally.counts)}")
    print(f"RSS after warm-up {rss_after_warmup:.1f} MB, at the end {rss_end:.1f} MB "
          f"({rss_end - rss_after_warmup:+.2f} MB; limit +{rss_limit:.1f} MB); per round: "
          + " ".join(f"{rss:.1f}" for _, rss in samples))
    print(f"Redis keys: baseline {len(baseline_keys)} {baseline_keys}, at the end {len(keys)} {keys}")
    print(f"/stats active {stats['active_connections']}, total {stats['total_connections']}, "
          f"rejected {stats['rejected_connections']}; /health {health['status']}")
    print(f"session records {rows}; finals received {tally.finals_received}, stored {stored_finals}")

    assert not tally.failures, tally.failures[:5]
    assert tally.counts["refused_1013"] >= ROUNDS
    assert stats["active_connections"] == 0
    assert all(count == 0 for count in stats["connections_by_state"].values()), stats["connections_by_state"]
    assert keys == baseline_keys, "the channel layer left keys behind"
    assert sum(row[1] for row in rows) == started_sessions, rows
    assert all(row[1] == row[2] for row in rows), f"sessions not closed in the history: {rows}"
    assert dict((row[0], row[1]) for row in rows) == {"end_session": tally.counts["full"],
                                                       "client_disconnected": tally.counts["abrupt"]}
    assert stored_finals == tally.finals_received
    assert health["checks"]["database"]["history_backlog"] == 0
    assert not (folder / "journal.jsonl").exists(), "history writes were journaled"
    assert rss_end - rss_after_warmup < rss_limit


async def test_a_client_that_sends_but_never_reads_is_dropped_not_buffered(soaked):
    """WEBSOCKET_MAX_OUTBOUND_BYTES (4 MiB by default): a client that keeps sending but
    reads nothing is disconnected once that much waits for it, instead of the server
    holding every reply. Its receive buffer is made tiny before it connects, or the
    kernel's socket buffers (~4 MB on loopback) would take the replies first. Audio
    alone brings too few replies to fill 4 MiB within a test, so the client asks for
    replies: `configure` is answered with the whole config (~700 bytes) each time."""
    import socket

    server, _, database, key, _ = soaked
    pid = server.process.pid
    await full_session(server.ws, key, silence(0.5), Tally())  # code used by a session is loaded
    await settled(server)
    rss_before = rss_mb(pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    ws = await websockets.connect(server.ws, sock=sock, ping_interval=None,
                                  additional_headers={"Authorization": f"Bearer {key}"})
    await ws.send(json.dumps({"type": "start_session", "session_config": {"session_id": "never-reads"}}))
    await asyncio.sleep(0.5)
    ws.transport.pause_reading()  # from now on it reads nothing
    request = json.dumps({"type": "configure", "config": {}})
    marker = "dropping a client that stopped reading"
    sent, started = 0, time.monotonic()
    try:
        while sent < 20000 and marker not in server.log.read_text():  # 20000 replies: ~14 MB
            for _ in range(500):
                await ws.send(request)
                sent += 1
            await asyncio.sleep(0.2)  # let the server answer: what waits is outbound
    except websockets.ConnectionClosed:
        pass
    deadline = time.monotonic() + 30  # the server may still be answering what it read
    while marker not in server.log.read_text() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    dropped_after = time.monotonic() - started
    ws.transport.abort()
    stats = await settled(server)
    rss_after = rss_mb(pid)
    lines = [line for line in server.log.read_text().splitlines() if marker in line]
    rows = []
    for _ in range(40):
        rows = database.query("SELECT close_reason FROM stt_sessionrecord WHERE session_id = 'never-reads'")
        if rows == [("client_disconnected",)]:
            break
        await asyncio.sleep(0.25)
    print(f"\nnever-reading client: {sent} configure requests, dropped after {dropped_after:.1f} s; {lines[-1:]}; "
          f"server RSS {rss_before:.1f} -> {rss_after:.1f} MB")
    assert lines, "the server kept buffering for a client that reads nothing"
    unsent = int(lines[-1].split("(")[1].split()[0])
    assert 4 * 1024 * 1024 < unsent < 4 * 1024 * 1024 + 65536, unsent  # the limit and one reply at most
    assert rows == [("client_disconnected",)]
    assert stats["active_connections"] == 0
    assert get_json(f"{server.base}/health")[0] == 200


async def test_a_client_sending_far_faster_than_real_time_is_slowed_not_buffered(soaked, jfk_audio):
    """WEBSOCKET_MAX_INBOUND_QUEUE: 25 minutes of audio pushed at full speed (the client
    does not pace itself) are all transcribed, none dropped, while the server's memory
    stays flat: the server stops reading the socket whenever the session falls 64
    messages behind, and TCP slows the sender (without it, the backlog queues in the
    process: ~100 MB for this much audio)."""
    from stt.client import open_session

    server, _, _, key, _ = soaked
    pid = server.process.pid
    speech_then_silence = np.concatenate([jfk_audio, silence(60)])

    async def push(audio: np.ndarray):
        session = await open_session(server.ws, api_key=key)
        await session.stream(audio, pace=None)
        return await session.end(timeout=300)

    await push(speech_then_silence)  # warm-up: the engine and buffers reach their working size
    await settled(server)
    rss_before = rss_mb(pid)
    flood = np.concatenate([jfk_audio, silence(1500)])
    began = time.monotonic()
    ended = await push(flood)
    took = time.monotonic() - began
    rss_after = rss_mb(pid)
    print(f"\nfull-speed client: {len(flood) / 16000:.0f} s of audio in {took:.1f} s; "
          f"server RSS {rss_before:.1f} -> {rss_after:.1f} MB")
    assert ended is not None and ended.data.reason == "end_session" and ended.data.errors == 0
    assert ended.data.audio_received_s == round(len(flood) / 16000, 3), "nothing was dropped"
    assert ended.data.finals >= 3
    assert rss_after - rss_before < 20, "the backlog was buffered in the server"


BURST = 150  # more concurrent group changes than redis-py's default pool (100 connections)


@pytest.fixture(scope="module")
def roomy_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("burst")
    redis_server = RedisServer(folder)
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    env = {**base_env(), "DATABASE_URL": database.url(), "REDIS_URL": redis_server.url,
           "CHANNEL_LAYER_PREFIX": "fasttalk-burst", "WEBSOCKET_MAX_CONNECTIONS": str(BURST + 10),
           "MEDIA_ROOT": str(folder / "media"), "HISTORY_JOURNAL": str(folder / "journal.jsonl"),
           "LOG_FORMAT": "plain"}
    env.pop("CELERY_BROKER_URL", None)
    server = Server(env, folder)
    yield server, redis_server
    server.stop()
    redis_server.stop()
    database.drop()


async def test_a_burst_of_connections_all_join_and_leave_the_broadcast_group(roomy_server):
    """Every connection joins `stt.sessions` (server-side control reaches it) and leaves
    it when it closes, also when many connect or close at the same moment."""
    server, redis_server = roomy_server
    client = redis.Redis.from_url(redis_server.url)
    group = "fasttalk-burst:group:stt.sessions"
    sockets = await asyncio.gather(*(websockets.connect(server.ws, open_timeout=30) for _ in range(BURST)))
    deadline = time.monotonic() + 10
    while client.zcard(group) < BURST and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    joined = client.zcard(group)
    await asyncio.gather(*(ws.close() for ws in sockets))
    await settled(server)
    deadline = time.monotonic() + 10
    while client.zcard(group) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    left_behind = client.zcard(group)
    deferred = server.log.read_text().count("deferred: channel layer unreachable")
    print(f"\nburst of {BURST}: {joined} in the broadcast group, {left_behind} left in it after closing; "
          f"{deferred} group_add deferred as if Redis were down")
    assert joined == BURST
    assert left_behind == 0
