"""Real server processes for end-to-end tests: Daphne (manage.py serve) on a database of
its own, and a TCP proxy in front of PostgreSQL that a test can cut and restore to
take the database away from the server for real."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metric_samples(exposition: str) -> dict[str, float]:
    """Prometheus' text exposition as {sample name with its labels: value}."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in exposition.splitlines() if line and not line.startswith("#")}


class ScratchDatabase:
    """A PostgreSQL database of its own for one server process, dropped afterwards; named
    after the run's database (DATABASE_URL's), so that runs side by side on one server,
    each on a database of its own, can tell their scratch databases apart."""

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        base = parts.path.lstrip("/") or "fasttalk"
        self.name = f"{base[:40]}_e2e_{uuid.uuid4().hex[:10]}"
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 5432
        self.user = parts.username or "postgres"
        self._admin_dsn = f"host={self.host} port={self.port} user={self.user} dbname=postgres"
        with psycopg.connect(self._admin_dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')

    def url(self, port: int | None = None) -> str:
        return f"postgres://{self.user}@{self.host}:{port or self.port}/{self.name}"

    def query(self, sql: str, *params: object) -> list[tuple]:
        dsn = f"host={self.host} port={self.port} user={self.user} dbname={self.name}"
        with psycopg.connect(dsn) as connection:
            return connection.execute(sql, params).fetchall()

    def drop(self) -> None:
        with psycopg.connect(self._admin_dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Server:
    """`manage.py serve` in a subprocess, healthy before the constructor returns."""

    def __init__(self, env: dict[str, str], log_dir: Path, migrate_env: dict[str, str] | None = None,
                 monitoring_port: int | None = None) -> None:
        self.port = free_port()
        self.monitoring_port = monitoring_port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.monitoring = f"http://127.0.0.1:{self.monitoring_port}"
        self.ws = f"ws://127.0.0.1:{self.port}/ws/transcribe"
        self.env = env
        self.log = log_dir / f"server-{self.port}.log"
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                       cwd=ROOT, env=migrate_env or env, check=True)
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--monitoring-port", str(self.monitoring_port)],
            cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()}")
            try:
                if get_json(f"{self.base}/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.log.read_text()}")

    def manage(self, *args: str, env: dict[str, str] | None = None) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**self.env, **(env or {})}, check=True)

    def create_api_key(self, name: str, max_concurrent_sessions: int | None = None) -> str:
        """A new API key in this server's database; returns the key itself."""
        limits = "" if max_concurrent_sessions is None else f", max_concurrent_sessions={max_concurrent_sessions}"
        script = ("from stt.auth import generate_key\nfrom stt.models import ApiKey\n"
                  "raw, prefix, digest = generate_key()\n"
                  f"ApiKey.objects.create(name={name!r}, prefix=prefix, key_hash=digest{limits})\nprint(raw)\n")
        made = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=self.env,
                              check=True, capture_output=True, text=True)
        return made.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def headless_chromium(*arguments: str, window: str = "1280,1600", capture_logs: bool = False):
    """Debian's Chromium, headless, driven by Selenium; `arguments` are extra switches.
    With `capture_logs`, the network log (every request, WebSockets included) and the
    console can be read with get_log("performance") / get_log("browser")."""
    import shutil

    import pytest
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium and chromedriver are not installed (bin/test installs them with apt-get)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={window}", *arguments):
        options.add_argument(argument)
    if capture_logs:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(driver))
    session.set_page_load_timeout(30)
    return session


