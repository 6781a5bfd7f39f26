"""The service as operators run it (tests/topology.py): HAProxy on deploy/haproxy.cfg in
front of three server processes, one PostgreSQL, one Redis, a Celery worker and beat.
Real speech from ../shared/audio, a distinct recording per session (two clips, a
session's own lead-in and gain), streamed at real-time pace by the Python client through
the load balancer. The processes are shared by the tests of this module; a test that
stops one starts it again."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import websockets

from stt.client import Backoff, Callbacks, SessionConfig, open_session, transcribe
from stt.evaluation import word_error_rate
from tests.conftest import AUDIO_DIR, JFK_TEXT, frames, load_audio, silence
from tests.servers import ROOT, AdminBrowser, get_json
from tests.topology import NAMES, Topology

pytestmark = pytest.mark.realtime

CLIPS = ("jfk.flac", "ps_austen_0870.wav", "pv_platforms.wav", "fw_libri_61_left.wav", "ps_cards_005.wav",
         "ps_goforward.wav")
PASSWORD = "s3cret-pass-phrase"
# tiny.en on these recordings, scored per session: 0-8 %, up to 15 % for a recording
# resumed after a drain (a word cut at the drain). An utterance lost costs more.
SESSION_WER_BOUND = 0.25


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    if not __import__("shutil").which("haproxy"):
        pytest.fail("haproxy is not installed (bin/test installs it with apt-get)")
    running = Topology(tmp_path_factory.mktemp("topology"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def clips() -> dict[str, tuple[np.ndarray, str]]:
    loaded = {}
    for name in CLIPS:
        reference = JFK_TEXT if name == "jfk.flac" else (AUDIO_DIR / name).with_suffix(".txt").read_text().strip()
        loaded[name] = (load_audio(AUDIO_DIR / name), reference)
    return loaded


def recording(clips: dict, index: int, count: int = 2) -> tuple[np.ndarray, str]:
    """Session `index`'s own recording: `count` different clips in an order no other
    session has, after a lead-in of its own length and at its own gain (so no two
    sessions share an utterance's audio: the result cache must not answer)."""
    names = [CLIPS[(index + step * (1 + index // len(CLIPS))) % len(CLIPS)] for step in range(count)]
    parts, references = [silence(0.3 + 0.037 * index)], []
    for name in names:
        audio, reference = clips[name]
        parts += [audio * (0.8 + 0.02 * index), silence(0.8)]
        references.append(reference)
    return np.concatenate(parts + [silence(0.4)]).astype(np.float32), " ".join(references)


class Heard:
    """What one client received: finals in order, and the utterances it heard of."""

    def __init__(self) -> None:
        self.finals: list = []
        self.announced: set[str] = set()

    def callbacks(self) -> Callbacks:
        return Callbacks(on_final=self.finals.append,
                         on_vad=lambda m: self.announced.add(m.data.utterance_id),
                         on_partial=lambda m: self.announced.add(m.data.utterance_id))

    @property
    def text(self) -> str:
        return " ".join(f.data.text for f in self.finals if f.data.text)


async def stream_session(url: str, label: str, audio: np.ndarray, partials: bool = False) -> Heard:
    heard = Heard()
    config = SessionConfig(language="en", session_id=label, enable_partial_transcription=partials)
    session = await open_session(url, config, callbacks=heard.callbacks(), backoff=Backoff(attempts=8))
    await session.stream(audio, pace=1.0)
    ended = await session.end()
    assert ended is not None and session.close_code == 1000, (label, session.close_code)
    return heard


def assert_stored_exactly_once(topology: Topology, label: str, finals: list) -> list[dict]:
    """The history holds each final the client got once, as it got it, and nothing else
    for the label; returns the label's sessions."""
    sessions = topology.sessions(label)
    stored = [u for s in sessions for u in s["utterances"]]
    assert [(u[0], u[2]) for u in stored] == [(f.data.utterance_id, f.data.text) for f in finals], label
    assert {u[1] for u in stored} <= {"final"}, label
    return sessions


async def test_sessions_spread_over_every_process_and_each_final_is_right_and_stored_once(topology, clips):
    recordings = [recording(clips, index) for index in range(12)]
    labels = [f"spread-{index}" for index in range(12)]
    results = await asyncio.gather(*(stream_session(topology.haproxy.ws, label, audio)
                                     for label, (audio, _) in zip(labels, recordings)))
    per_process = {name: 0 for name in NAMES}
    rates = [word_error_rate(reference, heard.text) for heard, (_, reference) in zip(results, recordings)]
    print(f"12 sessions: WER per session {[round(rate, 3) for rate in rates]}")
    for label, heard, (_, reference) in zip(labels, results, recordings):
        assert word_error_rate(reference, heard.text) <= SESSION_WER_BOUND, (label, reference, heard.text)
        sessions = assert_stored_exactly_once(topology, label, heard.finals)
        assert len(sessions) == 1 and sessions[0]["close_reason"] == "end_session"
        per_process[sessions[0]["process"]] += 1
    assert all(count >= 2 for count in per_process.values()), f"leastconn spreads 12 sessions: {per_process}"
    servers = topology.haproxy.servers()
    assert sum(int(servers[name]["stot"]) for name in NAMES) >= 12


async def test_the_history_names_the_client_not_the_balancer(topology, clips):
    """The processes take the client's address from HAProxy's X-Forwarded-For
    (WEBSOCKET_PROXY_HEADERS); one the client sends itself is dropped by HAProxy."""
    audio = recording(clips, 90, count=1)[0][:2 * 16000]
    async with websockets.connect(topology.haproxy.ws, local_addr=("127.0.0.2", 0),
                                  additional_headers={"X-Forwarded-For": "203.0.113.9"}) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"session_id": "address-1"}}))
        assert json.loads(await ws.recv())["type"] == "session_started"
        for frame in frames(audio, 4096):
            await ws.send(frame)
        await ws.send(json.dumps({"type": "end_session"}))
        async for _ in ws:
            pass
        local_port = ws.local_address[1]
    query = "SELECT client_address FROM stt_sessionrecord WHERE session_id = 'address-1'"
    # The session's row is written in the background (unlike a final, before nothing is sent).
    [(address,)] = await wait_until(lambda: topology.database.query(query), 10, "the session's row")
    assert address == f"127.0.0.2:{local_port}", "the client, as HAProxy saw it"


async def runtime_of(url: str, profile: str) -> dict | None:
    """The runtime of a new session naming `profile` (None: the process does not know it yet)."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"profile": profile}}))
        reply = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "end_session"}))
        async for _ in ws:
            pass
    return reply["data"]["runtime"] if reply["type"] == "session_started" else None


async def seconds_until_every_process_runs(topology: Topology, profile: str, vad_threshold: float,
                                           saved_at: float) -> dict[str, float]:
    delays = {}
    for name, process in topology.processes.items():
        while time.monotonic() - saved_at < 5:
            runtime = await runtime_of(process.ws, profile)
            if runtime is not None and runtime["vad_threshold"] == vad_threshold:
                delays[name] = time.monotonic() - saved_at
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{name} did not get {profile} at {vad_threshold} within 5 s")
    return delays


async def test_a_profile_saved_through_the_balancer_reaches_every_process_within_two_seconds(topology):
    """Processes re-read profiles only every 60 s here: the save's announcement over
    Redis is what reaches them. The admin is served by whichever process HAProxy picks."""
    subprocess.run([sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "admin",
                    "--email", "admin@example.com"], cwd=ROOT, check=True,
                   env={**topology.env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD})
    browser = AdminBrowser(topology.haproxy.base, "admin", PASSWORD)
    fields = {"name": "noisy-floor", "description": "call centre", "vad_threshold": "0.6",
              "final_beam_size": "3", "default_language": ""}
    form = browser.get("/admin/stt/runtimeprofile/add/")
    status, _ = browser.post("/admin/stt/runtimeprofile/add/", fields, form)
    saved_at = time.monotonic()
    assert status == 200
    created = await seconds_until_every_process_runs(topology, "noisy-floor", 0.6, saved_at)
    assert max(created.values()) <= 2.0, created

    change = re.search(r"/admin/stt/runtimeprofile/\d+/change/", browser.get("/admin/stt/runtimeprofile/")).group(0)
    form = browser.get(change)
    browser.post(change, {**fields, "vad_threshold": "0.7"}, form)
    saved_at = time.monotonic()
    edited = await seconds_until_every_process_runs(topology, "noisy-floor", 0.7, saved_at)
    assert max(edited.values()) <= 2.0, edited
    print(f"profile reached the processes after {created} (new) and {edited} (edited) s")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def stats_totals(topology: Topology) -> dict[str, int]:
    return {name: get_json(f"{process.base}/stats")[1]["total_connections"]
            for name, process in topology.processes.items()}


async def test_metrics_and_stats_add_up_across_the_processes(topology, clips):
    """One scrape of the host's monitoring port sums every process (shared
    PROMETHEUS_MULTIPROC_DIR); the processes' /stats add up to the sessions run, and
    match what HAProxy's own exporter counted for each process."""
    def balancer_sessions() -> dict[str, float]:
        counted = scrape(topology.haproxy.stats_port)
        return {name: counted[f'haproxy_server_sessions_total{{proxy="fasttalk_web",server="{name}"}}']
                for name in NAMES}

    metrics_before, stats_before = scrape(topology.monitoring_port), stats_totals(topology)
    balancer_before = balancer_sessions()
    recordings = [recording(clips, index, count=1) for index in range(20, 26)]
    results = await asyncio.gather(*(stream_session(topology.haproxy.ws, f"metrics-{index}", audio)
                                     for index, (audio, _) in enumerate(recordings)))
    finals = sum(len(heard.finals) for heard in results)
    await asyncio.sleep(0.5)
    metrics_after, stats_after = scrape(topology.monitoring_port), stats_totals(topology)
    grew = {name: stats_after[name] - stats_before[name] for name in NAMES}
    assert sum(grew.values()) == 6 and sum(1 for g in grew.values() if g) >= 2, grew
    balancer_after = balancer_sessions()
    assert {name: balancer_after[name] - balancer_before[name] for name in NAMES} == grew
    for name, count in (("fasttalk_sessions_total", 6), ("fasttalk_connections_total", 6),
                        ("fasttalk_utterances_total", finals),
                        ('fasttalk_sessions_ended_total{reason="end_session"}', 6),
                        ("fasttalk_final_latency_seconds_count", finals)):
        assert metrics_after[name] - metrics_before.get(name, 0.0) == count, name
    assert metrics_after["fasttalk_connections_active"] == 0.0


