"""Re-transcription of stored finals with the larger model (the body of the Celery task)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from stt.evaluation import word_diff, word_error_rate
from stt.models import Refinement, SessionRecord, Utterance
from stt.persistence import encode_flac
from stt.refinement import Refiner, chunk_bounds, get_refiner, run_refinement
from tests.conftest import AUDIO_DIR, JFK_TEXT, SAMPLE_RATE, load_audio, silence

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def refiner() -> Refiner:
    """The process's refiner: the bundled base model, loaded once for this module."""
    refiner = get_refiner()
    refiner.model()
    return refiner


def make_utterance(text: str, audio: np.ndarray | None, language: str = "en", decode: dict | None = None) -> Utterance:
    session = SessionRecord.objects.create(session_id="s-1", started_at=NOW, config={"language": language})
    utterance_id = uuid.uuid4()
    name = ""
    if audio is not None:
        name = default_storage.save(f"utterances/test/{utterance_id}.flac", ContentFile(encode_flac(audio)))
    return Utterance.objects.create(
        utterance_id=utterance_id, session=session, text=text, language=language, start_ms=0,
        end_ms=round(len(audio) / 16) if audio is not None else 1000,
        audio_duration_ms=round(len(audio) / 16) if audio is not None else 1000,
        final_latency_ms=400, model="tiny.en", audio=name, created_at=NOW, decode=decode or {})


class TestChunks:
    def test_short_audio_is_one_chunk(self):
        assert chunk_bounds(np.ones(16000, dtype=np.float32), 30 * SAMPLE_RATE) == [(0, 16000)]

    def test_chunks_cover_the_audio_in_order_and_respect_the_size(self):
        audio = np.random.default_rng(1).normal(0, 0.1, 95 * SAMPLE_RATE).astype(np.float32)
        bounds = chunk_bounds(audio, 30 * SAMPLE_RATE)
        assert len(bounds) == 4 and bounds[0][0] == 0 and bounds[-1][1] == len(audio)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(0 < end - start <= 30 * SAMPLE_RATE for start, end in bounds)

    def test_a_cut_falls_in_the_pause_near_the_boundary(self):
        audio = np.random.default_rng(2).normal(0, 0.1, 40 * SAMPLE_RATE).astype(np.float32)
        audio[int(26.0 * SAMPLE_RATE):int(26.4 * SAMPLE_RATE)] = 0.0  # a pause
        (_, cut), _ = chunk_bounds(audio, 30 * SAMPLE_RATE)
        assert 26.0 * SAMPLE_RATE <= cut <= 26.4 * SAMPLE_RATE


class TestWordDiff:
    def test_equal_texts_differ_nowhere_whatever_the_case_and_punctuation(self):
        assert [run["op"] for run in word_diff("Ask not, what!", "ask not what")] == ["equal"]

    def test_the_diff_names_the_words_that_changed(self):
        diff = word_diff("ask what your county can do", "ask not what your country can do")
        changed = [(run["op"], run["live"], run["refined"]) for run in diff if run["op"] != "equal"]
        assert changed == [("insert", [], ["not"]), ("replace", ["county"], ["country"])]


class TestRefiner:
    def test_the_base_model_transcribes_real_speech(self, refiner, jfk_audio):
        result = refiner.transcribe(jfk_audio, "en")
        assert word_error_rate(JFK_TEXT, result.text) == 0.0
        assert result.chunks == 1 and result.language == "en"
        assert [w["word"] for w in result.words][:3] == ["And", "so", "my"]

    def test_long_audio_goes_in_chunks_with_progress(self, refiner, jfk_audio, settings):
        settings.REFINE_CHUNK_SECONDS = 13.0
        audio = np.concatenate([jfk_audio, silence(1.0), jfk_audio, silence(1.0), jfk_audio])
        progress: list[tuple[int, int]] = []
        result = refiner.transcribe(audio, "en", lambda done, total: progress.append((done, total)))
        assert progress == [(0, 3), (1, 3), (2, 3), (3, 3)]
        assert word_error_rate(" ".join([JFK_TEXT] * 3), result.text) <= 0.05
        starts = [w["start_ms"] for w in result.words]
        assert starts == sorted(starts) and starts[-1] > 24_000, "word times are on the whole audio's timeline"

    def test_a_digit_string_is_written_digit_by_digit_as_the_live_engine_writes_it(self, refiner):
        # "oh one eight oh three", the last phrase of s4_digits.wav: the base model writes "01803".
        audio = load_audio(AUDIO_DIR / "s4_digits.wav")[int(5.2 * SAMPLE_RATE):]
        result = refiner.transcribe(audio, "en")
        assert result.text == "0 1 8 0 3"
        assert [w["word"] for w in result.words] == ["0", "1", "8", "0", "3"]
        assert all(a["end_ms"] == b["start_ms"] for a, b in zip(result.words, result.words[1:]))

    def test_the_model_is_loaded_once_per_process(self, refiner, jfk_audio):
        refiner.transcribe(jfk_audio[:32000], "en")
        refiner.transcribe(jfk_audio[:32000], "en")
        assert refiner.loads == 1 and get_refiner() is refiner


