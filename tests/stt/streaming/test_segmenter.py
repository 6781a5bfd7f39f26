"""The segmenter on its own: samples in, utterance events out, with the real VAD and
no event loop or speech model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stt.streaming import FinalReason, Segmenter, SpeculativeFinal, SpeechStart, StreamParams, UtteranceClosed
from stt.streaming.endpointing import JUDGEMENT_SILENCE_SECONDS
from stt.streaming.segmenter import LOOKBACK_SECONDS
from tests.conftest import SAMPLE_RATE, silence

PARAMS = StreamParams(
    enable_vad=True, enable_partials=True, language="en", word_timestamps=False,
    partial_interval=SAMPLE_RATE // 2, end_silence=SAMPLE_RATE // 2, segment_limit=5 * SAMPLE_RATE,
    min_audio=SAMPLE_RATE // 2, max_utterance=20 * SAMPLE_RATE, vad_threshold=0.5,
    vad_min_speech=1024, speech_pad=3200, speculative_finals=True, partial_beam_size=1, final_beam_size=5,
    eagerness="off",  # a fixed end silence; TestSemanticEndpointing judges pauses
)
# jfk's four phrases, on the session timeline of jfk + 1 s of silence (PARAMS, 1024-sample frames).
JFK_PHRASES = 4


def params(**changes) -> StreamParams:
    return dataclasses.replace(PARAMS, **changes)


def feed(segmenter: Segmenter, audio: np.ndarray, frame: int = 1024) -> list:
    events = []
    for start in range(0, audio.size, frame):
        events.extend(segmenter.push(audio[start:start + frame]))
    return events


def of(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def jfk_then_silence(jfk_audio) -> np.ndarray:
    return np.concatenate([jfk_audio, silence(1)])


class TestOnsetsAndPauses:
    def test_silence_and_noise_start_nothing(self):
        rng = np.random.default_rng(3)
        noise = (rng.standard_normal(3 * SAMPLE_RATE) * 0.01).astype(np.float32)
        segmenter = Segmenter(PARAMS)
        assert feed(segmenter, np.concatenate([silence(2), noise])) == []
        assert segmenter.current is None
        assert (segmenter.stats.frames, segmenter.stats.samples_received) == (79, 5 * SAMPLE_RATE)

    def test_each_phrase_is_an_onset_then_a_close_on_silence(self, jfk_then_silence):
        events = feed(Segmenter(PARAMS), jfk_then_silence)
        starts, closes = of(events, SpeechStart), of(events, UtteranceClosed)
        assert len(starts) == len(closes) == JFK_PHRASES
        for onset, closed in zip(starts, closes):
            assert events.index(onset) < events.index(closed)
            assert onset.utterance_id == closed.utterance.utterance_id
            assert closed.reason == FinalReason.SILENCE
            assert closed.utterance.start <= onset.offset_samples < closed.end
            assert onset.speech_samples >= PARAMS.vad_min_speech
            assert 0 < onset.confidence <= 1 and 0 < onset.energy_level <= 1
            assert closed.audio.size == closed.end - closed.utterance.start
        for before, after in zip(closes, closes[1:]):
            assert before.end <= after.utterance.start, "utterances do not overlap"

    def test_an_utterance_starts_a_speech_pad_before_its_onset_but_not_before_the_last_end(
            self, jfk_then_silence):
        events = feed(Segmenter(PARAMS), jfk_then_silence)
        previous_end = 0
        for onset, closed in zip(of(events, SpeechStart), of(events, UtteranceClosed)):
            assert closed.utterance.start == max(onset.offset_samples - PARAMS.speech_pad, previous_end)
            previous_end = closed.end

    def test_an_utterance_ends_a_speech_pad_after_its_last_speech(self, jfk_then_silence):
        events = feed(Segmenter(PARAMS), jfk_then_silence)
        for closed in of(events, UtteranceClosed):
            assert closed.end == closed.utterance.last_speech_end + PARAMS.speech_pad

    def test_pauses_shorter_than_the_end_silence_stay_inside_the_utterance(self, jfk_audio):
        # jfk's pauses are all shorter than 2 s.
        events = feed(Segmenter(params(end_silence=2 * SAMPLE_RATE)), np.concatenate([jfk_audio, silence(2.5)]))
        assert len(of(events, SpeechStart)) == len(of(events, UtteranceClosed)) == 1

    def test_decisions_follow_the_audio_clock_not_the_frame_size(self, jfk_then_silence):
        def cuts(frame: int) -> list[tuple[int, int]]:
            closes = of(feed(Segmenter(PARAMS), jfk_then_silence, frame), UtteranceClosed)
            return [(c.utterance.start, c.end) for c in closes]

        assert cuts(512) == cuts(1024) == cuts(4000) == cuts(jfk_then_silence.size)


class TestSpeculativeFinals:
    def test_a_final_is_speculated_at_half_the_end_silence_on_the_very_audio_it_closes_with(
            self, jfk_then_silence):
        events = feed(Segmenter(PARAMS), jfk_then_silence)
        closes = of(events, UtteranceClosed)
        for closed in closes:
            mine = [e for e in of(events, SpeculativeFinal) if e.utterance_id == closed.utterance.utterance_id]
            assert mine, "every pause that ends an utterance was speculated on first"
            assert events.index(mine[-1]) < events.index(closed)
            np.testing.assert_array_equal(mine[-1].audio, closed.audio)

    def test_speculation_can_be_switched_off(self, jfk_then_silence):
        segmenter = Segmenter(params(speculative_finals=False))
        events = feed(segmenter, jfk_then_silence)
        assert of(events, SpeculativeFinal) == [] and segmenter.stats.speculative_finals == 0
        assert len(of(events, UtteranceClosed)) == JFK_PHRASES


class TestSemanticEndpointing:
    """With an eagerness, a pause is judged early: the transcriber decodes the judge
    speculation and tells the segmenter (endpoint()) how much silence ends it."""

    JUDGE = int(JUDGEMENT_SILENCE_SECONDS * SAMPLE_RATE)

    def first_judgement(self, segmenter: Segmenter, audio: np.ndarray, frame: int = 512) -> tuple[list, int]:
        events: list = []
        for start in range(0, audio.size, frame):
            events.extend(segmenter.push(audio[start:start + frame]))
            if of(events, SpeculativeFinal):
                return events, start + frame
        raise AssertionError("no pause was judged")

    def test_a_pause_is_judged_early_on_the_audio_up_to_its_start(self, jfk_audio):
        segmenter = Segmenter(params(eagerness="medium"))
        events, _ = self.first_judgement(segmenter, jfk_audio)
        (judge,) = of(events, SpeculativeFinal)
        assert judge.judge and of(events, UtteranceClosed) == []
        utterance = segmenter.current
        assert judge.utterance is utterance and judge.speech_end == utterance.last_speech_end
        assert self.JUDGE <= judge.end - judge.speech_end <= PARAMS.speech_pad
        # Its audio ends at `end`, then the rest of the pad as digital silence.
        assert judge.audio.size == judge.speech_end + PARAMS.speech_pad - utterance.start
        assert not judge.audio[judge.end - utterance.start:].any()

    def test_a_complete_sentence_ends_on_the_judged_audio_after_the_short_silence(self, jfk_audio):
        segmenter = Segmenter(params(eagerness="medium"))
        events, position = self.first_judgement(segmenter, jfk_audio)
        (judge,) = of(events, SpeculativeFinal)
        short = 2 * self.JUDGE
        assert segmenter.endpoint(judge.utterance, judge.speech_end, short, judge.end) is None, "not yet"
        later = []
        for start in range(position, jfk_audio.size, 512):
            later.extend(segmenter.push(jfk_audio[start:start + 512]))
            if of(later, UtteranceClosed):
                break
        (closed,) = of(later, UtteranceClosed)
        assert closed.utterance is judge.utterance and closed.end == judge.end
        np.testing.assert_array_equal(closed.audio, judge.audio)
        assert closed.end - closed.utterance.last_speech_end < PARAMS.end_silence

    def test_a_judgement_arriving_after_its_silence_closes_at_once(self, jfk_audio):
        segmenter = Segmenter(params(eagerness="medium"))
        events, _ = self.first_judgement(segmenter, jfk_audio)
        (judge,) = of(events, SpeculativeFinal)
        closed = segmenter.endpoint(judge.utterance, judge.speech_end, self.JUDGE, judge.end)
        assert closed is not None and closed.reason == FinalReason.SILENCE and segmenter.current is None
        np.testing.assert_array_equal(closed.audio, judge.audio)

    def test_an_incomplete_sentence_waits_past_the_end_silence(self, jfk_audio):
        # jfk's first pause is about 1 s long: three times the end silence keeps it open.
        segmenter = Segmenter(params(eagerness="medium"))
        events, position = self.first_judgement(segmenter, jfk_audio)
        (judge,) = of(events, SpeculativeFinal)
        assert segmenter.endpoint(judge.utterance, judge.speech_end, 3 * PARAMS.end_silence, None) is None
        rest = feed(segmenter, np.concatenate([jfk_audio[position:], silence(1.5)]))
        closes = of(rest, UtteranceClosed)
        assert closes[0].utterance is judge.utterance
        assert closes[0].utterance.last_speech_end > judge.speech_end + SAMPLE_RATE, "speech went on in it"
        assert any(not e.judge and e.utterance is judge.utterance for e in of(rest, SpeculativeFinal)), (
            "after a judgement that does not end it, the pause is speculated on as usual")

    def test_a_judgement_of_speech_that_went_on_is_ignored(self, jfk_audio):
        segmenter = Segmenter(params(eagerness="medium"))
        events, _ = self.first_judgement(segmenter, jfk_audio)
        (judge,) = of(events, SpeculativeFinal)
        assert segmenter.endpoint(judge.utterance, judge.speech_end - 512, 0, judge.end) is None
        assert segmenter.current is judge.utterance

    def test_without_a_verdict_the_end_silence_closes_as_usual(self, jfk_then_silence):
        medium = of(feed(Segmenter(params(eagerness="medium")), jfk_then_silence), UtteranceClosed)
        off = of(feed(Segmenter(PARAMS), jfk_then_silence), UtteranceClosed)
        assert [(c.utterance.start, c.end) for c in medium] == [(c.utterance.start, c.end) for c in off]


class TestCuts:
    def test_long_speech_is_cut_at_a_pause_and_goes_on_without_a_new_onset(self, jfk_audio):
        segmenter = Segmenter(params(end_silence=2 * SAMPLE_RATE, max_utterance=4 * SAMPLE_RATE))
        events = feed(segmenter, np.concatenate([jfk_audio] * 2))
        closes = of(events, UtteranceClosed)
        assert len(of(events, SpeechStart)) == 1, "a cut utterance's follower has no onset of its own"
        assert len(closes) >= 4 and all(c.reason == FinalReason.MAX_DURATION for c in closes)
        for before, after in zip(closes, closes[1:]):
            assert before.end == after.utterance.start, "the follower begins where its leader was cut"
            assert before.end - before.utterance.start <= 4 * SAMPLE_RATE
        assert segmenter.current is not None and segmenter.current.start == closes[-1].end

    def test_without_vad_audio_is_cut_into_segments_covering_all_of_it(self, jfk_audio):
        segmenter = Segmenter(params(enable_vad=False, segment_limit=2 * SAMPLE_RATE))
        events = feed(segmenter, jfk_audio)
        closed = of(events, UtteranceClosed)
        last = segmenter.close(FinalReason.SESSION_END)
        assert of(events, SpeechStart) == [] and of(events, SpeculativeFinal) == []
        assert all(c.reason == FinalReason.BUFFER_FULL for c in closed)
        segments = [(c.utterance.start, c.end) for c in [*closed, last]]
        assert segments[0][0] == 0 and segments[-1][1] == jfk_audio.size
        assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
        assert all(SAMPLE_RATE <= end - start <= 2 * SAMPLE_RATE for start, end in segments[:-1]), \
            "cut in the second half, at the quietest 100 ms"


class TestControl:
    def test_close_ends_the_open_utterance_with_its_audio_so_far(self, jfk_audio):
        segmenter = Segmenter(PARAMS)
        feed(segmenter, jfk_audio[:2 * SAMPLE_RATE])
        open_utterance = segmenter.current
        closed = segmenter.close(FinalReason.FLUSH)
        assert closed.utterance is open_utterance and closed.utterance.closed
        assert (closed.reason, closed.end) == (FinalReason.FLUSH, 2 * SAMPLE_RATE)
        np.testing.assert_array_equal(closed.audio, jfk_audio[open_utterance.start:2 * SAMPLE_RATE])
        assert segmenter.current is None
        assert segmenter.close(FinalReason.FLUSH) is None, "nothing open, nothing closed"

    def test_a_short_utterance_is_padded_to_the_minimum_audio(self, jfk_audio):
        segmenter = Segmenter(params(min_audio=2 * SAMPLE_RATE))
        feed(segmenter, jfk_audio[:SAMPLE_RATE // 2])
        closed = segmenter.close(FinalReason.FLUSH)
        spoken = closed.end - closed.utterance.start
        assert closed.audio.size == 2 * SAMPLE_RATE and not closed.audio[spoken:].any()

    def test_interrupt_drops_the_open_utterance_and_the_buffered_audio(self, jfk_audio):
        segmenter = Segmenter(PARAMS)
        feed(segmenter, jfk_audio[:2 * SAMPLE_RATE])
        dropped = segmenter.interrupt()
        assert dropped is not None and dropped.discarded and segmenter.current is None
        assert segmenter.buffer.start == segmenter.buffer.end == 2 * SAMPLE_RATE
        assert segmenter.stats.utterances == 0
        later = of(feed(segmenter, np.concatenate([silence(0.5), jfk_audio[:3 * SAMPLE_RATE], silence(1)])),
                   UtteranceClosed)
        assert later and all(c.utterance.start >= 2 * SAMPLE_RATE for c in later)

    def test_switching_vad_on_measures_silence_from_then_on(self, jfk_audio):
        segmenter = Segmenter(params(enable_vad=False, segment_limit=10 * SAMPLE_RATE))
        feed(segmenter, jfk_audio[:int(2.5 * SAMPLE_RATE)])
        segmenter.reconfigure(PARAMS)
        closes = of(feed(segmenter, silence(1)), UtteranceClosed)
        assert len(closes) == 1 and closes[0].utterance.start == 0
        assert closes[0].reason == FinalReason.SILENCE
        assert closes[0].end == int(2.5 * SAMPLE_RATE) + PARAMS.speech_pad


class TestMemory:
    def test_while_nobody_speaks_only_the_look_back_is_kept(self):
        segmenter = Segmenter(PARAMS)
        feed(segmenter, silence(10))
        assert segmenter.buffer.end - segmenter.buffer.start == int(LOOKBACK_SECONDS * SAMPLE_RATE)

    def test_an_open_utterance_keeps_all_its_audio(self, jfk_audio):
        segmenter = Segmenter(params(end_silence=2 * SAMPLE_RATE))
        feed(segmenter, jfk_audio[:5 * SAMPLE_RATE])
        assert segmenter.buffer.start <= segmenter.current.start
