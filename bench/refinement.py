"""Re-transcription throughput: the refinement model (REFINE_MODEL, default the bundled
Whisper base) on real speech of several lengths, as a Celery worker runs it.

    .venv/bin/python bench/refinement.py [--lengths 2,5,11,30,60] [--repeat 3]

Prints per length: decode time, real-time factor (decode / audio) and chunks, plus the
model load time. Runs on the CPU threads REFINE_CPU_THREADS allows (0: all).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fasttalk.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from faster_whisper.audio import decode_audio  # noqa: E402

from stt.evaluation import word_error_rate  # noqa: E402
from stt.refinement import Refiner  # noqa: E402
from django.conf import settings  # noqa: E402

JFK = ROOT.parent / "shared" / "audio" / "jfk.flac"
JFK_TEXT = ("And so my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")


def speech_of(seconds: float, jfk: np.ndarray) -> tuple[np.ndarray, str]:
    """jfk.flac repeated (with 0.5 s gaps) and cut to about `seconds`."""
    if seconds <= len(jfk) / 16000:
        return jfk[:int(seconds * 16000)], ""
    copies = int(np.ceil(seconds / (len(jfk) / 16000 + 0.5)))
    gap = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([np.concatenate([jfk, gap])] * copies)
    return audio, " ".join([JFK_TEXT] * copies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="2,5,11,30,60")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    jfk = decode_audio(str(JFK), sampling_rate=16000)
    refiner = Refiner(settings.REFINE_MODEL, device=settings.REFINE_DEVICE, compute_type=settings.REFINE_COMPUTE_TYPE,
                      cpu_threads=settings.REFINE_CPU_THREADS, beam_size=settings.REFINE_BEAM_SIZE)
    started = time.perf_counter()
    refiner.model()
    print(f"model {settings.REFINE_MODEL}: loaded in {time.perf_counter() - started:.2f} s "
          f"(threads {settings.REFINE_CPU_THREADS or 'all'}, beam {settings.REFINE_BEAM_SIZE}, "
          f"chunks of {settings.REFINE_CHUNK_SECONDS:g} s)")
    print(f"{'audio s':>8} {'decode s p50':>13} {'RTF':>6} {'chunks':>7} {'WER':>6}")
    for length in (float(x) for x in args.lengths.split(",")):
        audio, reference = speech_of(length, jfk)
        timings, result = [], None
        for _ in range(args.repeat):
            result = refiner.transcribe(audio, "en")
            timings.append(result.processing_seconds)
        decode = statistics.median(timings)
        seconds = len(audio) / 16000
        wer = f"{word_error_rate(reference, result.text):.1%}" if reference else "-"
        print(f"{seconds:8.1f} {decode:13.2f} {decode / seconds:6.3f} {result.chunks:7d} {wer:>6}")


if __name__ == "__main__":
    main()
