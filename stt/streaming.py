"""Streaming logic: audio buffers, VAD, the utterance lifecycle, partial/final decisions.

A StreamingTranscriber takes one session's audio, cuts it into utterances and asks
the engine for partials while an utterance grows and for a final when it ends. It
knows nothing of WebSockets or message shapes: it reports to a StreamListener.

Time inside the stream is the audio clock (samples received), so decisions do not
depend on how fast the client sends: a file streamed at 10x real time is cut into
the same utterances as the live microphone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from django.conf import settings

from stt.audio import SAMPLE_RATE, rms_energy, seconds_to_samples
from stt.engine import DecodeOptions, SpeechEngine, Transcript
from stt.errors import SttError
from stt.protocol import SessionConfig
from stt.vad import CHUNK_SAMPLES, SileroVad

logger = logging.getLogger(__name__)

# Hysteresis: speech continues while the probability stays above threshold - 0.15
# (silero-vad's own recommendation), so one dip does not end an utterance.
_HYSTERESIS = 0.15
# Audio kept while nobody speaks, for the pre-roll of the next utterance.
_LOOKBACK_SECONDS = 1.0
# When an utterance must be cut mid-speech, look this far back for the quietest spot.
_CUT_SEARCH_SECONDS = 3.0
_CUT_WINDOW_SAMPLES = 1600  # 100 ms


class FinalReason:
    SILENCE = "silence_detected"
    FLUSH = "flush_requested"
    SESSION_END = "session_end"
    DISCONNECT = "client_disconnected"
    MAX_DURATION = "max_duration"
    BUFFER_FULL = "buffer_full"


@dataclass(frozen=True)
class StreamParams:
    """What the streaming logic needs from a session config and the server settings."""

    enable_vad: bool
    enable_partials: bool
    language: str | None
    word_timestamps: bool
    partial_interval: int  # samples of new audio between partials
    end_silence: int  # samples of silence that end an utterance
    segment_limit: int  # VAD off: samples per final
    min_audio: int  # samples before the first partial; shorter finals are padded
    max_utterance: int  # VAD on: longest utterance
    vad_threshold: float
    vad_min_speech: int
    speech_pad: int

    @classmethod
    def from_config(cls, config: SessionConfig, language: str | None = None) -> "StreamParams":
        return cls(
            enable_vad=config.enable_vad,
            enable_partials=config.enable_partial_transcription,
            language=language if language is not None else config.language,
            word_timestamps=config.enable_timestamps,
            partial_interval=seconds_to_samples(config.partial_chunk_duration),
            end_silence=seconds_to_samples(config.final_chunk_duration),
            segment_limit=seconds_to_samples(config.buffer_duration),
            min_audio=seconds_to_samples(settings.MIN_AUDIO_LENGTH),
            max_utterance=seconds_to_samples(settings.MAX_UTTERANCE_DURATION),
            vad_threshold=settings.VAD_THRESHOLD,
            vad_min_speech=seconds_to_samples(settings.VAD_MIN_SPEECH_MS / 1000),
            speech_pad=seconds_to_samples(settings.VAD_SPEECH_PAD_MS / 1000),
        )


@dataclass(frozen=True)
class SpeechStart:
    utterance_id: str
    offset_samples: int  # session timeline position of the first speech window
    confidence: float
    speech_samples: int  # speech heard when the onset was confirmed
    energy_level: float  # 0 at -60 dBFS or below, 1 at full scale


@dataclass(frozen=True)
class PartialResult:
    utterance_id: str
    transcript: Transcript
    start_sample: int  # the utterance's start on the session timeline
    audio_samples: int
    processing_seconds: float
    sequence: int


@dataclass(frozen=True)
class FinalResult:
    utterance_id: str
    transcript: Transcript | None  # None when transcription failed
    error: SttError | None
    start_sample: int
    end_sample: int
    reason: str
    frames: int
    partial_count: int
    processing_seconds: float
    announced: bool  # a speech onset or partial of this utterance was reported


class StreamListener(Protocol):
    async def on_speech_start(self, event: SpeechStart) -> None: ...
    async def on_partial(self, result: PartialResult) -> None: ...
    async def on_final(self, result: FinalResult) -> None: ...


class AudioBuffer:
    """Audio of one stream addressed by absolute sample position; old audio is dropped."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self.start = 0  # absolute position of the first kept sample
        self.end = 0  # absolute position after the last sample

    def append(self, samples: np.ndarray) -> None:
        self._chunks.append(samples)
        self.end += samples.size

    def slice(self, start: int, end: int) -> np.ndarray:
        start, end = max(start, self.start), min(end, self.end)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        pieces, position = [], self.start
        for chunk in self._chunks:
            chunk_end = position + chunk.size
            if chunk_end > start and position < end:
                pieces.append(chunk[max(0, start - position):min(chunk.size, end - position)])
            if chunk_end >= end:
                break
            position = chunk_end
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def discard_before(self, position: int) -> None:
        while self._chunks and self.start + self._chunks[0].size <= position:
            self.start += self._chunks.popleft().size

    def clear(self) -> None:
        self._chunks.clear()
        self.start = self.end


