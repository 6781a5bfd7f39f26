"""Does one client flooding the server hurt another's latency?

    .venv/bin/python bench/flood.py                  # starts a local server on a scratch database
    .venv/bin/python bench/flood.py --repeat 5 --clip ps_austen_0870.wav
    .venv/bin/python bench/flood.py --url ws://host:8000/ws/transcribe

One well-behaved stream plays a real clip of ../shared/audio at real-time pace (32 ms
frames, like a microphone), `--repeat` times, measured twice: on an idle server, then
while a second client pushes the two-minute talk (long_gates_ted.wav, cycled) as fast
as the server takes it, in frames of 16384 samples (the largest allowed). The figures
are the client's, against the moment it sent the audio concerned (bench/stream_latency.py):
  word lag    a final's word first shown (partial or final) - sending of its last sample
  final lag   a final's arrival - sending of the utterance's last spoken word
  VAD event lag  voice_activity_detected's arrival - sending of the speech onset: no
              model involved, so it shows how promptly the server's event loop serves
Whatever the server does to the flooder (budgets, rate limits, closing it) is counted,
not fatal: a flooder that is closed reconnects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import numpy as np
import websockets

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from stream_latency import AUDIO_DIR, SAMPLE_RATE, Recording, quantile_ms, stream_one  # noqa: E402

FLOOD_CLIP = "long_gates_ted.wav"
FLOOD_FRAME = 16384


@dataclass
class FloodStats:
    frames: int = 0
    connections: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    closes: list[int] = field(default_factory=list)
    started: float = 0.0
    stopped: float = 0.0

    @property
    def audio_seconds(self) -> float:
        return self.frames * FLOOD_FRAME / SAMPLE_RATE

    @property
    def real_time_factor(self) -> float:
        """Audio sent per second of flooding (frames the client sent, what the TCP
        buffers held included: not what the server took)."""
        return self.audio_seconds / max(self.stopped - self.started, 1e-9)


def load(name: str) -> np.ndarray:
    from faster_whisper.audio import decode_audio

    return decode_audio(str(AUDIO_DIR / name), SAMPLE_RATE)


def clip_recording(name: str) -> Recording:
    reference = AUDIO_DIR / (Path(name).stem + ".txt")
    text = reference.read_text().strip() if reference.is_file() else ""
    if not text and name == "jfk.flac":
        text = ("And so my fellow Americans, ask not what your country can do for you, "
                "ask what you can do for your country.")
    return Recording(name, load(name), text, False)


async def flood_once(url: str, talk: np.ndarray, stats: FloodStats, stop: asyncio.Event) -> None:
    """One flooding connection, until `stop` or the server closes it."""
    async with websockets.connect(url, max_size=None) as ws:
        stats.connections += 1
        await ws.send(json.dumps({"type": "start_session", "session_config": {"language": "en"}}))

        async def reader() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "error":
                    code = message.get("error", {}).get("code", "?")
                    stats.errors[code] = stats.errors.get(code, 0) + 1

        reading = asyncio.create_task(reader())
        try:
            variant = 0
            while not stop.is_set():
                variant += 1
                audio = talk * np.float32(1.0 - (variant % 997) * 1e-4)  # never byte-identical
                for index in range(0, audio.size - FLOOD_FRAME + 1, FLOOD_FRAME):
                    if stop.is_set():
                        break
                    await ws.send(audio[index:index + FLOOD_FRAME].astype("<f4").tobytes())
                    stats.frames += 1
        except websockets.ConnectionClosed as closed:
            stats.closes.append(closed.rcvd.code if closed.rcvd else 1006)
        finally:
            reading.cancel()


async def flood(url: str, talk: np.ndarray, stats: FloodStats, stop: asyncio.Event) -> None:
    stats.started = time.perf_counter()
    while not stop.is_set():
        try:
            await flood_once(url, talk, stats, stop)
        except (OSError, websockets.WebSocketException) as exc:
            stats.closes.append(getattr(getattr(exc, "rcvd", None), "code", 1006))
            await asyncio.sleep(0.2)
    stats.stopped = time.perf_counter()


@dataclass
class Measured:
    word_lags: list[float] = field(default_factory=list)
    final_lags: list[float] = field(default_factory=list)
    vad_lags: list[float] = field(default_factory=list)
    unfinished: int = 0  # sessions whose end did not come within the wait


async def measure(url: str, recording: Recording, repeat: int, first_variant: int, wait_s: float) -> Measured:
    measured = Measured()
    for index in range(repeat):
        result = await stream_one(url, recording, first_variant + index, wait_s=wait_s)
        measured.word_lags += result.word_lags
        measured.final_lags += result.final_latencies
        measured.vad_lags += result.vad_latencies
        measured.unfinished += not result.finished
    return measured


async def run(url: str, recording: Recording, repeat: int, warmup: float,
              wait_s: float) -> tuple[Measured, Measured, FloodStats]:
    await stream_one(url, recording, 0)  # the first session pays for model warm-up
    idle = await measure(url, recording, repeat, 1, wait_s)
    talk = load(FLOOD_CLIP)
    stats, stop = FloodStats(), asyncio.Event()
    flooding = asyncio.create_task(flood(url, talk, stats, stop))
    await asyncio.sleep(warmup)
    try:
        flooded = await measure(url, recording, repeat, 100, wait_s)
    finally:
        stop.set()
        await asyncio.wait_for(flooding, 60)
    return idle, flooded, stats


def start_local_server(log_dir: Path):
    from tests.servers import ScratchDatabase, Server, base_env

    database = ScratchDatabase(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    env = {**base_env(), "DATABASE_URL": database.url(), "AUTH_REQUIRED": "0", "REFINE_FINALS": "0"}
    # The test harness turns the audio budget off; the benchmark measures the service as
    # it ships (the setting's default) unless the caller's environment sets it.
    if "AUDIO_BUDGET_PER_SESSION" in os.environ:
        env["AUDIO_BUDGET_PER_SESSION"] = os.environ["AUDIO_BUDGET_PER_SESSION"]
    else:
        env.pop("AUDIO_BUDGET_PER_SESSION", None)
    try:
        return Server(env, log_dir), database
    except Exception:
        database.drop()
        raise


@contextmanager
def served(url: str | None, prefix: str) -> Iterator[tuple[str, str]]:
    """(WebSocket URL, HTTP base) of the server at `url`, or of a local one started here
    (and stopped, its scratch database dropped, when the block ends)."""
    if url:
        parts = urlsplit(url)
        yield url, f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as log_dir:
        server, database = start_local_server(Path(log_dir))
        try:
            yield server.ws, server.base
        finally:
            server.stop()
            database.drop()


def report(recording: Recording, repeat: int, idle: Measured, flooded: Measured, stats: FloodStats) -> None:
    seconds = stats.stopped - stats.started
    print(f"\nflood benchmark: {recording.name} ({recording.audio.size / SAMPLE_RATE:.1f} s) x{repeat} "
          f"at real-time pace, idle vs. beside a flooder of {FLOOD_CLIP} in {FLOOD_FRAME}-sample frames")
    print(f"flooder: {stats.audio_seconds:.0f} s of audio in {seconds:.0f} s "
          f"({stats.real_time_factor:.0f}x real time), {stats.connections} connection(s), "
          f"errors {stats.errors or '{}'}, closes {stats.closes or '[]'}")
    print(f"{'figure (ms)':14}{'idle p50':>10}{'p95':>8}{'flood p50':>12}{'p95':>8}{'ratio p50':>11}{'p95':>7}")
    for label, slot in (("word lag", "word_lags"), ("final lag", "final_lags"), ("VAD event lag", "vad_lags")):
        row = [quantile_ms(getattr(m, slot), q) for m in (idle, flooded) for q in (0.5, 0.95)]
        ratios = [row[2] / row[0] if row[0] and row[2] is not None else None,
                  row[3] / row[1] if row[1] and row[3] is not None else None]
        cells = "".join(f"{v:>{w}.0f}" if v is not None else f"{'n/a':>{w}}" for v, w in zip(row, (10, 8, 12, 8)))
        ratio_cells = "".join(f"{r:>{w}.2f}" if r is not None else f"{'n/a':>{w}}" for r, w in zip(ratios, (11, 7)))
        print(f"{label:14}{cells}{ratio_cells}   (n={len(getattr(idle, slot))}/{len(getattr(flooded, slot))})")
    if idle.unfinished or flooded.unfinished:
        print(f"sessions without their end within the wait: idle {idle.unfinished}/{repeat}, "
              f"flood {flooded.unfinished}/{repeat} (their missing finals are not in the figures)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="WebSocket URL of a running server (default: start one locally)")
    parser.add_argument("--clip", default="jfk.flac", help="the well-behaved stream's recording")
    parser.add_argument("--repeat", type=int, default=3, help="times the clip is played per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of flooding before measuring")
    parser.add_argument("--wait", type=float, default=30.0,
                        help="seconds a measured session may take to end after its audio")
    args = parser.parse_args()
    recording = clip_recording(args.clip)
    with served(args.url, "fasttalk-flood-") as (url, _):
        idle, flooded, stats = asyncio.run(run(url, recording, args.repeat, args.warmup, args.wait))
    report(recording, args.repeat, idle, flooded, stats)


if __name__ == "__main__":
    main()
