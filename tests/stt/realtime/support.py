"""Realtime sessions for tests: 24 kHz pcm16 audio as append events, and a transport that
keeps what the client is sent."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
from faster_whisper.audio import decode_audio

from stt.realtime import GA, RealtimeSession
from tests.stt.session.support import Transport, session_services

RATE = 24000
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


def load_24k(path: Path | str) -> np.ndarray:
    """A recording as 24 kHz pcm16, as OpenAI's realtime clients send it."""
    audio = decode_audio(str(path), sampling_rate=RATE)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2")


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), "<i2")


def append_events(pcm: np.ndarray, chunk_seconds: float = 0.1) -> list[str]:
    step = int(chunk_seconds * RATE)
    return [json.dumps({"type": "input_audio_buffer.append",
                        "audio": base64.b64encode(pcm[i:i + step].tobytes()).decode()})
            for i in range(0, pcm.size, step)]


async def open_realtime(engine, dialect: str = GA) -> tuple[RealtimeSession, Transport]:
    transport = Transport()
    realtime = RealtimeSession(transport.send, transport.close, session_services(engine), dialect=dialect,
                               client="127.0.0.1:5000")
    assert await realtime.open()
    return realtime, transport


async def send(realtime: RealtimeSession, event: dict) -> None:
    await realtime.on_text(json.dumps(event))


async def stream(realtime: RealtimeSession, pcm: np.ndarray) -> None:
    for event in append_events(pcm):
        await realtime.on_text(event)


async def until(transport: Transport, done, timeout: float = 60.0) -> None:
    """Wait until done(transport) holds (the finals are computed in the background)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done(transport):
        assert loop.time() < deadline, f"timed out; sent so far: {transport.types()}"
        await asyncio.sleep(0.05)


def items_completed(transport: Transport) -> bool:
    committed = transport.of("input_audio_buffer.committed")
    return bool(committed) and len(transport.of(COMPLETED)) >= len(committed)
