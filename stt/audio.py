"""Audio: validation of incoming PCM frames, files of any format, small signal helpers."""

from __future__ import annotations

import logging
from typing import IO, Union

import numpy as np

from stt.errors import SttError

SAMPLE_RATE = 16000
# Float PCM lives in [-1, 1]; a little overshoot is clipping, not a format error.
# int16 PCM read as float32 gives values far beyond this (or tiny denormals).
OUT_OF_RANGE_LIMIT = 8.0

logger = logging.getLogger(__name__)


class UndecodableAudio(ValueError):
    """The file is not audio FFmpeg can read (or holds no audio stream, or no samples)."""


class AudioTooLong(ValueError):
    """The file holds more audio than allowed."""


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


def decode_file(source: Union[str, IO[bytes]], max_seconds: float) -> np.ndarray:
    """A file of any format FFmpeg reads (WAV, FLAC, MP3, OGG/Opus, M4A, WebM...), through
    PyAV, as 16 kHz mono float32 in [-1, 1]. Blocking: call it off the event loop.

    Raises UndecodableAudio for anything that is not decodable audio, and AudioTooLong as
    soon as more than `max_seconds` come out (the rest is not decoded)."""
    import av

    limit = int(max_seconds * SAMPLE_RATE)
    parts: list[np.ndarray] = []
    total = 0
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise UndecodableAudio("the file holds no audio stream")
            stream = container.streams.audio[0]
            frames = (out for frame in container.decode(stream) for out in resampler.resample(frame))
            for out in _with_tail(frames, resampler):
                samples = out.to_ndarray().reshape(-1)
                total += samples.size
                if total > limit:
                    raise AudioTooLong(f"the audio is longer than {max_seconds:g} s")
                parts.append(samples)
    except (UndecodableAudio, AudioTooLong):
        raise
    except Exception as exc:  # whatever FFmpeg makes of a bad file, it is the file's fault
        logger.debug("undecodable upload: %r", exc)
        raise UndecodableAudio(f"the file is not audio FFmpeg can decode ({type(exc).__name__})") from None
    if not total:
        raise UndecodableAudio("the file holds no audio samples")
    audio = np.concatenate(parts).astype(np.float32, copy=False)
    return np.clip(np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


def _with_tail(frames, resampler):  # type: ignore[no-untyped-def]
    yield from frames
    yield from resampler.resample(None)  # the resampler's buffered tail
