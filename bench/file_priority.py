"""Do file uploads slow live streams down? Live finals with and without a long file
being transcribed through the OpenAI-compatible API, in the same run.

    .venv/bin/python bench/file_priority.py                 # starts a local server itself
    .venv/bin/python bench/file_priority.py --streams 4 --file-minutes 10
    .venv/bin/python bench/file_priority.py --url ws://host:8000/ws/transcribe --api-key ftk_...

Live: `--streams` concurrent sessions, each playing distinct real recordings of
../shared/audio one after another at real-time pace (32 ms frames on the client's
clock, bench/stream_latency.py's stream_one). First `--before` recordings each without
the file; then while a file of `--file-minutes` (long_gates_ted.wav repeated, each copy
at another gain so no chunk is byte-identical) is transcribed with stream=true through
POST /v1/audio/transcriptions, for as long as it takes; then as many again without
it, so that the phases without bracket the one with. Printed: end of speech
-> final (the client's figure: a final's arrival - sending of its last spoken word),
partial latency and word lag, p50/p95 in both phases, and the file's own progress.
Target: finals p95 with the file within 10% of without.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from flood import load, served  # noqa: E402
from stream_latency import (  # noqa: E402
    AUDIO_DIR,
    SAMPLE_RATE,
    Recording,
    StreamResult,
    load_recordings,
    quantile_ms,
    stream_one,
)

FILE_CLIP = "long_gates_ted.wav"


@dataclass
class FileRun:
    audio_seconds: float
    started: float = 0.0
    first_delta: float | None = None
    finished: float | None = None
    deltas: int = 0
    text: str = ""
    error: str = ""


def long_file(minutes: float) -> tuple[bytes, float]:
    """A WAV of the talk repeated to `minutes`, each copy at a slightly different gain."""
    import soundfile

    talk = load(FILE_CLIP)
    copies = max(1, round(minutes * 60 * SAMPLE_RATE / talk.size))
    audio = np.concatenate([talk * np.float32(1.0 - index * 1e-3) for index in range(copies)])
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), audio.size / SAMPLE_RATE


async def transcribe_file(base: str, api_key: str, wav: bytes, run: FileRun) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=3600)
    run.started = time.perf_counter()
    try:
        stream = await client.audio.transcriptions.create(file=("talk.wav", wav, "audio/wav"), model="whisper-1",
                                                          stream=True)
        async for event in stream:
            if event.type == "transcript.text.delta":
                run.deltas += 1
                if run.first_delta is None:
                    run.first_delta = time.perf_counter()
            elif event.type == "transcript.text.done":
                run.text = event.text
    except Exception as exc:  # reported, not fatal: the live figures still stand
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        run.finished = time.perf_counter()
        await client.close()


@dataclass
class Live:
    results: list[StreamResult] = field(default_factory=list)
    played: list[int] = field(default_factory=list)  # recordings each stream played


async def live_streams(url: str, recordings: list[Recording], streams: int, first_variant: int,
                       until: asyncio.Future | None = None, counts: list[int] | None = None) -> Live:
    """Each stream plays recordings in turn (stream i starts at recording i): until
    `until` is done (at least one each), or `counts[i]` of them."""
    live = Live(played=[0] * streams)

    async def series(index: int) -> None:
        played = 0
        while (counts is not None and played < counts[index]) or (
                counts is None and (played == 0 or not until.done())):
            recording = recordings[(index + played) % len(recordings)]
            variant = first_variant + index * 150 + played  # gain 1 - variant * 1e-4: keep it small
            live.results.append(await stream_one(url, recording, variant, wait_s=60))
            played += 1
        live.played[index] = played

    await asyncio.gather(*(series(index) for index in range(streams)))
    return live


async def run(url: str, base: str, api_key: str, streams: int, minutes: float,
              before: int) -> tuple[Live, Live, FileRun]:
    """Without the file (`before` recordings per stream), with it (as long as it takes),
    then without it again (as many as were played with it, less `before`, at least
    `before`): the phases without bracket the one with, so a machine whose load drifts
    during the run weighs on both."""
    recordings = load_recordings(AUDIO_DIR, synthetic=False)
    await stream_one(url, recordings[0], 0)  # the first session pays for model warm-up
    wav, seconds = long_file(minutes)
    file_run = FileRun(seconds)
    without = await live_streams(url, recordings, streams, 600, counts=[before] * streams)
    uploading = asyncio.ensure_future(transcribe_file(base, api_key, wav, file_run))
    with_file = await live_streams(url, recordings, streams, 1, until=uploading)
    await uploading
    after = await live_streams(url, recordings, streams, 1200,
                               counts=[max(before, played - before) for played in with_file.played])
    without.results += after.results
    without.played = [a + b for a, b in zip(without.played, after.played)]
    return with_file, without, file_run


def row(label: str, slot: str, with_file: Live, without: Live) -> str:
    values = [[v for r in live.results for v in getattr(r, slot)] for live in (without, with_file)]
    cells = [quantile_ms(v, q) for v in values for q in (0.5, 0.95)]
    text = "".join(f"{c:>9.0f}" if c is not None else f"{'n/a':>9}" for c in cells)
    ratio = cells[3] / cells[1] if cells[1] and cells[3] is not None else None
    shown = f"{ratio:>9.2f}" if ratio is not None else f"{'n/a':>9}"
    return f"{label:26}{text}{shown}   (n={len(values[0])}/{len(values[1])})"


def report(streams: int, with_file: Live, without: Live, file_run: FileRun) -> None:
    took = (file_run.finished or file_run.started) - file_run.started
    print(f"\nfile priority benchmark: {streams} live streams of distinct real recordings at real-time pace, "
          f"{sum(without.played)} recordings without the file (before and after it), {sum(with_file.played)} with it")
    print(f"file: {file_run.audio_seconds / 60:.1f} min ({FILE_CLIP} repeated) through POST /v1/audio/transcriptions "
          f"stream=true: {took:.0f} s ({file_run.audio_seconds / max(took, 1e-9):.1f}x real time beside the streams), "
          f"first delta after {((file_run.first_delta or file_run.started) - file_run.started):.1f} s, "
          f"{file_run.deltas} deltas, {len(file_run.text.split())} words{', ERROR ' + file_run.error if file_run.error else ''}")
    print(f"{'figure (ms)':26}{'without p50':>12}{'p95':>6}{'with p50':>12}{'p95':>6}{'p95 ratio':>12}")
    print(row("end of speech -> final", "final_latencies", with_file, without))
    print(row("partial latency", "partial_latencies", with_file, without))
    print(row("word lag", "word_lags", with_file, without))
    unfinished = [sum(not r.finished for r in live.results) for live in (without, with_file)]
    if any(unfinished):
        print(f"sessions whose end did not come within 60 s: without {unfinished[0]}, with {unfinished[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="WebSocket URL of a running server (default: start one locally)")
    parser.add_argument("--api-key", default="unused", help="API key for a server with AUTH_REQUIRED")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--file-minutes", type=float, default=10.0)
    parser.add_argument("--before", type=int, default=7,
                        help="recordings each stream plays without the file before it is sent")
    args = parser.parse_args()
    with served(args.url, "fasttalk-file-priority-") as (url, base):
        with_file, without, file_run = asyncio.run(run(url, base, args.api_key, args.streams, args.file_minutes,
                                                        args.before))
    report(args.streams, with_file, without, file_run)


if __name__ == "__main__":
    main()