def live_labels(topology: Topology, name: str) -> dict[str, str | None]:
    """The started sessions process `name` holds now: label -> the utterance open in it."""
    status, stats = get_json(f"{topology.processes[name].base}/stats")
    assert status == 200
    return {entry["session_id"]: entry["current_utterance_id"] for entry in stats["processing_stats"].values()
            if entry.get("session_started", True)}


async def wait_until(check, limit: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"{what} did not happen within {limit} s")


def resilient(topology: Topology, label: str, audio: np.ndarray, heard: Heard, partials: bool = False):
    config = SessionConfig(language="en", session_id=label, enable_partial_transcription=partials)
    return asyncio.create_task(transcribe(audio, topology.haproxy.ws, config, callbacks=heard.callbacks(),
                                          backoff=Backoff(attempts=10, base_delay=0.2)))


def assert_no_audio_twice(transcript) -> None:
    """The finals' audio, placed on the recording's timeline, never overlaps: no part of
    the recording was transcribed in two sessions."""
    spans = [(offset + final.data.start_ms, offset + final.data.end_ms)
             for offset, final in zip(transcript.offsets_ms, transcript.finals)]
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


def assert_resumed_exactly_once(topology: Topology, label: str, transcript, reference: str) -> list[dict]:
    """Every final the client received is stored once, nothing else is, and together they
    are the recording: nothing lost (the WER bound), nothing twice (duplicated speech
    would be insertions)."""
    assert word_error_rate(reference, transcript.text) <= SESSION_WER_BOUND, (label, reference, transcript.text)
    assert_no_audio_twice(transcript)
    sessions = assert_stored_exactly_once(topology, label, transcript.finals)
    assert len(sessions) == transcript.sessions, label
    return sessions


