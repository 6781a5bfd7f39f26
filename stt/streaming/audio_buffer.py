"""A stream's recent audio, addressed by absolute sample position."""

from __future__ import annotations

import numpy as np

from stt.audio import SAMPLE_RATE


class AudioBuffer:
    """A stream's recent audio addressed by absolute sample position, in one array.

    The engine's workers read it from other threads (a partial takes the latest audio
    when it starts), so every change publishes a fresh (array, offset, start, end)
    view in one assignment, and the array is replaced, never shifted, on compaction.
    """

    def __init__(self, capacity: int = SAMPLE_RATE * 8) -> None:
        self._data = np.zeros(capacity, dtype=np.float32)
        self._offset = 0  # index in _data of absolute position `start`
        self._view = (self._data, 0, 0, 0)  # (array, offset, start, end)

    @property
    def start(self) -> int:
        return self._view[2]

    @property
    def end(self) -> int:
        return self._view[3]

    def append(self, samples: np.ndarray) -> None:
        data, offset, start, end = self._view
        length = end - start
        if offset + length + samples.size > data.size:
            grown = np.zeros(max(data.size, 2 * (length + samples.size)), dtype=np.float32)
            grown[:length] = data[offset:offset + length]
            data, offset = grown, 0
        data[offset + length:offset + length + samples.size] = samples
        self._data, self._offset = data, offset
        self._view = (data, offset, start, end + samples.size)

    def slice(self, start: int, end: int) -> np.ndarray:
        data, offset, first, last = self._view
        start, end = max(start, first), min(end, last)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        return data[offset + start - first:offset + end - first].copy()

    def discard_before(self, position: int) -> None:
        data, offset, start, end = self._view
        position = min(max(position, start), end)
        if position == start:
            return
        offset += position - start
        if offset > data.size // 2:  # compact into a new array; readers keep the old one
            compacted = np.zeros(data.size, dtype=np.float32)
            compacted[:end - position] = data[offset:offset + end - position]
            data, offset = compacted, 0
        self._data, self._offset = data, offset
        self._view = (data, offset, position, end)

    def clear(self) -> None:
        self.discard_before(self.end)
