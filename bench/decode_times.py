"""Decode time per batch size and encoder window: the engine's own cost, without
the server around it, for the capacity model (docs/capacity.md).

    .venv/bin/python bench/decode_times.py                       # tiny.en, CPU int8, all cores
    .venv/bin/python bench/decode_times.py --threads 1 --batches 1,2,4 --windows 10,16
    .venv/bin/python bench/decode_times.py --model base --device cuda --compute-type float16 --batches 1,4,16,32
    .venv/bin/python bench/decode_times.py --dry-run             # tiny shapes, one round: checks it runs

For each kind of job (partial: beam STT_PARTIAL_BEAM_SIZE=1, no word timestamps;
final: beam 5 with word timestamps), each window W (audio of W - 2 s, so that the
engine's window bucket is W: stt/engine/decoding.py) and each batch size B, it
decodes B distinct pieces of real speech (offsets into long_gates_ted.wav) in one
call of the engine's decode_batch, --repeat times, and prints the median batch time
and the time per job. --json prints the same as one JSON object (bench/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fasttalk.settings")

import numpy as np  # noqa: E402

SAMPLE_RATE = 16000
# The speech folder: $BENCH_AUDIO_DIR (bench/gpu_check.py sets it), else ../shared/audio.
TALK = Path(os.environ.get("BENCH_AUDIO_DIR") or ROOT.parent / "shared" / "audio") / "long_gates_ted.wav"


def load_model(name: str, device: str, compute_type: str, threads: int):
    """The engine's own loading path: (loaded model, CPU threads)."""
    from stt.engine.loading import LoadedModel, create_model, pick_compute_type, pick_device, resolve_model
    from stt.engine.types import EngineInfo

    device = pick_device(device)
    compute_type = pick_compute_type(compute_type, device)
    threads = threads or os.cpu_count() or 1
    started = time.perf_counter()
    path = resolve_model(name)
    model = create_model(path, device, compute_type, threads, 1)
    info = EngineInfo(name, path, device, compute_type, bool(model.model.is_multilingual),
                      time.perf_counter() - started)
    return LoadedModel(model, info, create_model, threads, 1), threads


def jobs_for(talk: np.ndarray, kind: str, window: int, batch: int, round_index: int) -> list:
    """`batch` distinct pieces of the talk whose window bucket is `window`."""
    from stt.engine.types import DecodeOptions, JobKind

    seconds = window - 2.0
    length = int(seconds * SAMPLE_RATE)
    options = (DecodeOptions(JobKind.PARTIAL, 1, False, "en") if kind == "partial"
               else DecodeOptions(JobKind.FINAL, 5, True, "en"))
    jobs = []
    for index in range(batch):
        start = (round_index * 7919 + index * 3001) * 160 % (talk.size - length)
        jobs.append(SimpleNamespace(audio=np.ascontiguousarray(talk[start:start + length]), options=options,
                                    kind=options.kind))
    return jobs


def measure(loaded, talk: np.ndarray, kinds: list[str], windows: list[int], batches: list[int],
            repeat: int) -> list[dict]:
    from stt.engine.decoding import decode_batch

    tokenizer = loaded.tokenizer("en")
    rows = []
    for kind in kinds:
        for window in windows:
            for batch in batches:
                times = []
                for round_index in range(repeat + 1):  # the first round warms up this shape
                    jobs = jobs_for(talk, kind, window, batch, round_index)
                    started = time.perf_counter()
                    decode_batch(loaded.model, tokenizer, jobs, loaded.info.multilingual, min_window=window)
                    if round_index:
                        times.append(time.perf_counter() - started)
                median = statistics.median(times)
                rows.append({"kind": kind, "window_s": window, "batch": batch, "batch_ms": round(median * 1000, 1),
                             "per_job_ms": round(median * 1000 / batch, 1),
                             "min_ms": round(min(times) * 1000, 1), "max_ms": round(max(times) * 1000, 1)})
                print(f"  {kind:8} window {window:>2} s  batch {batch:>3}: {median * 1000:8.1f} ms "
                      f"({median * 1000 / batch:7.1f} ms per job; min {min(times) * 1000:.0f}, "
                      f"max {max(times) * 1000:.0f})", file=sys.stderr, flush=True)
    return rows


def print_table(title: str, rows: list[dict], batches: list[int]) -> None:
    print(f"\ndecode time per batch, ms (per job in brackets): {title}")
    print(f"{'kind':8} {'window':>6} " + "".join(f"{f'batch {b}':>18}" for b in batches))
    keys = sorted({(r["kind"], r["window_s"]) for r in rows}, key=lambda k: (k[0] != "partial", k[1]))
    for kind, window in keys:
        cells = {r["batch"]: "%.0f (%.0f)" % (r["batch_ms"], r["per_job_ms"])
                 for r in rows if r["kind"] == kind and r["window_s"] == window}
        print(f"{kind:8} {window:>5}s " + "".join(f"{cells.get(b, ''):>18}" for b in batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--compute-type", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--windows", default="10,16,22")
    parser.add_argument("--kinds", default="partial,final")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--dry-run", action="store_true", help="batches 1,2, window 10, one round")
    args = parser.parse_args()
    if args.dry_run:
        args.batches, args.windows, args.repeat = "1,2", "10", 1
    batches = [int(b) for b in args.batches.split(",")]
    windows = [int(w) for w in args.windows.split(",")]
    from faster_whisper.audio import decode_audio

    talk = decode_audio(str(TALK), SAMPLE_RATE)
    loaded, threads = load_model(args.model, args.device, args.compute_type, args.threads)
    title = f"{args.model} on {loaded.info.device} {loaded.info.compute_type}, {threads} thread(s)"
    rows = measure(loaded, talk, args.kinds.split(","), windows, batches, args.repeat)
    if args.json:
        print(json.dumps({"model": args.model, "device": loaded.info.device, "compute_type": loaded.info.compute_type,
                          "threads": threads, "cores": os.cpu_count(), "rows": rows}))
    else:
        print_table(title, rows, batches)


if __name__ == "__main__":
    main()
