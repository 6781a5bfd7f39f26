"""Voice activity detection with silero-vad, run through onnxruntime.

The ONNX graph ships inside the silero-vad package; it is located without importing
that package, whose import pulls in torch. One inference session per process is
shared by every stream; each stream keeps its own recurrent state.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 512  # silero-vad's window at 16 kHz: 32 ms
_CONTEXT_SAMPLES = 64

_session = None
_session_lock = threading.Lock()


def silero_model_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise RuntimeError(f"silero-vad model not found at {path}")
    return path


def _shared_session():
    global _session
    with _session_lock:
        if _session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            # One 32 ms window is tiny: threads would cost more than they save.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            _session = onnxruntime.InferenceSession(
                str(silero_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
        return _session


class SileroVad:
    """Speech probability for each 32 ms window of one audio stream."""

    def __init__(self) -> None:
        self._session = _shared_session()
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def process(self, samples: np.ndarray) -> list[float]:
        """Feed samples; return one probability per completed 512-sample window."""
        audio = np.concatenate([self._pending, samples]) if self._pending.size else samples
        windows = audio.size // CHUNK_SAMPLES
        probabilities: list[float] = []
        for index in range(windows):
            chunk = audio[index * CHUNK_SAMPLES:(index + 1) * CHUNK_SAMPLES]
            model_input = np.concatenate([self._context, chunk])[np.newaxis, :]
            output, self._state = self._session.run(
                None, {"input": model_input, "state": self._state, "sr": self._sr}
            )
            self._context = chunk[-_CONTEXT_SAMPLES:].copy()
            probabilities.append(float(output[0, 0]))
        self._pending = audio[windows * CHUNK_SAMPLES:].copy()
        return probabilities
