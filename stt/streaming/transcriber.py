"""The transcriber: a stream's segmenter events turned into engine requests.

A StreamingTranscriber feeds one session's audio to its Segmenter and turns what the
segmenter decides into partial and final requests to the engine, reporting the
results to a StreamListener. It knows nothing of WebSockets or message shapes.

The segmenter's work for a frame (VAD above all) runs in a worker thread of a small
pool shared by the process's streams: the event loop, which serves every session,
only schedules it. A stream's frames are segmented one at a time, in order; its
control calls (flush, interrupt, reconfigure) wait for a frame in progress.

Partials and finals run on two independent paths (finals: stt/streaming/finals.py),
so a final never waits behind its own stream's partial. Partials are stabilized by
LocalAgreement: words that two consecutive hypotheses agree on are committed, forced
as the decoder's prefix from then on (the final's too), and never revised. Partials
pause while the speaker does.

Semantic endpointing: early in a pause the final is decoded ahead of time, and its
text decides how much silence ends the utterance (stt/streaming/endpointing.py); a
finished sentence ends on that very decode. The committed words stay frozen while it
runs, so the final that follows is the same decode, answered from the engine's cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from stt.audio import SAMPLE_RATE, seconds_to_samples
from stt.engine import DecodeOptions, SpeechEngine, Superseded
from stt.errors import SttError
from stt.streaming.agreement import sure_pieces
from stt.streaming.endpointing import JUDGEMENT_SILENCE_SECONDS, Completeness, completeness, required_silence
from stt.streaming.finals import FinalPath, PendingFinal, UtteranceProgress
from stt.streaming.segmenter import Segmenter, SegmentEvent, SpeculativeFinal, Utterance, UtteranceClosed
from stt.streaming.types import (
    FinalReason,
    InterruptOutcome,
    PartialResult,
    SpeechEnd,
    SpeechStart,
    StreamListener,
    StreamParams,
    StreamStats,
)

logger = logging.getLogger(__name__)

# The first partial of an utterance: asked for once this much speech follows the
# onset's pre-roll, and, while none has been shown, again after this much new audio.
FIRST_PARTIAL_SPEECH = seconds_to_samples(0.16)
FIRST_PARTIAL_RETRY = seconds_to_samples(0.096)
# Pauses are not judged while this many finals wait for the engine (under load an extra
# decode for a pause that may end nothing delays every stream's finals).
JUDGE_SKIP_FINALS_WAITING = 2
# Hypotheses on less audio than this (the onset's pre-roll included) commit nothing:
# tiny.en's guesses at a fraction of a second agree on wrong words too often.
MIN_COMMIT_AUDIO = seconds_to_samples(1.0)
# ... and only words the decoder gave this probability or more (and the words before
# them): a misheard name or word is usually an unsure one, and the final must keep
# whatever is committed.
MIN_COMMIT_WORD_PROBABILITY = 0.5
# Partials pause while the speaker does: a pause adds no words to show.
PAUSE_SAMPLES = seconds_to_samples(JUDGEMENT_SILENCE_SECONDS)

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
        self._progress: weakref.WeakKeyDictionary[Utterance, UtteranceProgress] = weakref.WeakKeyDictionary()
        self._partial_for: Utterance | None = None  # the open utterance a partial is requested for
        self._partial_running = False
        self._partial_wake = asyncio.Event()
        self._stopping = False
        self._judgements: set[asyncio.Task] = set()
        self._finals = FinalPath(engine, listener, self.stats, self._key)
        self._partial_task = asyncio.ensure_future(self._partial_loop())

    # --- state for monitoring ------------------------------------------------------

    @property
    def current_utterance_id(self) -> str | None:
        current = self._segmenter.current
        return current.utterance_id if current else None

    @property
    def processing(self) -> bool:
        return self._partial_running or self._finals.running

    @property
    def buffering(self) -> bool:
        return self._segmenter.current is not None

    @property
    def stream_key(self) -> object:
        """This stream's key in the engine's scheduler."""
        return self._key

    def over_budget(self, seconds: float) -> None:
        """This stream's client is over its audio budget for the next `seconds`: its
        decodes yield to streams within theirs (SpeechEngine.over_budget)."""
        self.engine.over_budget(self._key, seconds)

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
                options = self._freeze_final_options(event.utterance, event.speech_end)
                if event.judge and self.engine.finals_waiting >= JUDGE_SKIP_FINALS_WAITING:
                    # The engine is behind on finals: no extra decode for a pause that may
                    # not end anything; the usual end silence and its speculation apply.
                    self._endpoint_later(event, self.params.end_silence, None)
                elif event.judge:
                    self._start_judgement(event, options)
                else:
                    self.engine.prefetch(event.audio, options, self._key)
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

    def _queue_final(self, closed: UtteranceClosed) -> PendingFinal:
        if self._partial_for is closed.utterance:
            self._partial_for = None
        progress = self._progress_of(closed.utterance)
        decode = progress.final_decode if progress.frozen_at == closed.utterance.last_speech_end else None
        return self._finals.queue(closed, progress, decode or self._finals.final_decode(self.params, progress))

    def _freeze_final_options(self, utterance: Utterance, speech_end: int) -> DecodeOptions:
        progress = self._progress_of(utterance)
        if progress.frozen_at != speech_end or progress.final_decode is None:
            progress.frozen_at, progress.final_decode = speech_end, self._finals.final_decode(self.params, progress)
        return progress.final_decode.options

    def _progress_of(self, utterance: Utterance) -> UtteranceProgress:
        return self._progress.setdefault(utterance, UtteranceProgress())

    def _maybe_request_partial(self) -> None:
        utterance = self._segmenter.current
        p = self.params
        if (utterance is None or not p.enable_partials or self._partial_for is not None or self._partial_running
                or self._segmenter.silence_samples >= PAUSE_SAMPLES):
            return
        progress = self._progress_of(utterance)
        length = self._segmenter.buffer.end - utterance.start
        if progress.first_partial_at is None:  # a first hypothesis soon, marked unstable
            due = length >= min(p.min_audio, p.speech_pad + FIRST_PARTIAL_SPEECH) and (
                length - progress.partial_audio_end >= min(p.partial_interval, FIRST_PARTIAL_RETRY))
        else:
            due = length >= p.min_audio and length - progress.partial_audio_end >= p.partial_interval
        if due:
            self._partial_for = utterance
            self._partial_wake.set()

    # --- semantic endpointing ------------------------------------------------------

    def _start_judgement(self, event: SpeculativeFinal, options: DecodeOptions) -> None:
        task = asyncio.ensure_future(self._judge(event, options))
        self._judgements.add(task)
        task.add_done_callback(self._judgements.discard)

    async def _judge(self, event: SpeculativeFinal, options: DecodeOptions) -> None:
        """Decode the final early; its text decides the silence that ends the utterance
        (stt/streaming/endpointing.py). A complete one ends it on this very audio, so the
        final is this decode, answered from the engine's cache."""
        try:
            transcript = await self.engine.transcribe(event.audio, options, stream_key=self._key)
        except (Superseded, SttError):
            return  # the usual end silence applies
        if not self._accepting or event.utterance.closed or transcript.suspicious:
            return  # (a text that repeats itself or its context says nothing of the turn)
        verdict = completeness(transcript.text)
        silence = required_silence(verdict, self.params.eagerness, self.params.end_silence)
        await asyncio.shield(self._endpoint_later(event, silence, event.end if verdict is Completeness.COMPLETE else None))

    def _endpoint_later(self, event: SpeculativeFinal, silence: int, end: int | None) -> asyncio.Future:
        """Apply an endpoint judgement after the frames pushed so far."""
        self._frame = frame = asyncio.ensure_future(self._apply_endpoint(event, silence, end, self._frame))
        return frame

    async def _apply_endpoint(self, event: SpeculativeFinal, silence: int, end: int | None,
                              previous: asyncio.Future | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # in order with the frames
        with self._segmenter_lock:
            closed = self._segmenter.endpoint(event.utterance, event.speech_end, silence, end)
        if closed is not None:
            await self._dispatch([closed])

    # --- control -------------------------------------------------------------------

    def reconfigure(self, params: StreamParams) -> None:
        """Apply new parameters from the next frame on; an open utterance stays open."""
        with self._segmenter_lock:
            self._segmenter.reconfigure(params)
        if params.prompt != self.params.prompt:
            # New keyterms or prompt text: earlier finals, decoded without them, must not
            # teach the old spelling.
            self._finals.context = ""
        self.params = params

    def finalize_now(self, reason: str = FinalReason.FLUSH) -> "asyncio.Future[FinalResult | None]":
        """Close the open utterance now; the future resolves once its final is delivered
        (finals go out in order, so every earlier final is out too), or at once with None
        when no utterance was open."""
        with self._segmenter_lock:
            closed = self._segmenter.close(reason)
        if closed is not None:
            return self._queue_final(closed).delivered
        return self._finals.after_pending()  # nothing open: resolves after earlier finals

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
            self._partial_wake.set()
        await self._finals.stop()
        for judgement in list(self._judgements):
            judgement.cancel()
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

    async def _run_partial(self, utterance: Utterance, progress: UtteranceProgress) -> None:
        requested_at = time.perf_counter()
        buffer = self._segmenter.buffer
        start = utterance.start

        def latest_audio() -> np.ndarray:
            # Read by an engine worker when it takes the job: the freshest audio then.
            return buffer.slice(start, buffer.end)

        agreement = progress.agreement
        p = self.params
        options = DecodeOptions.partial(p.language, agreement.prefix_tokens, p.partial_beam_size, prompt=p.prompt,
                                        word_timestamps=True)
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
        frozen = progress.frozen_at == utterance.last_speech_end  # its final is being decoded
        # Words are committed (and forced on the final) only from hypotheses on enough audio.
        commit = not frozen and covered >= MIN_COMMIT_AUDIO
        new = transcript.pieces if transcript.prefix_forced else transcript.pieces[len(agreement.committed):]
        sure = sure_pieces(new, transcript.words, agreement.committed, MIN_COMMIT_WORD_PROBABILITY)
        # Three hypotheses that agree may commit past an unsure first word of the utterance only.
        sure_past_first = sure_pieces(new, transcript.words, agreement.committed, MIN_COMMIT_WORD_PROBABILITY,
                                      first_exempt=not agreement.committed)
        stable, _ = agreement.update(transcript.pieces, transcript.prefix_forced, commit=commit, limit=sure,
                                     three_agree_limit=sure_past_first)
        unstable = agreement.shown_unstable_text
        progress.partial_count += 1
        if progress.first_partial_at is None:
            progress.first_partial_at = time.perf_counter()
        self.stats.partials += 1
        self.stats.partial_latencies.append(elapsed)
        await self.listener.on_partial(PartialResult(
            utterance.utterance_id, transcript, start, covered, elapsed, progress.partial_count,
            stable_text=stable, unstable_text=unstable,
        ))