@pytest.mark.django_db
class TestRunRefinement:
    def test_the_refined_text_is_stored_beside_the_live_one_with_the_difference(self, refiner, jfk_audio):
        live = "And so my fellow American, ask not what your county can do for you."
        utterance = make_utterance(live, jfk_audio)
        outcome = run_refinement(str(utterance.utterance_id), "base", task_id="t-1", refiner=refiner)
        assert outcome["status"] == "done" and outcome["completed"]
        refinement = Refinement.objects.get(utterance=utterance, model="base")
        assert refinement.status == "done" and refinement.attempts == 1 and refinement.task_id == "t-1"
        assert word_error_rate(JFK_TEXT, refinement.text) == 0.0
        assert refinement.differs is True and refinement.word_error_rate > 0
        changed = [(run["live"], run["refined"]) for run in refinement.diff if run["op"] != "equal"]
        assert (["American,"], ["Americans,"]) in changed and (["county"], ["country"]) in changed
        assert refinement.chunks_done == refinement.chunks_total == 1
        assert refinement.processing_ms > 0 and 0 < refinement.real_time_factor < 1
        assert utterance.text == live, "the streamed text is kept as it was"

    def test_the_live_finals_keyterms_prompt_the_refinement_too(self, refiner, speak):
        audio = speak("Please send the invoice to Siobhan Nakamura today.")
        texts = {}
        for prompt in ("", "Siobhan Nakamura, Zyphora."):
            utterance = make_utterance("Please send the invoice to Siobhan Nakamura today.", audio,
                                       decode={"beam_size": 5, "prompt": prompt})
            run_refinement(str(utterance.utterance_id), "base", refiner=refiner)
            texts[prompt] = Refinement.objects.get(utterance=utterance).text
        assert "Siobhan" not in texts[""]  # base hears "Shivon Akamura"
        assert "Siobhan Nakamura" in texts["Siobhan Nakamura, Zyphora."]

    def test_a_second_delivery_changes_nothing(self, refiner, jfk_audio):
        utterance = make_utterance(JFK_TEXT, jfk_audio)
        run_refinement(str(utterance.utterance_id), "base", refiner=refiner)
        first = Refinement.objects.get(utterance=utterance)
        assert first.differs is False
        again = run_refinement(str(utterance.utterance_id), "base", refiner=refiner)
        assert again == {"utterance_id": str(utterance.utterance_id), "status": "done", "already_done": True}
        second = Refinement.objects.get(utterance=utterance)
        assert (second.attempts, second.finished_at) == (1, first.finished_at)

    def test_an_utterance_without_audio_fails_with_a_reason(self, refiner):
        utterance = make_utterance("hello", None)
        outcome = run_refinement(str(utterance.utterance_id), "base", refiner=refiner)
        assert outcome["status"] == "failed"
        refinement = Refinement.objects.get(utterance=utterance)
        assert refinement.status == "failed" and "no audio" in refinement.error

    def test_the_language_is_passed_explicitly(self, jfk_audio):
        english_only = Refiner("tiny.en")
        utterance = make_utterance("Guten Tag", jfk_audio[:32000], language="de")
        outcome = run_refinement(str(utterance.utterance_id), "tiny.en", refiner=english_only)
        assert outcome["status"] == "failed" and "English-only" in outcome["error"]

    def test_a_missing_utterance_is_reported_not_raised(self, refiner):
        assert run_refinement(str(uuid.uuid4()), "base", refiner=refiner)["status"] == "missing"
