"""The transcriber: a stream's segmenter events turned into engine requests.

A StreamingTranscriber feeds one session's audio to its Segmenter and turns what the
segmenter decides into partial and final requests to the engine, reporting the
results to a StreamListener. It knows nothing of WebSockets or message shapes.

The segmenter's work for a frame (VAD above all) runs in a worker thread of a small
pool shared by the process's streams: the event loop, which serves every session,
only schedules it. A stream's frames are segmented one at a time, in order; its
control calls (flush, interrupt, reconfigure) wait for a frame in progress.

Partials and finals run on two independent paths, so a final never waits behind its
own stream's partial. Partials are stabilized by LocalAgreement: words that two
consecutive hypotheses agree on are committed, forced as the decoder's prefix from
then on, and never revised within the utterance.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings

from stt.audio import SAMPLE_RATE
from stt.engine import DecodeOptions, SpeechEngine, Superseded, Transcript
from stt.errors import SttError
from stt.streaming.agreement import LocalAgreement
from stt.streaming.segmenter import Segmenter, SegmentEvent, SpeculativeFinal, Utterance, UtteranceClosed
from stt.streaming.types import (
    FinalReason,
    FinalResult,
    InterruptOutcome,
    PartialResult,
    SpeechEnd,
    SpeechStart,
    StreamListener,
    StreamParams,
    StreamStats,
)

logger = logging.getLogger(__name__)

_shared_pool: ThreadPoolExecutor | None = None
_shared_pool_lock = threading.Lock()


def segmenter_pool() -> ThreadPoolExecutor:
    """The process's pool for segmenter work, made on first use. A few threads are
    enough: a frame's VAD takes milliseconds, and ONNX Runtime releases the GIL."""
    global _shared_pool
    with _shared_pool_lock:
        if _shared_pool is None:
            _shared_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                              thread_name_prefix="stt-segmenter")
        return _shared_pool


@dataclass
class _Progress:
    """An utterance's partials so far."""

    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    partial_count: int = 0
    partial_audio_end: int = 0  # utterance length the last partial covered
    first_partial_at: float | None = None


