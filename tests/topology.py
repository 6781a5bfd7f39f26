"""The tested topology, on loopback: HAProxy on deploy/haproxy.cfg (the file compose
runs) in front of three `manage.py serve` processes, each with its own engine, sharing
a private Redis (channel layer and Celery broker), one PostgreSQL database, a Prometheus
multi-process directory and one monitoring port, with a Celery worker and beat.

Every process keeps its port for life: a test may kill one and start it again on the
same address, where HAProxy's server line points."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.servers import ROOT, Beat, RedisServer, ScratchDatabase, Worker, base_env, free_port, get_json

NAMES = ("web1", "web2", "web3")
BACKEND = "fasttalk_web"


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
        """Seconds until `name`'s status starts with one of `wanted`."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if self.status(name).startswith(wanted):
                return time.monotonic() - started
            time.sleep(0.05)
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
            # Three processes on this host split its cores rather than spin on the same ones.
            "STT_CPU_THREADS": "1", "SHUTDOWN_GRACE_SECONDS": "15", "WEBSOCKET_PROXY_HEADERS": "true",
            # Profiles are re-read only every minute: a change reaches the other processes
            # in time only through the announcement over Redis.
            "RUNTIME_CONFIG_REFRESH_SECONDS": "60",
            # A killed process is taken for lost after 3 s; beat sweeps every second.
            "SERVER_HEARTBEAT_SECONDS": "1", "SERVER_LOST_SECONDS": "3", "SESSION_SWEEP_SECONDS": "1",
        })
        return env

    def restart(self, name: str) -> None:
        """Start `name` again on its port, and wait until HAProxy sends it sessions."""
        process = self.processes[name]
        if process.process is not None and process.process.poll() is None:
            raise RuntimeError(f"{name} still runs")
        process.launch()
        process.wait_ready()
        self.haproxy.wait_status(name, ("UP",), 20)

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
