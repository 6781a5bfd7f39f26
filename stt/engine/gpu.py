"""A GPU fault is not the audio's fault.

A CUDA out-of-memory error halves the batch (down to one job, and smaller batches
from then on); a GPU that still fails hands the batch to a CPU copy of the model, and
once the GPU breaker opens (GPU_FAILURE_THRESHOLD failures in a row) the CPU takes
all work until the breaker lets a probe through (GPU_BREAKER_RESET_SECONDS later).
"""

from __future__ import annotations

import logging

from monitoring import metrics
from stt.engine.breaker import CircuitBreaker
from stt.engine.decoding import Decoded
from stt.engine.jobs import BatchLimit, Job
from stt.engine.scheduler import BatchDecoder
from stt.engine.types import EngineStats

logger = logging.getLogger(__name__)


# cuBLAS reports a cudaMalloc that failed inside it as an allocation failure; CTranslate2
# raises it as "cuBLAS failed with status CUBLAS_STATUS_ALLOC_FAILED".
_OUT_OF_MEMORY_MARKS = ("out of memory", "cublas_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    message = str(exc).lower()
    return any(mark in message for mark in _OUT_OF_MEMORY_MARKS)


class GpuGuard:
    """Decodes on the GPU while it works, and on the CPU copy while it does not."""

    def __init__(self, decode_on_gpu: BatchDecoder, decode_on_cpu: BatchDecoder, breaker: CircuitBreaker,
                 batch_limit: BatchLimit, stats: EngineStats) -> None:
        self._decode_on_gpu = decode_on_gpu
        self._decode_on_cpu = decode_on_cpu
        self.breaker = breaker
        self._batch_limit = batch_limit
        self._stats = stats

    def decode(self, jobs: list[Job]) -> list[Decoded]:
        if self.breaker.allow():
            try:
                results = self._decode_halving(jobs)
            except Exception as exc:
                self.breaker.record_failure()
                self._stats.gpu_failures += 1
                metrics.gpu_failures_total.inc()
                logger.warning("GPU inference failed (%s); decoding on the CPU", exc,
                               extra={"event": "gpu_failure", "category": "gpu"})
            else:
                self.breaker.record_success()
                return results
        self._stats.cpu_fallbacks += len(jobs)
        metrics.cpu_fallbacks_total.inc(len(jobs))
        return self._decode_on_cpu(jobs)

    def _decode_halving(self, jobs: list[Job]) -> list[Decoded]:
        try:
            return self._decode_on_gpu(jobs)
        except Exception as exc:
            if len(jobs) == 1 or not is_out_of_memory(exc):
                raise
            self._stats.out_of_memory += 1
            metrics.out_of_memory_total.inc()
            self._batch_limit.out_of_memory(len(jobs))
            half = len(jobs) // 2
            logger.warning("CUDA out of memory with a batch of %d; batches of at most %d from now on",
                           len(jobs), self._batch_limit.current)
            return self._decode_halving(jobs[:half]) + self._decode_halving(jobs[half:])
