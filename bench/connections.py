"""Connections up to and beyond WEBSOCKET_MAX_CONNECTIONS: how many are held, how the
rest are refused, what each costs in server memory, and how fast a handshake is.

    .venv/bin/python bench/connections.py                        # starts a local server (limit 50)
    .venv/bin/python bench/connections.py --limit 200 --extra 20
    .venv/bin/python bench/connections.py --url ws://host:8000/ws/transcribe --limit 50 [--pid PID]

A local server is started with WEBSOCKET_MAX_CONNECTIONS=--limit, open (AUTH_REQUIRED
false, like bin/serve) and on this environment's DATABASE_URL / REDIS_URL (SQLite and
the in-memory layer when unset). With --url, the server's own limit applies and
--limit must name it; memory is reported only with --pid (a process of this host).

Phases, each measured by the client:
  1. one session is started and ended first, so lazily loaded code is in memory;
  2. sequential: limit + extra connections opened one after another (connect latency:
     TCP connect to handshake done). The server accepts every handshake and refuses
     the ones over its limit with an `error` (server_overloaded) and close 1013;
     a connection counts as held when nothing closes it within --settle seconds;
  3. the server's RSS with the held connections idle (no session), then after each
     held connection has sent start_session and got session_started: the difference to
     the RSS before phase 2, divided by the connections held;
  4. all close; then a burst: limit + extra connections opened at once (concurrent
     handshakes race for the last places: exactly `limit` must be held);
  5. /stats must show 0 active connections again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_latency import ROOT, quantile_ms, rss_mb, start_server  # noqa: E402


@dataclass
class Attempt:
    ws: object | None = None
    latency: float | None = None  # seconds, handshake done
    held: bool = False
    close_code: int | None = None
    close_reason: str = ""
    error_code: str | None = None  # the `error` message a refused connection was sent
    failure: str | None = None  # the handshake itself failed


@dataclass
class Phase:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def held(self) -> list[Attempt]:
        return [a for a in self.attempts if a.held]

    @property
    def refused(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.held]


async def open_one(url: str) -> Attempt:
    attempt = Attempt()
    started = time.perf_counter()
    try:
        attempt.ws = await websockets.connect(url, max_size=None, open_timeout=30)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        attempt.failure = f"{type(exc).__name__}: {exc}"
        return attempt
    attempt.latency = time.perf_counter() - started
    return attempt


async def classify(attempt: Attempt, settle: float) -> None:
    """Held if the server leaves the connection open for `settle` seconds; else note
    the error it was sent and its close code and reason."""
    ws = attempt.ws
    if ws is None:
        return
    try:
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), settle))
            if message.get("type") == "error":
                attempt.error_code = message["error"]["code"]
    except asyncio.TimeoutError:
        attempt.held = True
    except websockets.ConnectionClosed:
        attempt.close_code, attempt.close_reason = ws.close_code, ws.close_reason or ""


async def start_sessions(phase: Phase) -> int:
    async def start(ws) -> bool:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"language": "en"}}))
        return json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] == "session_started"

    results = await asyncio.gather(*(start(a.ws) for a in phase.held), return_exceptions=True)
    return sum(1 for r in results if r is True)


async def close_all(phase: Phase) -> None:
    await asyncio.gather(*(a.ws.close() for a in phase.attempts if a.ws is not None), return_exceptions=True)


def active_connections(http_base: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{http_base}/stats", timeout=10) as response:
            return json.loads(response.read())["active_connections"]
    except OSError:
        return None


async def wait_idle(http_base: str, timeout: float = 60) -> int | None:
    deadline = time.monotonic() + timeout
    active = active_connections(http_base)
    while active and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        active = active_connections(http_base)
    return active


def describe_refusals(phase: Phase) -> str:
    kinds: dict[str, int] = {}
    for attempt in phase.refused:
        if attempt.failure:
            key = f"handshake failed ({attempt.failure})"
        else:
            key = f"error {attempt.error_code}, close {attempt.close_code} '{attempt.close_reason}'"
        kinds[key] = kinds.get(key, 0) + 1
    return "; ".join(f"{count} x {key}" for key, count in kinds.items()) or "none"


def latency_line(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {quantile_ms(values, 0.5):.1f} ms, p95 {quantile_ms(values, 0.95):.1f} ms, "
            f"p99 {quantile_ms(values, 0.99):.1f} ms, max {max(values) * 1000:.1f} ms (n={len(values)})")


async def bench(url: str, pid: int | None, limit: int, extra: int, settle: float) -> None:
    http_base = url.replace("ws://", "http://").replace("wss://", "https://").split("/ws/")[0]
    memory = (lambda: rss_mb(pid)) if pid else (lambda: float("nan"))

    # 1. warm-up: one whole session, so code loaded on first use is not counted per connection
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"language": "en"}}))
        await ws.recv()
        await ws.send(json.dumps({"type": "end_session"}))
        async for _ in ws:
            pass
    await wait_idle(http_base)
    await asyncio.sleep(1.0)
    rss_base = memory()

    # 2. sequential connections, one after another
    sequential = Phase()
    for _ in range(limit + extra):
        sequential.attempts.append(await open_one(url))
    await asyncio.gather(*(classify(a, settle) for a in sequential.attempts))
    held = len(sequential.held)
    await asyncio.sleep(1.0)
    rss_idle = memory()
    started = await start_sessions(sequential)
    await asyncio.sleep(1.0)
    rss_sessions = memory()
    await close_all(sequential)
    left_after_sequential = await wait_idle(http_base)
    await asyncio.sleep(1.0)
    rss_closed = memory()

    # 4. burst: every handshake at once
    burst = Phase(list(await asyncio.gather(*(open_one(url) for _ in range(limit + extra)))))
    await asyncio.gather(*(classify(a, settle) for a in burst.attempts))
    burst_held = len(burst.held)
    await close_all(burst)
    left = await wait_idle(http_base)
    rss_end = memory()

    accepted_latencies = [a.latency for a in sequential.held if a.latency is not None]
    refused_latencies = [a.latency for a in sequential.refused if a.latency is not None]
    print(f"\nserver limit {limit}, connections tried {limit + extra} (sequential, then a burst)")
    print(f"sequential: held {held}, refused {len(sequential.refused)}: {describe_refusals(sequential)}")
    print(f"            sessions started on the held connections: {started}")
    print(f"burst:      held {burst_held}, refused {len(burst.refused)}: {describe_refusals(burst)}")
    print(f"connect latency, held (sequential):     {latency_line(accepted_latencies)}")
    print(f"connect latency, refused (sequential):  {latency_line(refused_latencies)}")
    print(f"connect latency, burst of {limit + extra} at once:   "
          f"{latency_line([a.latency for a in burst.attempts if a.latency is not None])}")
    if pid:
        print(f"server RSS: before {rss_base:.1f} MB, {held} idle {rss_idle:.1f} MB, "
              f"{started} with a session {rss_sessions:.1f} MB, all closed {rss_closed:.1f} MB, "
              f"after the burst {rss_end:.1f} MB")
        if held:
            print(f"RSS per idle connection:               {(rss_idle - rss_base) * 1024 / held:.1f} KB")
        if started:
            print(f"RSS per connection with a session:     {(rss_sessions - rss_base) * 1024 / started:.1f} KB "
                  f"(the session itself: {(rss_sessions - rss_idle) * 1024 / started:.1f} KB)")
    print(f"active connections after closing: {left_after_sequential} (sequential), {left} (burst)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="target this server instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server process, for its RSS")
    parser.add_argument("--limit", type=int, default=50, help="WEBSOCKET_MAX_CONNECTIONS (default 50)")
    parser.add_argument("--extra", type=int, default=10, help="connections tried beyond the limit")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds a connection must stay open to count as held")
    args = parser.parse_args()
    process = None
    if args.url:
        url, pid = args.url, args.pid
    else:
        os.environ["WEBSOCKET_MAX_CONNECTIONS"] = str(args.limit)
        os.environ.setdefault("SESSION_IDLE_TIMEOUT", "0")  # idle connections are the point here
        # Sessions are recorded from start_session on: the history's tables must exist.
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
        process, url = start_server()
        pid = process.pid
        layer = "Redis" if os.environ.get("REDIS_URL") else "in-memory"
        database = (os.environ.get("DATABASE_URL") or "sqlite").split(":")[0]
        print(f"local server pid {pid} at {url}: limit {args.limit}, {layer} channel layer, {database} database")
    try:
        asyncio.run(bench(url, pid, args.limit, args.extra, args.settle))
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
