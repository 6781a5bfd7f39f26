"""LocalAgreement on its own: words two consecutive hypotheses agree on are committed."""

from __future__ import annotations

import pytest

from stt.engine import Piece, Word
from stt.streaming import LocalAgreement
from stt.streaming.agreement import MAX_PREFIX_TOKENS, keep_committed, sure_pieces


def pieces(*words: str) -> tuple[Piece, ...]:
    return tuple(Piece(f" {w}", (i,)) for i, w in enumerate(words))


def hypothesis(text: str, forced: bool = False) -> tuple[tuple[Piece, ...], bool]:
    """"and so my" -> its pieces; a leading "+" marks a continuation of a forced prefix."""
    if text.startswith("+"):
        return pieces(*text[1:].split()), True
    return pieces(*text.split()), forced


# Each row: the hypotheses in order, then (stable, unstable) after the last one.
AGREEMENT_TABLE = [
    pytest.param(["and so"], ("", "and so"), id="one hypothesis commits nothing"),
    pytest.param(["and so", "and so my"], ("and so", "my"), id="the shared beginning is committed"),
    pytest.param(["and so", "and so my", "and so my fellow"], ("and so my", "fellow"),
                 id="commits grow one agreement at a time"),
    pytest.param(["ask knock", "ask not"], ("ask", "not"), id="commits stop at the first disagreement"),
    pytest.param(["knock ask", "ask knock"], ("", "ask knock"), id="a different first word commits nothing"),
    pytest.param(["ask knock", "ask! not", "ask what"], ("ask!", "what"),
                 id="punctuation and case do not count"),
    pytest.param(["And so", "and, so"], ("and, so", ""),
                 id="agreed words take the spelling of the hypothesis that confirmed them"),
    pytest.param(["and so", "and so my", "+my fellow"], ("and so my", "fellow"),
                 id="with a forced prefix only the continuation is compared"),
    pytest.param(["and so", "and so", "ends oh my"], ("and so", "my"),
                 id="committed words survive a hypothesis that strays, which shows beyond them"),
    pytest.param(["and so", "and so", ""], ("and so", ""), id="an empty hypothesis leaves the commits"),
    pytest.param(["and so", "and so", "and so my", "and so my fellow"], ("and so my", "fellow"),
                 id="words beyond the commits are compared with the last tentative ones"),
    pytest.param(["a b c", "a x c"], ("a", "x c"), id="agreement after a disagreement does not count"),
]


@pytest.mark.parametrize("hypotheses, expected", AGREEMENT_TABLE)
def test_committed_and_unstable_text_after_a_sequence_of_hypotheses(hypotheses, expected):
    agreement = LocalAgreement()
    for text in hypotheses:
        agreement.update(*hypothesis(text))
    assert (agreement.stable_text, agreement.unstable_text) == expected


# Each row: hypotheses, then the words each flush() newly commits.
FLUSH_TABLE = [
    pytest.param(["one two", "one two three", "one two three four"], [[], ["one", "two"], ["three"]],
                 id="each flush returns only what it committed"),
    pytest.param(["one", "two", "two"], [[], [], ["two"]], id="nothing until two agree"),
    pytest.param(["one two", "one two", "+three", "+three"], [[], ["one", "two"], [], ["three"]],
                 id="forced continuations are committed the same way"),
]


@pytest.mark.parametrize("hypotheses, flushed", FLUSH_TABLE)
def test_flush_returns_the_newly_committed_words(hypotheses, flushed):
    agreement = LocalAgreement()
    for text, expected in zip(hypotheses, flushed):
        agreement.insert(*hypothesis(text))
        assert [p.text.strip() for p in agreement.flush()] == expected


def test_complete_is_the_uncommitted_rest_of_the_last_hypothesis():
    agreement = LocalAgreement()
    agreement.update(*hypothesis("and so"))
    agreement.update(*hypothesis("and so my fellow"))
    assert [p.text for p in agreement.complete()] == [" my", " fellow"]


def test_words_agreed_by_two_hypotheses_are_committed():
    agreement = LocalAgreement()
    assert agreement.update(pieces("and", "so"), forced_prefix=False) == ("", "and so")
    assert agreement.update(pieces("and", "so", "my"), forced_prefix=False) == ("and so", "my")
    assert [p.text for p in agreement.committed] == [" and", " so"]


