"""The final path: what a final repeats of its context, and the decode again without it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from stt.engine import DecodeOptions, Transcript
from stt.engine.types import SAMPLE_RATE
from stt.streaming.finals import FinalDecode, FinalPath, UtteranceProgress, repeats
from stt.streaming.segmenter import Utterance, UtteranceClosed
from stt.protocol import validate_config
from stt.streaming.types import FinalResult, StreamParams, StreamStats

CONTEXT = "Go forward 10 meters. Today only platforms one and three are used."


@pytest.mark.parametrize("text", [
    "Today only platforms one and three are used.", "today, only platforms one", "Go forward 10 meters.",
])
def test_a_final_that_reads_back_three_or_more_words_of_the_context_repeats_it(text):
    assert repeats(CONTEXT, text)


@pytest.mark.parametrize("text", ["Yes.", "Go forward.", "Today only platforms two are used.", "", "meters today only X"])
def test_short_or_new_text_does_not(text):
    assert not repeats(CONTEXT, text)


class PromptEcho:
    """The engine as the final path sees it (SpeechEngine.transcribe), with Whisper's
    failure scripted: with a prompt it reads the prompt back; alone it hears the speech."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def transcribe(self, audio: np.ndarray, options: DecodeOptions, stream_key: object = None) -> Transcript:
        self.prompts.append(options.prompt)
        text = options.prompt if options.prompt else "Go forward ten meters."
        return Transcript(text, (), (), "en", 0.9, audio.size / SAMPLE_RATE, 0.0, 0.01)


class Repeater:
    """The engine as the final path sees it, with a final that repeats itself scripted:
    marked suspicious when it may not be redone the long way (the real engine's
    marking: tests/stt/engine/test_decoding.py)."""

    def __init__(self) -> None:
        self.asked: list[DecodeOptions] = []

    async def transcribe(self, audio: np.ndarray, options: DecodeOptions, stream_key: object = None) -> Transcript:
        self.asked.append(options)
        suspicious = not options.redo_long_form
        text = "Go forward. Go forward." if suspicious else "Go forward."
        return Transcript(text, (), (), "en", 0.9, audio.size / SAMPLE_RATE, 0.0, 0.01, suspicious=suspicious)


class Finals:
    def __init__(self) -> None:
        self.results: list[FinalResult] = []

    async def on_final(self, result: FinalResult) -> None:
        self.results.append(result)


async def test_a_final_behind_a_backlog_that_reads_back_the_context_it_was_given_is_decoded_alone():
    """The context a queued final was given is the stream's at its close; by the time it
    is decoded, later finals have moved the stream's on. Read back, it is the former."""
    engine, listener = PromptEcho(), Finals()
    path = FinalPath(engine, listener, StreamStats(), stream_key="stream")
    given = "Today only platforms one and three are used."
    options = DecodeOptions.final("en", False, prompt=given)
    decode = FinalDecode(options, context=given, alone=replace(options, prompt=""))
    path.context = "Ask what you can do for your country."  # a later final's, delivered meanwhile
    utterance = Utterance("u1", start=0, last_speech_end=SAMPLE_RATE)
    closed = UtteranceClosed(utterance, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE, "silence_detected", 0.0)
    await path.queue(closed, UtteranceProgress(), decode).delivered
    await path.stop()
    assert engine.prompts == [given, ""]
    assert [result.transcript.text for result in listener.results] == ["Go forward ten meters."]


async def test_a_final_with_context_that_repeats_is_decoded_again_without_it_not_redone_the_long_way():
    engine, listener = Repeater(), Finals()
    path = FinalPath(engine, listener, StreamStats(), stream_key="stream")
    path.context = "Today only platforms one and three are used."
    decode = path.final_decode(StreamParams.from_config(validate_config({})), UtteranceProgress())
    assert decode.options.prompt and not decode.options.redo_long_form and decode.alone.redo_long_form
    utterance = Utterance("u1", start=0, last_speech_end=SAMPLE_RATE)
    closed = UtteranceClosed(utterance, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE, "silence_detected", 0.0)
    await path.queue(closed, UtteranceProgress(), decode).delivered
    await path.stop()
    assert [options.redo_long_form for options in engine.asked] == [False, True]
    assert [result.transcript.text for result in listener.results] == ["Go forward."]
