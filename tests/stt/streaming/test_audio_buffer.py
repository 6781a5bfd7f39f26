"""AudioBuffer: recent audio by absolute position, in bounded memory."""

from __future__ import annotations

import numpy as np

from stt.streaming import AudioBuffer


class TestAudioBuffer:
    def test_slices_by_absolute_position(self):
        buffer = AudioBuffer(capacity=16)
        for value in range(4):
            buffer.append(np.full(10, value, np.float32))
        np.testing.assert_array_equal(buffer.slice(8, 22), [0, 0] + [1] * 10 + [2, 2])
        assert (buffer.start, buffer.end) == (0, 40)

    def test_discarded_audio_is_gone_and_positions_stay_absolute(self):
        buffer = AudioBuffer(capacity=16)
        for value in range(4):
            buffer.append(np.full(10, value, np.float32))
        buffer.discard_before(15)
        assert buffer.start == 15
        np.testing.assert_array_equal(buffer.slice(0, 22), [1] * 5 + [2] * 2)
        assert buffer.slice(50, 60).size == 0

    def test_memory_stays_bounded_when_old_audio_is_discarded(self):
        buffer = AudioBuffer(capacity=1000)
        for index in range(1000):
            buffer.append(np.full(100, index % 7, np.float32))
            buffer.discard_before(buffer.end - 500)
        assert buffer.end == 100_000
        assert buffer._data.size <= 2000
        np.testing.assert_array_equal(buffer.slice(buffer.end - 100, buffer.end), np.full(100, 999 % 7))

    def test_a_slice_taken_before_compaction_is_unaffected_by_it(self):
        buffer = AudioBuffer(capacity=100)
        buffer.append(np.arange(80, dtype=np.float32))
        taken = buffer.slice(40, 80)
        buffer.discard_before(70)
        buffer.append(np.zeros(90, np.float32))
        np.testing.assert_array_equal(taken, np.arange(40, 80, dtype=np.float32))