def test_with_a_forced_prefix_only_the_continuation_is_compared():
    agreement = LocalAgreement()
    agreement.update(pieces("and", "so"), forced_prefix=False)
    agreement.update(pieces("and", "so", "my"), forced_prefix=False)
    # The decoder was forced to start with "and so"; it returned the rest.
    assert agreement.update(pieces("my", "fellow"), forced_prefix=True) == ("and so my", "fellow")


def test_disagreement_commits_nothing_and_punctuation_does_not_count():
    agreement = LocalAgreement()
    agreement.update(pieces("ask", "knock"), forced_prefix=False)
    assert agreement.update(pieces("ask!", "not"), forced_prefix=False) == ("ask!", "not")
    assert agreement.update(pieces("ask", "what"), forced_prefix=False) == ("ask!", "what")


def test_committed_words_survive_a_hypothesis_that_strays():
    agreement = LocalAgreement()
    agreement.update(pieces("and", "so"), forced_prefix=False)
    agreement.update(pieces("and", "so"), forced_prefix=False)
    stable, _ = agreement.update(pieces("ends", "oh", "my"), forced_prefix=False)
    assert stable == "and so"


def test_the_committed_words_are_the_decoder_prefix_until_they_are_too_many():
    agreement = LocalAgreement()
    agreement.update(pieces("and", "so"), forced_prefix=False)
    agreement.update(pieces("and", "so", "my"), forced_prefix=False)
    assert agreement.prefix_tokens == (0, 1)
    many = tuple(Piece(" w", tuple(range(10))) for _ in range(MAX_PREFIX_TOKENS // 10 + 1))
    agreement.update(many, forced_prefix=True)
    agreement.update(many, forced_prefix=True)
    assert len(agreement.committed) > MAX_PREFIX_TOKENS // 10
    assert agreement.prefix_tokens == (), "too long for Whisper's prompt: nothing is forced"


def test_a_digit_string_written_digit_by_digit_is_one_piece_agreed_on_whole():
    # The engine writes "90210" digit by digit in a piece's text; its tokens stay the model's.
    zip_code = Piece(" 9 0 2 1 0", (24, 2999, 940))
    agreement = LocalAgreement()
    agreement.update((Piece(" Zip", (1,)), zip_code), forced_prefix=False)
    assert agreement.update((Piece(" zip", (1,)), zip_code, Piece(" now", (2,))), forced_prefix=False) \
        == ("zip 9 0 2 1 0", "now")
    assert agreement.prefix_tokens == (1, 24, 2999, 940)
    # A hypothesis that heard one digit fewer does not agree with it.
    agreement = LocalAgreement()
    agreement.update((Piece(" 9021", (5,)),), forced_prefix=False)
    assert agreement.update((zip_code,), forced_prefix=False) == ("", "9 0 2 1 0")


def test_while_commits_are_frozen_a_hypothesis_only_shows_and_commits_nothing():
    agreement = LocalAgreement()
    agreement.update(pieces("and", "so"), forced_prefix=False)
    assert agreement.update(pieces("and", "so", "my"), forced_prefix=False, commit=False) == ("", "and so my")
    assert agreement.prefix_tokens == ()
    # Thawed, the next hypothesis is compared with the one shown while frozen.
    assert agreement.update(pieces("and", "so", "my", "fellow"), forced_prefix=False) == ("and so my", "fellow")


@pytest.mark.parametrize("committed, final, kept", [
    ("", "Hello there.", "Hello there."),
    ("And so my", "And so my fellow Americans.", "And so my fellow Americans."),
    ("And so my", "and so, my fellow Americans.", "and so, my fellow Americans."),  # same words
    ("And so my", "And so am I fellow Americans.", "And so my I fellow Americans."),
    ("Then play", "And play some music.", "Then play some music."),
])
def test_the_final_starts_with_the_committed_words(committed, final, kept):
    assert keep_committed(committed, final) == kept


@pytest.mark.parametrize("hypotheses, shown", [
    pytest.param(["and"], "and", id="a first word alone is shown: there is nothing else"),
    pytest.param(["and so my"], "and so", id="the last word, usually cut off, waits for the next hypothesis"),
    pytest.param(["and so", "and so my"], "", id="after committed words a lone uncommitted word waits"),
    pytest.param(["and so", "and so my fellow"], "my", id="the rest but its last word is shown"),
])
def test_the_last_uncommitted_word_is_held_back(hypotheses, shown):
    agreement = LocalAgreement()
    for text in hypotheses:
        agreement.update(*hypothesis(text))
    assert agreement.shown_unstable_text == shown
    assert agreement.unstable_text.startswith(shown), "what is shown is the hypothesis, cut short"


class TestUnsureWords:
    """flush(limit): words past `limit` (the caller's unsure ones) wait, unless three
    hypotheses in a row begin with them and `three_agree_limit` lets them through (the
    caller's sure words, counting an unsure first word of the utterance as sure)."""

    def test_an_unsure_word_two_hypotheses_agree_on_is_held_back(self):
        agreement = LocalAgreement()
        for text in ("and mister john", "and mister john dashwood"):
            agreement.update(*hypothesis(text), limit=0)
        assert (agreement.stable_text, agreement.unstable_text) == ("", "and mister john dashwood")

    def test_three_hypotheses_in_a_row_commit_what_they_all_begin_with(self):
        agreement = LocalAgreement()
        for text in ("and mister john", "and mister john dashwood", "and mister john dashwood had"):
            agreement.update(*hypothesis(text), limit=0)
        assert agreement.stable_text == "and mister john"
        agreement.update(*hypothesis("and mister john dashwood had then"), limit=0)
        assert agreement.stable_text == "and mister john dashwood", "the three after the commit agree on one more"

    def test_three_in_a_row_commit_past_an_unsure_first_word_but_not_past_a_later_one(self):
        # "And" unsure, the rest sure: the caller lets three agreeing hypotheses through it.
        agreement = LocalAgreement()
        for text in ("and mister john", "and mister john dashwood", "and mister john dashwood had"):
            agreement.update(*hypothesis(text), limit=0, three_agree_limit=5)
        assert agreement.stable_text == "and mister john"
        # A name the greedy partials misspell alike three times, unsure: held back, so the
        # final can still spell it from the keyterms.
        # The caller's figures count from the first uncommitted word: "send it to" sure, then
        # (once they are committed) "shivor" unsure at once; no first-word exemption then.
        agreement = LocalAgreement()
        for text, sure in (("send it to shivor", 3), ("send it to shivor nakamura", 3),
                           ("send it to shivor nakamura today", 0), ("send it to shivor nakamura today", 0)):
            agreement.update(*hypothesis(text), limit=sure, three_agree_limit=sure)
        assert (agreement.stable_text, agreement.unstable_text) == ("send it to", "shivor nakamura today")

    def test_a_hypothesis_that_differs_between_them_breaks_the_run(self):
        agreement = LocalAgreement()
        for text in ("and mister john", "mister john dashwood", "and mister john dashwood"):
            agreement.update(*hypothesis(text), limit=0)
        assert agreement.stable_text == ""


def words(*spelled: tuple[str, float]) -> list[Word]:
    return [Word(f" {text}", 0.0, 0.1, probability) for text, probability in spelled]


class TestSurePieces:
    """How many new pieces of a hypothesis begin it with sure words."""

    def test_the_sure_words_up_to_the_first_unsure_one(self):
        hypothesis_words = words(("send", 0.9), ("it", 0.8), ("to", 0.9), ("shivor", 0.2), ("today", 0.9))
        assert sure_pieces(pieces("send", "it", "to", "shivor", "today"), hypothesis_words, (), 0.5) == 3

    def test_the_first_word_may_be_exempt(self):
        hypothesis_words = words(("and", 0.3), ("mister", 0.9), ("john", 0.2))
        new = pieces("and", "mister", "john")
        assert sure_pieces(new, hypothesis_words, (), 0.5) == 0
        assert sure_pieces(new, hypothesis_words, (), 0.5, first_exempt=True) == 2, "not past a later unsure word"

    def test_words_past_the_committed_ones_are_judged(self):
        hypothesis_words = words(("and", 0.3), ("mister", 0.9), ("john", 0.4))
        assert sure_pieces(pieces("mister", "john"), hypothesis_words, pieces("and"), 0.5) == 1

    def test_words_that_do_not_match_the_pieces_limit_nothing(self):
        assert sure_pieces(pieces("and", "so"), words(("and", 0.9)), (), 0.5) is None