@dataclass
class _Utterance:
    utterance_id: str
    start: int
    last_speech_end: int
    frames: int = 1
    partial_count: int = 0
    partial_audio_end: int = 0  # utterance length covered by the last partial request
    announced: bool = False  # the client has heard of it (speech onset or partial)
    discarded: bool = False


@dataclass
class _ClosedUtterance:
    utterance: _Utterance
    audio: np.ndarray
    end: int
    reason: str
    closed_at: float
    # Resolved once the listener has been given this utterance's final.
    delivered: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class StreamStats:
    frames: int = 0
    samples_received: int = 0
    samples_transcribed: int = 0
    utterances: int = 0
    partials: int = 0
    finals: int = 0
    failed_finals: int = 0
    speech_onsets: int = 0
    processing_seconds: float = 0.0
    partial_latencies: deque = field(default_factory=lambda: deque(maxlen=500))
    final_latencies: deque = field(default_factory=lambda: deque(maxlen=500))


@dataclass(frozen=True)
class InterruptOutcome:
    discarded_utterance_id: str | None
    buffer_cleared: bool
    processing_stopped: bool


class StreamingTranscriber:
    """One session's audio -> utterances -> partials and finals."""

    def __init__(self, params: StreamParams, engine: SpeechEngine, listener: StreamListener) -> None:
        self.params = params
        self.engine = engine
        self.listener = listener
        self.stats = StreamStats()
        self._buffer = AudioBuffer()
        self._vad: SileroVad | None = SileroVad() if params.enable_vad else None
        self._vad_origin = 0  # absolute position of the VAD's first window
        self._vad_windows = 0
        self._speech_run: list[float] = []  # probabilities of the current onset run
        self._speech_run_start = 0
        self._silence_run = 0
        self._current: _Utterance | None = None
        self._last_utterance_end = 0
        self._finals: deque[_ClosedUtterance] = deque()
        self._partial_requested = False
        self._wake = asyncio.Event()
        self._busy_with: str | None = None  # "partial" / "final" while the engine works for us
        self._stopping = False
        self._processor = asyncio.ensure_future(self._process())

    # --- state for monitoring ------------------------------------------------------

    @property
    def current_utterance_id(self) -> str | None:
        return self._current.utterance_id if self._current else None

    @property
    def processing(self) -> bool:
        return self._busy_with is not None

    @property
    def buffering(self) -> bool:
        return self._current is not None

    # --- audio in ----------------------------------------------------------------------

    async def push_audio(self, samples: np.ndarray) -> None:
        """Take one frame of audio; cheap enough to run on the event loop."""
        if self._stopping:
            return
        start = self._buffer.end
        self._buffer.append(samples)
        self.stats.frames += 1
        self.stats.samples_received += samples.size
        if self._current is not None:
            self._current.frames += 1
        if self._vad is not None:
            await self._run_vad(samples)
        elif self._current is None:
            self._open_utterance(start)
        self._enforce_length_limit()
        self._maybe_request_partial()
        self._trim_buffer()

    async def _run_vad(self, samples: np.ndarray) -> None:
        assert self._vad is not None
        p = self.params
        for probability in self._vad.process(samples):
            window_start = self._vad_origin + self._vad_windows * CHUNK_SAMPLES
            self._vad_windows += 1
            window_end = window_start + CHUNK_SAMPLES
            if self._current is None:
                if probability >= p.vad_threshold:
                    if not self._speech_run:
                        self._speech_run_start = window_start
                    self._speech_run.append(probability)
                    if len(self._speech_run) * CHUNK_SAMPLES >= p.vad_min_speech:
                        await self._speech_onset(window_end)
                else:
                    self._speech_run.clear()
            else:
                if probability >= p.vad_threshold - _HYSTERESIS:
                    self._silence_run = 0
                    self._current.last_speech_end = window_end
                else:
                    self._silence_run += CHUNK_SAMPLES
                    if self._silence_run >= p.end_silence:
                        end = min(self._current.last_speech_end + p.speech_pad, self._buffer.end)
                        self._close_utterance(FinalReason.SILENCE, end)

    async def _speech_onset(self, confirmed_at: int) -> None:
        p = self.params
        run = self._speech_run
        start = max(self._speech_run_start - p.speech_pad, self._last_utterance_end, self._buffer.start)
        utterance = self._open_utterance(start)
        utterance.last_speech_end = confirmed_at
        utterance.announced = True
        speech_audio = self._buffer.slice(self._speech_run_start, confirmed_at)
        event = SpeechStart(
            utterance_id=utterance.utterance_id,
            offset_samples=self._speech_run_start,
            confidence=round(sum(run) / len(run), 4),
            speech_samples=confirmed_at - self._speech_run_start,
            energy_level=_energy_level(rms_energy(speech_audio)),
        )
        self._speech_run = []
        self._silence_run = 0
        self.stats.speech_onsets += 1
        await self.listener.on_speech_start(event)

    def _open_utterance(self, start: int) -> _Utterance:
        self._current = _Utterance(utterance_id=str(uuid.uuid4()), start=start, last_speech_end=start)
        self.stats.utterances += 1
        return self._current

    def _close_utterance(self, reason: str, end: int | None = None) -> _ClosedUtterance | None:
        utterance = self._current
        if utterance is None:
            return None
        end = self._buffer.end if end is None else end
        self._current = None
        self._partial_requested = False
        self._last_utterance_end = end
        self._speech_run = []
        self._silence_run = 0
        audio = self._buffer.slice(utterance.start, end)
        if audio.size == 0:
            self.stats.utterances -= 1
            return None
        closed = _ClosedUtterance(utterance, audio, end, reason, time.perf_counter())
        self._finals.append(closed)
        self._wake.set()
        return closed

    def _enforce_length_limit(self) -> None:
        utterance = self._current
        if utterance is None:
            return
        p = self.params
        limit = p.max_utterance if p.enable_vad else p.segment_limit
        if self._buffer.end - utterance.start < limit:
            return
        cut = self._quietest_point(utterance.start)
        reason = FinalReason.MAX_DURATION if p.enable_vad else FinalReason.BUFFER_FULL
        self._close_utterance(reason, cut)
        # Speech goes on: the rest is the start of the next utterance, no new onset.
        follower = self._open_utterance(cut)
        follower.last_speech_end = self._buffer.end

    def _quietest_point(self, utterance_start: int) -> int:
        """Where to cut a long utterance: the middle of its quietest recent 100 ms."""
        end = self._buffer.end
        search_start = max(utterance_start + (end - utterance_start) // 2,
                           end - seconds_to_samples(_CUT_SEARCH_SECONDS))
        audio = self._buffer.slice(search_start, end)
        windows = audio.size // _CUT_WINDOW_SAMPLES
        if windows < 2:
            return end
        frames = audio[: windows * _CUT_WINDOW_SAMPLES].reshape(windows, _CUT_WINDOW_SAMPLES)
        energies = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
        quietest = int(np.argmin(energies))
        return search_start + quietest * _CUT_WINDOW_SAMPLES + _CUT_WINDOW_SAMPLES // 2

    def _maybe_request_partial(self) -> None:
        utterance = self._current
        p = self.params
        if utterance is None or not p.enable_partials or self._partial_requested:
            return
        length = self._buffer.end - utterance.start
        if length >= p.min_audio and length - utterance.partial_audio_end >= p.partial_interval:
            self._partial_requested = True
            self._wake.set()

    def _trim_buffer(self) -> None:
        if self._current is not None:
            keep_from = self._current.start
        else:
            keep_from = self._buffer.end - seconds_to_samples(_LOOKBACK_SECONDS)
        self._buffer.discard_before(keep_from)

    # --- control -------------------------------------------------------------------

    def reconfigure(self, params: StreamParams) -> None:
        """Apply new parameters from the next frame on; an open utterance stays open."""
        if params.enable_vad and self._vad is None:
            self._vad = SileroVad()
            self._vad_origin, self._vad_windows = self._buffer.end, 0
            self._silence_run = 0
        elif not params.enable_vad:
            self._vad = None
            self._speech_run = []
        self.params = params

    def finalize_now(self, reason: str = FinalReason.FLUSH) -> "asyncio.Future[FinalResult | None]":
        """Close the open utterance now; the future resolves once its final is delivered
        (finals go out in order, so every earlier final is out too), or at once with None
        when no utterance was open."""
        closed = self._close_utterance(reason)
        if closed is None:
            done: asyncio.Future = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return closed.delivered

    def interrupt(self) -> InterruptOutcome:
        """Drop the open utterance and any partial for it (barge-in clean-up).

        Finals of utterances already closed are still delivered: that speech was complete.
        """
        utterance = self._current
        processing_stopped = self._busy_with == "partial" or self._partial_requested
        if utterance is not None:
            utterance.discarded = True
            self._current = None
            self._last_utterance_end = self._buffer.end
            self.stats.utterances -= 1
        self._partial_requested = False
        self._speech_run = []
        self._silence_run = 0
        self._buffer.clear()
        return InterruptOutcome(
            discarded_utterance_id=utterance.utterance_id if utterance else None,
            buffer_cleared=True,
            processing_stopped=processing_stopped or utterance is not None,
        )

    async def close(self, reason: str) -> None:
        """Finalize what is pending, deliver it, and stop taking audio."""
        if self._stopping:
            await asyncio.shield(self._processor)
            return
        self.finalize_now(reason)
        self._stopping = True
        self._wake.set()
        await asyncio.shield(self._processor)

    # --- the processor: one engine request at a time, finals first -----------------

    async def _process(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                try:
                    if self._finals:
                        await self._run_final(self._finals[0])
                        continue
                    if self._partial_requested and self._current is not None:
                        await self._run_partial(self._current)
                        continue
                except Exception:
                    # A fault delivering one result must not stop the stream's later ones.
                    logger.exception("stream processor fault")
                    if self._finals and not self._finals[0].delivered.done():
                        self._finals.popleft().delivered.set_result(None)
                    continue
                break
            if self._stopping and not self._finals:
                return

    async def _run_partial(self, utterance: _Utterance) -> None:
        self._partial_requested = False
        audio = self._buffer.slice(utterance.start, self._buffer.end)
        utterance.partial_audio_end = audio.size
        requested_at = time.perf_counter()
        self._busy_with = "partial"
        try:
            transcript = await self.engine.transcribe(audio, DecodeOptions.partial(self.params.language))
        except SttError as exc:
            # A lost partial is superseded by the next one; only the final must not be lost.
            logger.warning("partial for %s failed: %s", utterance.utterance_id, exc.message)
            return
        finally:
            self._busy_with = None
        elapsed = time.perf_counter() - requested_at
        self.stats.processing_seconds += transcript.inference_seconds
        if utterance.discarded or not transcript.text:
            return
        utterance.partial_count += 1
        utterance.announced = True
        self.stats.partials += 1
        self.stats.partial_latencies.append(elapsed)
        await self.listener.on_partial(
            PartialResult(utterance.utterance_id, transcript, utterance.start, audio.size, elapsed,
                          utterance.partial_count)
        )
        self._maybe_request_partial()

    async def _run_final(self, closed: _ClosedUtterance) -> None:
        utterance = closed.utterance
        audio = closed.audio
        if audio.size < self.params.min_audio:
            # Whisper does poorly on very short clips; trailing silence is harmless.
            audio = np.concatenate([audio, np.zeros(self.params.min_audio - audio.size, np.float32)])
        options = DecodeOptions.final(self.params.language, self.params.word_timestamps)
        transcript: Transcript | None = None
        error: SttError | None = None
        self._busy_with = "final"
        try:
            transcript, error = await self._transcribe_with_retries(audio, options)
        finally:
            self._busy_with = None
        elapsed = time.perf_counter() - closed.closed_at
        if transcript is not None:
            self.stats.finals += 1
            self.stats.samples_transcribed += closed.audio.size
            self.stats.processing_seconds += transcript.inference_seconds
            self.stats.final_latencies.append(elapsed)
        else:
            self.stats.failed_finals += 1
            assert error is not None
            error.utterance_id = utterance.utterance_id
        result = FinalResult(
            utterance_id=utterance.utterance_id,
            transcript=transcript,
            error=error,
            start_sample=utterance.start,
            end_sample=closed.end,
            reason=closed.reason,
            frames=utterance.frames,
            partial_count=utterance.partial_count,
            processing_seconds=elapsed,
            announced=utterance.announced,
        )
        await self.listener.on_final(result)
        self._finals.popleft()
        if not closed.delivered.done():
            closed.delivered.set_result(result)

    async def _transcribe_with_retries(
        self, audio: np.ndarray, options: DecodeOptions
    ) -> tuple[Transcript | None, SttError | None]:
        attempts = 1 + max(0, settings.STT_FINAL_RETRIES)
        for attempt in range(attempts):
            try:
                return await self.engine.transcribe(audio, options), None
            except SttError as exc:
                retryable = exc.code in {"transcription_failed", "transcription_timeout"}
                if not retryable or attempt == attempts - 1:
                    return None, exc
                delay = settings.STT_RETRY_BASE_DELAY * (2 ** attempt)
                logger.warning("final failed (%s); retry %d in %.1f s", exc.code, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _energy_level(rms: float) -> float:
    if rms <= 0:
        return 0.0
    dbfs = 20 * math.log10(rms)
    return round(min(1.0, max(0.0, (dbfs + 60) / 60)), 3)


def samples_to_seconds(samples: int) -> float:
    return samples / SAMPLE_RATE
