"""Audio: validation of incoming PCM frames, uploaded files, small signal helpers."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator, Union

import numpy as np

from stt.containers import CONTAINER_NAMES, SNIFF_BYTES, sniff_container
from stt.errors import SttError

SAMPLE_RATE = 16000
# Float PCM lives in [-1, 1]; a little overshoot is clipping, not a format error.
# int16 PCM read as float32 gives values far beyond this (or tiny denormals).
OUT_OF_RANGE_LIMIT = 8.0
# Given to every demuxer: no protocol may be opened from inside a file (an MP4's
# references to other files are off by default; this says so twice).
DEMUXER_OPTIONS = {"protocol_whitelist": "none", "enable_drefs": "0"}

logger = logging.getLogger(__name__)


class UndecodableAudio(ValueError):
    """The file is not audio FFmpeg can read (or holds no audio stream, or no samples)."""


class AudioTooLong(ValueError):
    """The file holds more audio than allowed."""


class DecodeStopped(ValueError):
    """Decoding was stopped before the end: its time ran out, or its client left."""


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


def decode_file(source: Union[str, IO[bytes]], max_seconds: float, *, deadline: float | None = None,
                cancelled: Callable[[], bool] | None = None) -> np.ndarray:
    """An audio file in one of the containers the server reads (stt.containers: WAV,
    FLAC, MP3, Ogg, M4A/MP4, WebM/Matroska, AAC), as 16 kHz mono float32 in [-1, 1].
    Blocking: call it off the event loop.

    The container is told by the file's first bytes, never by its name, and FFmpeg is
    made to use that one demuxer and no protocol: a playlist, a concat list or an SDP
    file is refused before FFmpeg reads it, so an upload can neither name a file of
    the server nor make it open a connection. The samples go into one buffer sized
    from the container's duration (grown in place when that was short), so decoding
    holds about one copy of the audio.

    Raises UndecodableAudio for anything that is not decodable audio; AudioTooLong as
    soon as more than `max_seconds` come out (the rest is not decoded); DecodeStopped
    past `deadline` (a time.monotonic() value) or once `cancelled()` is true, both
    checked between packets."""
    limit = int(max_seconds * SAMPLE_RATE)
    should_stop = _stop_check(deadline, cancelled)
    with _opened(source) as file:
        demuxer = sniff_container(file.read(SNIFF_BYTES))
        if demuxer is None:
            raise UndecodableAudio(f"the file is not audio in a format this server reads "
                                   f"({', '.join(CONTAINER_NAMES)})")
        file.seek(0)
        try:
            pcm = _decode_container(file, demuxer, limit, should_stop)
        except (UndecodableAudio, AudioTooLong, DecodeStopped):
            raise
        except Exception as exc:  # whatever FFmpeg makes of a bad file, it is the file's fault
            logger.debug("undecodable upload: %r", exc)
            raise UndecodableAudio(f"the file is not audio FFmpeg can decode ({type(exc).__name__})") from None
    if pcm.size == 0:
        raise UndecodableAudio("the file holds no audio samples")
    if pcm.size > limit:
        raise AudioTooLong(f"the audio is longer than {max_seconds:g} s")
    return pcm.result()


def _decode_container(file: IO[bytes], demuxer: str, limit: int, should_stop: Callable[[], bool]) -> "_Pcm":
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    with av.open(file, mode="r", format=demuxer, options=dict(DEMUXER_OPTIONS),
                 metadata_errors="ignore") as container:
        if demuxer not in container.format.name.split(","):  # what FFmpeg actually used
            raise UndecodableAudio("the file is not audio in a format this server reads")
        if not container.streams.audio:
            raise UndecodableAudio("the file holds no audio stream")
        stream = container.streams.audio[0]
        pcm = _Pcm(_expected_samples(container, stream, limit))
        for packet in container.demux(stream):
            if should_stop():
                raise DecodeStopped("decoding was stopped (time limit, or the client left)")
            for frame in packet.decode():
                for out in resampler.resample(frame):
                    if not pcm.add(out.to_ndarray().reshape(-1), limit):
                        return pcm
        for out in resampler.resample(None):  # the resampler's buffered tail
            pcm.add(out.to_ndarray().reshape(-1), limit)
    return pcm


def _expected_samples(container: Any, stream: Any, limit: int) -> int:
    """Samples the container says it holds (at 16 kHz), a little over, at most limit + 1."""
    seconds = 0.0
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    return min(limit + 1, int(seconds * SAMPLE_RATE * 1.01) + SAMPLE_RATE)


class _Pcm:
    """Decoded samples in one growing buffer: numpy's in-place resize reallocates, which
    for a buffer this large remaps its pages instead of copying them into a second one."""

    def __init__(self, expected: int) -> None:
        self._buffer = np.empty(max(expected, SAMPLE_RATE), dtype=np.float32)
        self.size = 0

    def add(self, samples: np.ndarray, limit: int) -> bool:
        """Append; False once past `limit` (the caller stops decoding)."""
        end = self.size + samples.size
        if end > self._buffer.size:
            self._buffer.resize(min(limit + 1, max(end, int(self._buffer.size * 1.25))), refcheck=False)
        taken = min(end, self._buffer.size) - self.size
        # Cleaned frame by frame: over the whole buffer, NaN checks would make full-length masks.
        cleaned = np.nan_to_num(samples[:taken], nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(cleaned, -1.0, 1.0, out=self._buffer[self.size:self.size + taken])
        self.size += samples.size
        return self.size <= limit

    def result(self) -> np.ndarray:
        """The samples, in a buffer of their size."""
        self._buffer.resize(self.size, refcheck=False)
        audio, self._buffer = self._buffer, np.empty(0, dtype=np.float32)
        return audio


@contextmanager
def _opened(source: Union[str, IO[bytes]]) -> Iterator[IO[bytes]]:
    """The upload as a file object: a path is opened here, so FFmpeg opens nothing itself."""
    if isinstance(source, str):
        with open(source, "rb") as file:
            yield file
        return
    source.seek(0)
    yield source


def _stop_check(deadline: float | None, cancelled: Callable[[], bool] | None) -> Callable[[], bool]:
    def should_stop() -> bool:
        return (deadline is not None and time.monotonic() > deadline) or (cancelled is not None and cancelled())

    return should_stop
