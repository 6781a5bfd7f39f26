"""One long session: does the server's memory stay flat?

    .venv/bin/python bench/memory_soak.py --minutes 30            # real time: takes 30 minutes
    .venv/bin/python bench/memory_soak.py --minutes 30 --speed 6  # 30 minutes of audio in 5

Starts a server, streams one session of speech with pauses (the recordings of
../shared/audio and synthetic sentences, cycled, each at a slightly different gain)
and samples the server's resident memory (VmRSS) every `--every` minutes of audio.
Decisions follow the audio clock, so a faster pace cuts the same utterances; it only
leaves time for fewer partials.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_latency import AUDIO_DIR, FRAME, SAMPLE_RATE, load_recordings, rss_mb, start_server  # noqa: E402


async def soak(url: str, pid: int, minutes: float, speed: float, every: float) -> list[tuple[float, float, int, int]]:
    recordings = load_recordings(AUDIO_DIR, synthetic=True)
    rng = np.random.default_rng(1)
    samples: list[tuple[float, float, int, int]] = []
    finals = partials = 0
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": {"language": "en"}}))
        await ws.recv()

        async def reader() -> None:
            nonlocal finals, partials
            async for raw in ws:
                kind = json.loads(raw)["type"]
                finals += kind == "transcription_final"
                partials += kind == "transcription_partial"

        reading = asyncio.create_task(reader())
        total = int(minutes * 60 * SAMPLE_RATE)
        sent, next_sample, variant = 0, 0, 0
        started = time.perf_counter()
        samples.append((0.0, rss_mb(pid), 0, 0))
        while sent < total:
            recording = recordings[variant % len(recordings)]
            variant += 1
            gain = np.float32(1.0 - (variant % 997) * 1e-4)
            pause = np.zeros(int(rng.uniform(0.3, 2.0) * SAMPLE_RATE), np.float32)
            piece = np.concatenate([recording.audio * gain, pause])
            for index in range(0, piece.size, FRAME):
                await ws.send(piece[index:index + FRAME].astype("<f4").tobytes())
                sent += min(FRAME, piece.size - index)
                delay = started + sent / SAMPLE_RATE / speed - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if sent >= next_sample:
                    samples.append((sent / SAMPLE_RATE / 60, rss_mb(pid), finals, partials))
                    print(f"  {samples[-1][0]:6.1f} min of audio  RSS {samples[-1][1]:7.1f} MB  "
                          f"finals {finals}  partials {partials}", flush=True)
                    next_sample += int(every * 60 * SAMPLE_RATE)
        await ws.send(json.dumps({"type": "end_session"}))
        await asyncio.wait_for(reading, 120)
    samples.append((sent / SAMPLE_RATE / 60, rss_mb(pid), finals, partials))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of audio in the session")
    parser.add_argument("--speed", type=float, default=1.0, help="pace, as a multiple of real time")
    parser.add_argument("--every", type=float, default=2.0, help="minutes of audio between samples")
    args = parser.parse_args()
    process, url = start_server()
    try:
        print(f"streaming {args.minutes:g} min of audio at {args.speed:g}x real time to {url}")
        samples = asyncio.run(soak(url, process.pid, args.minutes, args.speed, args.every))
    finally:
        process.terminate()
        process.wait(15)
    middle = min(samples, key=lambda sample: abs(sample[0] - samples[-1][0] / 2))
    end = samples[-1]
    print(f"\nRSS at start {samples[0][1]:.1f} MB, at {middle[0]:.1f} min {middle[1]:.1f} MB, "
          f"at the end ({end[0]:.1f} min) {end[1]:.1f} MB: growth over the second half {end[1] - middle[1]:+.1f} MB; "
          f"{end[2]} finals, {end[3]} partials")


if __name__ == "__main__":
    main()
