"""A session's keyterms, its runtime profile's vocabulary and its prompt text: validated,
composed into one decoder prompt, followed live, and steering the real model's partials
and finals."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from asgiref.sync import sync_to_async

from stt.evaluation import normalize_text, word_error_rate
from stt.models import RuntimeProfile
from stt.runtime_config import RuntimeValues
from tests.conftest import AUDIO_DIR, JFK_TEXT, SAMPLE_RATE, load_audio, silence
from tests.stt.session.support import HistoryRecorder, feed, open_session, send, session_services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runtime_store")]

SENTENCE = "Please send the invoice to Siobhan Nakamura today."
NAMES = ["Siobhan Nakamura", "Reykjavik", "Zyphora", "Oisin Brannigan", "Kubernetes", "Anneliese Vandermolen",
         "Quorvex", "Ouagadougou", "Thibault Marchetti", "Nextavia", "Llandudno", "Pradeep Raghunathan",
         "Tegucigalpa", "Velocaster", "Ngozi Okonkwo", "Lumetric", "Chamonix", "Xiomara Castellanos",
         "Brightwell Orbis", "Szczecin", "Dmitri Volkonsky", "Sonaviq", "Tobermory", "Eilidh Fairbairn"]


def final_text(transport) -> str:
    return " ".join(m["data"]["text"] for m in transport.of("transcription_final"))


async def say(session, audio: np.ndarray) -> None:
    await feed(session, np.concatenate([audio, silence(1.0)]))


class TestTheSessionsKeyterms:
    async def test_the_final_spells_the_name_only_with_keyterms(self, engine, speak):
        plain, plain_out = await open_session(engine)
        await say(plain, speak(SENTENCE))
        await send(plain, {"type": "end_session"})
        assert "Siobhan" not in final_text(plain_out)

        steered, steered_out = await open_session(engine, keyterms=["Siobhan Nakamura"])
        started = steered_out.of("session_started")[0]["data"]
        assert started["config"]["keyterms"] == ["Siobhan Nakamura"] and started["runtime"]["vocabulary"] == []
        assert steered.stream.params.prompt == "Siobhan Nakamura."
        await say(steered, speak(SENTENCE))
        await send(steered, {"type": "end_session"})
        assert "Siobhan Nakamura" in final_text(steered_out)
        assert word_error_rate(SENTENCE, final_text(steered_out)) == 0.0

    async def test_configure_changes_them_from_the_next_utterance(self, engine, speak):
        session, transport = await open_session(engine)
        await say(session, speak(SENTENCE))
        await send(session, {"type": "configure", "config": {"keyterms": ["Siobhan Nakamura"]}})
        assert transport.of("session_configured")[0]["data"]["changed"] == ["keyterms"]
        await say(session, speak(SENTENCE))
        await send(session, {"type": "configure", "config": {"keyterms": []}})
        assert session.stream.params.prompt == ""
        await send(session, {"type": "end_session"})
        first, second = (m["data"]["text"] for m in transport.of("transcription_final"))
        assert "Siobhan" not in first and "Siobhan Nakamura" in second

    async def test_bad_keyterms_are_refused_and_the_session_goes_on(self, engine):
        session, transport = await open_session(engine, keyterms=["Zyphora", ""])
        error = transport.errors()[0]
        assert (error["code"], error["field"], error["recoverable"]) == ("invalid_config", "keyterms.1", True)
        assert not session.started
        await send(session, {"type": "start_session", "session_config": {"keyterms": ["Zyphora"]}})
        assert session.started
        await send(session, {"type": "configure", "config": {"keyterms": ["x" * 65], "buffer_duration": 1.0}})
        assert transport.errors()[-1]["field"] == "keyterms.0"
        assert session.config.keyterms == ["Zyphora"] and session.config.buffer_duration != 1.0
        assert session.stream.params.prompt == "Zyphora."
        await send(session, {"type": "end_session"})
        assert transport.closed[0] == 1000

    async def test_keyterms_that_do_not_fit_the_prompt_are_refused_whole(self, engine, settings):
        settings.STT_PROMPT_MAX_TOKENS = 12
        session, transport = await open_session(engine, keyterms=NAMES[:6])
        error = transport.errors()[0]
        assert (error["code"], error["field"]) == ("invalid_config", "keyterms")
        assert "STT_PROMPT_MAX_TOKENS (12)" in error["message"] and not session.started
        await send(session, {"type": "start_session", "session_config": {"keyterms": NAMES[:2]}})
        await send(session, {"type": "configure", "config": {"keyterms": NAMES}})
        assert transport.errors()[-1]["field"] == "keyterms"
        assert session.config.keyterms == NAMES[:2]
        await send(session, {"type": "end_session"})


class TestTheSessionsPrompt:
    """session_config.prompt: free text read as what was said before the audio."""

    PROMPT = "Notes of the call with Siobhan Nakamura about her invoice."

    async def test_a_prompt_naming_her_spells_the_name(self, engine, speak):
        plain, plain_out = await open_session(engine)
        await say(plain, speak(SENTENCE))
        await send(plain, {"type": "end_session"})
        assert "Siobhan" not in final_text(plain_out)

        steered, steered_out = await open_session(engine, prompt=self.PROMPT)
        assert steered_out.of("session_started")[0]["data"]["config"]["prompt"] == self.PROMPT
        assert steered.stream.params.prompt == steered.stream.params.prompt_context == self.PROMPT
        await say(steered, speak(SENTENCE))
        await send(steered, {"type": "end_session"})
        assert "Siobhan Nakamura" in final_text(steered_out)

    async def test_a_final_reads_the_prompt_then_the_previous_finals_then_the_keyterms(self, engine, speak):
        history = HistoryRecorder()
        session, transport = await open_session(engine, services=session_services(engine, history=history),
                                                prompt="Notes of the call.", keyterms=["Zyphora"])
        assert session.stream.params.prompt == "Notes of the call. Zyphora."
        await say(session, speak("Good morning, this is the billing desk."))
        # A final reads the finals delivered when its utterance ends: let the first one out.
        await seconds_until(lambda: len(transport.of("transcription_final")) == 1, limit=10)
        await say(session, speak(SENTENCE))
        await send(session, {"type": "end_session"})
        first = transport.of("transcription_final")[0]["data"]["text"]
        assert [w.payload["row"]["decode"]["prompt"] for w in history.writes if w.kind == "final"] == [
            "Notes of the call. Zyphora.", f"Notes of the call. {first} Zyphora."]

    async def test_configure_changes_it_from_the_next_utterance_and_forgets_the_finals_before(self, engine, speak):
        history = HistoryRecorder()
        session, transport = await open_session(engine, services=session_services(engine, history=history))
        await say(session, speak(SENTENCE))
        await send(session, {"type": "configure", "config": {"prompt": self.PROMPT}})
        configured = transport.of("session_configured")[0]["data"]
        assert configured["changed"] == ["prompt"] and configured["config"]["prompt"] == self.PROMPT
        await say(session, speak(SENTENCE))
        await send(session, {"type": "end_session"})
        first, second = (m["data"]["text"] for m in transport.of("transcription_final"))
        assert "Siobhan" not in first and "Siobhan Nakamura" in second
        decodes = [w.payload["row"]["decode"]["prompt"] for w in history.writes if w.kind == "final"]
        assert decodes == ["", self.PROMPT], "the final before the change does not teach its spelling"

    async def test_a_bad_prompt_is_refused_naming_it_and_changes_nothing(self, engine):
        session, transport = await open_session(engine, prompt="About invoices.")
        await send(session, {"type": "configure", "config": {"prompt": "x" * 2001, "buffer_duration": 1.0}})
        error = transport.errors()[-1]
        assert (error["code"], error["field"], error["recoverable"]) == ("invalid_config", "prompt", True)
        assert session.config.prompt == session.stream.params.prompt == "About invoices."
        assert session.config.buffer_duration != 1.0
        await send(session, {"type": "end_session"})
        assert transport.closed[0] == 1000

    async def test_keyterms_take_the_budget_first_and_the_prompt_keeps_its_latest_words(self, engine, settings):
        settings.STT_PROMPT_MAX_TOKENS = 12
        words = "one two three four five six seven eight nine ten eleven twelve"
        session, transport = await open_session(engine, keyterms=["Siobhan Nakamura"], prompt=words)
        assert session.started and not transport.errors(), "a prompt is never refused for its tokens"
        params = session.stream.params
        assert params.prompt_context and words.endswith(params.prompt_context) and "one" not in params.prompt
        assert params.prompt == f"{params.prompt_context} Siobhan Nakamura."
        await send(session, {"type": "end_session"})


class TestTheProfilesVocabulary:
    async def test_merged_after_the_sessions_own_each_term_once(self, engine):
        await sync_to_async(RuntimeProfile.objects.create)(
            name="clinic", vocabulary="Zyphora\nSiobhan Nakamura\nReykjavik")
        session, transport = await open_session(engine, profile="clinic", keyterms=["siobhan nakamura", "Quorvex"])
        runtime = transport.of("session_started")[0]["data"]["runtime"]
        assert runtime["vocabulary"] == ["Zyphora", "Siobhan Nakamura", "Reykjavik"]
        assert session.stream.params.prompt == "siobhan nakamura, Quorvex, Zyphora, Reykjavik."
        await send(session, {"type": "end_session"})

    async def test_what_does_not_fit_is_left_out_profile_terms_first(self, engine, settings, caplog):
        settings.STT_PROMPT_MAX_TOKENS = 20
        await sync_to_async(RuntimeProfile.objects.create)(name="clinic", is_default=True,
                                                           vocabulary="\n".join(NAMES[1:]))
        with caplog.at_level(logging.WARNING, logger="stt.session"):
            session, _ = await open_session(engine, keyterms=["Siobhan Nakamura"])
        prompt = session.stream.params.prompt
        assert prompt.startswith("Siobhan Nakamura, Reykjavik") and "Eilidh" not in prompt
        assert any(getattr(r, "event", None) == "keyterms_dropped" for r in caplog.records)
        await send(session, {"type": "end_session"})

    async def test_a_vocabulary_saved_while_a_session_runs_reaches_it_and_nothing_else_does(self, engine, speak):
        profile = await sync_to_async(RuntimeProfile.objects.create)(name="clinic", vad_threshold=0.6)
        session, transport = await open_session(engine, profile="clinic")
        await say(session, speak(SENTENCE))

        profile.vocabulary, profile.vad_threshold = "Siobhan Nakamura", 0.3
        await sync_to_async(profile.save)()
        assert await seconds_until(lambda: session.stream.params.prompt == "Siobhan Nakamura.") < 2.5
        assert session.runtime.vad_threshold == session.stream.params.vad_threshold == 0.6, \
            "a running session keeps the other tunables it started with"
        await say(session, speak(SENTENCE))

        profile.vocabulary = ""
        await sync_to_async(profile.save)()
        assert await seconds_until(lambda: session.stream.params.prompt == "") < 2.5
        await send(session, {"type": "end_session"})
        first, second = (m["data"]["text"] for m in transport.of("transcription_final"))
        assert "Siobhan" not in first and "Siobhan Nakamura" in second

    async def test_a_deleted_profile_leaves_a_running_session_as_it_was(self, engine):
        profile = await sync_to_async(RuntimeProfile.objects.create)(name="clinic", vocabulary="Zyphora")
        session, transport = await open_session(engine, profile="clinic")
        await sync_to_async(profile.delete)()
        await asyncio.sleep(1.5)  # a watchdog beat or more
        assert session.stream.params.prompt == "Zyphora." and not transport.errors()
        await send(session, {"type": "end_session"})


class FailingAfterStart:
    """Runtime values for the session's open and start, then a fault on every read."""

    def __init__(self) -> None:
        self.reads = 0

    async def values(self, profile: str | None = None) -> RuntimeValues:
        self.reads += 1
        if self.reads > 2:
            raise RuntimeError("the runtime store broke")
        return RuntimeValues.from_settings()


