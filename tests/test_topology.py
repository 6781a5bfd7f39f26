"""The service as operators run it (tests/topology.py): HAProxy on deploy/haproxy.cfg in
front of three server processes, one PostgreSQL, one Redis, a Celery worker and beat.
Real speech from ../shared/audio, a distinct recording per session (two clips, a
session's own lead-in and gain), streamed at real-time pace by the Python client through
the load balancer. The processes are shared by the tests of this module; a test that
stops one starts it again."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import websockets

from stt.client import Backoff, SessionConfig, SttClientError, Transcript, open_session
from stt.evaluation import word_error_rate
from tests.conftest import SAMPLE_RATE, frames, silence
from tests.servers import ROOT, AdminBrowser, get_json
from tests.topology import (NAMES, Heard, Topology, assert_no_audio_twice, assert_stored_exactly_once, exit_time,
                            live_labels, load_clips, recording, resilient, scrape, seconds_until_every_process_runs,
                            stream_session, wait_until)

pytestmark = pytest.mark.realtime

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


@pytest.fixture(autouse=True)
def every_process_in_rotation(topology):
    """Each test starts with the three processes up, whatever the one before it left."""
    if restarted := topology.bring_back():
        print(f"restarted {restarted}, left stopped or out of the rotation by an earlier test")


@pytest.fixture(scope="module")
def admin(topology) -> AdminBrowser:
    """A superuser signed in to the admin through the balancer (whichever process HAProxy picks)."""
    subprocess.run([sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "admin",
                    "--email", "admin@example.com"], cwd=ROOT, check=True,
                   env={**topology.env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD})
    return AdminBrowser(topology.haproxy.base, "admin", PASSWORD)


@pytest.fixture(scope="module")
def clips() -> dict[str, tuple[np.ndarray, str]]:
    return load_clips()


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


PROFILES = "/admin/stt/runtimeprofile/"


def profile_change_page(topology: Topology, name: str) -> str:
    [(key,)] = topology.database.query("SELECT id FROM stt_runtimeprofile WHERE name = %s", name)
    return f"{PROFILES}{key}/change/"


async def admin_save(admin: AdminBrowser, page: str, fields: dict[str, str]) -> float:
    """Submit the admin form on `page` (in a thread: sessions stream on meanwhile);
    returns when it was submitted (time.time(): the save happened after)."""
    form = await asyncio.to_thread(admin.get, page)
    submitted = time.time()
    status, _ = await asyncio.to_thread(admin.post, page, fields, form)
    assert status == 200
    return submitted


async def test_a_profile_saved_through_the_balancer_reaches_every_process_within_two_seconds(topology, admin):
    """Processes re-read profiles only every 60 s here: the save's announcement over
    Redis is what reaches them. The admin is served by whichever process HAProxy picks."""
    fields = {"name": "noisy-floor", "description": "call centre", "vad_threshold": "0.6",
              "final_beam_size": "3", "default_language": ""}
    await admin_save(admin, f"{PROFILES}add/", fields)
    saved_at = time.monotonic()
    created = await seconds_until_every_process_runs(topology, "noisy-floor", saved_at, vad_threshold=0.6)
    assert max(created.values()) <= 2.0, created

    await admin_save(admin, profile_change_page(topology, "noisy-floor"), {**fields, "vad_threshold": "0.7"})
    saved_at = time.monotonic()
    edited = await seconds_until_every_process_runs(topology, "noisy-floor", saved_at, vad_threshold=0.7)
    assert max(edited.values()) <= 2.0, edited
    print(f"profile reached the processes after {created} (new) and {edited} (edited) s")


SENTENCE = "Please send the invoice to Siobhan Nakamura today."


async def test_a_vocabulary_saved_through_the_balancer_reaches_a_running_session_on_every_process_in_two_seconds(
        topology, admin, speak):
    """A running session follows its profile's vocabulary, and only that (its other
    tunables stay as they started: stt/session/keyterms.py). The save's announcement
    over Redis reaches each process, where the session takes the vocabulary up on its
    watchdog's next beat (every second) and logs `vocabulary_changed`; from then on its
    finals spell the names as the vocabulary does (tiny.en does not without it:
    tests/test_keyterms_process.py). One session on each process, opened there directly."""
    fields = {"name": "invoices", "description": "", "default_language": "", "vocabulary": ""}
    await admin_save(admin, f"{PROFILES}add/", fields)
    await seconds_until_every_process_runs(topology, "invoices", time.monotonic())
    heard = {name: Heard() for name in NAMES}
    running = {name: await open_session(process.ws, SessionConfig(language="en", session_id=f"vocabulary-{name}",
                                                                  profile="invoices"), callbacks=heard[name].callbacks())
               for name, process in topology.processes.items()}

    submitted = await admin_save(admin, profile_change_page(topology, "invoices"),
                                 {**fields, "vocabulary": "Siobhan Nakamura\r\nZyphora"})

    def taken_up() -> dict[str, float] | None:
        logged = {name: process.events("vocabulary_changed", session_id=f"vocabulary-{name}")
                  for name, process in topology.processes.items()}
        return {name: entries[0]["at"] - submitted for name, entries in logged.items()} if all(logged.values()) else None

    delays = await wait_until(taken_up, 10, "every running session taking up the vocabulary", every=0.1)
    assert max(delays.values()) <= 2.0, f"seconds from the admin's submit: {delays}"
    speech = speak(SENTENCE)
    # Each at a gain of its own: no process may answer from a result another computed.
    await asyncio.gather(*(session.stream(np.concatenate([speech * np.float32(0.99 - 0.01 * index), silence(1.0)]))
                           for index, session in enumerate(running.values())))
    for session in running.values():
        assert await session.end() is not None
    for name in NAMES:
        assert "Siobhan Nakamura" in heard[name].text, (name, heard[name].text)
    print(f"vocabulary taken up by a running session after {delays} s")


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


def assert_resumed_exactly_once(topology: Topology, label: str, transcript: Transcript,
                                reference: str) -> list[dict]:
    """Every final the client received is stored once, nothing else is, and together they
    are the recording: nothing lost (the WER bound), nothing twice (duplicated speech
    would be insertions)."""
    assert word_error_rate(reference, transcript.text) <= SESSION_WER_BOUND, (label, reference, transcript.text)
    assert_no_audio_twice(transcript)
    sessions = assert_stored_exactly_once(topology, label, transcript.finals)
    assert len(sessions) == transcript.sessions, label
    return sessions


def assert_drained_or_untouched(topology: Topology, label: str, transcript: Transcript, reference: str,
                                drained: bool) -> None:
    """A session web2's drain closed got 1012 at the client (server_shutdown in the
    history) and was resumed on another process; any other ran as one session."""
    sessions = assert_resumed_exactly_once(topology, label, transcript, reference)
    if drained:
        assert transcript.close_codes == [1012, 1000], (label, transcript.close_codes)
        assert [s["close_reason"] for s in sessions] == ["server_shutdown", "end_session"], label
        assert sessions[0]["process"] == "web2" and sessions[1]["process"] != "web2", label
    else:
        assert transcript.close_codes == [1000], (label, transcript.close_codes)
        assert [s["close_reason"] for s in sessions] == ["end_session"], label


async def test_sigterm_drains_a_process_whose_sessions_resume_elsewhere_through_the_balancer(topology, clips):
    """SIGTERM: web2 admits no session from then on, and /ready answers 503 (draining) at
    once; it finishes its sessions (finals stored and sent, then close 1012) and exits 0.
    transcribe() resumes each of them on another process, from its last final.

    HAProxy does not take web2 out at once: it checks /ready every 0.5 s (0.25 s once one
    failed) and needs two failures, so for up to ~0.75 s (and the checks' own time) it
    still sends web2 new connections; web2 turns those away itself (1012,
    server_shutting_down, retry_after 1 s) and the client opens the session again
    through the balancer.
    What that guarantees, and this test asserts: web2 out within 1.5 s, no session started
    on it after the signal, and not one connection sent to it once HAProxy marked it DOWN.
    Sessions opened at once after the signal, while web2 drains, all run on the others."""
    victim = topology.processes["web2"]
    recordings = [recording(clips, index, count=3) for index in range(30, 36)]
    labels = [f"drain-{index}" for index in range(len(recordings))]
    tasks = [resilient(topology, label, audio, Heard()) for label, (audio, _) in zip(labels, recordings)]
    await wait_until(lambda: sum(len(live_labels(topology, n)) for n in NAMES) == len(labels), 20, "all sessions live")
    await asyncio.sleep(3)  # mid-stream
    on_victim = set(await asyncio.to_thread(live_labels, topology, "web2"))
    assert on_victim, "leastconn gave the victim sessions"
    sent_before = int((await asyncio.to_thread(topology.haproxy.servers))["web2"]["stot"])
    victim.signal(signal.SIGTERM)
    signalled = time.monotonic()
    fresh = [asyncio.create_task(stream_session(topology.haproxy.ws, f"after-term-{index}",
                                                recording(clips, 40 + index, count=1)[0],
                                                backoff=Backoff(attempts=12, base_delay=0.05)))
             for index in range(3)]
    exited = asyncio.create_task(exit_time(victim))
    status, ready = await asyncio.to_thread(get_json, f"{victim.base}/ready")
    assert (status, ready["reason"]) == (503, "draining"), ready
    _, at_down = await topology.haproxy.until_status("web2", ("DOWN",), 5)
    out_after = time.monotonic() - signalled
    transcripts = await asyncio.gather(*tasks)
    opened = await asyncio.gather(*fresh)
    drained_for = await exited - signalled
    assert victim.process.returncode == 0, "a drained process exits 0"
    assert out_after <= 1.5, f"HAProxy kept the draining process in rotation for {out_after:.2f} s"
    sent_after = int((await asyncio.to_thread(topology.haproxy.servers))["web2"]["stot"])
    assert sent_after == int(at_down["stot"]), "HAProxy sent web2 connections after marking it DOWN"
    # A fresh session opens at once on another process, unless HAProxy sent it to web2
    # before taking it out: web2 turned it away (retry_after 1 s) and it opened elsewhere then.
    sent_in_window = int(at_down["stot"]) - sent_before
    opened_after = sorted(round(heard.opened_at - signalled, 2) for heard in opened)
    assert opened_after[0] < drained_for, f"none opened while web2 drained ({drained_for:.2f} s): {opened_after}"
    assert sum(late > out_after for late in opened_after) <= sent_in_window, (opened_after, out_after, sent_in_window)
    for label, transcript, (_, reference) in zip(labels, transcripts, recordings):
        assert_drained_or_untouched(topology, label, transcript, reference, drained=label in on_victim)
    for index in range(3):
        assert [s["process"] for s in topology.sessions(f"after-term-{index}")] in (["web1"], ["web3"])
    rates = [round(word_error_rate(ref, t.text), 3) for t, (_, ref) in zip(transcripts, recordings)]
    print(f"SIGTERM: HAProxy took web2 out after {out_after:.2f} s, having sent it {sent_in_window} "
          f"connection(s) since the signal; web2 drained for {drained_for:.2f} s; fresh sessions opened after "
          f"{opened_after} s; {len(on_victim)} sessions resumed elsewhere; WER per recording {rates}")
    await asyncio.to_thread(topology.restart, "web2")


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
    down_after, _ = await topology.haproxy.until_status("web3", ("DOWN",), 5)
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
    await asyncio.to_thread(topology.restart, "web3")


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


# Admission by capacity, on web1 only: the other tests load the processes on purpose and
# run with it off (tests/servers.py base_env). Until a process has measured what a
# session costs (not before 3 x CAPACITY_WARMUP_SECONDS), it assumes CAPACITY_PRIOR_DEMAND
# (stt/session/capacity.py): at 100 decode seconds per session-second, web1 is full
# from its first session on, for the test.
FULL_AFTER_ONE_SESSION = {"CAPACITY_ADMISSION": "1", "CAPACITY_WARMUP_SECONDS": "60", "CAPACITY_PRIOR_DEMAND": "100"}


async def test_a_full_process_leaves_the_rotation_and_new_sessions_go_to_the_others(topology, clips):
    """A process at capacity refuses new sessions (1013, capacity_exhausted) and answers
    /ready 503 (at_capacity); HAProxy takes it out after the same two failed checks as a
    draining one, and sessions opened through the balancer meanwhile all go to the
    others, none of them even sent to it (its stot stays put: with leastconn, the full
    process, which holds no connection through HAProxy, would be first in line). Its
    session gone, it is ready again and HAProxy puts it back."""
    full = topology.processes["web1"]
    await asyncio.to_thread(full.stop)
    await asyncio.to_thread(topology.restart, "web1", FULL_AFTER_ONE_SESSION)
    try:
        held = await open_session(full.ws, SessionConfig(language="en", session_id="held-on-web1"))
        full_since = time.monotonic()
        status, ready = await asyncio.to_thread(get_json, f"{full.base}/ready")
        assert (status, ready["reason"]) == (503, "at_capacity"), ready
        with pytest.raises(SttClientError) as refused:
            await open_session(full.ws, SessionConfig(language="en"), backoff=Backoff(attempts=1))
        assert (refused.value.close_code, refused.value.error.code) == (1013, "capacity_exhausted")
        _, at_down = await topology.haproxy.until_status("web1", ("DOWN",), 5)
        out_after = time.monotonic() - full_since

        labels = [f"beside-full-{index}" for index in range(4)]
        results = await asyncio.gather(*(
            stream_session(topology.haproxy.ws, label, recording(clips, 100 + index, count=1)[0][:4 * SAMPLE_RATE])
            for index, label in enumerate(labels)))
        servers = await asyncio.to_thread(topology.haproxy.servers)
        assert servers["web1"]["stot"] == at_down["stot"], "HAProxy sent the full process sessions"
        for label, heard in zip(labels, results):
            sessions = assert_stored_exactly_once(topology, label, heard.finals)
            assert [s["process"] for s in sessions] in (["web2"], ["web3"]), label

        assert await held.end() is not None and held.close_code == 1000
        back_after, _ = await topology.haproxy.until_status("web1", ("UP",), 10)
    finally:  # web1 as the other tests know it: admission off
        await asyncio.to_thread(full.stop)
        await asyncio.to_thread(topology.restart, "web1")
    assert out_after <= 1.5, f"HAProxy kept the full process in rotation for {out_after:.2f} s"
    print(f"capacity: HAProxy took the full web1 out after {out_after:.2f} s and back {back_after:.2f} s after "
          f"its session ended")
