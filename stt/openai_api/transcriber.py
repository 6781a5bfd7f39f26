"""A file through the engine and into the history, chunk by chunk.

The file is cut at pauses, and what is not speech left out (chunks.py); each chunk is
one engine job of kind FILE, queued below every live stream's work. Chunks go one at a
time, in order: a file never holds more than one job in the queue, so it takes turns
with live streams instead of flooding the queue, and its text can be streamed as it
comes. Each chunk with text is
kept in the history as an utterance of one session whose source is `file`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

import numpy as np

from stt.audio import samples_to_ms
from stt.engine import DecodeOptions, SpeechEngine, Transcript
from stt.errors import SttError
from stt.openai_api.chunks import SAMPLE_RATE, VoiceDetector, iter_chunks
from stt.vad import SileroVad
from stt.openai_api.formats import ChunkText, FileTranscript, TimedWord
from stt.openai_api.requests import TranscriptionRequest
from stt.persistence import FinalFacts, HistoryWriter, SessionFacts, final_write, session_write
from stt.protocol import word_timings

if TYPE_CHECKING:
    from stt.openai_api.uploads import UploadTicket

logger = logging.getLogger(__name__)

RETRIED = ("transcription_failed", "transcription_timeout")


@dataclass(frozen=True)
class FileSettings:
    """What the file path reads of the settings, read when a file starts."""

    chunk_seconds: float
    store_audio: bool
    retries: int
    retry_base_delay: float
    server_id: str | None = None  # the process's (stt.liveness): its lost-process sweep closes the row


@dataclass(frozen=True)
class Upload:
    """One request's audio and who sent it."""

    request: TranscriptionRequest
    audio: np.ndarray  # 16 kHz mono float32
    principal: str  # the API key's name, or "anonymous"
    client_address: str
    # Its admission (uploads.py): the VAD steps run on the file pool, and the server's
    # stop (shutdown) ends it between chunks. None: the loop's default pool, no stop.
    ticket: "UploadTicket | None" = None


