"""Streaming logic: audio buffers, VAD, the utterance lifecycle, partial/final decisions.

A StreamingTranscriber takes one session's audio, cuts it into utterances and asks
the engine for partials while an utterance grows and for a final when it ends. It
knows nothing of WebSockets or message shapes: it reports to a StreamListener.

Time inside the stream is the audio clock (samples received), so decisions do not
depend on how fast the client sends: a file streamed at 10x real time is cut into
the same utterances as the live microphone.

Partials and finals run on two independent paths, so a final never waits behind its
own stream's partial. Partials are stabilized LocalAgreement-style: words that two
consecutive hypotheses agree on are committed, forced as the decoder's prefix from
then on, and never revised within the utterance.
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
from stt.engine import DecodeOptions, Piece, SpeechEngine, Superseded, Transcript
from stt.evaluation import normalize_text
from stt.errors import SttError
from stt.protocol import SessionConfig
from stt.runtime_config import RuntimeValues
from stt.vad import CHUNK_SAMPLES, SileroVad

logger = logging.getLogger(__name__)

# Hysteresis: speech continues while the probability stays above threshold - 0.15
# (silero-vad's own recommendation), so one dip does not end an utterance.
_HYSTERESIS = 0.15
# Audio kept while nobody speaks, for the pre-roll of the next utterance.
_LOOKBACK_SECONDS = 1.0
# When an utterance must be cut mid-speech, look this far back for a pause.
_CUT_SEARCH_SECONDS = 3.0
_CUT_WINDOW_SAMPLES = 1600  # 100 ms, for the energy search without VAD
# Committed words forced on the decoder are capped (Whisper's prompt limit is 223).
_MAX_PREFIX_TOKENS = 180


class FinalReason:
    SILENCE = "silence_detected"
    FLUSH = "flush_requested"
    SESSION_END = "session_end"
    DISCONNECT = "client_disconnected"
    MAX_DURATION = "max_duration"
    BUFFER_FULL = "buffer_full"
    SERVER_SHUTDOWN = "server_shutdown"


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
    speculative_finals: bool
    partial_beam_size: int
    final_beam_size: int

    @classmethod
    def from_config(cls, config: SessionConfig, language: str | None = None,
                    runtime: RuntimeValues | None = None) -> "StreamParams":
        """The session's config, with the tunables of its runtime profile (default: the
        server settings)."""
        runtime = runtime or RuntimeValues.from_settings()
        return cls(
            enable_vad=config.enable_vad,
            enable_partials=config.enable_partial_transcription,
            language=language if language is not None else config.language,
            word_timestamps=config.enable_timestamps,
            partial_interval=seconds_to_samples(config.partial_chunk_duration),
            end_silence=seconds_to_samples(config.final_chunk_duration),
            segment_limit=seconds_to_samples(config.buffer_duration),
            min_audio=seconds_to_samples(runtime.min_audio_length),
            max_utterance=seconds_to_samples(runtime.max_utterance_duration),
            vad_threshold=runtime.vad_threshold,
            vad_min_speech=seconds_to_samples(runtime.vad_min_speech_ms / 1000),
            speech_pad=seconds_to_samples(runtime.vad_speech_pad_ms / 1000),
            speculative_finals=settings.STT_SPECULATIVE_FINALS,
            partial_beam_size=runtime.partial_beam_size,
            final_beam_size=runtime.final_beam_size,
        )

    @property
    def speculation_silence(self) -> int:
        """Silence after which a final is decoded ahead of time: half the end silence,
        and at least the trailing pad, so the audio is already the final's own."""
        return max(self.speech_pad, self.end_silence // 2)


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
    stable_text: str  # committed words: never revised within the utterance
    unstable_text: str  # the rest of the current hypothesis

    @property
    def text(self) -> str:
        return " ".join(part for part in (self.stable_text, self.unstable_text) if part)


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
    audio: np.ndarray  # the utterance's audio, start_sample to end_sample
    first_partial_seconds: float | None  # utterance opened -> its first partial sent
    decode: dict  # the decode settings of the final


class StreamListener(Protocol):
    async def on_speech_start(self, event: SpeechStart) -> None: ...
    async def on_partial(self, result: PartialResult) -> None: ...
    async def on_final(self, result: FinalResult) -> None: ...


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


@dataclass
class _Utterance:
    utterance_id: str
    start: int
    last_speech_end: int
    opened_at: float = field(default_factory=time.perf_counter)
    first_partial_at: float | None = None
    frames: int = 1
    partial_count: int = 0
    partial_audio_end: int = 0  # utterance length the last partial covered
    announced: bool = False  # the client has heard of it (speech onset or partial)
    closed: bool = False
    discarded: bool = False
    speculated_end: int = -1  # last_speech_end of the last speculative final
    committed: list[Piece] = field(default_factory=list)
    tentative: list[Piece] = field(default_factory=list)  # the last hypothesis beyond `committed`
    vad_history: deque = field(default_factory=lambda: deque(maxlen=int(_CUT_SEARCH_SECONDS * 40)))

    @property
    def prefix_tokens(self) -> tuple[int, ...]:
        tokens = tuple(t for piece in self.committed for t in piece.tokens)
        return tokens if len(tokens) <= _MAX_PREFIX_TOKENS else ()


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
    speculative_finals: int = 0
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
        self._key = object()  # this stream, for the engine's scheduler
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
        self._partial_running = False
        self._final_running = False
        self._final_wake = asyncio.Event()
        self._partial_wake = asyncio.Event()
        self._stopping = False
        self._final_task = asyncio.ensure_future(self._final_loop())
        self._partial_task = asyncio.ensure_future(self._partial_loop())

    # --- state for monitoring ------------------------------------------------------

    @property
    def current_utterance_id(self) -> str | None:
        return self._current.utterance_id if self._current else None

    @property
    def processing(self) -> bool:
        return self._partial_running or self._final_running

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
            utterance = self._current
            if utterance is None:
                if probability >= p.vad_threshold:
                    if not self._speech_run:
                        self._speech_run_start = window_start
                    self._speech_run.append(probability)
                    if len(self._speech_run) * CHUNK_SAMPLES >= p.vad_min_speech:
                        await self._speech_onset(window_end)
                else:
                    self._speech_run.clear()
                continue
            utterance.vad_history.append((window_end, probability))
            if probability >= p.vad_threshold - _HYSTERESIS:
                self._silence_run = 0
                utterance.last_speech_end = window_end
                continue
            self._silence_run += CHUNK_SAMPLES
            end = min(utterance.last_speech_end + p.speech_pad, self._buffer.end)
            if self._silence_run >= p.end_silence:
                self._close_utterance(FinalReason.SILENCE, end)
            elif (p.speculative_finals and self._silence_run >= p.speculation_silence
                  and utterance.speculated_end != utterance.last_speech_end):
                # Most pauses this long end the utterance: decode its final now, so it
                # is ready (cached) when the silence runs out. Wasted if speech resumes.
                utterance.speculated_end = utterance.last_speech_end
                self.stats.speculative_finals += 1
                self.engine.prefetch(self._final_audio(utterance, end), self._final_options(), self._key)

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

    def _final_audio(self, utterance: _Utterance, end: int) -> np.ndarray:
        """The audio a final decodes; a speculative final must build the very same array."""
        audio = self._buffer.slice(utterance.start, end)
        if 0 < audio.size < self.params.min_audio:
            # Whisper does poorly on very short clips; trailing silence is harmless.
            audio = np.concatenate([audio, np.zeros(self.params.min_audio - audio.size, np.float32)])
        return audio

    def _final_options(self) -> DecodeOptions:
        return DecodeOptions.final(self.params.language, self.params.word_timestamps, self.params.final_beam_size)

    def _close_utterance(self, reason: str, end: int | None = None) -> _ClosedUtterance | None:
        utterance = self._current
        if utterance is None:
            return None
        end = self._buffer.end if end is None else end
        utterance.closed = True
        self._current = None
        self._partial_requested = False
        self._last_utterance_end = end
        self._speech_run = []
        self._silence_run = 0
        audio = self._final_audio(utterance, end)
        if audio.size == 0:
            self.stats.utterances -= 1
            return None
        closed = _ClosedUtterance(utterance, audio, end, reason, time.perf_counter())
        self._finals.append(closed)
        self._final_wake.set()
        return closed

    def _enforce_length_limit(self) -> None:
        utterance = self._current
        if utterance is None:
            return
        p = self.params
        limit = p.max_utterance if p.enable_vad else p.segment_limit
        if self._buffer.end - utterance.start < limit:
            return
        cut = self._pause_point(utterance)
        reason = FinalReason.MAX_DURATION if p.enable_vad else FinalReason.BUFFER_FULL
        self._close_utterance(reason, cut)
        # Speech goes on: the rest is the start of the next utterance, no new onset.
        follower = self._open_utterance(cut)
        follower.last_speech_end = self._buffer.end

    def _pause_point(self, utterance: _Utterance) -> int:
        """Where to cut a long utterance: the middle of its longest recent pause (VAD),
        or of its quietest recent 100 ms (no VAD), in the second half of the utterance."""
        end = self._buffer.end
        search_start = max(utterance.start + (end - utterance.start) // 2,
                           end - seconds_to_samples(_CUT_SEARCH_SECONDS))
        history = [(w_end, prob) for w_end, prob in utterance.vad_history if w_end - CHUNK_SAMPLES >= search_start]
        if history:
            quiet = self.params.vad_threshold - _HYSTERESIS
            best, run_start, run = (0, 0), None, 0
            for w_end, prob in history:
                if prob < quiet:
                    run_start = w_end - CHUNK_SAMPLES if run == 0 else run_start
                    run += 1
                    if run > best[0]:
                        best = (run, run_start)
                else:
                    run = 0
            if best[0]:
                return best[1] + best[0] * CHUNK_SAMPLES // 2
            w_end, _ = min(history, key=lambda item: item[1])
            return w_end - CHUNK_SAMPLES // 2
        audio = self._buffer.slice(search_start, end)
        windows = audio.size // _CUT_WINDOW_SAMPLES
        if windows < 2:
            return end
        frames = audio[: windows * _CUT_WINDOW_SAMPLES].reshape(windows, _CUT_WINDOW_SAMPLES)
        energies = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
        return search_start + int(np.argmin(energies)) * _CUT_WINDOW_SAMPLES + _CUT_WINDOW_SAMPLES // 2

    def _maybe_request_partial(self) -> None:
        utterance = self._current
        p = self.params
        if utterance is None or not p.enable_partials or self._partial_requested or self._partial_running:
            return
        length = self._buffer.end - utterance.start
        if length >= p.min_audio and length - utterance.partial_audio_end >= p.partial_interval:
            self._partial_requested = True
            self._partial_wake.set()

    def _trim_buffer(self) -> None:
        keep_from = self._buffer.end - seconds_to_samples(_LOOKBACK_SECONDS)
        if self._current is not None:
            keep_from = min(keep_from, self._current.start)
        self._buffer.discard_before(keep_from)

    # --- control -------------------------------------------------------------------

    def reconfigure(self, params: StreamParams) -> None:
        """Apply new parameters from the next frame on; an open utterance stays open."""
        if params.enable_vad and self._vad is None:
            self._vad = SileroVad()
            self._vad_origin, self._vad_windows = self._buffer.end, 0
            self._silence_run = 0
            if self._current is not None:
                # Without VAD all of it counted as speech: silence is measured from here.
                self._current.last_speech_end = self._buffer.end
        elif not params.enable_vad:
            self._vad = None
            self._speech_run = []
        self.params = params

    def finalize_now(self, reason: str = FinalReason.FLUSH) -> "asyncio.Future[FinalResult | None]":
        """Close the open utterance now; the future resolves once its final is delivered
        (finals go out in order, so every earlier final is out too), or at once with None
        when no utterance was open."""
        closed = self._close_utterance(reason)
        if closed is not None:
            return closed.delivered
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        if not self._finals:
            done.set_result(None)
        else:
            # Nothing open, but earlier finals are on their way: resolve after them.
            self._finals[-1].delivered.add_done_callback(lambda _: done.done() or done.set_result(None))
        return done

    def interrupt(self) -> InterruptOutcome:
        """Drop the open utterance, its queued and in-flight partial work (barge-in).

        Finals of utterances already closed are still delivered: that speech was complete.
        """
        utterance = self._current
        dropped_jobs = self.engine.cancel_stream(self._key)
        processing_stopped = bool(dropped_jobs) or self._partial_running or self._partial_requested
        if utterance is not None:
            utterance.discarded = True
            utterance.closed = True
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
        if not self._stopping:
            self.finalize_now(reason)
            self._stopping = True
            self.engine.cancel_stream(self._key)
            self._final_wake.set()
            self._partial_wake.set()
        await asyncio.shield(self._final_task)
        if not self._partial_task.done():
            self._partial_task.cancel()
            try:
                await self._partial_task
            except asyncio.CancelledError:
                pass

    # --- the partial path ------------------------------------------------------------

    async def _partial_loop(self) -> None:
        while not self._stopping:
            await self._partial_wake.wait()
            self._partial_wake.clear()
            utterance = self._current
            if not self._partial_requested or utterance is None:
                continue
            self._partial_requested = False
            self._partial_running = True
            try:
                await self._run_partial(utterance)
            except Exception:
                logger.exception("partial path fault")
            finally:
                self._partial_running = False
            self._maybe_request_partial()

    async def _run_partial(self, utterance: _Utterance) -> None:
        requested_at = time.perf_counter()
        buffer = self._buffer
        start = utterance.start

        def latest_audio() -> np.ndarray:
            # Read by an engine worker when it takes the job: the freshest audio then.
            return buffer.slice(start, buffer.end)

        options = DecodeOptions.partial(self.params.language, utterance.prefix_tokens, self.params.partial_beam_size)
        try:
            transcript = await self.engine.transcribe(latest_audio, options, stream_key=self._key)
        except Superseded:
            return
        except SttError as exc:
            # A lost partial is superseded by the next one; only the final must not be lost.
            logger.warning("partial for %s failed: %s", utterance.utterance_id, exc.message)
            return
        covered = int(round(transcript.audio_seconds * SAMPLE_RATE))
        utterance.partial_audio_end = max(utterance.partial_audio_end, covered)
        if utterance.closed or not transcript.text:
            return  # nothing of an utterance follows its final
        elapsed = time.perf_counter() - requested_at
        if not transcript.cached:
            self.stats.processing_seconds += transcript.inference_seconds / transcript.batch_size
        stable, unstable = _agree(utterance, transcript.pieces, transcript.prefix_forced)
        utterance.partial_count += 1
        utterance.announced = True
        if utterance.first_partial_at is None:
            utterance.first_partial_at = time.perf_counter()
        self.stats.partials += 1
        self.stats.partial_latencies.append(elapsed)
        await self.listener.on_partial(PartialResult(
            utterance.utterance_id, transcript, start, covered, elapsed, utterance.partial_count,
            stable_text=stable, unstable_text=unstable,
        ))

    # --- the final path ----------------------------------------------------------------

    async def _final_loop(self) -> None:
        while True:
            await self._final_wake.wait()
            self._final_wake.clear()
            while self._finals:
                closed = self._finals[0]
                self._final_running = True
                result: FinalResult | None = None
                try:
                    result = await self._run_final(closed)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    logger.exception("final path fault: a stray cancellation")
                except Exception:
                    # A fault delivering one final must not stop the stream's later ones.
                    logger.exception("final path fault")
                finally:
                    self._final_running = False
                    self._finals.popleft()
                    if not closed.delivered.done():
                        closed.delivered.set_result(result)
            if self._stopping:
                return

    async def _run_final(self, closed: _ClosedUtterance) -> FinalResult:
        utterance = closed.utterance
        options = self._final_options()
        transcript, error = await self._transcribe_with_retries(closed.audio, options)
        elapsed = time.perf_counter() - closed.closed_at
        audio_samples = closed.end - utterance.start
        if transcript is not None:
            self.stats.finals += 1
            self.stats.samples_transcribed += audio_samples
            # A final served from the cache was decoded speculatively: the work was still done.
            self.stats.processing_seconds += transcript.inference_seconds / transcript.batch_size
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
            audio=closed.audio[:audio_samples],
            first_partial_seconds=(utterance.first_partial_at - utterance.opened_at
                                   if utterance.first_partial_at is not None else None),
            decode={
                "beam_size": options.beam_size,
                "word_timestamps": options.word_timestamps,
                "language": options.language,
                "window_seconds": transcript.window_seconds if transcript else None,
                "speculative": bool(transcript and transcript.cached),
                # This final's share of its (possibly batched) decode: the real-time factor.
                "inference_ms": (round(transcript.inference_seconds / transcript.batch_size * 1000)
                                 if transcript else None),
            },
        )
        await self.listener.on_final(result)
        return result

    async def _transcribe_with_retries(
        self, audio: np.ndarray, options: DecodeOptions
    ) -> tuple[Transcript | None, SttError | None]:
        attempts = 1 + max(0, settings.STT_FINAL_RETRIES)
        for attempt in range(attempts):
            try:
                return await self.engine.transcribe(audio, options, stream_key=self._key), None
            except Superseded:
                # The job this final had joined was withdrawn by its owner: ask again.
                continue
            except SttError as exc:
                retryable = exc.code in {"transcription_failed", "transcription_timeout"}
                if not retryable or attempt == attempts - 1:
                    return None, exc
                delay = settings.STT_RETRY_BASE_DELAY * (2 ** attempt)
                logger.warning("final failed (%s); retry %d in %.1f s", exc.code, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _agree(utterance: _Utterance, pieces: tuple[Piece, ...], forced_prefix: bool) -> tuple[str, str]:
    """LocalAgreement: commit the words this hypothesis shares with the previous one.

    `pieces` is the hypothesis after the committed words when they were forced as the
    decoder's prefix, else the whole hypothesis (whose start must then match them).
    Returns (stable text, unstable text).
    """
    if forced_prefix:
        tail = list(pieces)
    else:
        committed = len(utterance.committed)
        head = [_norm(p.text) for p in pieces[:committed]]
        if head != [_norm(p.text) for p in utterance.committed]:
            # The prefix was too long to force and the model strayed: keep the
            # committed words, show the rest of this hypothesis as it is.
            tail = list(pieces[committed:]) if len(pieces) > committed else []
        else:
            tail = list(pieces[committed:])
    agreed = 0
    for previous, current in zip(utterance.tentative, tail):
        if _norm(previous.text) != _norm(current.text) or not _norm(current.text):
            break
        agreed += 1
    utterance.committed.extend(tail[:agreed])
    utterance.tentative = tail[agreed:]
    stable = "".join(p.text for p in utterance.committed).strip()
    unstable = "".join(p.text for p in utterance.tentative).strip()
    return stable, unstable


def _norm(text: str) -> str:
    return " ".join(normalize_text(text))


def _energy_level(rms: float) -> float:
    if rms <= 0:
        return 0.0
    dbfs = 20 * math.log10(rms)
    return round(min(1.0, max(0.0, (dbfs + 60) / 60)), 3)
