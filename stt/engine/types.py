"""What the engine takes and gives: decode options, transcripts, its info and counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Union

import numpy as np
from django.conf import settings

SAMPLE_RATE = 16000

# 16 kHz mono float32 audio, or a callable giving the latest audio (read when a
# worker takes the job).
AudioSource = Union[np.ndarray, Callable[[], np.ndarray]]


class JobKind(IntEnum):
    """Also the scheduling priority: lower runs first."""

    FINAL = 0
    SPECULATIVE = 1
    PARTIAL = 2
    FILE = 3  # a chunk of an uploaded file (the HTTP API): below every live stream


@dataclass(frozen=True)
class DecodeOptions:
    kind: JobKind
    beam_size: int
    word_timestamps: bool
    language: str | None
    # Token ids the decoder is forced to start with (a partial's committed words).
    prefix: tuple[int, ...] = ()
    # Text the decoder reads as what came before the audio (Whisper's <|startofprev|>
    # section): a prompt, keyterms, the previous utterance. It steers spelling and style
    # and is never part of the result.
    prompt: str = ""
    # 0: the engine's own decode (beam search; a final that loops is redone with
    # Whisper's temperature fallback). Above 0: sampled at this temperature on the
    # stock path, no fallback (what the OpenAI API's `temperature` asks for).
    temperature: float = 0.0
    # A short-window final that loops, says it all twice or ends in words with no time is
    # redone the long way (True), or returned as it is and marked suspicious (False: its
    # caller has a cheaper retry, a stream's final decoded again without its context).
    redo_long_form: bool = True

    @classmethod
    def partial(cls, language: str | None, prefix: tuple[int, ...] = (),
                beam_size: int | None = None, prompt: str = "", word_timestamps: bool = False) -> "DecodeOptions":
        """`word_timestamps`: align the words, for their probabilities (a stream commits
        only words the decoder was sure of)."""
        return cls(JobKind.PARTIAL, beam_size or settings.STT_PARTIAL_BEAM_SIZE, word_timestamps, language, prefix,
                   prompt)

    @classmethod
    def final(cls, language: str | None, word_timestamps: bool, beam_size: int | None = None,
              prompt: str = "", prefix: tuple[int, ...] = ()) -> "DecodeOptions":
        """`prefix`: the words a stream's partials committed, which the final must keep."""
        return cls(JobKind.FINAL, beam_size or settings.STT_FINAL_BEAM_SIZE, word_timestamps, language,
                   prefix, prompt)

    @classmethod
    def file(cls, language: str | None, word_timestamps: bool, prompt: str = "",
             temperature: float = 0.0, beam_size: int | None = None) -> "DecodeOptions":
        """A chunk of an uploaded file: decoded like a final, queued below live work."""
        return cls(JobKind.FILE, beam_size or settings.STT_FINAL_BEAM_SIZE, word_timestamps, language,
                   prompt=prompt, temperature=temperature)

    @property
    def batch_key(self) -> tuple:
        """What jobs must share to run in one inference (the decoder needs every prompt's
        start-of-transcript at the same position, so one prompt per batch)."""
        return (self.beam_size, self.word_timestamps, self.language, self.prompt, self.temperature)

    @property
    def cache_key(self) -> tuple:
        """What makes two results interchangeable (a speculative final serves the final)."""
        return self.batch_key + (self.prefix, self.redo_long_form)


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio passed in
    end: float
    probability: float


@dataclass(frozen=True)
class Piece:
    """One word of the decoded text with the tokens that spell it."""

    # With its leading space, as the tokenizer writes it; a digit string is written digit
    # by digit ("90210" -> " 9 0 2 1 0", stt/engine/numbers.py) over the model's own tokens.
    text: str
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Transcript:
    text: str  # the whole text, forced prefix included
    words: tuple[Word, ...]
    # The words after the forced prefix (all words when prefix_forced is False).
    pieces: tuple[Piece, ...]
    language: str | None
    confidence: float
    audio_seconds: float
    queue_seconds: float
    inference_seconds: float
    batch_size: int = 1
    cached: bool = False
    prefix_forced: bool = False
    window_seconds: int | None = None  # encoder window; None for the stock long-form path
    suspicious: bool = False  # short-window text that loops or repeats, not redone (redo_long_form False)


@dataclass(frozen=True)
class EngineInfo:
    model: str
    model_path: str
    device: str
    compute_type: str
    multilingual: bool
    load_seconds: float

    def supports_language(self, language: str | None) -> bool:
        return self.multilingual or language in (None, "en")


@dataclass
class EngineStats:
    inferences: int = 0
    batches: int = 0
    cache_hits: int = 0
    superseded: int = 0
    fallbacks: int = 0
    failures: int = 0
    out_of_memory: int = 0  # CUDA out-of-memory errors met (each halves the batch)
    gpu_failures: int = 0  # GPU inferences that failed otherwise (the CPU redid them)
    cpu_fallbacks: int = 0  # jobs decoded on the CPU because the GPU failed
    timeouts: int = 0
    audio_seconds: float = 0.0
    inference_seconds: float = 0.0
    # By job kind ("final", "speculative", "partial", "file"): jobs decoded, and the
    # decode time of their batches shared out among their jobs (what a stream costs, by path).
    kind_inferences: dict[str, int] = field(default_factory=dict)
    kind_seconds: dict[str, float] = field(default_factory=dict)

    def count_kind(self, kind: str, jobs: int, seconds: float) -> None:
        self.kind_inferences[kind] = self.kind_inferences.get(kind, 0) + jobs
        self.kind_seconds[kind] = self.kind_seconds.get(kind, 0.0) + seconds
    last_inference_at: float | None = None  # time.monotonic() of the last successful decode


class Superseded(Exception):
    """A queued partial was replaced by a newer one of the same stream."""
