"""Appended audio: base64 pcm16 at 24 kHz, resampled to the 16 kHz float32 a session takes."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from stt.errors import SttError
from stt.realtime.audio import Pcm16Input


def pcm16_tone(seconds: float, hz: float = 440.0, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 0.5 * 32767).astype("<i2")


def b64(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


def dominant_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


def test_a_tone_keeps_its_pitch_and_level_and_two_thirds_of_its_samples():
    out = Pcm16Input().decode(b64(pcm16_tone(1.0, hz=1000)))
    assert out.dtype == np.float32
    assert abs(out.size - 16000) <= 32, "a millisecond is held back for the next append"
    assert abs(dominant_hz(out[1000:]) - 1000) <= 2
    assert 0.45 <= np.abs(out[1000:]).max() <= 0.55


def test_appends_of_any_size_resample_as_one_piece():
    tone = pcm16_tone(2.0, hz=523.25)
    whole = Pcm16Input().decode(b64(tone))
    stream, pieces = Pcm16Input(), []
    for size in (1, 479, 2400, 7, 12000, 100):
        pieces.append(stream.decode(b64(tone[:size])))
        tone = tone[size:]
    pieces.append(stream.decode(b64(tone)))
    joined = np.concatenate(pieces)
    assert joined.size == whole.size
    assert np.allclose(joined, whole, atol=1e-4), "no seams between appends"


def test_audio_that_is_not_base64_of_whole_samples_is_refused():
    decoder = Pcm16Input()
    for audio, code in (("not base64!", "invalid_message"), ("", "invalid_audio_frame"),
                        (base64.b64encode(b"\x01\x02\x03").decode(), "invalid_audio_frame"), ("é", "invalid_message")):
        with pytest.raises(SttError) as refused:
            decoder.decode(audio)
        assert (refused.value.code, refused.value.field) == (code, "audio")
