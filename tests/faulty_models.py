"""Real models that fail on demand, the way CTranslate2 fails (a model factory for
SpeechEngine). No GPU is lent to the tests: a "cuda" model here decodes on the CPU
for real, and its encoder raises the errors CTranslate2 raises on CUDA when told to."""

from __future__ import annotations

from typing import Any

from stt.engine.loading import create_model


class ModelFaults:
    """Builds real models; those for `device` (None: all of them) fail while told to.

    error                a message the encoder raises (None: it works)
    out_of_memory_above  batches larger than this run out of memory (0: none do)
    batches              the batch sizes the failing-capable model encoded
    """

    def __init__(self, device: str | None = None, error: str | None = None) -> None:
        self.device = device
        self.error = error
        self.out_of_memory_above = 0
        self.batches: list[int] = []

    def __call__(self, path: str, device: str, compute_type: str, cpu_threads: int, workers: int) -> Any:
        model = create_model(path, "cpu", "int8", cpu_threads, workers)
        return _FaultyModel(model, self) if self.device in (None, device) else model


class _FaultyModel:
    def __init__(self, model: Any, faults: ModelFaults) -> None:
        self._model = model
        self.model = _FaultyEncoder(model.model, faults)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class _FaultyEncoder:
    def __init__(self, whisper: Any, faults: ModelFaults) -> None:
        self._whisper = whisper
        self._faults = faults

    def encode(self, features: Any, to_cpu: bool = False) -> Any:
        faults, size = self._faults, features.shape[0]
        if faults.error is not None:
            raise RuntimeError(faults.error)
        if faults.out_of_memory_above and size > faults.out_of_memory_above:
            raise RuntimeError("CUDA failed with error out of memory")
        faults.batches.append(size)
        return self._whisper.encode(features, to_cpu=to_cpu)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._whisper, name)
