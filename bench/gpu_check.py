"""The GPU check: the engine on CUDA float16, measured and broken on purpose, one table.

    bench/gpu_check.sh                      # on a GPU machine: venv with requirements/gpu.txt, then this
    python bench/gpu_check.py --dry-run     # anywhere: the same steps on the CPU, tiny shapes
    python bench/gpu_check.py --audio-dir /data/speech   # where ../shared/audio is absent

For each model (tiny.en, and base, joined from its two packages by stt/model_files.py):
  1. decode time per batch size and window (bench/decode_times.py);
  2. streams sustained: a server process (manage.py serve) on the GPU, and the
     performance tester (stt/client/perf.py) with 50, 100 and 200 simulated clients at
     real-time pace, each streaming its own audio (the recordings of the audio
     directory taken in turn, each client at a gain of its own), split over
     client processes of at most --clients-per-process; a load is sustained when no
     session failed, finals p95 <= 1.3 s (the tester counts from the utterance's end,
     200 ms after its last word: 1.5 s from the last word) and no client fell behind
     real time by more than 0.5 s (p95: the worst client process's);
  3. the fault paths on the real device (bench/gpu_faults.py): CUDA out of memory
     halves the batch, a failing GPU opens the GPU breaker and the CPU answers.
The server runs open, with refinement and admission by capacity off; on this
environment's DATABASE_URL, else on SQLite without stored audio (not a production
database: its writes are serialized). Raw results are written to --out as JSON; the
exit status is 1 when a step did not run through (failed_steps: an error, no final,
a fault path that misbehaved), not when a load was not sustained.

The audio directory: --audio-dir, else $BENCH_AUDIO_DIR, else ../shared/audio beside
the checkout. It must hold long_gates_ted.wav (the long talk the decode and fault steps
cut their pieces from: they are given the directory as BENCH_AUDIO_DIR) and the
recordings the clients stream (its .wav and .flac files, the talk included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_AUDIO_DIR = ROOT.parent / "shared" / "audio"
TALK_NAME = "long_gates_ted.wav"
FINAL_P95_MS = 1300  # from the utterance's end; 1.5 s from the last word
MAX_LAG_S = 0.5


def recordings(audio_dir: Path) -> list[Path]:
    return [path for path in sorted(audio_dir.iterdir()) if path.suffix in (".wav", ".flac")]


def run_json(args: list[str], audio_dir: Path, timeout: float = 3600) -> dict:
    """Run a Python step on the audio of `audio_dir`; its last stdout line is one JSON object."""
    env = {**os.environ, "BENCH_AUDIO_DIR": str(audio_dir)}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-800:]}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # The engine's warnings (a GPU error it did not take for out of memory, say) are
    # the first thing to read when a fault path misbehaves.
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line or "Error" in line]
    if warnings:
        result["warnings"] = warnings[-20:]
    return result


def server_env(model: str, device: str, clients: int, folder: Path) -> dict[str, str]:
    from tests.servers import base_env

    env = {**base_env(), "STT_MODEL": model, "STT_DEVICE": device,
           "STT_COMPUTE_TYPE": "float16" if device == "cuda" else "int8", "AUTH_REQUIRED": "0",
           "REFINE_FINALS": "0", "CAPACITY_ADMISSION": "0", "WEBSOCKET_MAX_CONNECTIONS": str(clients + 20),
           "LOG_LEVEL": "WARNING", "MEDIA_ROOT": str(folder / "media"),
           "HISTORY_JOURNAL": str(folder / "journal.jsonl")}
    env.pop("AUDIO_BUDGET_PER_SESSION", None)  # the service as it ships
    if not os.environ.get("DATABASE_URL"):
        env["DATABASE_URL"] = f"sqlite:///{folder / 'db.sqlite3'}"
        env["STORE_AUDIO"] = "false"
    return env


def perf(url: str, clients: int, duration: float, per_process: int, audio_dir: Path) -> dict:
    """The performance tester with `clients` clients over several processes, merged."""
    files = [str(path) for path in recordings(audio_dir)]
    sizes = [min(per_process, clients - start) for start in range(0, clients, per_process)]
    procs = [subprocess.Popen([sys.executable, "-m", "stt.client", "perf", *files, "--url", url, "--clients",
                               str(size), "--duration", str(duration), "--language", "en", "--json"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for size in sizes]
    parts = []
    for proc in procs:
        out, err = proc.communicate(timeout=duration * 4 + 300)
        try:
            parts.append(json.loads(out))
        except json.JSONDecodeError:
            parts.append({"sessions_failed": None, "error": err.strip()[-400:]})
    return merge(parts, clients)


def merge(parts: list[dict], clients: int) -> dict:
    def worst(key: str) -> float | None:
        values = [p.get(key) for p in parts if p.get(key) is not None]
        return max(values) if values else None

    failed = sum(p.get("sessions_failed") or 0 for p in parts) + sum(1 for p in parts if "error" in p)
    merged = {"clients": clients, "processes": len(parts), "sessions_failed": failed,
              "p50_final_latency_ms": worst("p50_final_latency_ms"), "p95_final_latency_ms": worst("p95_final_latency_ms"),
              "p95_partial_latency_ms": worst("p95_partial_latency_ms"),
              "avg_final_processing_ms": worst("avg_final_processing_ms"),
              "final_count": sum(p.get("final_count") or 0 for p in parts),
              "max_send_lag_seconds": worst("max_send_lag_seconds"),
              "errors": [p["error"] for p in parts if "error" in p]}
    merged["sustained"] = bool(failed == 0 and merged["p95_final_latency_ms"] is not None
                               and merged["p95_final_latency_ms"] <= FINAL_P95_MS
                               and (merged["max_send_lag_seconds"] or 0) <= MAX_LAG_S)
    return merged


def check_model(model: str, device: str, args: argparse.Namespace, folder: Path) -> dict:
    from tests.servers import Server

    result: dict = {"model": model}
    decode = ["bench/decode_times.py", "--model", model, "--device", device, "--json"]
    decode += (["--dry-run"] if args.dry_run else ["--batches", args.batches, "--windows", args.windows])
    result["decode"] = run_json(decode, args.audio_dir)
    counts = [int(c) for c in args.clients.split(",")]
    server = Server(server_env(model, device, max(counts), folder), folder)
    try:
        result["perf"] = [perf(server.ws, count, args.duration, args.clients_per_process, args.audio_dir)
                          for count in counts]
    finally:
        server.stop()
    faults = ["bench/gpu_faults.py", "--model", model] + (["--dry-run"] if args.dry_run else [])
    result["faults"] = run_json(faults, args.audio_dir)
    return result


def print_table(results: list[dict]) -> None:
    print("\nGPU check")
    print(f"{'model':8} {'what':34} {'figures'}")
    for result in results:
        model = result["model"]
        decode = result["decode"]
        for row in decode.get("rows", []):
            print(f"{model:8} {'decode ' + row['kind'] + ' w' + str(row['window_s']) + ' b' + str(row['batch']):34} "
                  f"{row['batch_ms']:.1f} ms per batch, {row['per_job_ms']:.1f} ms per job")
        if "error" in decode:
            print(f"{model:8} {'decode':34} ERROR {decode['error']}")
        for run in result["perf"]:
            print(f"{model:8} {str(run['clients']) + ' clients':34} "
                  f"{'sustained' if run['sustained'] else 'NOT sustained'}: finals p50/p95 "
                  f"{run['p50_final_latency_ms']}/{run['p95_final_latency_ms']} ms, partial p95 "
                  f"{run['p95_partial_latency_ms']} ms, server final {run['avg_final_processing_ms']} ms, "
                  f"finals {run['final_count']}, failed {run['sessions_failed']}, lag {run['max_send_lag_seconds']} s"
                  + (f", errors {run['errors']}" if run["errors"] else ""))
        faults = result["faults"]
        for path in ("out_of_memory", "gpu_breaker"):
            if path in faults:
                print(f"{model:8} {'fault: ' + path:34} {'OK' if faults[path].get('ok') else 'FAILED'} "
                      f"{json.dumps(faults[path])}")
        if "dry_run" in faults or "error" in faults:
            print(f"{model:8} {'faults':34} {json.dumps(faults)}")


def failed_steps(results: list[dict]) -> list[str]:
    """What did not run through: a step's error, a tester process without results, a load
    without a single final, a fault path that did not behave. A load not sustained is a
    result, not a failure."""
    failed = []
    for result in results:
        model, decode, faults = result["model"], result["decode"], result["faults"]
        if "error" in decode or not decode.get("rows"):
            failed.append(f"{model}: decode")
        failed += [f"{model}: {run['clients']} clients" for run in result["perf"]
                   if run["errors"] or not run["final_count"]]
        paths = [faults] if faults.get("dry_run") else [faults.get("out_of_memory", {}), faults.get("gpu_breaker", {})]
        if "error" in faults or not all(path.get("ok") for path in paths):
            failed.append(f"{model}: faults")
    return failed


def audio_dir_of(given: str | None, parser: argparse.ArgumentParser) -> Path:
    """--audio-dir, else $BENCH_AUDIO_DIR, else ../shared/audio; it must hold the talk."""
    audio_dir = Path(given or os.environ.get("BENCH_AUDIO_DIR") or DEFAULT_AUDIO_DIR).resolve()
    if not (audio_dir / TALK_NAME).is_file():
        parser.error(f"{audio_dir} holds no {TALK_NAME}: give the speech folder with --audio-dir or BENCH_AUDIO_DIR")
    return audio_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny.en,base")
    parser.add_argument("--clients", default="50,100,200")
    parser.add_argument("--clients-per-process", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--batches", default="1,4,8,16,32")
    parser.add_argument("--windows", default="10,16,22")
    parser.add_argument("--out", default="var/gpu-check")
    parser.add_argument("--audio-dir", help=f"speech to use (default: $BENCH_AUDIO_DIR, else {DEFAULT_AUDIO_DIR})")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: tiny.en, 2 clients for 5 s, tiny shapes")
    args = parser.parse_args()
    args.audio_dir = audio_dir_of(args.audio_dir, parser)
    device = "cuda"
    if args.dry_run:
        device, args.models, args.clients, args.duration = "cpu", "tiny.en", "2", 5.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    audio = {"dir": str(args.audio_dir), "files": [path.name for path in recordings(args.audio_dir)]}
    results = []
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="fasttalk-gpu-check-") as folder:
            results.append(check_model(model, device, args, Path(folder)))
        (out / "gpu_check.json").write_text(json.dumps({"started": started, "audio": audio, "results": results},
                                                       indent=1))
    print_table(results)
    print(f"\nraw results: {out / 'gpu_check.json'}")
    failed = failed_steps(results)
    if failed:
        print(f"steps that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
