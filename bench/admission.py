"""Admission with the default settings (issue 24 #4): does a fresh, idle server take the
clients that connect together, and does a flooding client lock a real-time one out?
This tree (NOW) beside an earlier revision (BEFORE), in the same run on this machine.

    .venv/bin/python bench/admission.py                           # NOW only
    .venv/bin/python bench/admission.py --baseline-rev ae998b6    # BEFORE and NOW
    .venv/bin/python bench/admission.py --bursts 4,8,12 --seconds 30

Every scenario gets a fresh local server (bench/turn_latency.py's: embedded, open,
REFINE_FINALS=0) with admission by capacity ON and the audio budget at their defaults,
which is what differs from the other benchmarks. Each stream is its own real speech
(bench/streams.py: pieces of ../shared/audio, distinct per stream) sent in 64 ms frames
at real-time pace on the client's clock; a final's latency is its arrival - the sending
of its last word's end.

  burst N   N clients connect at the same moment to the idle server and stream
            --seconds each. Printed: how many were admitted, how many refused (and
            why), and the admitted streams' finals p50/p95.
  flood     one client pushes the two-minute talk as fast as the server takes it
            (bench/flood.py); after --flood-warmup s a real-time client connects and
            streams --seconds. Printed: whether it was admitted, its finals p50/p95
            beside the same stream on the same server once the flood stopped (idle),
            and the ratio [target: admitted, p95 <= 1.2x idle].
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import stream_latency as sl  # puts the project root on sys.path
from flood import FLOOD_CLIP, FloodStats, flood, load  # noqa: E402
from streams import StreamFigures, load_clips, paced_stream, quantile, stream_audio  # noqa: E402
from turn_latency import checkout, local_server  # noqa: E402


def admission_env(env: dict[str, str]) -> dict[str, str]:
    """turn_latency's server environment with admission and the audio budget as shipped."""
    for setting in ("CAPACITY_ADMISSION", "AUDIO_BUDGET_PER_SESSION"):
        env.pop(setting, None)
    return env


@dataclass
class Burst:
    streams: int
    admitted: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    finals: list[float] = field(default_factory=list)
    lag: float = 0.0


@dataclass
class Flooded:
    admitted: bool = False
    refusal: str | None = None
    flooded: list[float] = field(default_factory=list)
    idle: list[float] = field(default_factory=list)
    flood: FloodStats = field(default_factory=FloodStats)


def why(figures: StreamFigures) -> str:
    refused = figures.refused or {}
    return f"{refused.get('code', 'closed')} ({figures.close_code})"


async def burst(url: str, streams: int, seconds: float, clips) -> Burst:
    audios = [stream_audio(index, seconds, clips) for index in range(streams)]
    results = await asyncio.gather(*(paced_stream(url, audio) for audio in audios))
    outcome = Burst(streams)
    for figures in results:
        if figures.refused is not None:
            outcome.refusals[why(figures)] = outcome.refusals.get(why(figures), 0) + 1
            continue
        outcome.admitted += 1
        outcome.finals += figures.final_latencies
        outcome.lag = max(outcome.lag, figures.lag)
    return outcome


async def flooded(url: str, seconds: float, warmup: float, clips) -> Flooded:
    outcome = Flooded()
    stop = asyncio.Event()
    flooding = asyncio.create_task(flood(url, load(FLOOD_CLIP), outcome.flood, stop))
    await asyncio.sleep(warmup)
    try:
        figures = await paced_stream(url, stream_audio(100, seconds, clips))
    finally:
        stop.set()
        await asyncio.wait_for(flooding, 60)
    outcome.admitted = figures.refused is None
    outcome.refusal = None if outcome.admitted else why(figures)
    outcome.flooded = figures.final_latencies
    await asyncio.sleep(2.0)  # the flood's last work drains
    outcome.idle = (await paced_stream(url, stream_audio(101, seconds, clips))).final_latencies
    return outcome


def run_tree(root: Path, bursts: list[int], seconds: float, warmup: float, clips) -> tuple[list[Burst], Flooded]:
    results = []
    for streams in bursts:
        with local_server(root, admission_env) as url:
            results.append(asyncio.run(burst(url, streams, seconds, clips)))
    with local_server(root, admission_env) as url:
        flood_result = asyncio.run(flooded(url, seconds, warmup, clips))
    return results, flood_result


def ms(values: list[float], fraction: float) -> str:
    value = quantile(values, fraction)
    return "n/a" if value is None else f"{value * 1000:.0f}"


def report(label: str, bursts: list[Burst], flood_result: Flooded) -> None:
    print(f"\n{label}")
    print(f"{'scenario':12}{'admitted':>10}{'finals p50':>12}{'p95 (ms)':>10}{'lag (ms)':>10}   refused")
    for outcome in bursts:
        refused = ", ".join(f"{n} x {reason}" for reason, n in outcome.refusals.items()) or "none"
        print(f"{'burst ' + str(outcome.streams):12}{f'{outcome.admitted}/{outcome.streams}':>10}"
              f"{ms(outcome.finals, 0.5):>12}{ms(outcome.finals, 0.95):>10}{outcome.lag * 1000:>10.0f}   {refused}")
    f = flood_result
    idle95, flood95 = quantile(f.idle, 0.95), quantile(f.flooded, 0.95)
    ratio = f"{flood95 / idle95:.2f}" if idle95 and flood95 else "n/a"
    print(f"{'flood':12}{'yes' if f.admitted else 'no':>10}{ms(f.flooded, 0.5):>12}{ms(f.flooded, 0.95):>10}"
          f"{'':>10}   {f.refusal or 'none'}; idle p50/p95 {ms(f.idle, 0.5)}/{ms(f.idle, 0.95)} ms, "
          f"p95 ratio {ratio} [<= 1.2]; flooder sent {f.flood.real_time_factor:.1f}x real time, errors {f.flood.errors or '{}'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", help="git revision to measure first as BEFORE")
    parser.add_argument("--bursts", default="4,8", help="stream counts that connect together")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    parser.add_argument("--flood-warmup", type=float, default=3.0, help="seconds of flood before the client")
    args = parser.parse_args()
    bursts = [int(n) for n in args.bursts.split(",") if n.strip() and int(n)]  # "0": the flood only
    clips = load_clips()
    started = time.perf_counter()
    runs = []
    if args.baseline_rev:
        with checkout(args.baseline_rev) as tree:
            runs.append((f"BEFORE ({args.baseline_rev})", *run_tree(tree, bursts, args.seconds, args.flood_warmup,
                                                                     clips)))
    runs.append(("NOW (this tree)", *run_tree(sl.ROOT, bursts, args.seconds, args.flood_warmup, clips)))
    print(f"\nadmission benchmark, defaults (admission on, audio budget on), {args.seconds:g} s per stream, "
          f"{time.perf_counter() - started:.0f} s in all")
    for label, burst_results, flood_result in runs:
        report(label, burst_results, flood_result)


if __name__ == "__main__":
    main()
