"""The tested topology, on loopback: HAProxy on deploy/haproxy.cfg (the file compose
runs) in front of three `manage.py serve` processes, each with its own engine, sharing
a private Redis (channel layer and Celery broker), one PostgreSQL database, a Prometheus
multi-process directory and one monitoring port, with a Celery worker and beat.

Every process keeps its port for life: a test may kill one and start it again on the
same address, where HAProxy's server line points (with other settings, if it asks).

Below the topology: the clients the tests run through it, and what they read back
(HAProxy's stats, the processes' /stats and logs, the history)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import websockets

from stt.client import Backoff, Callbacks, SessionConfig, Transcript, open_session, transcribe
from tests.conftest import AUDIO_DIR, JFK_TEXT, load_audio, silence
from tests.servers import (ROOT, Beat, RedisServer, ScratchDatabase, Worker, base_env, free_port, get_json,
                           metric_samples)

NAMES = ("web1", "web2", "web3")
BACKEND = "fasttalk_web"

CLIPS = ("jfk.flac", "ps_austen_0870.wav", "pv_platforms.wav", "fw_libri_61_left.wav", "ps_cards_005.wav",
         "ps_goforward.wav")


def load_clips() -> dict[str, tuple[np.ndarray, str]]:
    """Each of CLIPS: its audio and its reference transcript."""
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


class ServeProcess:
    """One `manage.py serve` on a fixed port (its name is its HAProxy server name)."""

    def __init__(self, name: str, port: int, monitoring_port: int, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.port, self.monitoring_port = name, port, monitoring_port
        self.env, self.log_dir = env, log_dir
        self.base = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws/transcribe"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def launch(self) -> None:
        self.starts += 1
        self.log = self.log_dir / f"{self.name}-{self.starts}.log"
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--monitoring-port", str(self.monitoring_port)],
            cwd=ROOT, env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def wait_ready(self, limit: float = 120.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if get_json(f"{self.base}/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log.read_text()[-3000:]}")

    def events(self, event: str, **fields: str) -> list[dict]:
        """This start's log entries of `event` (LOG_FORMAT=json) whose extras match
        `fields`, each with `at`: when it was logged (seconds since the epoch)."""
        found = []
        for line in self.log.read_text().splitlines():
            if f'"{event}"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event and all(entry.get(key) == value for key, value in fields.items()):
                found.append({**entry, "at": datetime.fromisoformat(entry["time"]).timestamp()})
        return found

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class Haproxy:
    """Debian's haproxy on deploy/haproxy.cfg, its addresses from the environment;
    read through its runtime API (the stats socket)."""

    def __init__(self, servers: dict[str, int], folder: Path) -> None:
        self.port, self.stats_port = free_port(), free_port()
        self.socket = folder / "haproxy.sock"
        self.env = {**os.environ, "FASTTALK_LB_BIND": f"127.0.0.1:{self.port}",
                    "FASTTALK_LB_STATS": f"127.0.0.1:{self.stats_port}", "FASTTALK_CHECK_HOST": "localhost",
                    "HAPROXY_STATS_SOCKET": str(self.socket),
                    **{f"FASTTALK_{name.upper()}": f"127.0.0.1:{port}" for name, port in servers.items()}}
        self.log = folder / "haproxy.log"
        self.process = subprocess.Popen(["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
                                        env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/ws/transcribe"
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"haproxy did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """The backend's servers as `show stat` reports them (status UP, DOWN, ...;
        scur: current sessions, stot: sessions so far)."""
        lines = [line for line in self.command("show stat").splitlines() if line]
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND and row["svname"] in NAMES}

    def status(self, name: str) -> str:
        return self.servers()[name]["status"]

    def wait_status(self, name: str, wanted: tuple[str, ...], limit: float) -> float:
        """Seconds until `name`'s status starts with one of `wanted`. Blocking: for setting
        the topology up, outside an event loop (a test awaits `until_status`)."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if self.status(name).startswith(wanted):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"{name} not {wanted} within {limit} s (now {self.status(name)})")

    async def until_status(self, name: str, wanted: tuple[str, ...], limit: float) -> tuple[float, dict[str, str]]:
        """Seconds until `name`'s status starts with one of `wanted`, and the `show stat`
        row that first said so (its stot: the sessions HAProxy had sent it by then). The
        socket is read in a thread: the test's clients stream on meanwhile."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            row = (await asyncio.to_thread(self.servers))[name]
            if row["status"].startswith(wanted):
                return time.monotonic() - started, row
            await asyncio.sleep(0.02)
        raise AssertionError(f"{name} not {wanted} within {limit} s (now {self.status(name)})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Topology:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.parts: list = []  # what is running, stopped in reverse by close()
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        folder = self.folder
        self.redis = RedisServer(folder)
        self.parts.append(self.redis)
        self.database = ScratchDatabase(os.environ["DATABASE_URL"])
        self.parts.append(self.database)
        metrics = folder / "prometheus"
        metrics.mkdir()
        self.env = self._environment(metrics)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env,
                       check=True)
        self.monitoring_port = free_port()
        self.processes = {name: ServeProcess(name, free_port(), self.monitoring_port, self.env, folder)
                          for name in NAMES}
        for process in self.processes.values():
            self.parts.append(process)
            process.launch()
        for process in self.processes.values():
            process.wait_ready()
        self.haproxy = Haproxy({name: p.port for name, p in self.processes.items()}, folder)
        self.parts.append(self.haproxy)
        for name in NAMES:
            self.haproxy.wait_status(name, ("UP",), 20)
        self.worker = Worker(self.env, folder, "topology")
        self.parts.append(self.worker)
        self.beat = Beat(self.env, folder, "topology")
        self.parts.append(self.beat)

    def _environment(self, metrics: Path) -> dict[str, str]:
        env = {key: value for key, value in base_env().items()
               if key not in {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}}
        env.update({
            "DATABASE_URL": self.database.url(), "REDIS_URL": self.redis.url,
            "CELERY_QUEUE": f"fasttalk-topology-{uuid.uuid4().hex[:8]}",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics), "MEDIA_ROOT": str(self.folder / "media"),
            "HISTORY_JOURNAL": str(self.folder / "journal.jsonl"),
            # The tests read the processes' logs (ServeProcess.events).
            "LOG_FORMAT": "json", "LOG_LEVEL": "INFO",
            # Three processes on this host split its cores rather than spin on the same ones.
            "STT_CPU_THREADS": "1", "SHUTDOWN_GRACE_SECONDS": "15", "WEBSOCKET_PROXY_HEADERS": "true",
            # Profiles are re-read only every minute: a change reaches the other processes
            # in time only through the announcement over Redis.
            "RUNTIME_CONFIG_REFRESH_SECONDS": "60",
            # A killed process is taken for lost after 3 s; beat sweeps every second.
            "SERVER_HEARTBEAT_SECONDS": "1", "SERVER_LOST_SECONDS": "3", "SESSION_SWEEP_SECONDS": "1",
        })
        return env

    def restart(self, name: str, settings: dict[str, str] | None = None) -> None:
        """Start `name` again on its port, with the topology's environment and `settings`
        over it (none: as it was first started), and wait until HAProxy sends it sessions."""
        process = self.processes[name]
        if process.process is not None and process.process.poll() is None:
            raise RuntimeError(f"{name} still runs")
        process.env = {**self.env, **(settings or {})}
        process.launch()
        process.wait_ready()
        self.haproxy.wait_status(name, ("UP",), 20)

    def bring_back(self) -> list[str]:
        """Every process running as first started and in HAProxy's rotation again, after a
        test that failed before restarting what it stopped (so one failure does not fail
        the tests after it): a process that exited is started again, one still running
        but out of the rotation (draining, or full) is stopped first. The names restarted."""
        restarted = []
        for name, process in self.processes.items():
            running = process.process is not None and process.process.poll() is None
            if running and self.haproxy.status(name).startswith("UP") and process.env == self.env:
                continue
            process.stop()
            self.restart(name)
            restarted.append(name)
        return restarted

    def process_names(self) -> dict[str, str]:
        """server_id -> the name of the process (by its port) of every start so far."""
        ports = {process.port: name for name, process in self.processes.items()}
        return {server_id: ports.get(port, f"port {port}")
                for server_id, port in self.database.query("SELECT server_id::text, port FROM stt_serverprocess")}

    def sessions(self, label: str) -> list[dict]:
        """The history's sessions labelled `label` (the client's session_id), in start order:
        {label, process, close_reason, utterances: [(utterance_id, status, text)]}."""
        names = self.process_names()
        rows = self.database.query(
            "SELECT s.connection_id::text, s.session_id, s.server_id::text, s.close_reason, u.utterance_id::text, "
            "u.status, u.text FROM stt_sessionrecord s LEFT JOIN stt_utterance u ON u.session_id = s.connection_id "
            "WHERE s.session_id = %s ORDER BY s.started_at, u.start_ms", label)
        sessions: dict[str, dict] = {}
        for connection_id, label, server_id, reason, utterance_id, status, text in rows:
            entry = sessions.setdefault(connection_id, {
                "label": label, "process": names.get(server_id), "close_reason": reason, "utterances": []})
            if utterance_id is not None:
                entry["utterances"].append((utterance_id, status, text))
        return list(sessions.values())

    def close(self) -> None:
        for part in reversed(self.parts):
            try:
                part.drop() if isinstance(part, ScratchDatabase) else part.stop()
            except Exception:
                pass
        self.parts.clear()


# --- What the tests do through it: clients, and what they read back ----------------

class Heard:
    """What one client received: finals in order, and the utterances it heard of."""

    def __init__(self) -> None:
        self.finals: list = []
        self.announced: set[str] = set()
        self.opened_at: float | None = None  # time.monotonic() at session_started

    def callbacks(self) -> Callbacks:
        return Callbacks(on_final=self.finals.append,
                         on_vad=lambda m: self.announced.add(m.data.utterance_id),
                         on_partial=lambda m: self.announced.add(m.data.utterance_id))

    @property
    def text(self) -> str:
        return " ".join(f.data.text for f in self.finals if f.data.text)


async def stream_session(url: str, label: str, audio: np.ndarray, partials: bool = False,
                         backoff: Backoff | None = None) -> Heard:
    """One session through `url`, at real-time pace, ended by the client (close 1000)."""
    heard = Heard()
    config = SessionConfig(language="en", session_id=label, enable_partial_transcription=partials)
    session = await open_session(url, config, callbacks=heard.callbacks(), backoff=backoff or Backoff(attempts=8))
    heard.opened_at = time.monotonic()
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


async def runtime_of(url: str, profile: str) -> dict | None:
    """The runtime of a new session naming `profile` (None: the process does not know it yet)."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"profile": profile}}))
        reply = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "end_session"}))
        async for _ in ws:
            pass
    return reply["data"]["runtime"] if reply["type"] == "session_started" else None


