"""StreamParams: what a stream runs with, from the session's config and its runtime
profile's tunables."""

from __future__ import annotations

import pytest

from stt.models import RuntimeProfile
from stt.protocol import validate_config
from stt.runtime_config import RuntimeValues
from stt.streaming import StreamParams

pytestmark = pytest.mark.django_db  # a profile's full_clean checks its name is unique


def params_for(session_config: dict, profile: RuntimeProfile | None = None) -> StreamParams:
    """As a session builds them: the profile over the settings, its defaults under the
    client's config."""
    runtime = RuntimeValues.from_settings()
    if profile is not None:
        profile.full_clean()
        runtime = runtime.overlaid(profile.name, profile.overrides())
    config = validate_config(session_config, defaults=runtime.session_defaults(),
                             max_silence=runtime.max_silence_duration)
    return StreamParams.from_config(config, runtime=runtime)


class TestEagerness:
    def test_without_a_profile_or_a_choice_it_is_the_setting(self, settings):
        settings.ENDPOINTING_EAGERNESS = "low"
        assert params_for({}).eagerness == "low"
        settings.ENDPOINTING_EAGERNESS = "off"
        assert params_for({}).eagerness == "off"

    def test_the_profiles_eagerness_overrides_the_setting(self, settings):
        settings.ENDPOINTING_EAGERNESS = "low"
        assert params_for({}, RuntimeProfile(name="fast", endpointing_eagerness="high")).eagerness == "high"
        assert params_for({}, RuntimeProfile(name="blank")).eagerness == "low", "blank inherits"

    @pytest.mark.parametrize("choice", ["off", "low", "medium", "high"])
    def test_the_sessions_own_choice_wins(self, choice):
        assert params_for({"endpointing": choice}, RuntimeProfile(name="p", endpointing_eagerness="high")) \
            .eagerness == choice

    def test_null_means_the_profiles(self):
        profile = RuntimeProfile(name="p", endpointing_eagerness="off")
        assert params_for({"endpointing": None}, profile).eagerness == "off"

    def test_a_config_built_without_the_profiles_defaults_still_gets_its_eagerness(self):
        runtime = RuntimeValues.from_settings().overlaid("p", {"endpointing_eagerness": "high"})
        assert StreamParams.from_config(validate_config({}), runtime=runtime).eagerness == "high"


class TestFinalPrompt:
    """A final's prompt, oldest text first: the session's prompt text, the previous
    finals, then the keyterms nearest the audio."""

    def params(self, prompt: str, prompt_context: str = "") -> StreamParams:
        return StreamParams.from_config(validate_config({}), prompt=prompt, prompt_context=prompt_context)

    def test_the_previous_finals_go_between_the_prompt_text_and_the_keyterms(self):
        params = self.params("About invoices. Siobhan Nakamura, Zyphora.", "About invoices.")
        assert params.prompt_context == "About invoices."
        assert params.final_prompt("We spoke yesterday.") == \
            "About invoices. We spoke yesterday. Siobhan Nakamura, Zyphora."

    def test_without_previous_finals_it_is_the_streams_prompt(self):
        params = self.params("About invoices. Zyphora.", "About invoices.")
        assert params.final_prompt("") == "About invoices. Zyphora."

    def test_keyterms_alone_follow_the_previous_finals(self):
        assert self.params("Zyphora.").final_prompt("We spoke yesterday.") == "We spoke yesterday. Zyphora."

    def test_prompt_text_alone_precedes_them(self):
        params = self.params("About invoices.", "About invoices.")
        assert params.final_prompt("We spoke yesterday.") == "About invoices. We spoke yesterday."

    def test_no_prompt_is_the_previous_finals_alone(self):
        assert self.params("").final_prompt("We spoke yesterday.") == "We spoke yesterday."
