"""Audio frames: validation of incoming PCM and small signal helpers."""

from __future__ import annotations

import numpy as np

from stt.errors import SttError

SAMPLE_RATE = 16000
# Float PCM lives in [-1, 1]; a little overshoot is clipping, not a format error.
# int16 PCM read as float32 gives values far beyond this (or tiny denormals).
OUT_OF_RANGE_LIMIT = 8.0


def decode_frame(frame: bytes, max_samples: int) -> np.ndarray:
    """A binary WebSocket frame as float32 mono samples, or SttError (audio_format).

    Samples slightly outside [-1, 1] are clipped.
    """
    if not frame or len(frame) % 4:
        raise SttError(
            "invalid_audio_frame",
            f"binary frames must hold float32 little-endian samples; got {len(frame)} bytes, "
            "not a positive multiple of 4",
        )
    samples_in_frame = len(frame) // 4
    if samples_in_frame > max_samples:
        raise SttError(
            "audio_frame_too_large",
            f"a frame may hold at most {max_samples} samples; got {samples_in_frame}",
        )
    samples = np.frombuffer(frame, dtype="<f4")
    if not np.isfinite(samples).all():
        raise SttError("audio_not_finite", "the frame holds NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > OUT_OF_RANGE_LIMIT:
        raise SttError(
            "audio_out_of_range",
            f"sample magnitude {peak:.3g} is far outside [-1, 1]; send float32 PCM scaled to [-1, 1] "
            "(int16 data must be divided by 32768)",
        )
    if peak > 1.0:
        return np.clip(samples, -1.0, 1.0).astype(np.float32)
    return samples.astype(np.float32, copy=True)


def rms_energy(samples: np.ndarray) -> float:
    """Root-mean-square level in [0, 1] for float PCM."""
    if samples.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def samples_to_ms(samples: int) -> int:
    return int(round(samples * 1000 / SAMPLE_RATE))


def seconds_to_samples(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))
