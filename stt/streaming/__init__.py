"""Streaming logic: one session's audio cut into utterances, transcribed as partials
and finals.

    types         parameters, events and results, the listener protocol, counters
    audio_buffer  recent audio addressed by absolute sample position
    segmenter     VAD, onset, pause, cut and close decisions (synchronous)
    agreement     LocalAgreement, which stabilizes partials
    transcriber   StreamingTranscriber: segmenter events -> engine requests -> listener
"""

from stt.streaming.agreement import LocalAgreement
from stt.streaming.audio_buffer import AudioBuffer
from stt.streaming.segmenter import Segmenter, SpeculativeFinal, Utterance, UtteranceClosed
from stt.streaming.transcriber import StreamingTranscriber
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

__all__ = [
    "AudioBuffer", "FinalReason", "FinalResult", "InterruptOutcome", "LocalAgreement", "PartialResult",
    "Segmenter", "SpeculativeFinal", "SpeechEnd", "SpeechStart", "StreamListener", "StreamParams", "StreamStats",
    "StreamingTranscriber", "Utterance", "UtteranceClosed",
]