class AdminBrowser:
    """Logs into the server's Django admin and submits its forms, as a person would."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))
        page = self.get("/admin/login/")
        self.post("/admin/login/", {"username": username, "password": password, "next": "/admin/"}, page)

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=15) as response:
            return response.read().decode()

    def post(self, path: str, fields: dict[str, str], form_page: str) -> tuple[int, str]:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form_page).group(1)
        data = urllib.parse.urlencode({"csrfmiddlewaretoken": token, **fields}).encode()
        request = urllib.request.Request(self.base + path, data=data, headers={"Referer": self.base + path})
        with self.opener.open(request, timeout=15) as response:
            return response.status, response.read().decode()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; cut() drops every connection and refuses
    new ones (the server sees its database vanish), restore() brings it back."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._running = True
        self.restore()

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # socket listening until that accept() returned with one more connection.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._running = False
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while self._running:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket) -> None:
        sockets = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in sockets:
                try:
                    sock.close()
                except OSError:
                    pass


def base_env() -> dict[str, str]:
    """The test run's environment for a server process; finals are not re-transcribed
    unless a test asks (REFINE_FINALS=1 with a worker of its own), and audio is not
    budgeted (AUDIO_BUDGET_PER_SESSION) nor sessions admitted by capacity
    (CAPACITY_ADMISSION) unless a test asks."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
    env.setdefault("REFINE_FINALS", "0")
    env.setdefault("AUTH_REQUIRED", "0")  # the authentication tests ask for it
    # Many tests push audio at full speed and time what follows: the audio budget tests
    # (tests/test_audio_budget_process.py) ask for one.
    env.setdefault("AUDIO_BUDGET_PER_SESSION", "0")
    # Those pushes overload the engine on purpose: admission by capacity would turn the
    # next sessions away. tests/test_capacity_process.py asks for it.
    env.setdefault("CAPACITY_ADMISSION", "0")
    return env


EMBEDDED_DATABASE = "embedded.sqlite3"


def embedded_env(folder: Path, **settings: str) -> dict[str, str]:
    """A server process's environment on the embedded defaults (no REDIS_URL: the
    in-memory channel layer; SQLite), with its database file (EMBEDDED_DATABASE) and
    media folder in `folder`, and `settings` on top."""
    env = {key: value for key, value in base_env().items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(DATABASE_URL=f"sqlite:///{folder / EMBEDDED_DATABASE}", MEDIA_ROOT=str(folder / "media"), **settings)
    return env


class CeleryProcess:
    """`celery -A fasttalk <args>` in a process group of its own, so a test can kill it
    outright, pool children included. Ready (its log shows `ready_marker`) before the
    constructor returns."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str, args: list[str], ready_marker: str) -> None:
        self.log = log_dir / f"celery-{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "fasttalk", *args],
            cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery {name} exited:\n{self.log.read_text()}")
            if ready_marker in self.log.read_text():
                return
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"celery {name} did not become ready:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL to the whole process group: no warm shutdown, nothing acknowledged."""
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(15)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()


class Worker(CeleryProcess):
    """A Celery worker with one pool process, consuming the env's CELERY_QUEUE."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str) -> None:
        super().__init__(env, log_dir, name, [
            "worker", "--loglevel", "INFO", "--queues", env["CELERY_QUEUE"], "--concurrency", "1",
            "--pool", "prefork", "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle"],
            " ready.")


class Beat(CeleryProcess):
    """Celery beat with its schedule file in the log folder."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str) -> None:
        super().__init__(env, log_dir, name, [
            "beat", "--loglevel", "INFO", "--schedule", str(log_dir / f"beat-{name}-schedule")],
            "beat: Starting")


class RedisServer:
    """A private redis-server on a free port, which a test may stop and start again."""

    def __init__(self, log_dir: Path) -> None:
        import shutil

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = log_dir / f"redis-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class PostgresServer:
    """A private PostgreSQL cluster (initdb into a temporary folder) on a free port, which
    a test may stop (fast shutdown: sessions are cut, as in a restart) and start again.
    PostgreSQL refuses to run as root, so its programs run as the `postgres` OS user.
    Trust authentication for the user `postgres`; unix socket in the cluster's folder."""

    def __init__(self) -> None:
        import glob
        import shutil
        import tempfile

        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                          key=lambda path: int(Path(path).parent.parent.name.split(".")[0]))
        if not versions:
            raise RuntimeError("PostgreSQL server programs are not installed (/usr/lib/postgresql/*/bin)")
        self.bin = Path(versions[-1]).parent
        self.runas = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.folder = Path(tempfile.mkdtemp(prefix="fasttalk-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.port = free_port()
        if self.runas:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.running = False
        self.start()

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.runas, str(self.bin / program), *args], cwd=self.folder,
                                capture_output=True, text=True)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stdout}{result.stderr}\n{log}")
        return result

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        self.running = True

    def stop(self) -> None:
        """Fast shutdown: open sessions are ended, the data is checkpointed."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
            self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, database: str, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname={database}") as connection:
            return connection.execute(sql, params).fetchall()

    def cleanup(self) -> None:
        import shutil

        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
