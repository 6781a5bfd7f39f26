"""Re-transcribing stored finals with a larger model (run by Celery workers, stt/tasks.py).

The streamed final is decided in a few hundred milliseconds by a small model; a worker
later decodes the same audio with REFINE_MODEL (Whisper base by default) at beam 5 with
word timestamps, the language passed explicitly and the live final's prompt (its
keyterms, kept in the utterance's decode facts), and stores the result beside the live
text with the word-level difference.

- One model per process, loaded on first use and kept (`get_refiner`), never per task.
- Long audio goes in chunks of at most REFINE_CHUNK_SECONDS, cut at the quietest moment
  near each boundary so no word is split; progress is written after each chunk.
- Idempotent per (utterance, model): a finished refinement is never redone or
  rewritten, so a task delivered twice (a worker lost after the work but before the
  acknowledgement) completes once.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import F, Q

from stt.engine.numbers import space_digits, space_digits_in_parts, split_evenly
from stt.evaluation import word_diff, word_error_rate

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
_QUIET_FRAME = SAMPLE_RATE // 20  # 50 ms frames when looking for a place to cut


class RefinementFailed(Exception):
    """A refinement that cannot succeed by retrying (no audio, a language the model lacks)."""


# Failures of the database or broker, not of the refinement: the task retries them.
TRANSIENT_FAILURES: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, ConnectionError,
                                                       TimeoutError)
# ...and, with the time limit the task records itself, what run_refinement lets through.
PASSING_FAILURES: tuple[type[BaseException], ...] = (*TRANSIENT_FAILURES, SoftTimeLimitExceeded)


@dataclass
class RefinedTranscript:
    text: str
    words: list[dict[str, Any]]
    language: str
    chunks: int
    processing_seconds: float


@dataclass
class Refiner:
    """The refinement model of this process and how it decodes."""

    model_reference: str
    device: str = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 0
    beam_size: int = 5
    _model: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    loads: int = 0

    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                from stt.engine import pick_device, resolve_model

                started = time.perf_counter()
                path = resolve_model(self.model_reference)
                device = pick_device(self.device)
                compute_type = self.compute_type
                if compute_type == "auto":
                    compute_type = "float16" if device == "cuda" else "int8"
                self._model = WhisperModel(path, device=device, compute_type=compute_type,
                                           cpu_threads=self.cpu_threads, local_files_only=True)
                self.loads += 1
                logger.info("refinement model %s loaded on %s (%s) in %.2f s", self.model_reference,
                            device, compute_type, time.perf_counter() - started)
            return self._model

    def transcribe(self, audio: np.ndarray, language: str,
                   on_chunk: Callable[[int, int], None] | None = None, prompt: str = "") -> RefinedTranscript:
        """`prompt`: the live final's decoder prompt (prompt text, previous finals, keyterms),
        read before each chunk."""
        model = self.model()
        if not model.model.is_multilingual and language != "en":
            raise RefinementFailed(f"{self.model_reference} is English-only; the utterance is {language!r}")
        bounds = chunk_bounds(audio, int(settings.REFINE_CHUNK_SECONDS * SAMPLE_RATE))
        texts: list[str] = []
        words: list[dict[str, Any]] = []
        decoding = 0.0  # model time only, not the progress writes
        if on_chunk:
            on_chunk(0, len(bounds))
        for index, (start, end) in enumerate(bounds):
            started = time.perf_counter()
            segments, _ = model.transcribe(
                audio[start:end], language=language, beam_size=self.beam_size, word_timestamps=True,
                condition_on_previous_text=False, vad_filter=False, initial_prompt=prompt.strip() or None,
            )
            segments = list(segments)  # the decode happens here
            decoding += time.perf_counter() - started
            texts.extend(space_digits(segment.text.strip()) for segment in segments)
            words.extend(_timed_words(segments, start * 1000 // SAMPLE_RATE))
            if on_chunk:
                on_chunk(index + 1, len(bounds))
        return RefinedTranscript(text=" ".join(t for t in texts if t), words=words, language=language,
                                 chunks=len(bounds), processing_seconds=decoding)


def _timed_words(segments: list[Any], offset_ms: int) -> list[dict[str, Any]]:
    """The segments' words in milliseconds from the utterance's start, digit strings
    written digit by digit as the live engine writes them (stt/engine/numbers.py), so the
    two texts compare word for word."""
    aligned = [word for segment in segments for word in segment.words or ()]
    written = space_digits_in_parts([word.word for word in aligned])
    return [
        {"word": text, "start_ms": offset_ms + round(start * 1000), "end_ms": offset_ms + round(end * 1000),
         "confidence": round(float(word.probability), 4)}
        for spelled, word in zip(written, aligned) if spelled.strip()
        for text, start, end in split_evenly(spelled, word.start, word.end)
    ]


def chunk_bounds(audio: np.ndarray, chunk_samples: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) chunks of at most chunk_samples covering the audio; each
    cut falls on the quietest 50 ms frame of the chunk's last fifth."""
    total = len(audio)
    if total == 0:
        return []
    bounds: list[tuple[int, int]] = []
    start = 0
    while total - start > chunk_samples:
        search_from = start + chunk_samples * 4 // 5
        search_to = start + chunk_samples
        frames = (search_to - search_from) // _QUIET_FRAME
        if frames > 0:
            region = audio[search_from:search_from + frames * _QUIET_FRAME].reshape(frames, _QUIET_FRAME)
            quietest = int(np.argmin(np.sqrt(np.mean(region.astype(np.float64) ** 2, axis=1))))
            cut = search_from + quietest * _QUIET_FRAME + _QUIET_FRAME // 2
        else:
            cut = search_to
        bounds.append((start, cut))
        start = cut
    bounds.append((start, total))
    return bounds


