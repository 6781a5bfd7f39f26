"""The segmenter: one stream's audio cut into utterances, decided on the audio clock.

It keeps the stream's recent audio, runs voice activity detection on it, and decides
where speech starts (onset), when a pause is long enough to decode a final ahead of
time (speculation) or to end the utterance, and where an overlong one is cut. It is
synchronous and touches no event loop: push() takes samples and returns events, so
a caller may run it in a worker thread, one frame at a time.

Time is the audio clock (samples received), so decisions do not depend on how fast
the client sends: a file streamed at 10x real time is cut into the same utterances
as the live microphone.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Union

import numpy as np

from stt.audio import rms_energy, seconds_to_samples
from stt.streaming.audio_buffer import AudioBuffer
from stt.streaming.endpointing import judgement_silence
from stt.streaming.types import FinalReason, SpeechStart, StreamParams, StreamStats
from stt.vad import CHUNK_SAMPLES, SileroVad

# Hysteresis: speech continues while the probability stays above threshold - 0.15
# (silero-vad's own recommendation), so one dip does not end an utterance.
HYSTERESIS = 0.15
# Audio kept while nobody speaks, for the pre-roll of the next utterance.
LOOKBACK_SECONDS = 1.0
# When an utterance must be cut mid-speech, look this far back for a pause.
CUT_SEARCH_SECONDS = 3.0
CUT_WINDOW_SAMPLES = 1600  # 100 ms, for the energy search without VAD


@dataclass(eq=False)  # each utterance is itself: compared and hashed by identity
class Utterance:
    """An utterance as the segmenter sees it: where it is on the session timeline."""

    utterance_id: str
    start: int
    last_speech_end: int
    opened_at: float = field(default_factory=time.perf_counter)
    frames: int = 1
    announced: bool = False  # its speech onset was reported
    closed: bool = False
    discarded: bool = False
    speculated_end: int = -1  # last_speech_end of the last speculative final
    judged_end: int = -1  # last_speech_end of the last final decoded for the endpoint judgement
    # Set by the endpoint judgement (Segmenter.endpoint) for the speech up to judged_end:
    # the silence that ends the utterance, and where (None: the usual padded end).
    required_silence: int | None = None
    endpoint_end: int | None = None
    vad_history: deque = field(default_factory=lambda: deque(maxlen=int(CUT_SEARCH_SECONDS * 40)))


@dataclass(frozen=True, eq=False)  # holds audio: compared by identity
class SpeculativeFinal:
    """A pause long enough that the utterance probably ends: its final may be decoded
    now, on exactly this audio, and be ready when the silence runs out. A `judge`
    speculation comes earlier, for semantic endpointing: its text decides how much
    silence ends the utterance (Segmenter.endpoint), and it ends at `end`."""

    utterance: Utterance
    audio: np.ndarray
    end: int
    speech_end: int  # the utterance's last_speech_end when it was made
    judge: bool = False

    @property
    def utterance_id(self) -> str:
        return self.utterance.utterance_id


@dataclass(frozen=True, eq=False)  # holds audio: compared by identity
class UtteranceClosed:
    """An utterance ended; `audio` is what its final decodes."""

    utterance: Utterance
    audio: np.ndarray
    end: int
    reason: str
    closed_at: float
    next_utterance_id: str | None = None  # a cut: the utterance the speech goes on in


SegmentEvent = Union[SpeechStart, SpeculativeFinal, UtteranceClosed]


class Segmenter:
    """One stream's audio -> utterance events. Not thread-safe: one caller at a time."""

    def __init__(self, params: StreamParams, stats: StreamStats | None = None,
                 vad_factory: Callable[[], SileroVad] = SileroVad) -> None:
        self.params = params
        self.stats = stats if stats is not None else StreamStats()
        self.buffer = AudioBuffer()
        self.current: Utterance | None = None
        self._vad_factory = vad_factory
        self._vad: SileroVad | None = vad_factory() if params.enable_vad else None
        self._vad_origin = 0  # absolute position of the VAD's first window
        self._vad_windows = 0
        self._speech_run: list[float] = []  # probabilities of the current onset run
        self._speech_run_start = 0
        self._silence_run = 0
        self._last_utterance_end = 0
        self._events: list[SegmentEvent] = []  # of the frame being pushed

    def push(self, samples: np.ndarray) -> list[SegmentEvent]:
        """Take one frame of audio; returns what it started, speculated or closed, in order."""
        self._events = events = []
        start = self.buffer.end
        self.buffer.append(samples)
        self.stats.frames += 1
        self.stats.samples_received += samples.size
        if self.current is not None:
            self.current.frames += 1
        if self._vad is not None:
            self._run_vad(samples)
        elif self.current is None:
            self._open_utterance(start)
        self._enforce_length_limit()
        self._trim_buffer()
        self._events = []
        return events

    # --- control ---------------------------------------------------------------------

    def close(self, reason: str, end: int | None = None, judged: bool = False) -> UtteranceClosed | None:
        """Close the open utterance (at `end`, default: all audio so far; `judged`: at
        the end of a judged pause); None when none is open or it holds no audio."""
        utterance = self.current
        if utterance is None:
            return None
        end = self.buffer.end if end is None else end
        utterance.closed = True
        self.current = None
        self._last_utterance_end = end
        self._speech_run = []
        self._silence_run = 0
        audio = self._final_audio(utterance, end, judged)
        if audio.size == 0:
            self.stats.utterances -= 1
            return None
        return UtteranceClosed(utterance, audio, end, reason, time.perf_counter())

    def interrupt(self) -> Utterance | None:
        """Drop the open utterance (returned, if any) and the buffered audio."""
        utterance = self.current
        if utterance is not None:
            utterance.discarded = True
            utterance.closed = True
            self.current = None
            self._last_utterance_end = self.buffer.end
            self.stats.utterances -= 1
        self._speech_run = []
        self._silence_run = 0
        self.buffer.clear()
        return utterance

    def endpoint(self, utterance: Utterance, speech_end: int, silence: int, end: int | None) -> UtteranceClosed | None:
        """Apply the endpoint judgement of the speech up to `speech_end`: `silence`
        samples of silence end the utterance, at `end` (None: the usual padded end).
        Ignored when the utterance has closed or speech resumed since; returns the
        close when that much silence has already passed."""
        if utterance is not self.current or utterance.last_speech_end != speech_end:
            return None
        utterance.required_silence, utterance.endpoint_end = silence, end
        if self._silence_run < silence:
            return None
        if end is None:
            return self.close(FinalReason.SILENCE, min(utterance.last_speech_end + self.params.speech_pad,
                                                       self.buffer.end))
        return self.close(FinalReason.SILENCE, end, judged=True)

    @property
    def silence_samples(self) -> int:
        """Silence since the open utterance's last speech (VAD on; 0 otherwise)."""
        return self._silence_run if self.current is not None else 0

    def reconfigure(self, params: StreamParams) -> None:
        """Apply new parameters from the next frame on; an open utterance stays open."""
        if params.enable_vad and self._vad is None:
            self._vad = self._vad_factory()
            self._vad_origin, self._vad_windows = self.buffer.end, 0
            self._silence_run = 0
            if self.current is not None:
                # Without VAD all of it counted as speech: silence is measured from here.
                self.current.last_speech_end = self.buffer.end
        elif not params.enable_vad:
            self._vad = None
            self._speech_run = []
        self.params = params

    # --- voice activity ------------------------------------------------------------------

    def _run_vad(self, samples: np.ndarray) -> None:
        assert self._vad is not None
        p = self.params
        for probability in self._vad.process(samples):
            window_start = self._vad_origin + self._vad_windows * CHUNK_SAMPLES
            self._vad_windows += 1
            window_end = window_start + CHUNK_SAMPLES
            utterance = self.current
            if utterance is None:
                if probability >= p.vad_threshold:
                    if not self._speech_run:
                        self._speech_run_start = window_start
                    self._speech_run.append(probability)
                    if len(self._speech_run) * CHUNK_SAMPLES >= p.vad_min_speech:
                        self._events.append(self._speech_onset(window_end))
                else:
                    self._speech_run.clear()
                continue
            utterance.vad_history.append((window_end, probability))
            if probability >= p.vad_threshold - HYSTERESIS:
                self._silence_run = 0
                utterance.last_speech_end = window_end
                utterance.required_silence = utterance.endpoint_end = None  # judged speech went on
                continue
            self._silence_run += CHUNK_SAMPLES
            self._on_silence(utterance)

    def _on_silence(self, utterance: Utterance) -> None:
        p = self.params
        speech_end = utterance.last_speech_end
        end = min(speech_end + p.speech_pad, self.buffer.end)
        required = utterance.required_silence if utterance.required_silence is not None else p.end_silence
        judge_at = judgement_silence(p.eagerness) if p.enable_vad else None
        judging = judge_at is not None and utterance.judged_end == speech_end
        if self._silence_run >= required:
            if utterance.endpoint_end is None:
                self._emit_close(FinalReason.SILENCE, end)
            else:
                self._emit_close(FinalReason.SILENCE, utterance.endpoint_end, judged=True)
        elif judge_at is not None and self._silence_run >= judge_at and not judging:
            # Decode the final now (its audio ends here, inside the pad): its text
            # decides how long this pause must last to end the utterance.
            utterance.judged_end = speech_end
            judged = min(speech_end + self._silence_run, end)
            self._speculate(utterance, judged, judge=True)
        elif (p.speculative_finals and self._silence_run >= p.speculation_silence
              and utterance.speculated_end != speech_end
              and (not judging or (utterance.required_silence is not None and utterance.endpoint_end is None))):
            # Most pauses this long end the utterance: decode its final now, so it
            # is ready (cached) when the silence runs out. Wasted if speech resumes.
            # While a judgement is pending it decides; a complete one ends earlier.
            self._speculate(utterance, end)

    def _speculate(self, utterance: Utterance, end: int, judge: bool = False) -> None:
        if not judge:
            utterance.speculated_end = utterance.last_speech_end
        self.stats.speculative_finals += 1
        self._events.append(SpeculativeFinal(utterance, self._final_audio(utterance, end, judge), end,
                                             utterance.last_speech_end, judge))

    def _speech_onset(self, confirmed_at: int) -> SpeechStart:
        p = self.params
        run = self._speech_run
        start = max(self._speech_run_start - p.speech_pad, self._last_utterance_end, self.buffer.start)
        utterance = self._open_utterance(start)
        utterance.last_speech_end = confirmed_at
        utterance.announced = True
        speech_audio = self.buffer.slice(self._speech_run_start, confirmed_at)
        event = SpeechStart(
            utterance_id=utterance.utterance_id,
            offset_samples=self._speech_run_start,
            confidence=round(sum(run) / len(run), 4),
            speech_samples=confirmed_at - self._speech_run_start,
            energy_level=energy_level(rms_energy(speech_audio)),
        )
        self._speech_run = []
        self._silence_run = 0
        self.stats.speech_onsets += 1
        return event

    # --- utterances --------------------------------------------------------------------

    def _open_utterance(self, start: int) -> Utterance:
        self.current = Utterance(utterance_id=str(uuid.uuid4()), start=start, last_speech_end=start)
        self.stats.utterances += 1
        return self.current

    def _emit_close(self, reason: str, end: int | None = None, judged: bool = False) -> None:
        closed = self.close(reason, end, judged)
        if closed is not None:
            self._events.append(closed)

    def _final_audio(self, utterance: Utterance, end: int, judged: bool = False) -> np.ndarray:
        """The audio a final decodes; a speculative final must build the very same array.
        A `judged` pause ends inside the pad after the speech: the rest of the pad is
        added as digital silence (Whisper decodes audio cut right after the last word
        poorly: it may say the phrase twice)."""
        audio = self.buffer.slice(utterance.start, end)
        short_of_pad = utterance.last_speech_end + self.params.speech_pad - end
        if judged and audio.size and 0 < short_of_pad <= self.params.speech_pad:
            audio = np.concatenate([audio, np.zeros(short_of_pad, np.float32)])
        if 0 < audio.size < self.params.min_audio:
            # Whisper does poorly on very short clips; trailing silence is harmless.
            audio = np.concatenate([audio, np.zeros(self.params.min_audio - audio.size, np.float32)])
        return audio

    def _enforce_length_limit(self) -> None:
        utterance = self.current
        if utterance is None:
            return
        p = self.params
        limit = p.max_utterance if p.enable_vad else p.segment_limit
        if self.buffer.end - utterance.start < limit:
            return
        cut = self._pause_point(utterance)
        closed = self.close(FinalReason.MAX_DURATION if p.enable_vad else FinalReason.BUFFER_FULL, cut)
        # Speech goes on: the rest is the start of the next utterance, no new onset.
        follower = self._open_utterance(cut)
        follower.last_speech_end = self.buffer.end
        if closed is not None:
            self._events.append(replace(closed, next_utterance_id=follower.utterance_id))

    def _pause_point(self, utterance: Utterance) -> int:
        """Where to cut a long utterance: the middle of its longest recent pause (VAD),
        or of its quietest recent 100 ms (no VAD), in the second half of the utterance."""
        end = self.buffer.end
        search_start = max(utterance.start + (end - utterance.start) // 2,
                           end - seconds_to_samples(CUT_SEARCH_SECONDS))
        history = [(w_end, prob) for w_end, prob in utterance.vad_history if w_end - CHUNK_SAMPLES >= search_start]
        if history:
            return self._longest_pause_middle(history)
        audio = self.buffer.slice(search_start, end)
        windows = audio.size // CUT_WINDOW_SAMPLES
        if windows < 2:
            return end
        frames = audio[: windows * CUT_WINDOW_SAMPLES].reshape(windows, CUT_WINDOW_SAMPLES)
        energies = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
        return search_start + int(np.argmin(energies)) * CUT_WINDOW_SAMPLES + CUT_WINDOW_SAMPLES // 2

    def _longest_pause_middle(self, history: list[tuple[int, float]]) -> int:
        """The middle of the longest run of quiet VAD windows, else of the quietest one."""
        quiet = self.params.vad_threshold - HYSTERESIS
        best, run_start, run = (0, 0), None, 0
        for w_end, prob in history:
            if prob < quiet:
                run_start = w_end - CHUNK_SAMPLES if run == 0 else run_start
                run += 1
                if run > best[0]:
                    best = (run, run_start)
            else:
                run = 0
        if best[0]:
            return best[1] + best[0] * CHUNK_SAMPLES // 2
        w_end, _ = min(history, key=lambda item: item[1])
        return w_end - CHUNK_SAMPLES // 2

    def _trim_buffer(self) -> None:
        keep_from = self.buffer.end - seconds_to_samples(LOOKBACK_SECONDS)
        if self.current is not None:
            keep_from = min(keep_from, self.current.start)
        self.buffer.discard_before(keep_from)


def energy_level(rms: float) -> float:
    """A level in [0, 1]: 0 at -60 dBFS or below, 1 at full scale."""
    if rms <= 0:
        return 0.0
    dbfs = 20 * math.log10(rms)
    return round(min(1.0, max(0.0, (dbfs + 60) / 60)), 3)
