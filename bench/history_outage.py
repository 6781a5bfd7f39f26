"""PostgreSQL goes away under live streams: does the server's memory stay bounded, and
is every final in the history once the database is back?

    .venv/bin/python bench/history_outage.py                       # a 2-minute outage
    .venv/bin/python bench/history_outage.py --outage-seconds 20   # a shorter one

A private PostgreSQL cluster (tests/servers.py) and a real server process (manage.py
serve). Eight streams, each one of the real recordings of ../shared/audio on a loop
with a second of silence after it, at real-time pace (finals only, no partials: they
would only cost CPU). After --warmup-seconds, once every stream has had a final (the
server warm), the cluster stops (fast shutdown) for --outage-seconds; the streams go
on for --after-seconds once it is back, then end. Prints the server's RSS (VmRSS) just before
the outage, its peak until every final is stored, and after; finals the clients
received against finals in the database. Exits 1 if RSS grew by more than --max-growth-mb
or a final is missing. --control runs the same with the database left up, to tell the
server's own growth under the machine's load from the outage's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stream_latency import AUDIO_DIR, SAMPLE_RATE, rss_mb  # noqa: E402
from tests.servers import PostgresServer, Server, base_env, get_json  # noqa: E402

FRAME = 2048  # 128 ms
DATABASE = "fasttalk"


def recordings() -> list[tuple[str, np.ndarray]]:
    from faster_whisper.audio import decode_audio

    paths = sorted([*AUDIO_DIR.glob("*.wav"), *AUDIO_DIR.glob("*.flac")])
    return [(path.name, decode_audio(str(path), SAMPLE_RATE)) for path in paths]


async def stream(url: str, name: str, audio: np.ndarray, clock: dict[str, float], finals: list[str],
                 end_wait: float) -> None:
    """Loop `audio` (and a second of silence) at real-time pace until clock["until"]."""
    piece = np.concatenate([audio, np.zeros(SAMPLE_RATE, np.float32)]).astype("<f4")
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start_session",
                                  # Finals only: partials would cost CPU and change nothing here.
                                  "session_config": {"language": "en", "session_id": f"outage-{name}",
                                                     "enable_partial_transcription": False}}))

        async def reader() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "transcription_final":
                    finals.append(message["data"]["utterance_id"])

        reading = asyncio.create_task(reader())
        started, sent = time.monotonic(), 0
        while time.monotonic() < clock["until"]:
            for index in range(0, piece.size, FRAME):
                await ws.send(piece[index:index + FRAME].tobytes())
                sent += min(FRAME, piece.size - index)
                delay = started + sent / SAMPLE_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.monotonic() >= clock["until"]:
                    break
        await ws.send(json.dumps({"type": "end_session"}))
        try:  # a server far behind (a loaded machine) may take long to finish the last finals
            await asyncio.wait_for(reading, end_wait)
        except TimeoutError:
            print(f"{name}: the session did not end within {end_wait:g} s; counting the finals received")


class Sampler:
    """The server's RSS and history backlog, every half second."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.samples: list[tuple[float, float, int, int]] = []
        self.running = True

    async def run(self) -> None:
        while self.running:
            backlog = held = -1
            try:
                status, stats = await asyncio.to_thread(get_json, f"{self.server.base}/stats")
                backlog, held = stats["history"]["backlog"], stats["history"].get("backlog_bytes", -1)
            except Exception:
                pass
            self.samples.append((time.monotonic(), rss_mb(self.server.process.pid), backlog, held))
            await asyncio.sleep(0.5)

    def between(self, start: float, end: float) -> list[tuple[float, float, int, int]]:
        return [sample for sample in self.samples if start <= sample[0] <= end]


def stored_ids(cluster: PostgresServer) -> set[str]:
    return {row[0] for row in cluster.query(DATABASE, "SELECT utterance_id::text FROM stt_utterance")}


