"""stt/evaluation.py: word error rates, and errors split between marked words and the rest."""

from stt.evaluation import marked_word_errors, word_error_rate


def test_word_error_rate_ignores_case_punctuation_and_small_numerals():
    assert word_error_rate("Today only platforms one and three are used.", "today, only platforms 1 and 3 are used") == 0


class TestMarkedWordErrors:
    def test_a_perfect_transcript_has_no_errors_in_either_class(self):
        errors = marked_word_errors("Tell [Eilidh Fairbairn] that the samples arrived.",
                                    "Tell Eilidh Fairbairn that the samples arrived.")
        assert errors == {"marked": (0, 2), "other": (0, 5)}

    def test_a_misheard_name_counts_against_the_name_with_its_inserted_words(self):
        errors = marked_word_errors("Please send the invoice to [Siobhan Nakamura] before Friday.",
                                    "Please send the invoices to Shivon, and I come here before Friday")
        # invoice -> invoices is the other words' error; Siobhan Nakamura -> "Shivon and I come here"
        # is 2 substitutions and 3 insertions next to the name.
        assert errors == {"marked": (5, 2), "other": (1, 7)}

    def test_words_lost_or_added_away_from_names_count_as_other(self):
        errors = marked_word_errors("The ferry to [Tobermory] was cancelled.", "The ferry to Tobermory was not cancelled")
        assert errors == {"marked": (0, 1), "other": (1, 5)}
        assert marked_word_errors("[Zyphora] ships", "") == {"marked": (1, 1), "other": (1, 1)}