async def seconds_until_every_process_runs(topology: Topology, profile: str, saved_at: float,
                                           **wanted: float) -> dict[str, float]:
    """Seconds from `saved_at` until a new session naming `profile` on each process runs
    with the `wanted` values."""
    delays = {}
    for name, process in topology.processes.items():
        while time.monotonic() - saved_at < 5:
            runtime = await runtime_of(process.ws, profile)
            if runtime is not None and all(runtime[key] == value for key, value in wanted.items()):
                delays[name] = time.monotonic() - saved_at
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{name} did not get {profile} with {wanted} within 5 s")
    return delays


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return metric_samples(text)


def live_labels(topology: Topology, name: str) -> dict[str, str | None]:
    """The started sessions process `name` holds now: label -> the utterance open in it."""
    status, stats = get_json(f"{topology.processes[name].base}/stats")
    assert status == 200
    return {entry["session_id"]: entry["current_utterance_id"] for entry in stats["processing_stats"].values()
            if entry.get("session_started", True)}


async def wait_until(check: Callable[[], Any], limit: float, what: str, every: float = 0.05) -> Any:
    """The first truthy value of `check()` (called in a thread: it may read /stats or
    the database while the test's clients stream on), polled every `every` s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(check)
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"{what} did not happen within {limit} s")


def resilient(topology: Topology, label: str, audio: np.ndarray, heard: Heard,
              partials: bool = False) -> asyncio.Task[Transcript]:
    """transcribe() of the recording through the balancer, resuming after a closed connection."""
    config = SessionConfig(language="en", session_id=label, enable_partial_transcription=partials)
    return asyncio.create_task(transcribe(audio, topology.haproxy.ws, config, callbacks=heard.callbacks(),
                                          backoff=Backoff(attempts=10, base_delay=0.2)))


def assert_no_audio_twice(transcript: Transcript) -> None:
    """The finals' audio, placed on the recording's timeline, never overlaps: no part of
    the recording was transcribed in two sessions."""
    spans = [(offset + final.data.start_ms, offset + final.data.end_ms)
             for offset, final in zip(transcript.offsets_ms, transcript.finals)]
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


async def exit_time(process: ServeProcess) -> float:
    """When (time.monotonic) `process` exited."""
    while process.process.poll() is None:
        await asyncio.sleep(0.02)
    return time.monotonic()