@dataclass
class _PendingFinal:
    closed: UtteranceClosed
    progress: _Progress
    # Decoded with the options in force when the utterance closed (a configure that
    # arrives while it waits for the model applies to the next one).
    options: DecodeOptions
    # Resolved once the listener has been given this utterance's final.
    delivered: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class StreamingTranscriber:
    """One session's audio -> utterances -> partials and finals."""

    def __init__(self, params: StreamParams, engine: SpeechEngine, listener: StreamListener,
                 executor: Executor | None = None) -> None:
        """`executor` runs the segmenter's work for each frame (default: segmenter_pool())."""
        self.params = params
        self.engine = engine
        self.listener = listener
        self.stats = StreamStats()
        self._key = object()  # this stream, for the engine's scheduler
        self._executor = executor if executor is not None else segmenter_pool()
        self._segmenter = Segmenter(params, self.stats)
        # Held by whoever uses the segmenter: a frame's worker, or a control call on the loop.
        self._segmenter_lock = threading.Lock()
        self._frame: asyncio.Future | None = None  # the frame being segmented and acted on
        self._accepting = True
        # Partials so far of each utterance; an entry goes with its utterance.
        self._progress: weakref.WeakKeyDictionary[Utterance, _Progress] = weakref.WeakKeyDictionary()
        self._finals: deque[_PendingFinal] = deque()
        self._partial_for: Utterance | None = None  # the open utterance a partial is requested for
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
        current = self._segmenter.current
        return current.utterance_id if current else None

    @property
    def processing(self) -> bool:
        return self._partial_running or self._final_running

    @property
    def buffering(self) -> bool:
        return self._segmenter.current is not None

    # --- audio in ----------------------------------------------------------------------

    async def push_audio(self, samples: np.ndarray) -> None:
        """Take one frame of audio: segmented in a worker thread, then acted on here.

        The frame is processed to the end even if the caller is cancelled meanwhile,
        and after the frame pushed before it."""
        if self._stopping or not self._accepting:
            return
        self._frame = frame = asyncio.ensure_future(self._process_frame(samples, self._frame))
        await asyncio.shield(frame)

    async def _process_frame(self, samples: np.ndarray, previous: asyncio.Future | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # its error, if any, was its own caller's
        loop = asyncio.get_running_loop()
        events = await loop.run_in_executor(self._executor, self._segment, samples)
        await self._dispatch(events)

    def _segment(self, samples: np.ndarray) -> list[SegmentEvent]:
        with self._segmenter_lock:
            return self._segmenter.push(samples)

    async def _dispatch(self, events: list[SegmentEvent]) -> None:
        """Act on what the segmenter decided for a frame, in its order. A listener's
        fault is raised after the rest: the segmenter has moved on, and a final it
        closed must not be lost."""
        fault: Exception | None = None
        for event in events:
            if isinstance(event, SpeechStart):
                try:
                    await self.listener.on_speech_start(event)
                except Exception as exc:
                    fault = fault or exc
            elif isinstance(event, SpeculativeFinal):
                self.engine.prefetch(event.audio, self._final_options(), self._key)
            elif isinstance(event, UtteranceClosed):
                try:  # told before the final is asked for, so it always precedes the final
                    await self.listener.on_speech_end(SpeechEnd(
                        event.utterance.utterance_id, event.utterance.start, event.end, event.reason,
                        event.next_utterance_id))
                except Exception as exc:
                    fault = fault or exc
                self._queue_final(event)
        self._maybe_request_partial()
        if fault is not None:
            raise fault

    def _queue_final(self, closed: UtteranceClosed) -> _PendingFinal:
        if self._partial_for is closed.utterance:
            self._partial_for = None
        pending = _PendingFinal(closed, self._progress_of(closed.utterance), self._final_options())
        self._finals.append(pending)
        self._final_wake.set()
        return pending

    def _final_options(self) -> DecodeOptions:
        p = self.params
        return DecodeOptions.final(p.language, p.word_timestamps, p.final_beam_size, prompt=p.prompt)

    def _progress_of(self, utterance: Utterance) -> _Progress:
        return self._progress.setdefault(utterance, _Progress())

    def _maybe_request_partial(self) -> None:
        utterance = self._segmenter.current
        p = self.params
        if utterance is None or not p.enable_partials or self._partial_for is not None or self._partial_running:
            return
        length = self._segmenter.buffer.end - utterance.start
        if length >= p.min_audio and length - self._progress_of(utterance).partial_audio_end >= p.partial_interval:
            self._partial_for = utterance
            self._partial_wake.set()

    # --- control -------------------------------------------------------------------

    def reconfigure(self, params: StreamParams) -> None:
        """Apply new parameters from the next frame on; an open utterance stays open."""
        with self._segmenter_lock:
            self._segmenter.reconfigure(params)
        self.params = params

    def finalize_now(self, reason: str = FinalReason.FLUSH) -> "asyncio.Future[FinalResult | None]":
        """Close the open utterance now; the future resolves once its final is delivered
        (finals go out in order, so every earlier final is out too), or at once with None
        when no utterance was open."""
        with self._segmenter_lock:
            closed = self._segmenter.close(reason)
        if closed is not None:
            return self._queue_final(closed).delivered
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
        dropped_jobs = self.engine.cancel_stream(self._key)
        processing_stopped = bool(dropped_jobs) or self._partial_running or self._partial_for is not None
        with self._segmenter_lock:
            utterance = self._segmenter.interrupt()
        self._partial_for = None
        return InterruptOutcome(
            discarded_utterance_id=utterance.utterance_id if utterance else None,
            buffer_cleared=True,
            processing_stopped=processing_stopped or utterance is not None,
        )

    async def close(self, reason: str) -> None:
        """Stop taking audio, finalize what is pending (a frame in progress included),
        and deliver it."""
        self._accepting = False
        frame = self._frame
        if frame is not None and not frame.done() and frame is not asyncio.current_task():
            await asyncio.wait([frame])
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
            utterance, self._partial_for = self._partial_for, None
            if utterance is None or utterance is not self._segmenter.current:
                continue
            self._partial_running = True
            try:
                await self._run_partial(utterance, self._progress_of(utterance))
            except Exception:
                logger.exception("partial path fault")
            finally:
                self._partial_running = False
            self._maybe_request_partial()

    async def _run_partial(self, utterance: Utterance, progress: _Progress) -> None:
        requested_at = time.perf_counter()
        buffer = self._segmenter.buffer
        start = utterance.start

        def latest_audio() -> np.ndarray:
            # Read by an engine worker when it takes the job: the freshest audio then.
            return buffer.slice(start, buffer.end)

        agreement = progress.agreement
        p = self.params
        options = DecodeOptions.partial(p.language, agreement.prefix_tokens, p.partial_beam_size, prompt=p.prompt)
        try:
            transcript = await self.engine.transcribe(latest_audio, options, stream_key=self._key)
        except Superseded:
            return
        except SttError as exc:
            # A lost partial is superseded by the next one; only the final must not be lost.
            logger.warning("partial for %s failed: %s", utterance.utterance_id, exc.message)
            return
        covered = int(round(transcript.audio_seconds * SAMPLE_RATE))
        progress.partial_audio_end = max(progress.partial_audio_end, covered)
        if utterance.closed or not transcript.text:
            return  # nothing of an utterance follows its final
        elapsed = time.perf_counter() - requested_at
        if not transcript.cached:
            self.stats.processing_seconds += transcript.inference_seconds / transcript.batch_size
        stable, unstable = agreement.update(transcript.pieces, transcript.prefix_forced)
        progress.partial_count += 1
        if progress.first_partial_at is None:
            progress.first_partial_at = time.perf_counter()
        self.stats.partials += 1
        self.stats.partial_latencies.append(elapsed)
        await self.listener.on_partial(PartialResult(
            utterance.utterance_id, transcript, start, covered, elapsed, progress.partial_count,
            stable_text=stable, unstable_text=unstable,
        ))

    # --- the final path ----------------------------------------------------------------

    async def _final_loop(self) -> None:
        while True:
            await self._final_wake.wait()
            self._final_wake.clear()
            while self._finals:
                pending = self._finals[0]
                self._final_running = True
                result: FinalResult | None = None
                try:
                    result = await self._run_final(pending)
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
                    if not pending.delivered.done():
                        pending.delivered.set_result(result)
            if self._stopping:
                return

    async def _run_final(self, pending: _PendingFinal) -> FinalResult:
        closed, progress = pending.closed, pending.progress
        utterance = closed.utterance
        options = pending.options
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
            partial_count=progress.partial_count,
            processing_seconds=elapsed,
            announced=utterance.announced or progress.partial_count > 0,
            audio=closed.audio[:audio_samples],
            first_partial_seconds=(progress.first_partial_at - utterance.opened_at
                                   if progress.first_partial_at is not None else None),
            decode=_decode_facts(options, transcript),
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


def _decode_facts(options: DecodeOptions, transcript: Transcript | None) -> dict:
    """The decode settings of a final, as reported with it."""
    return {
        "beam_size": options.beam_size,
        "word_timestamps": options.word_timestamps,
        "language": options.language,
        "prompt": options.prompt,  # what biased it (keyterms), "" for none
        "window_seconds": transcript.window_seconds if transcript else None,
        "speculative": bool(transcript and transcript.cached),
        # This final's share of its (possibly batched) decode: the real-time factor.
        "inference_ms": (round(transcript.inference_seconds / transcript.batch_size * 1000)
                         if transcript else None),
    }
