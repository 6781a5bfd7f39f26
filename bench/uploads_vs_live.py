"""A live stream's finals while 3 uploads run (issue 23 #4: target within 1.2x of idle).

    .venv/bin/python bench/uploads_vs_live.py                 # starts a local server itself
    .venv/bin/python bench/uploads_vs_live.py --uploads 3 --before 6
    .venv/bin/python bench/uploads_vs_live.py --url ws://host:8000/ws/transcribe --api-key ftk_...

Live: one session at a time playing the distinct real recordings of ../shared/audio one
after another at real-time pace (32 ms frames on the client's clock; bench/
stream_latency.py's stream_one). Phases: `--before` recordings idle, then as many with
`--uploads` files being transcribed through POST /v1/audio/transcriptions (each a
different stretch of long_gates_ted.wav, at its own gain, re-sent as soon as it is
done, so that every upload is decoding, VAD-scanning or transcribing throughout), then
`--before` idle again (the idle phases bracket the loaded one). Printed, idle vs with
uploads: end of speech -> final (a final's arrival - the sending of its last spoken
word), the first final of each recording from its first frame, partial latency; p50,
p95 and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from file_priority import FILE_CLIP, Live, live_streams  # noqa: E402
from flood import load, served  # noqa: E402
from stream_latency import AUDIO_DIR, SAMPLE_RATE, load_recordings, quantile_ms  # noqa: E402


def upload_audio(count: int, seconds: float) -> list[np.ndarray]:
    """`count` stretches of the talk of `seconds` each, starting at distinct places."""
    talk = load(FILE_CLIP)
    return [np.tile(np.roll(talk, -int(index * talk.size / max(count, 1))), 2)[:int(seconds * SAMPLE_RATE)]
            for index in range(count)]


def wav_of(audio: np.ndarray, gain: float) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, audio * np.float32(gain), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def keep_uploading(base: str, api_key: str, audio: np.ndarray, index: int, stop: asyncio.Event,
                         done: list[float]) -> None:
    """Transcribe `audio` again and again until `stop`, each time at another gain (the
    engine's result cache must not answer a repeat); each run's seconds into `done`."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=600)
    try:
        while not stop.is_set():
            wav = wav_of(audio, 1.0 - (index * 100 + len(done)) * 1e-3)
            started = time.perf_counter()
            await client.audio.transcriptions.create(file=("talk.wav", wav, "audio/wav"), model="whisper-1")
            done.append(time.perf_counter() - started)
    finally:
        await client.close()


def first_finals(live: Live) -> list[float]:
    """Each recording's first final, seconds after its first frame."""
    firsts = []
    for result in live.results:
        finals = [at for at, message in result.messages if message.get("type") == "transcription_final"]
        if finals:
            firsts.append(finals[0] - result.started_at)
    return firsts


async def run(url: str, base: str, api_key: str, uploads: int, before: int, seconds: float) -> tuple[Live, Live, list]:
    recordings = load_recordings(AUDIO_DIR, synthetic=False)
    await live_streams(url, recordings, 1, 0, counts=[1])  # the first session pays for warm-up
    idle = await live_streams(url, recordings, 1, 300, counts=[before])
    stop, done = asyncio.Event(), []
    uploaders = [asyncio.ensure_future(keep_uploading(base, api_key, audio, index, stop, done))
                 for index, audio in enumerate(upload_audio(uploads, seconds))]
    await asyncio.sleep(2.0)  # every upload decoded and at work on its chunks
    loaded = await live_streams(url, recordings, 1, 600, counts=[before * 2])
    stop.set()
    await asyncio.gather(*uploaders, return_exceptions=True)
    after = await live_streams(url, recordings, 1, 900, counts=[before])
    idle.results += after.results
    return idle, loaded, done


def row(label: str, idle: list[float], loaded: list[float]) -> str:
    cells = [quantile_ms(values, q) for values in (idle, loaded) for q in (0.5, 0.95)]
    text = "".join(f"{c:>10.0f}" if c is not None else f"{'n/a':>10}" for c in cells)
    ratios = [cells[2] / cells[0] if cells[0] and cells[2] else None,
              cells[3] / cells[1] if cells[1] and cells[3] else None]
    shown = "".join(f"{r:>9.2f}" if r is not None else f"{'n/a':>9}" for r in ratios)
    return f"{label:26}{text}{shown}   (n={len(idle)}/{len(loaded)})"


def report(uploads: int, seconds: float, idle: Live, loaded: Live, done: list[float]) -> None:
    print(f"\nuploads vs live: 1 live stream of distinct real recordings at real-time pace, idle "
          f"({len(idle.results)} recordings, before and after) vs beside {uploads} uploads of {seconds:.0f} s each "
          f"({len(loaded.results)} recordings; {len(done)} uploads completed meanwhile"
          f"{', ' + f'{np.median(done):.1f} s each (median)' if done else ''})")
    print(f"{'figure (ms)':26}{'idle p50':>10}{'p95':>10}{'load p50':>10}{'p95':>10}{'ratio p50':>9}{'p95':>9}")
    print(row("end of speech -> final", [v for r in idle.results for v in r.final_latencies],
              [v for r in loaded.results for v in r.final_latencies]))
    print(row("first final from start", first_finals(idle), first_finals(loaded)))
    print(row("partial latency", [v for r in idle.results for v in r.partial_latencies],
              [v for r in loaded.results for v in r.partial_latencies]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="WebSocket URL of a running server (default: start one locally)")
    parser.add_argument("--api-key", default="unused", help="API key for a server with AUTH_REQUIRED")
    parser.add_argument("--uploads", type=int, default=3)
    parser.add_argument("--upload-seconds", type=float, default=60.0)
    parser.add_argument("--before", type=int, default=6, help="recordings played idle before (and after)")
    args = parser.parse_args()
    with served(args.url, "fasttalk-uploads-vs-live-") as (url, base):
        idle, loaded, done = asyncio.run(run(url, base, args.api_key, args.uploads, args.before,
                                             args.upload_seconds))
    report(args.uploads, args.upload_seconds, idle, loaded, done)


if __name__ == "__main__":
    main()
