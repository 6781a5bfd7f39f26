"""stt/engine/gpu.py: the engine when its hardware fails. CUDA out of memory halves the
batch, a failing GPU hands the work to the CPU (GPU breaker closed -> open -> half-open
-> closed), and no session sees an error for it.

No GPU is lent to these tests: the engine below asks for CUDA and gets a model that
decodes on the CPU but raises the errors CTranslate2 raises there (out of memory, a
failed kernel) on demand (tests/faulty_models.py); the fallbacks it exercises are the
engine's real code, on the real model."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from monitoring import metrics
from stt.engine import DecodeOptions, SpeechEngine
from stt.engine.gpu import is_out_of_memory
from tests.faulty_models import ModelFaults

_variant = itertools.count(1)

ILLEGAL_ACCESS = "CUDA failed with error an illegal memory access was encountered"


def unique(audio: np.ndarray) -> np.ndarray:
    return (audio * np.float32(1 - next(_variant) * 1e-4)).astype(np.float32)


@pytest.fixture
def gpu():
    """The faults of the engine's "GPU" model: `gpu.error`, `gpu.out_of_memory_above`,
    and `gpu.batches`, the batch sizes it decoded."""
    return ModelFaults("cuda")


@pytest.fixture
def faulty_engine(gpu):
    engine = SpeechEngine("tiny.en", device="cuda", max_batch=4, gpu_failure_threshold=3, gpu_reset_seconds=1.0,
                          model_factory=gpu)
    engine.start_loading().result(timeout=120)
    yield engine
    engine.close()


async def partials_in_one_batch(engine: SpeechEngine, jfk_audio: np.ndarray, count: int):
    busy = asyncio.create_task(engine.transcribe(unique(jfk_audio), DecodeOptions.final("en", True)))
    await asyncio.sleep(0.03)  # the worker is busy: the partials below queue up together
    parts = [unique(jfk_audio[i * 1000:48000 + i * 1000]) for i in range(count)]
    results = await asyncio.gather(*[
        engine.transcribe(part, DecodeOptions.partial("en"), stream_key=f"s{i}") for i, part in enumerate(parts)])
    await busy
    return results


async def test_out_of_memory_halves_the_batch_and_every_job_succeeds(faulty_engine, gpu, jfk_audio):
    gpu.out_of_memory_above = 2
    results = await partials_in_one_batch(faulty_engine, jfk_audio, 4)
    assert all("fellow americans" in r.text.lower() for r in results)
    assert faulty_engine.stats.out_of_memory == 1 and faulty_engine.max_batch == 2
    assert gpu.batches[-2:] == [2, 2], "the batch of 4 was decoded as two of 2"
    assert faulty_engine.gpu_breaker.state.value == "closed", "out of memory is handled, not a GPU failure"
    assert faulty_engine.stats.cpu_fallbacks == 0


async def test_a_failing_gpu_hands_work_to_the_cpu_and_is_probed_again(faulty_engine, gpu, jfk_audio):
    gpu.error = ILLEGAL_ACCESS
    for _ in range(3):
        transcript = await faulty_engine.transcribe(unique(jfk_audio[:48000]), DecodeOptions.final("en", True))
        assert "fellow americans" in transcript.text.lower(), "the CPU stood in for the GPU"
    assert faulty_engine.gpu_breaker.state.value == "open"
    assert metrics.breaker_state.labels(breaker="gpu")._value.get() == 2
    assert faulty_engine.stats.cpu_fallbacks == 3 and faulty_engine.stats.failures == 0

    # While open, the GPU is not even tried.
    gpu.error = None
    tried = len(gpu.batches)
    await faulty_engine.transcribe(unique(jfk_audio[:32000]), DecodeOptions.partial("en"))
    assert len(gpu.batches) == tried and faulty_engine.stats.cpu_fallbacks == 4

    await asyncio.sleep(1.1)  # GPU_BREAKER_RESET_SECONDS: half-open, one probe on the GPU
    assert faulty_engine.gpu_breaker.state.value == "half_open"
    await faulty_engine.transcribe(unique(jfk_audio[:32000]), DecodeOptions.partial("en"))
    assert len(gpu.batches) == tried + 1
    assert faulty_engine.gpu_breaker.state.value == "closed"
    assert metrics.breaker_state.labels(breaker="gpu")._value.get() == 0


async def test_the_engine_asking_for_cuda_runs_in_half_precision(faulty_engine):
    info = faulty_engine.info
    assert (info.device, info.compute_type, faulty_engine.max_batch) == ("cuda", "float16", 4)


async def test_a_single_job_out_of_memory_cannot_be_halved_so_the_cpu_redoes_it(faulty_engine, gpu, jfk_audio):
    gpu.error = "CUDA failed with error out of memory"  # even a batch of one
    transcript = await faulty_engine.transcribe(unique(jfk_audio[:32000]), DecodeOptions.partial("en"))
    assert "fellow" in transcript.text.lower()
    stats = faulty_engine.stats
    assert (stats.out_of_memory, stats.gpu_failures, stats.cpu_fallbacks) == (0, 1, 1)


def test_out_of_memory_is_recognised_by_its_message():
    assert is_out_of_memory(RuntimeError("CUDA failed with error out of memory"))
    # CTranslate2's words for a cudaMalloc that failed inside cuBLAS.
    assert is_out_of_memory(RuntimeError("cuBLAS failed with status CUBLAS_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("cuBLAS failed with status CUBLAS_STATUS_EXECUTION_FAILED"))
    assert not is_out_of_memory(RuntimeError(ILLEGAL_ACCESS))
