"""Cutting a file into short engine jobs at pauses.

A long upload must never hold the model for long: it goes to the engine as chunks of
at most FILE_CHUNK_SECONDS (12 s by default), each a job of its own below every live
stream's work. Each cut falls in the longest pause silero-vad finds in the last 40% of
the chunk (the middle of it, so no word is split); in a chunk without a pause there,
at its quietest 100 ms. The VAD reads only those search regions, not the whole file.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from stt.vad import CHUNK_SAMPLES, SileroVad

SAMPLE_RATE = 16000
# Where in a chunk a cut is looked for: from this share of its length to its end.
SEARCH_FROM = 0.6
# A 32 ms window below this speech probability counts as pause.
PAUSE_PROBABILITY = 0.35
QUIET_FRAME = SAMPLE_RATE // 10  # 100 ms

# Speech probability of each 512-sample window of a piece of audio (a fresh stream).
SpeechProbabilities = Callable[[np.ndarray], list[float]]


def silero_probabilities(audio: np.ndarray) -> list[float]:
    return SileroVad().process(audio)


def chunk_bounds(audio: np.ndarray, max_seconds: float,
                 probabilities: SpeechProbabilities = silero_probabilities) -> list[tuple[int, int]]:
    """Consecutive [start, end) sample ranges covering the audio, each at most
    `max_seconds` long, cut at pauses. Blocking (the VAD): call it off the event loop."""
    total = int(audio.size)
    limit = int(max_seconds * SAMPLE_RATE)
    bounds: list[tuple[int, int]] = []
    start = 0
    while total - start > limit:
        search_from = start + int(limit * SEARCH_FROM)
        cut = pause_in(audio[search_from:start + limit], probabilities)
        cut = search_from + (cut if cut is not None else quietest(audio[search_from:start + limit]))
        bounds.append((start, cut))
        start = cut
    if total > start:
        bounds.append((start, total))
    return bounds


def pause_in(region: np.ndarray, probabilities: SpeechProbabilities) -> int | None:
    """The middle of the longest run of pause windows in `region` (the latest of equal
    runs), as a sample offset; None when every window holds speech."""
    quiet = [p < PAUSE_PROBABILITY for p in probabilities(region)]
    best: tuple[int, int] | None = None  # (length, end index)
    run = 0
    for index, is_quiet in enumerate(quiet):
        run = run + 1 if is_quiet else 0
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
