"""stt/engine/holder.py: the process's engine, built from Django settings."""

import pytest

from stt.engine import DecodeOptions, build_engine_from_settings, get_engine, replace_engine
from stt.errors import SttError
from tests.stt.engine.helpers import unique


def test_replace_engine_swaps_the_process_engine_and_hands_back_the_old_one(engine):
    stand_in = object()
    assert replace_engine(stand_in) is engine
    try:
        assert get_engine() is stand_in
    finally:
        assert replace_engine(engine) is stand_in
    assert get_engine() is engine


async def test_the_engine_built_from_settings_follows_them(settings, jfk_audio):
    settings.STT_MIN_WINDOW_SECONDS = 4
    settings.STT_CACHE_SIZE = 0
    built = build_engine_from_settings()
    try:
        await built.ready()
        transcript = await built.transcribe(unique(jfk_audio[:16000]), DecodeOptions.partial("en"))
        assert transcript.window_seconds == 4, "1 s of audio in the shortest window the settings allow"
        # The timeout is read at each request, so a changed setting applies at once.
        settings.STT_TRANSCRIPTION_TIMEOUT = 0.001
        with pytest.raises(SttError) as caught:
            await built.transcribe(unique(jfk_audio), DecodeOptions.final("en", True))
        assert caught.value.code == "transcription_timeout"
    finally:
        built.close()
