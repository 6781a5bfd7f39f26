"""stt/engine/prompt.py: keyterms and context composed into the decoder prompt within a
token budget. Most rules are shown with a counter of words and punctuation marks (one
token each, easy to read); the budget is then checked with the model's own tokenizer."""

import re

import pytest

from stt.engine import MAX_KEYTERMS, compose_prompt, merge_keyterms, resolve_model, token_counter
from stt.engine.decoding import MAX_CONTEXT_TOKENS, context_tokens
from stt.engine.loading import create_model


def words(text: str) -> int:
    """One token per word and per punctuation mark."""
    return len(re.findall(r"\w+|[^\w\s]", text))


class TestMergingKeyterms:
    def test_each_term_once_first_spelling_kept_whitespace_collapsed(self):
        session = ["Siobhan  Nakamura", "Zyphora", " ", "zyphora"]
        profile = ["ZYPHORA", "Reykjavik", "siobhan nakamura"]
        assert merge_keyterms(session, profile) == ["Siobhan Nakamura", "Zyphora", "Reykjavik"]

    def test_nothing_merges_to_nothing(self):
        assert merge_keyterms([], ()) == []


class TestComposingThePrompt:
    def test_keyterms_are_one_list_ending_with_a_period(self):
        prompt = compose_prompt(["Siobhan Nakamura", "Reykjavik"], count_tokens=words)
        assert prompt.text == "Siobhan Nakamura, Reykjavik."
        assert prompt.terms == ("Siobhan Nakamura", "Reykjavik") and prompt.dropped == ()
        assert prompt.tokens == 5

    def test_no_keyterms_and_no_context_is_no_prompt(self):
        prompt = compose_prompt([], "   ", count_tokens=words)
        assert (prompt.text, prompt.terms, prompt.tokens) == ("", (), 0)

    def test_the_context_comes_first_and_the_keyterms_last_nearest_the_speech(self):
        prompt = compose_prompt(["Zyphora"], "We spoke about headsets.", count_tokens=words)
        assert prompt.text == "We spoke about headsets. Zyphora."
        assert prompt.context == "We spoke about headsets.", "the part before the keyterms"

    def test_terms_that_do_not_fit_the_budget_are_dropped_whole_later_ones_still_fit(self):
        terms = ["Anneliese Vandermolen", "Xiomara Del Carmen Castellanos", "Oslo"]
        prompt = compose_prompt(terms, count_tokens=words, max_tokens=5)
        assert prompt.terms == ("Anneliese Vandermolen", "Oslo")
        assert prompt.dropped == ("Xiomara Del Carmen Castellanos",)
        assert prompt.text == "Anneliese Vandermolen, Oslo." and prompt.tokens == 5

    def test_keyterms_take_the_budget_first_and_the_context_keeps_its_latest_words(self):
        prompt = compose_prompt(["Zyphora", "Quorvex"], "one two three four five six", count_tokens=words,
                                max_tokens=7)
        assert prompt.text == "four five six Zyphora, Quorvex."
        assert prompt.terms == ("Zyphora", "Quorvex") and prompt.context == "four five six"

    def test_a_context_with_no_room_left_is_left_out(self):
        prompt = compose_prompt(["Zyphora", "Quorvex"], "one two", count_tokens=words, max_tokens=4)
        assert (prompt.text, prompt.context) == ("Zyphora, Quorvex.", "")

    def test_a_context_alone_keeps_its_end(self):
        prompt = compose_prompt([], "one two three four five", count_tokens=words, max_tokens=2)
        assert prompt.text == prompt.context == "four five"

    def test_at_most_a_hundred_keyterms(self):
        terms = [f"Term{index}" for index in range(MAX_KEYTERMS + 5)]
        prompt = compose_prompt(terms, count_tokens=lambda text: 0)
        assert len(prompt.terms) == MAX_KEYTERMS and prompt.dropped == tuple(terms[MAX_KEYTERMS:])

    def test_the_budget_never_exceeds_what_the_decoder_keeps(self):
        terms = [f"Name {index}" for index in range(MAX_KEYTERMS)]  # 3 tokens each with its comma
        prompt = compose_prompt(terms, count_tokens=words, max_tokens=10_000)
        assert prompt.tokens <= MAX_CONTEXT_TOKENS == 223
        assert len(prompt.terms) == 74 and prompt.dropped == tuple(terms[74:])
        assert compose_prompt(terms, count_tokens=words, max_tokens=-3).text == ""


@pytest.fixture(scope="module")
def tokenizer():
    from faster_whisper.tokenizer import Tokenizer

    model = create_model(resolve_model("tiny.en"), "cpu", "int8", 1, 1)
    return Tokenizer(model.hf_tokenizer, False)


class TestWithTheModelsTokenizer:
    def test_the_count_is_the_decoders_and_the_budget_holds(self, tokenizer):
        names = ["Siobhan Nakamura", "Ouagadougou", "Tegucigalpa", "Xiomara Castellanos", "Eilidh Fairbairn",
                 "Pradeep Raghunathan", "Ngozi Okonkwo", "Szczecin", "Llandudno", "Dmitri Volkonsky"] * 3
        terms = [f"{name} {index}" for index, name in enumerate(names)]
        count = token_counter(tokenizer)
        prompt = compose_prompt(terms, "The caller asked about an invoice. " * 20, count_tokens=count,
                                max_tokens=120)
        assert 0 < len(prompt.terms) < len(terms) and prompt.dropped
        assert prompt.tokens <= 120
        # What the decoder reads: <|startofprev|> and the prompt, nothing cut away.
        assert len(context_tokens(tokenizer, prompt.text)) == 1 + prompt.tokens
        assert prompt.text.endswith(f"{prompt.terms[-1]}.")
