"""The engine's GPU fault paths on a real NVIDIA device (stt/engine/gpu.py): a CUDA
out-of-memory error halves the batch and every job still gets its text; a GPU that
keeps failing opens the GPU breaker and the CPU copy of the model takes the work, until
a probe after GPU_BREAKER_RESET_SECONDS finds the GPU well again.

    python bench/gpu_faults.py --model base          # on a CUDA machine (bench/gpu_check.sh)
    python bench/gpu_faults.py --dry-run             # anywhere: checks it imports, says what it would do

Memory is taken from the engine for real: a ballast of device memory allocated through
the CUDA driver (libcuda, cuMemAlloc in the primary context CTranslate2 uses too)
leaves `headroom` MiB free, so a large batch of long finals runs out of memory while a
small one fits; for the breaker, the ballast takes everything, so even one job fails.
Prints one JSON object (bench/gpu_check.py puts it in its table).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fasttalk.settings")
# CTranslate2's default CUDA allocator (cuda_malloc_async) keeps freed memory in its pool,
# out of the ballast's reach: on the H200 a batch of one still decoded with every free byte
# taken. The cub caching allocator with no cache (bin_growth,min_bin,max_bin,
# max_cached_bytes) hands freed memory back to the device, so the ballast below really
# starves the engine. Both are read when ctranslate2 loads.
os.environ.setdefault("CT2_CUDA_ALLOCATOR", "cub_caching")
os.environ.setdefault("CT2_CUDA_CACHING_ALLOCATOR_CONFIG", "4,3,12,0")

import numpy as np  # noqa: E402

SAMPLE_RATE = 16000
# The speech folder: $BENCH_AUDIO_DIR (bench/gpu_check.py sets it), else ../shared/audio.
TALK = Path(os.environ.get("BENCH_AUDIO_DIR") or ROOT.parent / "shared" / "audio") / "long_gates_ted.wav"
MIB = 1024 * 1024


class Ballast:
    """Device memory held through the CUDA driver API, to starve the engine."""

    def __init__(self) -> None:
        self.cuda = ctypes.CDLL("libcuda.so.1")
        self._check(self.cuda.cuInit(0), "cuInit")
        device, context = ctypes.c_int(), ctypes.c_void_p()
        self._check(self.cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
        self._check(self.cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
        self._check(self.cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")
        self.blocks: list[ctypes.c_uint64] = []

    @staticmethod
    def _check(result: int, call: str) -> None:
        if result != 0:
            raise RuntimeError(f"{call} failed with CUDA error {result}")

    def free_bytes(self) -> int:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._check(self.cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
        return free.value

    def fill(self, headroom: int) -> int:
        """Allocate until only about `headroom` bytes are free; the bytes held."""
        for block in (1024 * MIB, 256 * MIB, 64 * MIB, 16 * MIB, 4 * MIB, MIB):
            while self.free_bytes() - block >= headroom:
                pointer = ctypes.c_uint64()
                if self.cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(block)) != 0:
                    break
                self.blocks.append(pointer)
        return len(self.blocks)

    def release(self) -> None:
        for pointer in self.blocks:
            self.cuda.cuMemFree_v2(pointer)
        self.blocks.clear()


def pieces(talk: np.ndarray, count: int, seconds: float, seed: int) -> list[np.ndarray]:
    """`count` distinct pieces of the talk (the cache must not answer any of them)."""
    length = int(seconds * SAMPLE_RATE)
    return [np.ascontiguousarray(talk[(seed * 7919 + i * 2003) * 160 % (talk.size - length):][:length])
            for i in range(count)]


async def finals_together(engine, audios: list[np.ndarray]) -> list:
    """Decode `audios` as finals, queued while the worker is busy, so they share batches."""
    from stt.engine import DecodeOptions

    options = DecodeOptions.final("en", True, beam_size=5)
    blocker = asyncio.create_task(engine.transcribe(audios[0], options))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(engine.transcribe(audio, options)) for audio in audios[1:]]
    return await asyncio.gather(blocker, *rest, return_exceptions=True)


async def out_of_memory_path(engine, ballast: Ballast, talk: np.ndarray, batch: int) -> dict:
    """A batch of `batch` long finals with little memory left: halved until it fits."""
    for headroom_mib in (1024, 512, 256, 128, 64):
        before = engine.stats.out_of_memory
        ballast.fill(headroom_mib * MIB)
        try:
            results = await finals_together(engine, pieces(talk, batch + 1, 26.0, headroom_mib))
        finally:
            ballast.release()
        if engine.stats.out_of_memory > before:
            failed = [r for r in results if isinstance(r, BaseException) or not r.text]
            return {"out_of_memory_met": True, "headroom_mib": headroom_mib, "jobs": len(results),
                    "jobs_without_text": len(failed), "batch_limit_after": engine.max_batch,
                    "out_of_memory_errors": engine.stats.out_of_memory - before,
                    "cpu_fallbacks": engine.stats.cpu_fallbacks,
                    "ok": not failed and engine.max_batch < batch}
    return {"out_of_memory_met": False, "ok": False, "note": "no out-of-memory error down to 64 MiB of headroom"}


async def breaker_path(engine, ballast: Ballast, talk: np.ndarray, reset_seconds: float) -> dict:
    """The GPU fails every inference (no memory at all): the breaker opens, the CPU
    answers; memory back, the breaker's probe finds the GPU well and closes it."""
    from stt.engine import DecodeOptions

    options = DecodeOptions.final("en", True, beam_size=5)
    states, answered = [], 0
    fallbacks_before = engine.stats.cpu_fallbacks
    ballast.fill(0)
    free_mib = ballast.free_bytes() / MIB  # what the engine had left: near 0, or the fill fell short
    try:
        for audio in pieces(talk, engine.gpu_breaker.failure_threshold + 2, 6.0, 99):
            transcript = await engine.transcribe(audio, options)
            answered += bool(transcript.text)
            states.append(engine.gpu_breaker.state.value)
    finally:
        ballast.release()
    # With the ballast holding the memory every job should fall back: a job the GPU still
    # answered means the starvation did not reach the engine (memory it already held).
    on_cpu = engine.stats.cpu_fallbacks - fallbacks_before
    opened = states[-1] == "open"
    await asyncio.sleep(reset_seconds + 0.5)
    transcript = await engine.transcribe(pieces(talk, 1, 6.0, 123)[0], options)
    closed = engine.gpu_breaker.state.value
    return {"states_while_failing": states, "answered": answered, "answered_on_cpu": on_cpu,
            "answered_on_gpu": len(states) - on_cpu, "free_mib_while_failing": round(free_mib, 1),
            "gpu_failures": engine.stats.gpu_failures,
            "state_after_reset": closed,
            "ok": opened and answered == len(states) and closed == "closed" and bool(transcript.text)}