async def test_sigterm_drains_a_process_whose_sessions_resume_elsewhere_through_the_balancer(topology, clips):
    victim = topology.processes["web2"]
    recordings = [recording(clips, index, count=3) for index in range(30, 36)]
    labels = [f"drain-{index}" for index in range(len(recordings))]
    heard = [Heard() for _ in recordings]
    tasks = [resilient(topology, label, audio, h) for label, (audio, _), h in zip(labels, recordings, heard)]
    await wait_until(lambda: sum(len(live_labels(topology, n)) for n in NAMES) == len(labels), 20, "all sessions live")
    await asyncio.sleep(3)  # mid-stream
    on_victim = set(live_labels(topology, "web2"))
    assert on_victim, "leastconn gave the victim sessions"
    victim.signal(signal.SIGTERM)
    # Sessions opened right after the signal: HAProxy must not leave them on the victim.
    fresh = [asyncio.create_task(stream_session(topology.haproxy.ws, f"after-term-{index}",
                                                recording(clips, 40 + index, count=1)[0])) for index in range(3)]
    out_after = topology.haproxy.wait_status("web2", ("DOWN",), 5)
    transcripts = await asyncio.gather(*tasks)
    await asyncio.gather(*fresh)
    assert victim.process.wait(30) == 0, "a drained process exits 0"
    assert out_after <= 1.5, f"HAProxy kept the draining process in rotation for {out_after:.2f} s"
    for label, transcript, (_, reference) in zip(labels, transcripts, recordings):
        sessions = assert_resumed_exactly_once(topology, label, transcript, reference)
        if label in on_victim:
            assert [s["close_reason"] for s in sessions] == ["server_shutdown", "end_session"], label
            assert sessions[0]["process"] == "web2" and sessions[1]["process"] != "web2", label
        else:
            assert [s["close_reason"] for s in sessions] == ["end_session"], label
    for index in range(3):
        assert [s["process"] for s in topology.sessions(f"after-term-{index}")] != ["web2"]
        assert len(topology.sessions(f"after-term-{index}")) == 1
    rates = [round(word_error_rate(ref, t.text), 3) for t, (_, ref) in zip(transcripts, recordings)]
    print(f"SIGTERM: HAProxy took web2 out after {out_after:.2f} s; {len(on_victim)} sessions resumed elsewhere; "
          f"WER per recording {rates}")
    topology.restart("web2")


