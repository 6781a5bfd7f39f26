"""stt/engine/numbers.py: digit strings are written digit by digit, quantities as they are."""

import pytest

from stt.engine.numbers import is_digit_string, space_digits, space_digits_in_parts, split_evenly


class TestWhichRunsAreDigitStrings:
    def test_five_digits_or_more_are_a_digit_string(self):
        assert is_digit_string("10001") and is_digit_string("4155550123")

    def test_two_to_four_digits_starting_with_zero_are_a_digit_string(self):
        assert all(is_digit_string(run) for run in ("07", "007", "0118", "00"))

    def test_up_to_four_digits_not_starting_with_zero_are_a_quantity(self):
        assert not any(is_digit_string(run) for run in ("0", "7", "15", "911", "2026"))


class TestSpaceDigits:
    @pytest.mark.parametrize("written, spaced", [
        ("90210", "9 0 2 1 0"),
        ("90210.", "9 0 2 1 0."),
        ("My zip is 90210, I think.", "My zip is 9 0 2 1 0, I think."),
        ("Call 4155550123 now", "Call 4 1 5 5 5 5 0 1 2 3 now"),
        ("Agent 007!", "Agent 0 0 7!"),
        ("(01803)", "(0 1 8 0 3)"),
        ('The code was "12345".', 'The code was "1 2 3 4 5".'),
        ("10001 90210 01803", "1 0 0 0 1 9 0 2 1 0 0 1 8 0 3"),
    ])
    def test_a_digit_string_standing_as_a_word_is_written_digit_by_digit(self, written, spaced):
        assert space_digits(written) == spaced

    @pytest.mark.parametrize("written", [
        "10,001", "1,000,000", "3.5", "0.25", "3.14159", "12:30", "1/2", "90210-1234", "555-0123",
        "$20000", "€12345", "50%", "20000%", "-12345", "+14155550123", "#12345", "'07", "’07",
        "5th", "1990s", "10000km", "A12345", "12345abc", "2026", "911", "15", "7",
    ])
    def test_quantities_and_runs_joined_to_anything_stay_as_written(self, written):
        assert space_digits(written) == written
        assert space_digits(f"It is {written}.") == f"It is {written}."

    def test_digits_of_other_scripts_and_runs_in_unspaced_languages_stay(self):
        assert space_digits("٩٠٢١٠") == "٩٠٢١٠"
        assert space_digits("电话12345678") == "电话12345678"

    def test_a_text_without_digit_strings_is_unchanged(self):
        assert space_digits("") == "" and space_digits("1 0 0 0 1") == "1 0 0 0 1"


class TestSpaceDigitsInParts:
    def test_each_part_is_spaced_in_the_context_of_its_neighbours(self):
        assert space_digits_in_parts([" Zip", " 90210", "."]) == [" Zip", " 9 0 2 1 0", "."]
        # "%" joins the run to a symbol in the whole text, so the part alone is not spaced either.
        assert space_digits_in_parts([" 20000", "%"]) == [" 20000", "%"]
        assert space_digits_in_parts([" 3", ".50000"]) == [" 3", ".50000"]

    def test_the_parts_join_to_the_spaced_whole(self):
        parts = [" Call", " 415", "5550", "123", " or", " 01803", "."]
        assert "".join(space_digits_in_parts(parts)) == space_digits("".join(parts))
        assert space_digits_in_parts(parts)[1:4] == [" 4 1 5", " 5 5 5 0", " 1 2 3"]

    def test_parts_without_digit_strings_come_back_as_they_were(self):
        assert space_digits_in_parts([" And", " so"]) == [" And", " so"]
        assert space_digits_in_parts([]) == []


class TestSplitEvenly:
    def test_a_spaced_word_shares_its_time_evenly(self):
        split = split_evenly("9 0 2 1 0.", 1.0, 2.0)
        assert [text for text, _, _ in split] == ["9", "0", "2", "1", "0."]
        assert [(round(start, 6), round(end, 6)) for _, start, end in split] == [
            (1.0, 1.2), (1.2, 1.4), (1.4, 1.6), (1.6, 1.8), (1.8, 2.0)]
        assert split[-1][2] == 2.0, "the last digit ends where the word did"

    def test_a_word_without_spaces_is_kept_whole(self):
        assert split_evenly(" hello,", 0.5, 0.9) == [("hello,", 0.5, 0.9)]
