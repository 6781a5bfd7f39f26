"""A stream's final path: closed utterances decoded and delivered one at a time, in order.

Finals run apart from partials, so a final never waits behind its own stream's
partial. Each final keeps the words its partials committed (forced as the decoder's
prefix) and reads the stream's previous finals as context (Whisper's "previous text"),
so a phrase is decoded as part of what was said before it, not alone: its prompt is the
session's prompt text, the previous finals, then the keyterms (StreamParams.final_prompt).
A final that fails is retried (STT_FINAL_RETRIES); a fault delivering one never stops
the next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from django.conf import settings

from stt.engine import DecodeOptions, SpeechEngine, Superseded, Transcript
from stt.engine.decoding import says_it_twice
from stt.errors import SttError
from stt.evaluation import normalize_text
from stt.streaming.agreement import LocalAgreement, keep_committed
from stt.streaming.segmenter import UtteranceClosed
from stt.streaming.types import FinalResult, StreamListener, StreamParams, StreamStats

logger = logging.getLogger("stt.streaming.transcriber")

# The previous finals' text given to the next final as context (its last words).
CONTEXT_WORDS = 40


@dataclass(frozen=True)
class FinalDecode:
    """How a final is decoded: `options`, whose prompt holds the previous finals' `context`;
    `alone`, the same without it (for a final that reads its context back)."""

    options: DecodeOptions
    context: str = ""
    alone: DecodeOptions | None = None  # None when there is no context


@dataclass
class UtteranceProgress:
    """An utterance's partials so far, and the options its final is decoded with."""

    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    partial_count: int = 0
    partial_audio_end: int = 0  # utterance length the last partial covered
    first_partial_at: float | None = None
    # The utterance's last_speech_end when its final was first decoded ahead of time:
    # while speech has not resumed since, the committed words are frozen and the final
    # is decoded with `final_decode` (so the speculative decode is the final's own).
    frozen_at: int = -1
    final_decode: FinalDecode | None = None


@dataclass
class PendingFinal:
    closed: UtteranceClosed
    progress: UtteranceProgress
    # Decoded with the options in force when the utterance closed or was first decoded
    # ahead of time (a configure that arrives later applies to the next one).
    decode: FinalDecode
    # Resolved once the listener has been given this utterance's final.
    delivered: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FinalPath:
    """Decodes a stream's closed utterances in order and hands each final to the listener."""

    def __init__(self, engine: SpeechEngine, listener: StreamListener, stats: StreamStats, stream_key: Any) -> None:
        self.engine = engine
        self.listener = listener
        self.stats = stats
        self.stream_key = stream_key
        self.pending: deque[PendingFinal] = deque()
        self.running = False
        self.context = ""  # the last finals' text, the context of the next final
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.ensure_future(self._loop())

    def queue(self, closed: UtteranceClosed, progress: UtteranceProgress, decode: FinalDecode) -> PendingFinal:
        pending = PendingFinal(closed, progress, decode)
        self.pending.append(pending)
        self._wake.set()
        return pending

    def after_pending(self) -> "asyncio.Future[None]":
        """Resolves once every final queued so far is delivered."""
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        if not self.pending:
            done.set_result(None)
        else:
            self.pending[-1].delivered.add_done_callback(lambda _: done.done() or done.set_result(None))
        return done

    def final_decode(self, params: StreamParams, progress: UtteranceProgress) -> FinalDecode:
        """A final keeps the committed words (forced as its prefix) and reads the session's
        prompt text, the previous finals and the keyterms as what came before."""
        options = DecodeOptions.final(params.language, params.word_timestamps, params.final_beam_size,
                                      prompt=params.final_prompt(self.context), prefix=progress.agreement.prefix_tokens)
        if not self.context:
            return FinalDecode(options)
        # With context, a final that loops or repeats is decoded again without it (a
        # short decode), not first redone the long way with it (3-4 times the cost): the
        # context is what made it repeat (every long-form redo of a run of 8 streams was
        # of a final with context, of 2-3 s of speech).
        return FinalDecode(replace(options, redo_long_form=False), self.context,
                           replace(options, prompt=params.prompt))

    async def stop(self) -> None:
        """Deliver what is queued, then end."""
        self._stopping = True
        self._wake.set()
        await asyncio.shield(self._task)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                pending = self.pending[0]
                self.running = True
                result: FinalResult | None = None
                try:
                    result = await self._run(pending)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    logger.exception("final path fault: a stray cancellation")
                except Exception:
                    # A fault delivering one final must not stop the stream's later ones.
                    logger.exception("final path fault")
                finally:
                    self.running = False
                    self.pending.popleft()
                    if not pending.delivered.done():
                        pending.delivered.set_result(result)
            if self._stopping:
                return

    async def _run(self, pending: PendingFinal) -> FinalResult:
        closed, progress = pending.closed, pending.progress
        utterance = closed.utterance
        decode = pending.decode
        transcript, error = await self._transcribe_with_retries(closed.audio, decode.options)
        if (transcript is not None and decode.alone is not None
                and (transcript.suspicious or repeats(decode.context, transcript.text)
                     or says_it_twice(transcript.text))):
            # Whisper may read its prompt back, or say a phrase twice, on audio that ends
            # abruptly: decode without the context; words really said again come again.
            # (The context it read, not the stream's now: behind a backlog they differ.)
            transcript, error = await self._transcribe_with_retries(closed.audio, decode.alone)
        elapsed = time.perf_counter() - closed.closed_at
        audio_samples = closed.end - utterance.start
        if transcript is not None:
            transcript = with_committed_words(transcript, progress)
            self.context = " ".join(f"{self.context} {transcript.text}".split()[-CONTEXT_WORDS:])
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
            decode=decode_facts(decode.options, transcript),
        )
        await self.listener.on_final(result)
        return result

    async def _transcribe_with_retries(
        self, audio: np.ndarray, options: DecodeOptions
    ) -> tuple[Transcript | None, SttError | None]:
        attempts = 1 + max(0, settings.STT_FINAL_RETRIES)
        for attempt in range(attempts):
            try:
                return await self.engine.transcribe(audio, options, stream_key=self.stream_key), None
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


def repeats(context: str, text: str, min_words: int = 3) -> bool:
    """`text` is, word for word, a run of at least `min_words` words of `context`."""
    said, heard = normalize_text(context), normalize_text(text)
    if len(heard) < min_words:
        return False
    return any(said[i:i + len(heard)] == heard for i in range(len(said) - len(heard) + 1))


def with_committed_words(transcript: Transcript, progress: UtteranceProgress) -> Transcript:
    """The final's transcript starting with the words the partials committed."""
    text = keep_committed(progress.agreement.stable_text, transcript.text)
    return transcript if text == transcript.text else replace(transcript, text=text)


def decode_facts(options: DecodeOptions, transcript: Transcript | None) -> dict:
    """The decode settings of a final, as reported with it."""
    return {
        "beam_size": options.beam_size,
        "word_timestamps": options.word_timestamps,
        "language": options.language,
        # What the decoder read as coming before: the session's prompt text, the previous
        # finals' last words, then the keyterms; "" for none.
        "prompt": options.prompt,
        "window_seconds": transcript.window_seconds if transcript else None,
        "speculative": bool(transcript and transcript.cached),
        # This final's share of its (possibly batched) decode: the real-time factor.
        "inference_ms": (round(transcript.inference_seconds / transcript.batch_size * 1000)
                         if transcript else None),
    }
