"""bench/turn_metrics.py: the measures of the turn latency benchmark, on hand-made examples."""

import numpy as np

from bench.turn_metrics import (
    alignment_path,
    energy_offset_ms,
    final_end_positions,
    revised_words,
    sentence_ends,
    sentences_cut,
    spell_digits,
    stable_words_changed,
)

RATE = 16000


def tone(ms: int, amplitude: float) -> np.ndarray:
    t = np.arange(ms * RATE // 1000) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(ms: int) -> np.ndarray:
    return np.zeros(ms * RATE // 1000, np.float32)


class TestEnergyOffset:
    # 200 ms silence, speech 200-700 ms, silence, speech 1000-1300 ms, silence to 1600 ms.
    audio = np.concatenate([silence(200), tone(500, 0.5), silence(300), tone(300, 0.5), silence(300)])

    def test_speech_ends_at_the_end_of_the_last_loud_frame_within_the_window(self):
        assert energy_offset_ms(self.audio, 0, 900) == 700
        assert energy_offset_ms(self.audio, 0, 1600) == 1300

    def test_a_window_without_speech_has_no_offset(self):
        assert energy_offset_ms(self.audio, 700, 1000) is None

    def test_sound_15_db_below_the_loud_frames_is_not_speech(self):
        # A faint tail (-26 dB) after the speech does not move its end.
        audio = np.concatenate([silence(100), tone(1000, 0.5), tone(300, 0.025), silence(100)])
        assert energy_offset_ms(audio, 0, 1500) == 1100

    def test_the_end_is_found_from_the_windows_start_even_when_it_is_mid_frame(self):
        assert energy_offset_ms(self.audio, 1005, 1600) == 1300


class TestStableWordsChanged:
    def test_committed_words_kept_by_every_later_partial_and_the_final_are_unchanged(self):
        stables = [["and", "so"], ["and", "so", "my"], ["and", "so", "my", "fellow"]]
        assert stable_words_changed(stables, ["and", "so", "my", "fellow", "americans"]) == 0

    def test_a_committed_word_the_final_replaces_counts_once_however_often_it_was_committed(self):
        stables = [["ask", "knot"], ["ask", "knot", "what"]]
        assert stable_words_changed(stables, ["ask", "not", "what"]) == 1

    def test_a_committed_word_a_later_partial_drops_counts_even_if_the_final_restores_it(self):
        stables = [["go", "forward"], ["go"], ["go", "forward"]]
        assert stable_words_changed(stables, ["go", "forward", "ten", "meters"]) == 1

    def test_a_final_shorter_than_the_committed_words_changes_those_past_its_end(self):
        assert stable_words_changed([["one", "two", "three"]], ["one"]) == 2


class TestRevisedWords:
    def test_partials_that_only_grow_towards_the_final_revise_nothing(self):
        partials = [["today"], ["today", "only"], ["today", "only", "platforms"]]
        assert revised_words(partials, ["today", "only", "platforms", "one"]) == 0

    def test_each_distinct_wrong_word_at_a_position_counts_once(self):
        partials = [["eight", "of", "space"], ["eight", "of", "space"], ["eight", "of", "spades", "for"]]
        # "space" at 2 (shown twice) and "for" at 3 are taken back.
        assert revised_words(partials, ["eight", "of", "spades", "four", "of", "clubs"]) == 2

    def test_words_past_the_finals_end_are_revisions(self):
        assert revised_words([["go", "forward", "you"]], ["go", "forward"]) == 1


class TestAlignmentPath:
    def test_identical_texts_align_word_for_word(self):
        assert alignment_path(["a", "b"], ["a", "b"]) == [(0, 0), (1, 1), (2, 2)]

    def test_a_dropped_word_consumes_reference_only(self):
        assert alignment_path(["a", "b", "c"], ["a", "c"]) == [(0, 0), (1, 1), (2, 1), (3, 2)]

    def test_an_added_word_consumes_hypothesis_only(self):
        assert alignment_path(["a", "c"], ["a", "x", "c"]) == [(0, 0), (1, 1), (1, 2), (2, 3)]


class TestSentences:
    def test_sentence_ends_count_normalized_words_up_to_each_full_stop(self):
        assert sentence_ends("Go forward. Ten meters, then stop!") == [2, 6]
        assert sentence_ends("eight of spades four of clubs") == [6]

    def test_each_finals_end_maps_to_the_reference_position_it_reached(self):
        reference = "go forward ten meters then stop".split()
        finals = [["go", "forward"], [], ["ten", "meters", "then", "stop"]]
        assert final_end_positions(reference, finals) == [{2}, {6}]

    def test_a_final_ending_at_a_sentence_end_cuts_nothing(self):
        reference = "go forward ten meters then stop".split()
        assert sentences_cut(reference, [4, 6], [["go", "forward", "ten", "meters"], ["then", "stop"]]) == 0

    def test_a_final_ending_inside_a_sentence_cuts_it(self):
        reference = "and so my fellow americans ask not what your country can do for you".split()
        finals = [["and", "so", "my", "fellow", "americans"], reference[5:]]
        assert sentences_cut(reference, [len(reference)], finals) == 1

    def test_a_word_dropped_at_the_boundary_may_be_read_on_either_side(self):
        # "meters" is lost: the first final's end lies at 3 or 4, and 4 ends the sentence.
        reference = "go forward ten meters then stop".split()
        finals = [["go", "forward", "ten"], ["then", "stop"]]
        assert final_end_positions(reference, finals) == [{3, 4}, {6}]
        assert sentences_cut(reference, [4, 6], finals) == 0

    def test_a_word_dropped_after_the_boundary_may_be_read_on_either_side_too(self):
        # "then" is lost: the first final's end lies at 2 (a sentence end) or 3.
        reference = "go forward then stop".split()
        finals = [["go", "forward"], ["stop"]]
        assert final_end_positions(reference, finals) == [{2, 3}, {4}]
        assert sentences_cut(reference, [2, 4], finals) == 0

    def test_invented_words_before_any_speech_cut_nothing(self):
        reference = "go forward".split()
        assert sentences_cut(reference, [2], [["you"], ["go", "forward"]]) == 0


class TestSpellDigits:
    def test_a_numeral_written_as_one_token_is_spelled_digit_by_digit(self):
        assert spell_digits(["zip", "90210", "please"]) == ["zip", "nine", "zero", "two", "one", "zero", "please"]

    def test_digit_strings_spelled_out_cut_where_the_speaker_paused(self):
        # s4_digits.wav streamed as "1 0 0 1 | 90210 | 01803": one token per final
        # would align the first final's end into the third string.
        reference = "one zero zero zero one nine oh two one oh zero one eight zero three".split()
        finals = [["one", "zero", "zero", "one"], spell_digits(["90210"]), spell_digits(["01803"])]
        assert final_end_positions(reference, finals) == [{5}, {10}, {15}]
        assert sentences_cut(reference, [5, 10, 15], finals) == 0