async def test_sigkill_keeps_every_received_final_and_records_the_open_utterance_interrupted(topology, clips):
    victim = topology.processes["web3"]
    recordings = [recording(clips, index, count=3) for index in range(50, 56)]
    labels = [f"kill-{index}" for index in range(len(recordings))]
    heard = [Heard() for _ in recordings]
    tasks = [resilient(topology, label, audio, h, partials=True)
             for label, (audio, _), h in zip(labels, recordings, heard)]
    await wait_until(lambda: sum(len(live_labels(topology, n)) for n in NAMES) == len(labels), 20, "all sessions live")
    await asyncio.sleep(2)
    # Killed while one of its sessions has had an utterance open for a while (onset sent,
    # its open row written a few ms later, no final yet).
    seen: set[str] = set()

    def open_for_a_while() -> bool:
        now_open = {utterance for utterance in live_labels(topology, "web3").values() if utterance}
        lasting = now_open & seen
        seen.clear()
        seen.update(now_open)
        return bool(lasting)

    await wait_until(open_for_a_while, 15, "an utterance open on the victim", every=0.3)
    victim.signal(signal.SIGKILL)
    down_after = topology.haproxy.wait_status("web3", ("DOWN",), 5)
    fresh = await asyncio.gather(*(stream_session(topology.haproxy.ws, f"after-kill-{index}",
                                                  recording(clips, 60 + index, count=1)[0]) for index in range(3)))
    transcripts = await asyncio.gather(*tasks)
    assert all(h.finals for h in fresh)
    for index in range(3):
        assert [s["process"] for s in topology.sessions(f"after-kill-{index}")] in (["web1"], ["web2"])
    # Beat's sweep closes the victim's sessions once its heartbeat is 3 s old.
    await wait_until(lambda: all(s["close_reason"] for label in labels for s in topology.sessions(label)), 20,
                     "the sweep closing the killed process's sessions")
    interrupted = []
    for label, transcript, h, (_, reference) in zip(labels, transcripts, heard, recordings):
        sessions = topology.sessions(label)
        assert word_error_rate(reference, transcript.text) <= SESSION_WER_BOUND, (label, transcript.text)
        assert_no_audio_twice(transcript)
        stored = {u[0]: u for s in sessions for u in s["utterances"]}
        for final in transcript.finals:  # every final a client received is in the history
            assert stored[final.data.utterance_id][1:] == ("final", final.data.text), label
        received = {f.data.utterance_id for f in transcript.finals}
        for session in sessions:
            if session["process"] == "web3":
                assert session["close_reason"] == "server_lost", label
            for utterance_id, status, _ in session["utterances"]:
                if utterance_id not in received:
                    # Heard of, never finished: interrupted (or, if the process died between
                    # storing and sending the final, stored but not received).
                    assert session["process"] == "web3" and utterance_id in h.announced, label
                    assert status in ("interrupted", "final"), (label, status)
                    interrupted += [utterance_id] if status == "interrupted" else []
    assert interrupted, "the utterance open at the kill is recorded as interrupted"
    assert down_after <= 5.0
    rates = [round(word_error_rate(ref, t.text), 3) for t, (_, ref) in zip(transcripts, recordings)]
    print(f"SIGKILL: HAProxy took web3 out after {down_after:.2f} s; interrupted utterances: {len(interrupted)}; "
          f"WER per recording {rates}")
    topology.restart("web3")


