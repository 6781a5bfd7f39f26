"""Audio frames: float32 little-endian PCM, 1 to MAX_AUDIO_FRAME_SAMPLES samples."""

import numpy as np
import pytest

from stt.audio import decode_frame
from stt.errors import SttError

LIMIT = 16384


def test_a_valid_frame_decodes_to_the_same_samples():
    samples = np.linspace(-1, 1, 512, dtype=np.float32)
    decoded = decode_frame(samples.astype("<f4").tobytes(), LIMIT)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, samples)


@pytest.mark.parametrize("count", [1, 512, 2048, LIMIT])
def test_any_size_from_one_sample_to_the_limit_is_accepted(count):
    assert decode_frame(np.zeros(count, "<f4").tobytes(), LIMIT).size == count


def code_of(frame: bytes) -> str:
    with pytest.raises(SttError) as caught:
        decode_frame(frame, LIMIT)
    assert caught.value.spec.category.value == "audio_format"
    assert caught.value.recoverable
    return caught.value.code


def test_bad_frames_are_audio_format_errors():
    assert code_of(b"") == "invalid_audio_frame"
    assert code_of(b"\x00\x00\x80") == "invalid_audio_frame"
    assert code_of(np.zeros(LIMIT + 1, "<f4").tobytes()) == "audio_frame_too_large"
    assert code_of(np.array([0.1, np.nan], "<f4").tobytes()) == "audio_not_finite"
    assert code_of(np.array([0.1, np.inf], "<f4").tobytes()) == "audio_not_finite"
    assert code_of(np.array([0.1, 3000.0], "<f4").tobytes()) == "audio_out_of_range"


def test_slight_overshoot_is_clipped_not_refused():
    decoded = decode_frame(np.array([1.5, -1.2, 0.5], "<f4").tobytes(), LIMIT)
    np.testing.assert_array_equal(decoded, np.array([1.0, -1.0, 0.5], np.float32))

