"""The Python client of Fasttalk STT (async, on `websockets`).

    from stt.client import open_session, load_audio, SessionConfig, TranscriptionFinal

    session = await open_session("ws://localhost:8000/ws/transcribe",
                                 SessionConfig(language="en"), api_key="ftk_…")
    async with session:
        sender = asyncio.create_task(session.stream(load_audio("speech.mp3")))
        async for message in session.messages():
            if isinstance(message, TranscriptionFinal):
                print(message.data.text)
            if sender.done():
                break

Needs only websockets, pydantic, numpy and (for files) av: requirements/client.txt.
Nothing here imports Django.
"""

from stt.client.audio import load_audio, to_float32_mono
from stt.client.perf import STTPerformanceTester
from stt.client.resilient import Transcript, transcribe
from stt.client.session import (DEFAULT_URL, AuthenticationError, Backoff, Callbacks, SttClientError, SttSession,
                                open_session)
from stt.messages import (BufferFlushed, Error, InterruptAcknowledged, SessionConfig, SessionConfigured,
                          SessionEnded, SessionStarted, Transcription, TranscriptionFinal, TranscriptionPartial,
                          UnknownServerMessage, VoiceActivityDetected, parse_server_message)

__all__ = [
    "DEFAULT_URL", "AuthenticationError", "Backoff", "BufferFlushed", "Callbacks", "Error", "InterruptAcknowledged",
    "STTPerformanceTester", "SessionConfig", "SessionConfigured", "SessionEnded", "SessionStarted", "SttClientError",
    "SttSession", "Transcript", "Transcription", "TranscriptionFinal", "TranscriptionPartial", "UnknownServerMessage",
    "VoiceActivityDetected", "load_audio", "open_session", "parse_server_message", "to_float32_mono",
    "transcribe",
]