async def run(cluster: PostgresServer, server: Server, args: argparse.Namespace) -> dict:
    sources = recordings()[:args.streams]
    sampler = Sampler(server)
    sampling = asyncio.create_task(sampler.run())
    begin = time.monotonic()
    clock = {"until": float("inf")}
    finals: dict[str, list[str]] = {name: [] for name, _ in sources}
    streams = asyncio.gather(*(stream(server.ws, name, audio, clock, finals[name], args.end_wait_seconds)
                               for name, audio in sources))
    # Warm: --warmup-seconds, and every stream has had a final (the server's steady state).
    await asyncio.sleep(args.warmup_seconds)
    while not all(finals.values()) and time.monotonic() < begin + args.warmup_seconds + 120:
        await asyncio.sleep(0.5)
    down_at = time.monotonic()
    up_at = down_at + args.outage_seconds
    clock["until"] = up_at + args.after_seconds
    sent_before = sum(map(len, finals.values()))
    rss_before = rss_mb(server.process.pid)
    if not args.control:
        await asyncio.to_thread(cluster.stop)
    print(f"PostgreSQL {'left running (control)' if args.control else 'stopped'} after {down_at - begin:.0f} s; {sent_before} finals so far; RSS {rss_before:.1f} MB",
          flush=True)
    await asyncio.sleep(max(0.0, up_at - time.monotonic()))
    sent_during = sum(map(len, finals.values())) - sent_before
    if not args.control:
        await asyncio.to_thread(cluster.start)
    print(f"PostgreSQL started again after {args.outage_seconds:g} s down; {sent_during} finals meanwhile",
          flush=True)
    await streams
    sent = {utterance_id for ids in finals.values() for utterance_id in ids}
    deadline = time.monotonic() + 180
    stored = await asyncio.to_thread(stored_ids, cluster)
    while not sent <= stored and time.monotonic() < deadline:
        await asyncio.sleep(1)
        stored = await asyncio.to_thread(stored_ids, cluster)
    stored_at = time.monotonic()
    await asyncio.sleep(2)
    sampler.running = False
    await sampling
    window = sampler.between(down_at, stored_at)
    return {"sent": len(sent), "sent_during": sent_during, "stored": len(sent & stored),
            "rss_before": rss_before, "rss_peak": max(s[1] for s in window),
            "rss_after": rss_mb(server.process.pid), "backlog_peak": max(s[2] for s in window),
            "backlog_bytes_peak": max(s[3] for s in window),
            "stored_after_s": stored_at - up_at, "streams": [name for name, _ in sources]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage-seconds", type=float, default=120.0)
    parser.add_argument("--warmup-seconds", type=float, default=20.0)
    parser.add_argument("--after-seconds", type=float, default=15.0)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--end-wait-seconds", type=float, default=600.0,
                        help="how long a session may take to end after end_session")
    parser.add_argument("--max-growth-mb", type=float, default=100.0)
    parser.add_argument("--control", action="store_true",
                        help="the same run with no outage: the server's own growth under this load")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fasttalk-outage-"))
    cluster = PostgresServer()
    server = None
    try:
        env = {**base_env(), "DATABASE_URL": cluster.create_database(DATABASE), "DATABASE_CONNECT_TIMEOUT": "1",
               "PERSISTENCE_RETRY_SECONDS": "0.5", "MEDIA_ROOT": str(folder / "media"),
               "HISTORY_JOURNAL": str(folder / "journal.jsonl")}
        server = Server(env, folder)
        result = asyncio.run(run(cluster, server, args))
    finally:
        if server is not None:
            server.stop()
        cluster.cleanup()
    journaled = (folder / "journal.jsonl").read_text().count("\n") if (folder / "journal.jsonl").exists() else 0
    growth = result["rss_peak"] - result["rss_before"]
    print(f"\n{len(result['streams'])} streams ({', '.join(result['streams'])}), "
          f"{args.outage_seconds:g} s outage")
    print(f"RSS before the outage {result['rss_before']:.1f} MB, peak {result['rss_peak']:.1f} MB "
          f"(+{growth:.1f} MB), after {result['rss_after']:.1f} MB")
    print(f"finals sent {result['sent']} ({result['sent_during']} during the outage), stored {result['stored']}; "
          f"journaled {journaled}; backlog peak {result['backlog_peak']} writes, "
          f"{result['backlog_bytes_peak'] / 1e6:.2f} MB held; all stored "
          f"{result['stored_after_s']:.1f} s after the database came back")
    failed = growth > args.max_growth_mb or result["stored"] != result["sent"]
    print("FAIL" if failed else "OK")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
