"""Runtime profiles: validated like the admin form validates them, one default at most."""

import pytest
from django.core.exceptions import ValidationError

from stt.models import RuntimeProfile

pytestmark = pytest.mark.django_db


def invalid_fields(**values) -> set[str]:
    profile = RuntimeProfile(name="p", **values)
    with pytest.raises(ValidationError) as caught:
        profile.full_clean()
    return set(caught.value.message_dict)


def test_empty_fields_inherit_the_server_settings():
    profile = RuntimeProfile(name="quiet-room", vad_threshold=0.6)
    profile.full_clean()
    assert profile.overrides() == {"vad_threshold": 0.6}


@pytest.mark.parametrize("field, value", [
    ("vad_threshold", 1.5), ("vad_threshold", 0.0), ("partial_chunk_duration", 0.0),
    ("final_beam_size", 0), ("final_beam_size", 11), ("max_utterance_duration", 40.0),
    ("max_connections", 0),
])
def test_out_of_range_values_are_refused(field, value):
    assert field in invalid_fields(**{field: value})


def test_the_language_must_be_one_whisper_knows():
    assert "default_language" in invalid_fields(default_language="klingon")
    profile = RuntimeProfile(name="p", default_language="en-GB")
    profile.full_clean()
    assert profile.default_language == "en"


def test_the_end_silence_must_fit_under_the_maximum_silence():
    assert "final_chunk_duration" in invalid_fields(final_chunk_duration=1.5, max_silence_duration=1.0)
    RuntimeProfile(name="p", final_chunk_duration=1.5, max_silence_duration=2.0).full_clean()


def test_names_are_identifiers():
    with pytest.raises(ValidationError):
        RuntimeProfile(name="has spaces").full_clean()


def test_saving_a_new_default_retires_the_old_one():
    first = RuntimeProfile.objects.create(name="first", is_default=True)
    RuntimeProfile.objects.create(name="second", is_default=True)
    first.refresh_from_db()
    assert not first.is_default
    assert list(RuntimeProfile.objects.filter(is_default=True).values_list("name", flat=True)) == ["second"]


class TestEndpointingEagerness:
    def test_blank_inherits_the_setting_a_level_overrides_it(self):
        profile = RuntimeProfile(name="p")
        profile.full_clean()
        assert profile.endpointing_eagerness == "" and "endpointing_eagerness" not in profile.overrides()
        for level in ("off", "low", "medium", "high"):
            profile = RuntimeProfile(name="p", endpointing_eagerness=level)
            profile.full_clean()
            assert profile.overrides() == {"endpointing_eagerness": level}

    @pytest.mark.parametrize("value", ["auto", "HIGH", "eager"])
    def test_other_values_are_refused(self, value):
        assert "endpointing_eagerness" in invalid_fields(endpointing_eagerness=value)


class TestVocabulary:
    def test_one_term_per_line_tidied_blank_lines_skipped(self):
        profile = RuntimeProfile(name="p", vocabulary="Siobhan   Nakamura\n\n  Zyphora \r\nReykjavík\n")
        profile.full_clean()
        assert profile.vocabulary == "Siobhan Nakamura\nZyphora\nReykjavík"
        assert profile.overrides() == {"vocabulary": ("Siobhan Nakamura", "Zyphora", "Reykjavík")}

    def test_an_empty_vocabulary_overrides_nothing(self):
        profile = RuntimeProfile(name="p", vocabulary="\n  \n")
        profile.full_clean()
        assert profile.overrides() == {}

    def test_a_hundred_terms_of_sixty_four_characters_at_most(self):
        RuntimeProfile(name="p", vocabulary="\n".join(f"{i:03d}" + "x" * 61 for i in range(100))).full_clean()
        for vocabulary in ("\n".join(f"term {i}" for i in range(101)), "short\n" + "x" * 65, "tab\x00bed"):
            assert "vocabulary" in invalid_fields(vocabulary=vocabulary)
