"""Streams sustained per server process: how many concurrent real-time streams of
distinct real speech 1, 2 or 3 processes on this machine carry while every stream's
finals stay within p95 <= 1.5 s (end of the last word to the final's arrival) and no
stream falls behind real time, for several STT_INFERENCE_WORKERS x STT_CPU_THREADS.

    .venv/bin/python bench/capacity.py --quick          # 1-3 processes, configs 1x0 and 2x1 (the default on 2 cores), 20 s trials
    .venv/bin/python bench/capacity.py                  # + worker/thread configs, 40 s trials
    .venv/bin/python bench/capacity.py --processes 1 --configs 1x2,2x1 --duration 60
    .venv/bin/python bench/capacity.py --admission-only  # refusals past capacity, one process

Each trial starts N streams (bench/streams.py: distinct utterances cut from the eight
recordings of ../shared/audio, 64 ms frames on the client's clock, starts spread over
2 s), spread over the processes one by one (what a least-connections balancer does),
for --duration seconds each. N rises until a trial fails; the last N that passed is
the figure. The processes share this environment's DATABASE_URL (a scratch database)
and REDIS_URL, run open, with refinement off (the live path only) and admission by
capacity off (the raw figure); a config WxT is W inference workers of T threads each
per process (T=0: the machine's cores split between the processes). The client runs on
the same machine and takes its share of the CPU: on a small host the figures are a
floor. After each trial, each process's /health `capacity` gives its engine's load
(final-path and partial decode seconds per wall second per worker) and the measured
final-path demand per session (docs/capacity.md turns these into a capacity model).

The last part runs one process with admission by capacity on (CAPACITY_ADMISSION=1)
and sends it twice the streams it sustained: streams join one every 2 s, so the
process measures before it judges. It prints how many were admitted, how many were
refused (close code, error, retry_after), and the admitted streams' finals p95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from streams import StreamFigures, load_clips, paced_stream, quantile, stream_audio  # noqa: E402

FINAL_P95_BOUND = 1.5  # seconds, client-measured end of speech -> final
MAX_LAG = 0.5  # seconds behind real time
STEPS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64]


@dataclass
class Trial:
    streams: int
    finals: int
    final_p50: float | None
    final_p95: float | None
    partial_gap_p95: float | None
    lag: float
    unfinished: int
    errors: int
    engine: list[dict]  # each process's /health capacity figures after the trial

    @property
    def passed(self) -> bool:
        return (self.final_p95 is not None and self.final_p95 <= FINAL_P95_BOUND and self.lag <= MAX_LAG
                and self.unfinished == 0)

    def cells(self) -> str:
        def ms(value: float | None) -> str:
            return f"{value * 1000:.0f}" if value is not None else "n/a"

        loads = "/".join(f"{e.get('engine', {}).get('final_load', 0):.2f}+{e.get('engine', {}).get('partial_load', 0):.2f}"
                         for e in self.engine)
        return (f"N={self.streams:<3} finals {self.finals:>4}  p50/p95 {ms(self.final_p50):>5}/{ms(self.final_p95):>5} ms"
                f"  partial gap p95 {ms(self.partial_gap_p95):>5} ms  lag {self.lag * 1000:>5.0f} ms"
                f"  unfinished {self.unfinished}  load final+partial {loads}")


class Processes:
    """P server processes on one scratch database, each with its own settings."""

    def __init__(self, count: int, env: dict[str, str], log_dir: Path) -> None:
        from tests.servers import ScratchDatabase, Server, base_env

        self.database = ScratchDatabase(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
        full = {**base_env(), "DATABASE_URL": self.database.url(), "AUTH_REQUIRED": "0", "REFINE_FINALS": "0",
                "LOG_LEVEL": "WARNING", **env}
        if "AUDIO_BUDGET_PER_SESSION" not in os.environ:
            full.pop("AUDIO_BUDGET_PER_SESSION", None)  # the service as it ships
        self.servers = []
        try:
            for _ in range(count):
                self.servers.append(Server(full, log_dir))
        except Exception:
            self.stop()
            raise

    @property
    def urls(self) -> list[str]:
        return [server.ws for server in self.servers]

    def capacity(self) -> list[dict]:
        figures = []
        for server in self.servers:
            try:
                with urllib.request.urlopen(f"{server.base}/health", timeout=10) as response:
                    figures.append(json.loads(response.read()).get("capacity") or {})
            except urllib.error.HTTPError as error:  # 503 while not ready: the body is the same
                figures.append(json.loads(error.read()).get("capacity") or {})
        return figures

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.database.drop()


async def run_streams(urls: list[str], audios: list, spread: float, wait_s: float) -> list[StreamFigures]:
    async def one(index: int):
        await asyncio.sleep(spread * index / max(1, len(audios)))
        return await paced_stream(urls[index % len(urls)], audios[index], wait_s=wait_s)

    return await asyncio.gather(*[one(index) for index in range(len(audios))])


def summarize(count: int, results: list[StreamFigures], engine: list[dict]) -> Trial:
    finals = [x for r in results for x in r.final_latencies]
    gaps = [x for r in results for x in r.partial_intervals]
    return Trial(count, sum(r.finals for r in results), quantile(finals, 0.5), quantile(finals, 0.95),
                 quantile(gaps, 0.95), max((r.lag for r in results), default=0.0),
                 sum(1 for r in results if not r.finished), sum(len(r.errors) for r in results), engine)


def ramp(processes: Processes, clips: dict, duration: float, first: int, offset: int) -> tuple[Trial | None, Trial | None]:
    """Raise N until a trial fails: (the last that passed, the one that failed)."""
    passed = failed = None
    steps = [n for n in STEPS if n >= first]
    for count in steps:
        audios = [stream_audio(offset + index, duration, clips) for index in range(count)]
        results = asyncio.run(run_streams(processes.urls, audios, spread=2.0, wait_s=30.0))
        trial = summarize(count, results, processes.capacity())
        print(f"    {'pass' if trial.passed else 'FAIL'} {trial.cells()}", flush=True)
        if not trial.passed:
            failed = trial
            break
        passed = trial
        offset += count
    return passed, failed


def thread_split(threads: int, processes: int) -> int:
    return threads or max(1, (os.cpu_count() or 1) // processes)


async def admission_run(url: str, clips: dict, streams: int, duration: float, offset: int) -> list[StreamFigures]:
    """`streams` streams joining one every 2 s, each streaming `duration` seconds."""
    audios = [stream_audio(offset + index, duration, clips) for index in range(streams)]
    return await run_streams([url], audios, spread=2.0 * streams, wait_s=30.0)


def print_admission(results: list[StreamFigures], streams: int, capacity: list[dict]) -> None:
    admitted = [r for r in results if r.refused is None]
    refused = [r for r in results if r.refused is not None]
    finals = [x for r in admitted for x in r.final_latencies]
    p95 = quantile(finals, 0.95)
    codes = sorted({(r.close_code, r.refused.get("code"), r.refused.get("retry_after")) for r in refused},
                   key=str)
    print(f"\nadmission by capacity (one process, CAPACITY_ADMISSION=1 with its defaults, {streams} streams "
          f"joining 2 s apart, refused ones not retried):")
    print(f"  admitted {len(admitted)}, refused {len(refused)} {codes}")
    for index, result in enumerate(results):
        why = result.refused.get("message", "") if result.refused is not None else "admitted"
        print(f"    stream {index} (joined at {2 * index} s): {why}")
    print(f"  admitted streams: finals {len(finals)}, p50/p95 "
          f"{(quantile(finals, 0.5) or 0) * 1000:.0f}/{(p95 or 0) * 1000:.0f} ms, "
          f"max lag {max((r.lag for r in admitted), default=0) * 1000:.0f} ms")
    print(f"  /health capacity at the end: {json.dumps(capacity[0] if capacity else {})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="configs 1x0 (the default before 2026-11-29) and 2x1 (the automatic default on 2 cores) only, 20 s trials")
    parser.add_argument("--processes", default="1,2,3", help="comma-separated process counts")
    parser.add_argument("--configs", default=None,
                        help="WxT per process: inference workers x CPU threads (0: cores split), "
                             "comma-separated; default 1x0,2x1,1x1 (quick: 1x0,2x1)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per trial (default 40, quick 20)")
    parser.add_argument("--admission-streams", type=int, default=0,
                        help="streams for the admission run (default: twice the 1-process figure)")
    parser.add_argument("--admission-config", default=None,
                        help="WxT of the admission run (default: the best 1-process config measured, else 1x0)")
    parser.add_argument("--admission-only", action="store_true")
    parser.add_argument("--no-admission", action="store_true")
    args = parser.parse_args()
    duration = args.duration or (20.0 if args.quick else 40.0)
    configs = [tuple(int(x) for x in c.split("x")) for c in (args.configs or ("1x0,2x1" if args.quick else "1x0,2x1,1x1")).split(",")]
    clips = load_clips()
    rows: list[tuple[int, int, int, Trial | None, Trial | None]] = []
    offset = 0
    print(f"capacity benchmark: {os.cpu_count()} cores, trials of {duration:.0f} s, pass = finals p95 <= "
          f"{FINAL_P95_BOUND} s, lag <= {MAX_LAG} s, every session ended", flush=True)
    with tempfile.TemporaryDirectory(prefix="fasttalk-capacity-") as log_dir:
        if not args.admission_only:
            for workers, threads in configs:
                for count in [int(p) for p in args.processes.split(",")]:
                    per = thread_split(threads, count)
                    print(f"  {count} process(es), {workers} worker(s) x {per} thread(s) each", flush=True)
                    processes = Processes(count, {"STT_INFERENCE_WORKERS": str(workers),
                                                  "STT_CPU_THREADS": str(per)}, Path(log_dir))
                    try:
                        passed, failed = ramp(processes, clips, duration, count, offset)
                    finally:
                        processes.stop()
                    offset += 200
                    rows.append((count, workers, per, passed, failed))
            print_table(rows)
        if not args.no_admission:
            single = sorted((r for r in rows if r[0] == 1), key=lambda r: r[3].streams if r[3] else 0)
            workers, threads = (single[-1][1], single[-1][2]) if single else (1, 0)
            if args.admission_config:
                workers, threads = (int(x) for x in args.admission_config.split("x"))
            sustained = single[-1][3].streams if single and single[-1][3] else 2
            streams = args.admission_streams or max(4, 2 * sustained)
            processes = Processes(1, {"CAPACITY_ADMISSION": "1", "STT_INFERENCE_WORKERS": str(workers),
                                      "STT_CPU_THREADS": str(thread_split(threads, 1))}, Path(log_dir))
            try:
                results = asyncio.run(admission_run(processes.urls[0], clips, streams, duration * 1.5, 5000))
                print(f"  ({workers} worker(s) x {thread_split(threads, 1)} thread(s))")
                print_admission(results, streams, processes.capacity())
            finally:
                processes.stop()


def print_table(rows: list[tuple[int, int, int, Trial | None, Trial | None]]) -> None:
    print(f"\n{'processes':>9} {'workers x threads':>18} {'streams':>8} {'per process':>12} "
          f"{'finals p50/p95 ms':>18} {'lag ms':>7} {'final-path demand/stream':>25}   next step")
    for count, workers, threads, passed, failed in rows:
        streams = passed.streams if passed else 0
        if passed:
            demand = [e.get("demand_per_session") for e in passed.engine if e.get("demand_per_session") is not None]
            demand_cell = f"{sum(demand) / len(demand):.3f}" if demand else "n/a"
            figures = f"{passed.final_p50 * 1000:.0f}/{passed.final_p95 * 1000:.0f}"
            lag = f"{passed.lag * 1000:.0f}"
        else:
            demand_cell, figures, lag = "n/a", "n/a", "n/a"
        step = (f"N={failed.streams}: p95 {failed.final_p95 * 1000:.0f} ms, lag {failed.lag * 1000:.0f} ms"
                if failed and failed.final_p95 is not None else "")
        print(f"{count:>9} {f'{workers} x {threads}':>18} {streams:>8} {streams / count:>12.1f} {figures:>18} "
              f"{lag:>7} {demand_cell:>25}   {step}")


if __name__ == "__main__":
    main()
