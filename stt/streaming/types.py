"""What goes into and comes out of a stream: its parameters, the events and results
it reports to its listener, and its counters."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from django.conf import settings

from stt.audio import seconds_to_samples
from stt.engine import Transcript
from stt.errors import SttError
from stt.protocol import SessionConfig
from stt.runtime_config import RuntimeValues


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
    # The decoder prompt of every partial and final: the session's prompt text, then its
    # keyterms (stt.engine.compose_prompt). Kept as is between configure calls: jobs batch
    # and share results only with an equal prompt.
    prompt: str = ""
    # Semantic endpointing (stt.streaming.endpointing): "off" (a fixed end silence),
    # "low", "medium" or "high" (how soon a finished-sounding sentence ends the utterance).
    eagerness: str = "medium"
    # The start of `prompt` that is the session's prompt text (session_config.prompt, its
    # latest words that fit), before the keyterms: a final's previous-finals context goes
    # between the two (final_prompt).
    prompt_context: str = ""

    @classmethod
    def from_config(cls, config: SessionConfig, language: str | None = None,
                    runtime: RuntimeValues | None = None, prompt: str = "",
                    prompt_context: str = "") -> "StreamParams":
        """The session's config, with the tunables of its runtime profile (default: the
        server settings) and the decoder prompt composed for it (`prompt_context`: the
        start of `prompt` that is the session's prompt text)."""
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
            prompt=prompt,
            # The session's own choice, else (null: "the profile's") its runtime profile's.
            eagerness=config.endpointing or runtime.endpointing_eagerness,
            prompt_context=prompt_context,
        )

    def final_prompt(self, previous: str) -> str:
        """A final's prompt, oldest text first: the session's prompt text (what came before
        the session), the previous finals' text (`previous`), then the keyterms, nearest
        the audio. Without `previous` it is `prompt`."""
        if not previous:
            return self.prompt
        context = self.prompt_context if self.prompt.startswith(self.prompt_context) else ""
        terms = self.prompt[len(context):].strip()
        return " ".join(part for part in (context, previous, terms) if part)

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
class SpeechEnd:
    """An utterance the segmenter ended by itself: at the end-of-utterance silence, or
    cut at the length limit (speech goes on in `next_utterance_id`, without a new
    onset). Closes a caller asks for (flush, interrupt, end) are not reported: the caller
    knows of them. Reported before the utterance's final is requested."""

    utterance_id: str
    start_sample: int  # the utterance's audio on the session timeline
    end_sample: int
    reason: str  # FinalReason.SILENCE, MAX_DURATION or BUFFER_FULL
    next_utterance_id: str | None = None


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
    async def on_speech_end(self, event: SpeechEnd) -> None: ...
    async def on_partial(self, result: PartialResult) -> None: ...
    async def on_final(self, result: FinalResult) -> None: ...


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