async def test_a_fault_following_the_vocabulary_leaves_the_limits_watched(engine, settings):
    settings.SESSION_IDLE_TIMEOUT = 2
    runtime = FailingAfterStart()
    session, transport = await open_session(engine, services=session_services(engine, runtime=runtime))
    assert session.started
    await seconds_until(lambda: transport.closed is not None, limit=6)
    assert runtime.reads > 2, "the watchdog did ask"
    assert transport.of("session_ended")[0]["data"]["reason"] == "idle_timeout"


async def seconds_until(condition, limit: float = 5.0) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not condition():
        if loop.time() - started > limit:
            raise AssertionError(f"not within {limit} s")
        await asyncio.sleep(0.05)
    return loop.time() - started


class TestNoHarm:
    """A prompt full of names must not put them into audio that does not say them."""

    @pytest.mark.parametrize("enable_vad", [True, False], ids=["vad", "no-vad: the model hears the noise too"])
    async def test_silence_noise_and_unrelated_speech_produce_no_keyterm(self, engine, enable_vad):
        rng = np.random.default_rng(7)
        seconds = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
        hum = sum(np.sin(2 * np.pi * 50 * k * seconds) / k for k in range(1, 6)) * 0.05
        brown = np.cumsum(rng.standard_normal(3 * SAMPLE_RATE))
        brown = (brown - np.convolve(brown, np.ones(1600) / 1600, "same")) / 400
        sounds = [silence(2), rng.standard_normal(3 * SAMPLE_RATE) * 0.03, hum, brown,
                  rng.standard_normal(3 * SAMPLE_RATE) * 0.0005]
        speech = [load_audio(AUDIO_DIR / "jfk.flac"), load_audio(AUDIO_DIR / "fw_libri_61_left.wav"),
                  load_audio(AUDIO_DIR / "pv_platforms.wav")]
        audio = np.concatenate([np.concatenate([part.astype(np.float32), silence(1)]) for part in sounds + speech])
        texts = {}
        for keyterms in ([], NAMES):
            session, transport = await open_session(engine, keyterms=keyterms, enable_vad=enable_vad)
            for start in range(0, audio.size, 4096):  # 4x real time: partials get their turns
                await session.on_audio(audio[start:start + 4096].astype("<f4").tobytes())
                await asyncio.sleep(4096 / SAMPLE_RATE / 4)
            await send(session, {"type": "end_session"})
            texts[bool(keyterms)] = (final_text(transport),
                                     " ".join(m["data"]["text"] for m in transport.of("transcription_partial")))
        name_words = {word for name in NAMES for word in normalize_text(name)}
        for text in texts[True]:
            assert not name_words & set(normalize_text(text)), text
        if not enable_vad:
            # Without VAD every buffer_duration (2 s) is cut mid-phrase, and tiny.en reads such
            # fragments worse with a long prompt (docs/protocol.md, Keyterms): only the absence
            # of keyterms is promised there.
            return
        reference = f"{JFK_TEXT} " + " ".join(
            (AUDIO_DIR / f"{name}.txt").read_text() for name in ("fw_libri_61_left", "pv_platforms"))
        plain, steered = word_error_rate(reference, texts[False][0]), word_error_rate(reference, texts[True][0])
        assert steered <= plain + 0.03, (texts[False][0], texts[True][0])
        assert "ask not what your country" in " ".join(normalize_text(texts[True][0]))
