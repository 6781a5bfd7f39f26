"""A StreamingTranscriber driven as a session drives it, for the streaming tests: a
listener that keeps what it is told, and audio pushed at full speed or paced."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np

from stt.protocol import validate_config
from stt.streaming import (
    FinalReason,
    FinalResult,
    PartialResult,
    SpeechEnd,
    SpeechStart,
    StreamingTranscriber,
    StreamParams,
)

# Two sentences espeak-ng speaks for tests that need an utterance boundary between them.
FIRST = "Please turn on the kitchen lights."
SECOND = "What is the weather like tomorrow?"


class Recorder:
    """A StreamListener that keeps everything it is told, in order."""

    def __init__(self) -> None:
        self.events: list[SpeechStart | SpeechEnd | PartialResult | FinalResult] = []

    async def on_speech_start(self, event: SpeechStart) -> None:
        self.events.append(event)

    async def on_speech_end(self, event: SpeechEnd) -> None:
        self.events.append(event)

    async def on_partial(self, result: PartialResult) -> None:
        self.events.append(result)

    async def on_final(self, result: FinalResult) -> None:
        self.events.append(result)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def finals(self) -> list[FinalResult]:
        return self.of(FinalResult)

    @property
    def final_text(self) -> str:
        return " ".join(f.transcript.text for f in self.finals if f.transcript)


async def stream(engine, audio: np.ndarray, frame: int = 1024, close: bool = True, eagerness: str = "off",
                 **config):
    """Stream as fast as the transcriber takes it. Eagerness "off" (a fixed end silence)
    unless a test is about semantic endpointing."""
    recorder = Recorder()
    params = replace(StreamParams.from_config(validate_config(config)), eagerness=eagerness)
    transcriber = StreamingTranscriber(params, engine, recorder)
    for start in range(0, audio.size, frame):
        await transcriber.push_audio(audio[start:start + frame])
    if close:
        await transcriber.close(FinalReason.SESSION_END)
    return transcriber, recorder


async def stream_paced(engine, audio: np.ndarray, prompt: str = "", frame_pause: float = 0.015,
                       eagerness: str = "off", settle: bool = False, **config) -> Recorder:
    """Stream like a live client (frames spaced out), so the partial path gets its turns;
    `settle`: after each frame, until the engine is idle too."""
    recorder = Recorder()
    params = replace(StreamParams.from_config(validate_config(config), prompt=prompt), eagerness=eagerness)
    transcriber = StreamingTranscriber(params, engine, recorder)
    for start in range(0, audio.size, 1024):
        await transcriber.push_audio(audio[start:start + 1024])
        await asyncio.sleep(frame_pause)
        if settle:
            await wait_for_idle(engine)
    await transcriber.close(FinalReason.SESSION_END)
    return recorder


async def wait_for_idle(engine, limit: float = 30.0) -> None:
    """Until the engine has nothing queued or decoding."""
    deadline = time.monotonic() + limit
    while engine.queue_depth or engine.in_flight:
        assert time.monotonic() < deadline, "the engine stayed busy"
        await asyncio.sleep(0.01)