_refiners: dict[str, Refiner] = {}
_refiner_lock = threading.Lock()


def get_refiner(model: str | None = None, in_server_process: bool = False) -> Refiner:
    """This process's refiner for `model` (default REFINE_MODEL): one model load per
    process and model, on first use. `in_server_process`: tasks run eagerly (no
    broker), so refinements share the streaming server's CPU."""
    reference = model or settings.REFINE_MODEL
    with _refiner_lock:
        if reference not in _refiners:
            threads = settings.REFINE_CPU_THREADS
            if not threads and in_server_process:
                threads = 1  # embedded mode: leave the other cores to live streaming
            _refiners[reference] = Refiner(reference, device=settings.REFINE_DEVICE,
                                           compute_type=settings.REFINE_COMPUTE_TYPE,
                                           cpu_threads=threads, beam_size=settings.REFINE_BEAM_SIZE)
        return _refiners[reference]


def load_utterance_audio(utterance: Any) -> np.ndarray:
    import soundfile

    if not utterance.audio:
        raise RefinementFailed("no audio was stored for this utterance (STORE_AUDIO off, or purged)")
    try:
        with utterance.audio.open("rb") as handle:
            audio, rate = soundfile.read(io.BytesIO(handle.read()), dtype="float32")
    except FileNotFoundError as exc:
        raise RefinementFailed(f"the utterance's audio file is gone: {utterance.audio.name}") from exc
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        raise RefinementFailed(f"stored audio is {rate} Hz, expected {SAMPLE_RATE}")
    return np.ascontiguousarray(audio, dtype=np.float32)


def refinement_language(utterance: Any) -> str:
    """The language to pass: the utterance's, else the session's, else the default."""
    language = utterance.language or (utterance.session.config or {}).get("language") or ""
    if not language or language == "auto":
        language = settings.REFINE_DEFAULT_LANGUAGE
    return language


def run_refinement(utterance_id: str, model_name: str, task_id: str = "",
                   refiner: Refiner | None = None) -> dict[str, Any]:
    """Refine one utterance (the body of the Celery task). Returns what happened."""
    from stt.models import Refinement, Utterance

    utterance = Utterance.objects.select_related("session").filter(utterance_id=utterance_id).first()
    if utterance is None:
        return {"utterance_id": utterance_id, "status": "missing"}
    refinement, _ = Refinement.objects.get_or_create(
        utterance=utterance, model=model_name,
        defaults={"status": Refinement.Status.QUEUED, "queued_at": _now()})
    if refinement.status == Refinement.Status.DONE:
        return {"utterance_id": utterance_id, "status": "done", "already_done": True}
    Refinement.objects.filter(pk=refinement.pk).update(
        status=Refinement.Status.RUNNING, attempts=F("attempts") + 1, started_at=_now(),
        task_id=task_id, error="", chunks_done=0)

    def progress(done: int, total: int) -> None:
        Refinement.objects.filter(pk=refinement.pk).update(chunks_done=done, chunks_total=total)

    refiner = refiner or get_refiner(model_name)
    try:
        audio = load_utterance_audio(utterance)
        language = refinement_language(utterance)
        # The keyterms the live final was decoded with: the comparison is then about the model.
        prompt = (utterance.decode or {}).get("prompt") or ""
        result = refiner.transcribe(audio, language, progress, prompt=prompt)
    except PASSING_FAILURES:
        raise  # the task retries these (database away) or records them (time limit)
    except Exception as exc:
        # Bad audio, bad model files, the model failing: retrying will not help.
        reason = str(exc) if isinstance(exc, RefinementFailed) else f"{type(exc).__name__}: {exc}"
        Refinement.objects.filter(pk=refinement.pk).update(status=Refinement.Status.FAILED, error=reason,
                                                           finished_at=_now())
        logger.warning("refinement of %s failed: %s", utterance_id, reason,
                       exc_info=not isinstance(exc, RefinementFailed))
        return {"utterance_id": utterance_id, "status": "failed", "error": reason}
    audio_seconds = len(audio) / SAMPLE_RATE
    wer = word_error_rate(result.text, utterance.text)
    diff = word_diff(utterance.text, result.text)
    # Only the first completion is written: a duplicate delivery changes nothing.
    completed = Refinement.objects.filter(pk=refinement.pk).filter(~Q(status=Refinement.Status.DONE)).update(
        status=Refinement.Status.DONE, language=result.language, text=result.text, words=result.words,
        diff=diff, word_error_rate=round(wer, 4), differs=any(run["op"] != "equal" for run in diff),
        chunks_done=result.chunks, chunks_total=result.chunks,
        processing_ms=round(result.processing_seconds * 1000),
        real_time_factor=round(result.processing_seconds / audio_seconds, 4) if audio_seconds else None,
        finished_at=_now())
    # No transcript here: task results end up in logs and the result store.
    return {"utterance_id": utterance_id, "status": "done", "completed": bool(completed),
            "word_error_rate": round(wer, 4), "chunks": result.chunks, "model_loads": refiner.loads}


def _now() -> datetime:
    return datetime.now(timezone.utc)
