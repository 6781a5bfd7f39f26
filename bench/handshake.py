"""WebSocket handshakes while the admin exports a large CSV (issue 14 #7).

    .venv/bin/python bench/handshake.py                      # this checkout
    .venv/bin/python bench/handshake.py --checkout /tmp/main  # another checkout (before/after)

A real server process (manage.py serve of --checkout, AUTH_REQUIRED=true) on a scratch
PostgreSQL database (this environment's DATABASE_URL) gets --rows session records; a
staff user starts the admin's "Export selected sessions as CSV" over all of them (it
must take at least --min-export seconds, else the run says so), and while it streams,
--clients backends connect with an API key in the Authorization header, spread over
the export. For comparison, without an export: the same handshakes one by one, and all
at once. Printed: the export's duration and the handshake times (TCP connect to the
WebSocket open), p50/p95/max. Target: p95 <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import AdminBrowser, ScratchDatabase, base_env, free_port, get_json  # noqa: E402


def start_server(checkout: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=checkout, env=env,
                   check=True)
    process = subprocess.Popen([sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port),
                                "--monitoring-port", "0"], cwd=checkout, env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if get_json(f"http://127.0.0.1:{port}/health")[0] == 200:
                return process, port
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")


def shell(checkout: Path, env: dict[str, str], script: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=checkout, env=env,
                          check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


def fill(database: ScratchDatabase, rows: int) -> None:
    database.query(
        "INSERT INTO stt_sessionrecord (connection_id, session_id, user_id, conversation_id, client_address, "
        "profile, config, effective_config, model, started_at, ended_at, close_reason, utterances, finals, "
        "failed_finals, partials, speech_onsets, errors, audio_received_s, audio_transcribed_s, latency) "
        "SELECT gen_random_uuid(), 'bench-' || n, 'user-' || (n %% 97), 'conv-' || (n %% 13), '127.0.0.1:1', '', "
        "'{}', '{}', 'tiny.en', now() - n * interval '1 second', now(), 'end_session', 3, 3, 0, 7, 3, 0, "
        "12.5, 9.25, '{\"final\": {\"p50_ms\": 310, \"p95_ms\": 420}}' FROM generate_series(1, %s) AS n "
        "RETURNING 1", rows)


def export_all_sessions(base: str, username: str, password: str, timing: dict) -> None:
    admin = AdminBrowser(base, username, password)
    page = admin.get("/admin/stt/sessionrecord/")
    first = page.split('name="_selected_action" value="')[1].split('"')[0]
    token = page.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    data = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "action": "export_sessions_csv",
                                   "select_across": "1", "index": "0", "_selected_action": first}).encode()
    request = urllib.request.Request(base + "/admin/stt/sessionrecord/", data=data,
                                     headers={"Referer": base + "/admin/stt/sessionrecord/"})
    timing["export_started"] = time.monotonic()
    with admin.opener.open(request, timeout=300) as response:
        size = len(response.read())
    timing["export_seconds"] = time.monotonic() - timing["export_started"]
    timing["export_bytes"] = size


async def handshake(url: str, key: str) -> float:
    started = time.perf_counter()
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}):
        elapsed = time.perf_counter() - started
    return elapsed


async def handshakes_during(url: str, key: str, clients: int, spread: float) -> list[float]:
    async def one(index: int) -> float:
        await asyncio.sleep(spread * index / clients)
        return await handshake(url, key)

    return list(await asyncio.gather(*(one(i) for i in range(clients))))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the code to serve (default: this one)")
    parser.add_argument("--rows", type=int, default=300000, help="session records to export")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--min-export", type=float, default=5.0, help="seconds the export must last")
    args = parser.parse_args()

    database = ScratchDatabase(os.environ["DATABASE_URL"])
    log = Path(f"/tmp/bench-handshake-{os.getpid()}.log")
    env = {**base_env(), "DATABASE_URL": database.url(), "AUTH_REQUIRED": "1", "REFINE_FINALS": "0"}
    process = None
    try:
        process, port = start_server(args.checkout, env, log)
        base, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws/transcribe"
        key = shell(args.checkout, env, "from stt.auth import generate_key\nfrom stt.models import ApiKey\n"
                    "raw, prefix, digest = generate_key()\n"
                    "ApiKey.objects.create(name='bench', prefix=prefix, key_hash=digest)\nprint(raw)")
        shell(args.checkout, env, "from django.contrib.auth.models import User\n"
              "User.objects.create_superuser('bench', 'bench@example.com', 'bench-password')\nprint('ok')")
        fill(database, args.rows)
        sequential = [asyncio.run(handshake(url, key)) for _ in range(args.clients)]
        burst = asyncio.run(handshakes_during(url, key, args.clients, 0.0))
        timing: dict = {}
        exporter = threading.Thread(target=export_all_sessions, args=(base, "bench", "bench-password", timing))
        exporter.start()
        while "export_started" not in timing:
            time.sleep(0.01)
        time.sleep(0.5)  # the export is under way
        busy = asyncio.run(handshakes_during(url, key, args.clients, max(0.5, args.min_export - 1.5)))
        exporter.join()
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        database.drop()
    print(f"checkout {args.checkout}: {args.rows} session records, export {timing['export_seconds']:.1f} s "
          f"({timing['export_bytes'] / 1e6:.1f} MB)")
    if timing["export_seconds"] < args.min_export:
        print(f"  the export took less than {args.min_export} s: raise --rows")
    for name, values in (("one by one", sequential), ("all at once", burst), ("during export", busy)):
        print(f"  handshakes {name:>13}: n={len(values)} p50 {percentile(values, 0.5) * 1000:7.1f} ms  "
              f"p95 {percentile(values, 0.95) * 1000:7.1f} ms  max {max(values) * 1000:7.1f} ms  "
              f"mean {statistics.mean(values) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
