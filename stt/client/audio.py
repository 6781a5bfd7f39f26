"""Audio for the client: files of any common format and numpy arrays, as the protocol
wants them (float32, 16 kHz, mono)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stt.messages import SAMPLE_RATE


def load_audio(path: str | Path) -> np.ndarray:
    """Decode a file (WAV, FLAC, MP3, OGG/Opus, M4A, … anything FFmpeg reads, through PyAV),
    mixed down to mono and resampled to 16 kHz float32."""
    import av  # imported here: only file input needs it

    chunks: list[np.ndarray] = []
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush the resampler's tail
                chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        raise ValueError(f"{path}: cannot decode audio ({exc})") from None
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def to_float32_mono(samples: np.ndarray | bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A numpy array in the protocol's format. Integer PCM is scaled to [-1, 1]; a 2-D
    array (frames × channels) is mixed down; other rates are resampled to 16 kHz.
    Bytes are taken as float32 little-endian already."""
    if isinstance(samples, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(samples), dtype="<f4")
    array = np.asarray(samples)
    if np.issubdtype(array.dtype, np.integer):
        scale = float(np.iinfo(array.dtype).max) + 1.0
        array = array.astype(np.float32) / scale
    else:
        array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        array = array.mean(axis=1, dtype=np.float32)
    elif array.ndim != 1:
        raise ValueError(f"audio must be 1-D (mono) or 2-D (frames x channels), not {array.ndim}-D")
    if sample_rate != SAMPLE_RATE:
        array = resample(array, sample_rate)
    return array


def resample(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resample mono float32 audio to 16 kHz with FFmpeg's resampler (anti-aliased)."""
    import av

    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = sample_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    parts = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def as_float32_frames(samples: np.ndarray | bytes, sample_rate: int, frame_samples: int) -> Iterator[np.ndarray]:
    """Split audio into protocol frames of at most `frame_samples` samples."""
    audio = to_float32_mono(samples, sample_rate)
    for start in range(0, len(audio), frame_samples):
        yield audio[start:start + frame_samples]
