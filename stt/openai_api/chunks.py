"""Cutting a file into short engine jobs at pauses, and leaving out what is not speech.

A long upload must never hold the model for long: it goes to the engine as chunks of
at most FILE_CHUNK_SECONDS (12 s by default), each a job of its own below every live
stream's work. silero-vad scores the file (32 ms windows) a chunk ahead of the
decoding, not all of it before the first chunk. A chunk ends in the middle of its first
pause of LONG_PAUSE_SECONDS after its first MIN_CHUNK_SECONDS; without one, in the
longest pause between 30% and 100% of its length (the latest of equal ones), so no word
is split and a chunk rarely ends inside a sentence (Whisper tends to drop a sentence
cut off at the end of its window); in speech without any pause there, at the quietest
100 ms. Then, like a live utterance, each
chunk is trimmed to its speech plus SPEECH_PAD_SECONDS, and a chunk without speech is
not decoded at all (Whisper invents text for silence and noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np

from stt.vad import CHUNK_SAMPLES, SileroVad

SAMPLE_RATE = 16000
# A pause this long ends a chunk once it holds MIN_CHUNK_SECONDS: a chunk is then one
# stretch of speech, the way live utterances are decoded (two sentences apart in one
# short window tempt Whisper to repeat itself into the padding).
LONG_PAUSE_SECONDS = 0.8
MIN_CHUNK_SECONDS = 3
# Else a cut is looked for from this share of the chunk's length to its end.
SEARCH_FROM = 0.3
# A 32 ms window below this speech probability counts as pause; at or above
# SPEECH_PROBABILITY (VAD_THRESHOLD's default) as speech.
PAUSE_PROBABILITY = 0.35
SPEECH_PROBABILITY = 0.5
# Audio kept before the first and after the last speech window of a chunk.
SPEECH_PAD_SECONDS = 0.3
QUIET_FRAME = SAMPLE_RATE // 10  # 100 ms

class VoiceDetector(Protocol):
    """What chunking needs of silero-vad (stt.vad.SileroVad): one stream's speech
    probability per 512-sample window, fed in order."""

    def process(self, samples: np.ndarray) -> list[float]: ...


@dataclass(frozen=True)
class Chunk:
    start: int  # the samples decoded: [start, end) of the file
    end: int


class _Scores:
    """The file's window scores, computed as far as they are needed."""

    def __init__(self, audio: np.ndarray, vad: VoiceDetector) -> None:
        self._audio, self._vad = audio, vad
        self._scores: list[float] = []

    def until(self, sample: int) -> np.ndarray:
        done = len(self._scores) * CHUNK_SAMPLES
        wanted = min(self._audio.size, -(-sample // CHUNK_SAMPLES) * CHUNK_SAMPLES)
        if wanted > done:
            self._scores += self._vad.process(self._audio[done:wanted])
        return np.asarray(self._scores, dtype=np.float32)


def iter_chunks(audio: np.ndarray, max_seconds: float,
                vad_factory: Callable[[], VoiceDetector] = SileroVad) -> Iterator[Chunk]:
    """The chunks to decode, in order: at most `max_seconds` each, cut at pauses, trimmed
    to their speech; none where there is no speech. Each step runs the VAD only as far as
    the next cut needs (blocking: step it off the event loop)."""
    scores = _Scores(audio, vad_factory())
    total, limit = int(audio.size), int(max_seconds * SAMPLE_RATE)
    start = 0
    while start < total:
        known = scores.until(start + limit)
        end = cut_point(audio, known, start, limit)
        chunk = speech_within(known, start, end)
        if chunk is not None:
            yield chunk
        start = end


def cut_point(audio: np.ndarray, scores: np.ndarray, start: int, limit: int) -> int:
    """Where the chunk starting at `start` ends: the first long pause after its first
    MIN_CHUNK_SECONDS; else the end of the audio, if it is near enough; else the longest
    pause in its search region; else the quietest 100 ms there."""
    first_window = -(-(start + MIN_CHUNK_SECONDS * SAMPLE_RATE) // CHUNK_SAMPLES)
    last_window = (start + limit) // CHUNK_SAMPLES  # whole windows only
    long_pause = first_long_pause(scores[first_window:last_window])
    if long_pause is not None:
        return first_window * CHUNK_SAMPLES + long_pause
    if audio.size - start <= limit:
        return int(audio.size)
    search_from = start + int(limit * SEARCH_FROM)
    first = -(-search_from // CHUNK_SAMPLES)
    pause = longest_pause(scores[first:last_window])
    if pause is not None:
        return first * CHUNK_SAMPLES + pause
    return search_from + quietest(audio[search_from:start + limit])


def first_long_pause(scores: np.ndarray) -> int | None:
    """The middle of the first run of LONG_PAUSE_SECONDS of pause windows, as a sample
    offset from the first window; None without one."""
    needed = int(LONG_PAUSE_SECONDS * SAMPLE_RATE / CHUNK_SAMPLES)
    run = 0
    for index, score in enumerate(scores):
        run = run + 1 if score < PAUSE_PROBABILITY else 0
        if run >= needed and (index + 1 == len(scores) or scores[index + 1] >= PAUSE_PROBABILITY):
            return (index + 1 - run) * CHUNK_SAMPLES + run * CHUNK_SAMPLES // 2
    return None


def longest_pause(scores: np.ndarray) -> int | None:
    """The middle of the longest run of pause windows (the latest of equal runs), as a
    sample offset from the first window; None when every window holds speech."""
    best: tuple[int, int] | None = None  # (length, end index)
    run = 0
    for index, score in enumerate(scores):
        run = run + 1 if score < PAUSE_PROBABILITY else 0
        if run and (best is None or run >= best[0]):
            best = (run, index + 1)
    if best is None:
        return None
    length, end = best
    return (end - length) * CHUNK_SAMPLES + length * CHUNK_SAMPLES // 2


def quietest(region: np.ndarray) -> int:
    """The middle of the quietest 100 ms of `region`, as a sample offset."""
    frames = region.size // QUIET_FRAME
    if frames == 0:
        return region.size
    levels = np.mean(np.square(region[:frames * QUIET_FRAME].reshape(frames, QUIET_FRAME), dtype=np.float64), axis=1)
    return int(np.argmin(levels)) * QUIET_FRAME + QUIET_FRAME // 2


def speech_within(scores: np.ndarray, start: int, end: int) -> Chunk | None:
    """[start, end) trimmed to its speech windows plus the pad; None without speech."""
    first, last = start // CHUNK_SAMPLES, -(-end // CHUNK_SAMPLES)
    speech = np.flatnonzero(scores[first:last] >= SPEECH_PROBABILITY)
    if speech.size == 0:
        return None
    pad = int(SPEECH_PAD_SECONDS * SAMPLE_RATE)
    speech_from = (first + int(speech[0])) * CHUNK_SAMPLES
    speech_to = (first + int(speech[-1]) + 1) * CHUNK_SAMPLES
    return Chunk(max(start, speech_from - pad), min(end, speech_to + pad))
