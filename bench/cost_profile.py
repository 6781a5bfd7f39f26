"""What a stream costs the server, by stage (issue 24 #1): CPU milliseconds per
stream-second of audio, for 1 and 8 streams, this tree (NOW) beside an earlier revision
(BEFORE), in the same run on this machine.

    .venv/bin/python bench/cost_profile.py                              # NOW only
    .venv/bin/python bench/cost_profile.py --baseline-rev 165e390       # BEFORE and NOW
    .venv/bin/python bench/cost_profile.py --streams 1,4,8 --seconds 40

Each round starts a fresh local server (bench/turn_latency.py's: embedded, open,
REFINE_FINALS=0, admission by capacity off) and streams N distinct recordings of real
speech (bench/streams.py) at real-time pace. Over the round:

- The kernel's CPU time of every thread of the server (/proc/PID/task/*/stat) gives
  the total, split into the Python threads (named by `py-spy dump`) and the native
  ones: CTranslate2's compute threads, which run the model (encoder, decoder, the
  aligner's attention pass), and any native pool of onnxruntime.
- py-spy samples the Python threads (`record --nonblocking`, active samples only) and
  each sample goes to the first stage its stack names, from the innermost frame out:
  VAD, features, word alignment (the Python and DTW part), encoder/decoder calls (their
  Python side), pause judgements and endpointing, segmenter, partial and final logic,
  and the rest: the event loop, the WebSocket and Python around them. The Python
  threads' CPU is shared out in those proportions.
- Where the tree has them (NOW), the engine's own figures: its meter (/health
  capacity.engine) gives the model's busy time of partials and of the final path
  (finals, speculative finals, judgements), and /stats its decodes by kind (per
  stream-second: how many, and their worker-milliseconds), wall time of the decodes, not
  CPU. The meter covers the round's last 30 s; the decodes, the whole round.

py-spy cannot see inside native code, so the model's own compute shows up as one line
(native threads), and the host side (everything but it) is the sum of the others: the
figure the issue's target halves. Needs py-spy (pip install py-spy) and ptrace rights.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import stream_latency as sl  # puts the project root on sys.path
from streams import load_clips, paced_stream, quantile, stream_audio  # noqa: E402
from turn_latency import checkout, local_server_process  # noqa: E402

SAMPLE_RATE_HZ = 50
TICKS = os.sysconf("SC_CLK_TCK")

# (stage, patterns): a frame "function (file:line)" belongs to the first stage one of
# whose patterns it contains, searched from the innermost frame out.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("VAD", ("stt/vad.py", "silero", "onnxruntime")),
    ("features", ("feature_extractor", "features (", "_features (")),
    ("word alignment", ("find_alignment", "_align (", "add_word_timestamps", "dtw")),
    ("encoder/decoder calls", ("_encode (", "_generate (", "decode_stock", "generate_segments",
                               "generate_with_fallback", "_decode (", "decode_batch")),
    ("pause judgements, endpointing", ("endpointing", "judge")),
    ("segmenter", ("segmenter",)),
    ("partials and finals logic", ("stt/streaming/", "stt/streaming.py", "agreement")),
    ("engine scheduling", ("stt/engine/scheduler", "stt/engine.py", "stt/engine/")),
]
OTHER = "event loop, WebSocket, Python"


def task_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        times[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    return times


def python_threads(py_spy: str, pid: int) -> set[int]:
    dump = subprocess.run([py_spy, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                          timeout=60).stdout
    return {int(tid) for tid in re.findall(r"^Thread (\d+)", dump, re.MULTILINE)}


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for stage, patterns in STAGES:
            if any(pattern in frame for pattern in patterns):
                return stage
    return OTHER


def read_samples(path: Path) -> Counter:
    samples: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[stage_of(stack)] += int(count)
    return samples


@dataclass
class Round:
    streams: int
    stream_seconds: float = 0.0
    python_cpu: float = 0.0
    native_cpu: float = 0.0
    stages: Counter = field(default_factory=Counter)
    engine: dict | None = None
    by_kind: dict | None = None
    finals: list[float] = field(default_factory=list)

    def per_stream_second(self, seconds: float) -> float:
        return 1000 * seconds / self.stream_seconds if self.stream_seconds else 0.0

    def stage_cpu(self) -> dict[str, float]:
        total = sum(self.stages.values())
        return {stage: self.python_cpu * count / total for stage, count in self.stages.items()} if total else {}


def fetch_json(url: str, path: str) -> dict:
    base = url.replace("ws://", "http://").split("/ws/")[0]
    try:
        with urllib.request.urlopen(f"{base}{path}", timeout=10) as response:
            return json.load(response)
    except (OSError, ValueError):
        return {}


def engine_figures(url: str) -> tuple[dict | None, dict | None]:
    """The engine's meter (/health capacity.engine) and its decodes by kind (/stats), where
    the tree has them."""
    meter = (fetch_json(url, "/health").get("capacity") or {}).get("engine")
    return meter, (fetch_json(url, "/stats").get("engine") or {}).get("by_kind")


async def stream_all(url: str, audios: list) -> list:
    return await asyncio.gather(*(paced_stream(url, audio) for audio in audios))


def run_round(root: Path, streams: int, seconds: float, clips, py_spy: str) -> Round:
    outcome = Round(streams)
    with local_server_process(root) as (process, url), tempfile.TemporaryDirectory() as folder:
        asyncio.run(paced_stream(url, stream_audio(999, 3.0, clips)))  # model warm-up, not counted
        raw = Path(folder) / "samples.txt"
        _, kinds_before = engine_figures(url)
        before = task_cpu(process.pid)
        recorder = subprocess.Popen([py_spy, "record", "--pid", str(process.pid), "--rate", str(SAMPLE_RATE_HZ),
                                     "--format", "raw", "--nonblocking", "--output", str(raw)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        audios = [stream_audio(index, seconds, clips) for index in range(streams)]
        started = time.perf_counter()
        results = asyncio.run(stream_all(url, audios))
        elapsed = time.perf_counter() - started
        after = task_cpu(process.pid)
        python = python_threads(py_spy, process.pid)
        recorder.send_signal(2)  # SIGINT: py-spy writes what it sampled
        recorder.wait(60)
        outcome.engine, kinds_after = engine_figures(url)
        outcome.by_kind = None if kinds_after is None else {
            kind: {key: figures[key] - (kinds_before or {}).get(kind, {}).get(key, 0) for key in figures}
            for kind, figures in kinds_after.items()}
        for tid, cpu in after.items():
            spent = cpu - before.get(tid, 0.0)
            if tid in python:
                outcome.python_cpu += spent
            else:
                outcome.native_cpu += spent
        outcome.stages = read_samples(raw) if raw.exists() else Counter()
        outcome.stream_seconds = sum(audio.size for audio in audios) / sl.SAMPLE_RATE
        outcome.finals = [latency for r in results for latency in r.final_latencies]
        print(f"  {root.name or root}: {streams} stream(s) in {elapsed:.0f} s, "
              f"{sum(outcome.stages.values())} samples", file=sys.stderr)
    return outcome


def report(label: str, rounds: list[Round]) -> None:
    print(f"\n{label}: CPU ms per stream-second of audio")
    header = "".join(f"{f'{r.streams} stream(s)':>14}" for r in rounds)
    print(f"{'stage':34}{header}")
    stages = [stage for stage, _ in STAGES] + [OTHER]
    for stage in stages:
        print(f"{'  ' + stage:34}" + "".join(f"{r.per_stream_second(r.stage_cpu().get(stage, 0.0)):>14.1f}"
                                            for r in rounds))
    rows = [
        ("host side (Python threads)", lambda r: r.per_stream_second(r.python_cpu)),
        ("model compute (native threads)", lambda r: r.per_stream_second(r.native_cpu)),
        ("total", lambda r: r.per_stream_second(r.python_cpu + r.native_cpu)),
    ]
    for name, value in rows:
        print(f"{name:34}" + "".join(f"{value(r):>14.1f}" for r in rounds))
    print(f"{'engine busy, partials (worker-ms)':34}" + "".join(
        f"{r.per_stream_second(r.engine['partial_busy_seconds']) if r.engine else float('nan'):>14.1f}"
        for r in rounds))
    print(f"{'engine busy, final path (worker-ms)':34}" + "".join(
        f"{r.per_stream_second(r.engine['final_busy_seconds']) if r.engine else float('nan'):>14.1f}"
        for r in rounds))
    kinds = sorted({kind for r in rounds for kind in (r.by_kind or {})})
    for kind in kinds:
        print(f"{'decodes of ' + kind + ' (n/s, worker-ms)':34}" + "".join(
            f"{r.by_kind[kind]['inferences'] / r.stream_seconds:>7.2f}"
            f"{r.per_stream_second(r.by_kind[kind]['seconds']):>7.0f}" if r.by_kind and kind in r.by_kind
            else f"{'n/a':>14}" for r in rounds))
    print(f"{'finals p50 / p95 (ms)':34}" + "".join(
        f"{quantile(r.finals, 0.5) * 1000:>7.0f}/{quantile(r.finals, 0.95) * 1000:<6.0f}" if r.finals else f"{'n/a':>14}"
        for r in rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", help="git revision to measure first as BEFORE")
    parser.add_argument("--streams", default="1,8", help="stream counts, one round each")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per stream (the engine's window is 30 s)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is needed: pip install py-spy")
    counts = [int(n) for n in args.streams.split(",")]
    clips = load_clips()
    trees = []
    if args.baseline_rev:
        trees.append((f"BEFORE ({args.baseline_rev})", lambda: checkout(args.baseline_rev)))
    trees.append(("NOW (this tree)", None))
    results = []
    for label, make_tree in trees:
        if make_tree is None:
            results.append((label, [run_round(sl.ROOT, n, args.seconds, clips, py_spy) for n in counts]))
            continue
        with make_tree() as tree:
            results.append((label, [run_round(tree, n, args.seconds, clips, py_spy) for n in counts]))
    for label, rounds in results:
        report(label, rounds)


if __name__ == "__main__":
    main()
