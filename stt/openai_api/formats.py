"""A file's transcript in the response formats of OpenAI's API: json, text, srt, vtt
and verbose_json (segments and/or words).

Segments are cut from the word times (srt, vtt and verbose_json decode them): after a
word that ends a sentence, at a pause of PAUSE_SPLIT_SECONDS or more, and at every chunk
boundary; a segment longer than MAX_SEGMENT_SECONDS or MAX_SEGMENT_CHARS (two subtitle
lines) is split where its words pause longest. Without word times a chunk is one segment.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field

PAUSE_SPLIT_SECONDS = 1.0
MAX_SEGMENT_SECONDS = 8.0
MAX_SEGMENT_CHARS = 84
SENTENCE_END = (".", "?", "!", "。", "？", "！")


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: float  # seconds from the start of the file
    end: float
    probability: float


@dataclass(frozen=True)
class ChunkText:
    """One engine job's result, placed on the file's timeline."""

    start: float
    end: float
    text: str
    words: tuple[TimedWord, ...] = ()
    confidence: float = 0.0
    language: str | None = None


@dataclass
class FileTranscript:
    duration: float
    language: str | None
    temperature: float = 0.0
    chunks: list[ChunkText] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(chunk.text for chunk in self.chunks if chunk.text)

    @property
    def words(self) -> list[TimedWord]:
        return [word for chunk in self.chunks for word in chunk.words]


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[TimedWord, ...]


def segments(transcript: FileTranscript) -> list[Segment]:
    out: list[Segment] = []
    for chunk in transcript.chunks:
        if not chunk.text:
            continue
        if not chunk.words:
            out.append(Segment(chunk.start, chunk.end, chunk.text, ()))
            continue
        group: list[TimedWord] = []
        for word in chunk.words:
            if group and (group[-1].word.endswith(SENTENCE_END) or word.start - group[-1].end >= PAUSE_SPLIT_SECONDS):
                out += _fitted(group)
                group = []
            group.append(word)
        out += _fitted(group)
    return out


def _fitted(words: list[TimedWord]) -> list[Segment]:
    """The words as one segment, or split where they pause longest (a comma counts as a
    pause of 0.3 s) until each part fits MAX_SEGMENT_SECONDS and MAX_SEGMENT_CHARS."""
    text = " ".join(w.word for w in words)
    if len(words) == 1 or (words[-1].end - words[0].start <= MAX_SEGMENT_SECONDS and len(text) <= MAX_SEGMENT_CHARS):
        return [Segment(words[0].start, words[-1].end, text, tuple(words))]
    middle = (len(words) - 2) / 2

    def weight(index: int) -> tuple[float, float]:
        gap = words[index + 1].start - words[index].end + (0.3 if words[index].word.endswith(",") else 0.0)
        return (round(gap, 2), -abs(index - middle))

    cut = max(range(len(words) - 1), key=weight) + 1
    return _fitted(words[:cut]) + _fitted(words[cut:])


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(transcript: FileTranscript) -> str:
    cues = [f"{index}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text}\n"
            for index, s in enumerate(segments(transcript), start=1)]
    return "\n".join(cues)


def to_vtt(transcript: FileTranscript) -> str:
    cues = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text}\n" for s in segments(transcript)]
    return "WEBVTT\n\n" + "\n".join(cues)


def _usage(transcript: FileTranscript) -> dict:
    return {"type": "duration", "seconds": math.ceil(transcript.duration)}


def to_json(transcript: FileTranscript) -> dict:
    return {"text": transcript.text, "usage": _usage(transcript)}


def to_verbose_json(transcript: FileTranscript, granularities: frozenset[str]) -> dict:
    body: dict = {"task": "transcribe", "language": transcript.language or "", "duration": round(transcript.duration, 3),
                  "text": transcript.text}
    if "segment" in granularities:
        body["segments"] = [_verbose_segment(index, s, transcript.temperature)
                            for index, s in enumerate(segments(transcript))]
    if "word" in granularities:
        body["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                         for w in transcript.words]
    body["usage"] = _usage(transcript)
    return body


def _verbose_segment(index: int, segment: Segment, temperature: float) -> dict:
    """OpenAI's segment object. avg_logprob is the log of the words' mean probability
    (the decoder's token log-probabilities are not kept); tokens are not listed and
    no_speech_prob is 0 (a chunk the model found empty has no segment)."""
    probabilities = [w.probability for w in segment.words]
    mean = sum(probabilities) / len(probabilities) if probabilities else 1.0
    data = segment.text.encode("utf-8")
    return {"id": index, "seek": int(segment.start * 100), "start": round(segment.start, 3),
            "end": round(segment.end, 3), "text": segment.text, "tokens": [], "temperature": temperature,
            "avg_logprob": round(math.log(max(mean, 1e-6)), 4),
            "compression_ratio": round(len(data) / max(1, len(zlib.compress(data))), 4), "no_speech_prob": 0.0}


CONTENT_TYPES = {"json": "application/json", "verbose_json": "application/json",
                 "text": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
                 "vtt": "text/vtt; charset=utf-8"}


def render(transcript: FileTranscript, response_format: str, granularities: frozenset[str]) -> tuple[str, str]:
    """The response body and its content type."""
    if response_format == "json":
        body = json.dumps(to_json(transcript))
    elif response_format == "verbose_json":
        body = json.dumps(to_verbose_json(transcript, granularities))
    elif response_format == "srt":
        body = to_srt(transcript)
    elif response_format == "vtt":
        body = to_vtt(transcript)
    else:
        body = transcript.text + "\n"
    return body, CONTENT_TYPES[response_format]