class FileTranscriber:
    """Transcribes uploads on the process's engine; records them in the history."""

    def __init__(self, engine: SpeechEngine, history: HistoryWriter, settings: Callable[[], FileSettings],
                 vad_factory: Callable[[], VoiceDetector] = SileroVad) -> None:
        self.engine = engine
        self.history = history
        self._settings = settings
        self._vad_factory = vad_factory

    async def transcribe(self, upload: Upload) -> FileTranscript:
        """The whole transcript (SttError if a chunk fails after its retries)."""
        transcript = self.empty_transcript(upload)
        async for chunk in self.chunks(upload):
            transcript.chunks.append(chunk)
            if transcript.language is None and chunk.language:
                transcript.language = chunk.language  # detected (multilingual models)
        return transcript

    def empty_transcript(self, upload: Upload) -> FileTranscript:
        return FileTranscript(upload.audio.size / SAMPLE_RATE, upload.request.language or self._model_language(),
                              upload.request.temperature)

    async def chunks(self, upload: Upload) -> AsyncIterator[ChunkText]:
        """Each chunk's text, in order, as the engine gives it."""
        settings = self._settings()
        planned = iter_chunks(upload.audio, settings.chunk_seconds, self._vad_factory)
        record = self._session_facts(upload, settings)
        self.history.write_later(session_write(record))
        options = DecodeOptions.file(upload.request.language, upload.request.word_timestamps,
                                     prompt=upload.request.prompt, temperature=upload.request.temperature)
        stream_key = f"file:{record.connection_id}"
        summary = {"utterances": 0, "finals": 0, "audio_received_s": round(upload.audio.size / SAMPLE_RATE, 3),
                   "audio_transcribed_s": 0.0}
        reason = "client_disconnected"
        try:
            while (chunk := await _blocking(upload, next, planned, None)) is not None:
                start, end = chunk.start, chunk.end
                audio = upload.audio[start:end]
                decoded = self._decode(audio, options, stream_key, settings)
                transcript = await _unless_stopped(upload, upload.ticket.in_engine_turn(decoded)
                                                   if upload.ticket is not None else decoded)
                summary["audio_transcribed_s"] = round(summary["audio_transcribed_s"] + audio.size / SAMPLE_RATE, 3)
                if transcript.text:
                    summary["utterances"] += 1
                    summary["finals"] += 1
                    await self.history.write(final_write(self._final_facts(record, start, end, audio, transcript,
                                                                           options, settings)))
                yield _placed(transcript, start, end)
            reason = "completed"
        except SttError as exc:
            reason = exc.code
            raise
        except Exception as exc:
            reason = getattr(exc, "reason", "internal_error")  # UploadStopped: server_shutdown
            raise
        finally:
            record.ended_at, record.close_reason, record.summary = datetime.now(timezone.utc), reason, summary
            self.history.write_later(session_write(record))

    async def _decode(self, audio: np.ndarray, options: DecodeOptions, stream_key: str,
                      settings: FileSettings) -> Transcript:
        """One chunk, retried like a live final (STT_FINAL_RETRIES, doubling delays)."""
        for attempt in range(settings.retries + 1):
            try:
                return await self.engine.transcribe(audio, options, stream_key)
            except SttError as exc:
                if exc.code not in RETRIED or attempt == settings.retries:
                    raise
                logger.warning("file chunk failed (%s), retry %d", exc.code, attempt + 1)
                await asyncio.sleep(settings.retry_base_delay * 2 ** attempt)
        raise AssertionError("unreachable")

    def _model_language(self) -> str | None:
        info = self.engine.info
        return None if info is None or info.multilingual else "en"

    def _session_facts(self, upload: Upload, settings: FileSettings) -> SessionFacts:
        connection_id = str(uuid.uuid4())
        info = self.engine.info
        config = upload.request.as_config()
        return SessionFacts(
            connection_id=connection_id, session_id=f"file-{connection_id[:8]}", user_id=None, conversation_id=None,
            client_address=upload.client_address, profile="", config=config,
            effective_config={**config, "api_key": upload.principal,
                              "chunk_seconds": settings.chunk_seconds},
            model=info.model if info is not None else "", started_at=datetime.now(timezone.utc), source="file",
            server_id=settings.server_id)

    def _final_facts(self, record: SessionFacts, start: int, end: int, audio: np.ndarray, transcript: Transcript,
                     options: DecodeOptions, settings: FileSettings) -> FinalFacts:
        return FinalFacts(
            session=record, utterance_id=str(uuid.uuid4()), text=transcript.text,
            words=word_timings(transcript.words), confidence=transcript.confidence, language=transcript.language,
            start_ms=samples_to_ms(start), end_ms=samples_to_ms(end), reason="file_chunk", partial_count=0,
            first_partial_latency_ms=None,
            final_latency_ms=round((transcript.queue_seconds + transcript.inference_seconds) * 1000),
            decode=_decode_facts(options, transcript), audio=audio if settings.store_audio else None,
            created_at=datetime.now(timezone.utc))


async def _blocking(upload: Upload, function: Callable[..., Any], *args: Any) -> Any:
    """A blocking step of the upload's: on the file pool (its ticket), below live work."""
    if upload.ticket is not None:
        return await upload.ticket.run(function, *args)
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def _unless_stopped(upload: Upload, work: Any) -> Any:
    """`work`'s result, unless the server stops the upload first (UploadStopped; the
    chunk's engine job is cancelled)."""
    ticket = upload.ticket
    if ticket is None:
        return await work
    from stt.openai_api.uploads import UploadStopped

    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(ticket.stopping.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
    if ticket.stopping.is_set() and not (task.done() and not task.cancelled()):
        raise UploadStopped(ticket.stop_reason or "server_shutdown")
    return task.result()


def _decode_facts(options: DecodeOptions, transcript: Transcript) -> dict[str, Any]:
    return {"beam_size": options.beam_size, "word_timestamps": options.word_timestamps,
            "language": options.language, "temperature": options.temperature, "prompt": bool(options.prompt),
            "window_seconds": transcript.window_seconds, "queue_ms": round(transcript.queue_seconds * 1000),
            "inference_ms": round(transcript.inference_seconds / transcript.batch_size * 1000)}


def _placed(transcript: Transcript, start: int, end: int) -> ChunkText:
    offset = start / SAMPLE_RATE
    words = tuple(TimedWord(w.word, offset + w.start, offset + w.end, w.probability) for w in transcript.words)
    return ChunkText(offset, end / SAMPLE_RATE, transcript.text, words, transcript.confidence, transcript.language)
