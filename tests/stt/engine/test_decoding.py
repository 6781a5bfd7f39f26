"""stt/engine/decoding.py: short windows, token caps and loop trimming, as pure functions
of (model, tokenizer, jobs), run here without the scheduler or its threads."""

from stt.engine import is_doubled, trim_repetition, window_seconds


class TestShortWindows:
    def test_the_window_is_at_least_ten_seconds_in_two_second_buckets(self):
        assert window_seconds(0.5) == 10
        assert window_seconds(7.9) == 10
        assert window_seconds(8.1) == 12
        assert window_seconds(19.0) == 22
        assert window_seconds(27.0) == 30

    def test_a_decoding_loop_is_cut_after_its_first_round(self):
        loop = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]
        assert trim_repetition(loop, hit_cap=True) == [1, 2, 3, 4]
        assert trim_repetition([9, 1, 2, 1, 2, 1, 2], hit_cap=False) == [9, 1, 2]

    def test_real_repetition_in_speech_is_kept(self):
        # "thank you thank you", ended normally: two rounds only, and no cap was hit.
        assert trim_repetition([5, 6, 5, 6], hit_cap=False) == [5, 6, 5, 6]
        assert trim_repetition([1, 2, 3, 4, 5], hit_cap=True) == [1, 2, 3, 4, 5]

    def test_a_whole_output_said_twice_is_suspect_but_a_short_repeat_is_not(self):
        assert is_doubled([843, 523, 616, 5891, 3399, 13] * 2)  # "And so my fellow Americans." twice
        assert not is_doubled([5, 6, 5, 6])  # "thank you thank you"
        assert not is_doubled([1, 2, 3, 4, 1, 2, 3, 5])
        assert not is_doubled([])