async def test_sessions_go_on_through_the_balancer_while_redis_restarts(topology, clips):
    """Redis (channel layer and Celery broker) goes away and comes back under load: the
    sessions go on, new ones open meanwhile (/ready does not count Redis, so HAProxy
    keeps every process), and nothing is lost."""
    states: list[dict[str, str]] = []

    async def watch_balancer() -> None:
        while True:
            states.append({name: row["status"] for name, row in topology.haproxy.servers().items()})
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch_balancer())
    recordings = [recording(clips, index, count=2) for index in range(70, 76)]
    labels = [f"redis-{index}" for index in range(len(recordings))]
    tasks = [asyncio.create_task(stream_session(topology.haproxy.ws, label, audio, partials=True))
             for label, (audio, _) in zip(labels, recordings)]
    await asyncio.sleep(3)
    topology.redis.stop()
    during = await asyncio.gather(*(stream_session(topology.haproxy.ws, f"redis-down-{index}",
                                                   recording(clips, 80 + index, count=1)[0]) for index in range(2)))
    topology.redis.start()
    results = await asyncio.gather(*tasks)
    watcher.cancel()
    for label, heard, (_, reference) in zip(labels, results, recordings):
        assert word_error_rate(reference, heard.text) <= SESSION_WER_BOUND, (label, heard.text)
        assert_stored_exactly_once(topology, label, heard.finals)
    for index, heard in enumerate(during):
        assert heard.finals
        assert_stored_exactly_once(topology, f"redis-down-{index}", heard.finals)
    assert all(status == "UP" for state in states for status in state.values()), "no process left the pool"
    for process in topology.processes.values():
        await wait_until(lambda p=process: get_json(f"{p.base}/health")[0] == 200, 30, f"{process.name} healthy")
