"""`input_audio_buffer.append` audio: base64 of 16-bit little-endian mono PCM at 24 kHz,
turned into the 16 kHz float32 samples a session takes.

The resampler (libswresample, through PyAV) keeps its filter state from one append to
the next, so a stream cut into appends of any size resamples exactly as one piece;
it holds back about a millisecond of audio, which the next append pushes out.
"""

from __future__ import annotations

import base64
import binascii

import av
import numpy as np

from stt.audio import SAMPLE_RATE
from stt.errors import SttError
from stt.realtime.config import INPUT_SAMPLE_RATE


class Pcm16Input:
    """One session's appended audio, decoded and resampled in order."""

    def __init__(self) -> None:
        self._resampler = self._new_resampler()

    @staticmethod
    def _new_resampler() -> av.AudioResampler:
        return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def decode(self, audio: str) -> np.ndarray:
        """The samples of one append, at 16 kHz in [-1, 1]; SttError for audio that is
        not base64 of whole 16-bit samples."""
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise SttError("invalid_message", "audio must be base64 of 16-bit PCM", field="audio") from None
        if not raw or len(raw) % 2:
            raise SttError("invalid_audio_frame",
                           f"audio must hold whole 16-bit samples; got {len(raw)} bytes", field="audio")
        pcm = np.frombuffer(raw, dtype="<i2")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = INPUT_SAMPLE_RATE
        pieces = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
        if not pieces:
            return np.zeros(0, np.float32)
        return np.clip(np.concatenate(pieces), -1.0, 1.0).astype(np.float32, copy=False)

    def reset(self) -> None:
        """Forget the audio held back (input_audio_buffer.clear)."""
        self._resampler = self._new_resampler()