async def run(model: str, batch: int, reset_seconds: float) -> dict:
    from faster_whisper.audio import decode_audio

    from stt.engine import SpeechEngine

    talk = decode_audio(str(TALK), SAMPLE_RATE)
    engine = SpeechEngine(model, device="cuda", compute_type="float16", max_batch=batch, cache_size=0,
                          gpu_failure_threshold=2, gpu_reset_seconds=reset_seconds, transcription_timeout=300)
    info = await engine.ready()
    await finals_together(engine, pieces(talk, 2, 8.0, 1))  # warm up
    ballast = Ballast()
    started = time.perf_counter()
    report = {"model": model, "device": info.device, "compute_type": info.compute_type,
              "out_of_memory": await out_of_memory_path(engine, ballast, talk, batch),
              "gpu_breaker": await breaker_path(engine, ballast, talk, reset_seconds)}
    report["seconds"] = round(time.perf_counter() - started, 1)
    engine.close()
    return report


async def dry_run(model: str, batch: int) -> dict:
    """No GPU: the same queueing of finals on a CPU engine (its batches and texts), and
    what would run on a GPU."""
    import ctranslate2
    from faster_whisper.audio import decode_audio

    from stt.engine import SpeechEngine
    from stt.engine.gpu import is_out_of_memory

    talk = decode_audio(str(TALK), SAMPLE_RATE)
    engine = SpeechEngine(model, device="cpu", max_batch=4, cache_size=0)
    await engine.ready()
    results = await finals_together(engine, pieces(talk, 5, 6.0, 1))
    engine.close()
    texts = sum(1 for r in results if not isinstance(r, BaseException) and r.text)
    batches = sorted({r.batch_size for r in results if not isinstance(r, BaseException)})
    return {"dry_run": True, "cuda_devices": ctranslate2.get_cuda_device_count(), "model": model, "batch": batch,
            "cpu_finals_with_text": texts, "cpu_batch_sizes": batches,
            "would_run": ["out_of_memory_path", "breaker_path"],
            "ok": texts == len(results) and max(batches) > 1
            and is_out_of_memory(RuntimeError("CUDA failed with error out of memory"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--batch", type=int, default=64, help="jobs queued together for the out-of-memory path")
    parser.add_argument("--reset-seconds", type=float, default=3.0, help="GPU_BREAKER_RESET_SECONDS of the engine")
    parser.add_argument("--dry-run", action="store_true", help="no GPU needed: check the parts, say what would run")
    args = parser.parse_args()
    if args.dry_run:
        print(json.dumps(asyncio.run(dry_run(args.model, args.batch))))
        return
    print(json.dumps(asyncio.run(run(args.model, args.batch, args.reset_seconds))))


if __name__ == "__main__":
    main()
