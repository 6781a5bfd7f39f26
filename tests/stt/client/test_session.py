"""The Python client against a real server process: sessions open with a key or a browser
token, stream files, arrays and async iterators, deliver typed messages through callbacks
and the iterator, and retry with backoff while the server is busy."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import numpy as np
import pytest

from stt import messages
from stt.client import (AuthenticationError, Backoff, Callbacks, SessionConfig, SttClientError, TranscriptionFinal,
                        load_audio, open_session)
from stt.evaluation import word_error_rate
from tests.conftest import JFK_PATH, JFK_TEXT
from tests.servers import ROOT

pytestmark = pytest.mark.realtime


def finals_text(received: list) -> str:
    return " ".join(m.data.text for m in received if isinstance(m, TranscriptionFinal))


async def test_a_backend_streams_a_file_and_reads_typed_messages_from_the_iterator(stt_server):
    session = await open_session(stt_server.ws, SessionConfig(language="en", user_id="backend-1"),
                                 api_key=stt_server.keys["backend"])
    received = []
    async with session:
        # Real time, as a live backend streams: partials keep up with speech, not with 4x speech.
        sender = asyncio.create_task(session.stream(load_audio(JFK_PATH), pace=1.0))
        await sender
        ended = await session.end()
        async for message in session.messages():
            received.append(message)
    kinds = [m.type for m in received]
    assert kinds[0] == "session_started" and kinds[-1] == "session_ended"
    assert {"voice_activity_detected", "transcription_partial", "transcription_final"} <= set(kinds)
    assert not [m for m in received if isinstance(m, messages.UnknownServerMessage)], \
        "every message the server sent matches the shared models"
    assert word_error_rate(JFK_TEXT, finals_text(received)) <= 0.1
    assert ended is not None and ended.data.finals == kinds.count("transcription_final")
    assert received[0].data.config.user_id == "backend-1"
    assert all(m.metadata.user_id == "backend-1" for m in received)
    assert session.close_code == 1000


async def test_callbacks_receive_partials_finals_and_voice_activity_as_they_arrive(stt_server, jfk_audio):
    seen: dict[str, list] = {"partial": [], "final": [], "vad": [], "all": []}

    async def on_final(message):  # coroutine callbacks are awaited
        seen["final"].append(message)

    callbacks = Callbacks(on_partial=seen["partial"].append, on_final=on_final, on_vad=seen["vad"].append,
                          on_message=seen["all"].append)
    session = await open_session(stt_server.ws, api_key=stt_server.keys["backend"], callbacks=callbacks)
    with pytest.raises(RuntimeError):  # callbacks only: nothing piles up for an iterator
        await anext(session.messages())
    await session.stream(jfk_audio, pace=1.0)  # real time: partials keep up with speech
    await session.end()
    assert seen["vad"] and seen["partial"] and seen["final"]
    assert all(isinstance(m, messages.TranscriptionPartial) for m in seen["partial"])
    assert word_error_rate(JFK_TEXT, finals_text(seen["final"])) <= 0.1
    assert seen["all"][0].type == "session_started" and seen["all"][-1].type == "session_ended"


async def test_a_raising_callback_does_not_stop_the_stream(stt_server, jfk_audio):
    def broken(message):
        raise ValueError("bug in the application's handler")

    finals = []
    session = await open_session(stt_server.ws, api_key=stt_server.keys["backend"],
                                 callbacks=Callbacks(on_partial=broken, on_final=finals.append))
    await session.stream(jfk_audio, pace=None)
    assert (await session.end()) is not None
    assert finals


async def test_an_async_iterator_of_int16_chunks_at_another_rate_is_converted_and_streamed(stt_server):
    import soundfile

    raw, rate = soundfile.read(str(JFK_PATH), dtype="int16")  # 44.1 kHz stereo int16

    async def microphone_like():
        block = rate // 10
        for start in range(0, len(raw), block):
            yield raw[start:start + block]
            await asyncio.sleep(0)

    session = await open_session(stt_server.ws, api_key=stt_server.keys["backend"])
    await session.stream(microphone_like(), sample_rate=rate)
    await session.end()
    received = [m async for m in session.messages()]
    assert abs(session.progress.samples_sent - round(len(raw) * 16000 / rate)) < 200
    assert word_error_rate(JFK_TEXT, finals_text(received)) <= 0.1


async def test_real_time_pace_takes_as_long_as_the_audio(stt_server, speak):
    speech = speak("one two three four five")
    session = await open_session(stt_server.ws, api_key=stt_server.keys["backend"])
    began = time.monotonic()
    await session.stream(speech, pace=1.0)
    took = time.monotonic() - began
    await session.end()
    seconds = len(speech) / 16000
    assert seconds - 0.15 <= took <= seconds + 1.0


async def test_control_messages_are_typed_and_answered(stt_server, jfk_audio):
    session = await open_session(stt_server.ws, api_key=stt_server.keys["backend"])
    await session.send_audio(jfk_audio[: 16000 * 3])
    await session.flush()
    await session.configure(final_chunk_duration=0.6)
    await session.update_context(conversation_state="responding")
    await session.interrupt(reason="assistant spoke")
    await session.end()
    received = {m.type: m async for m in session.messages()}
    assert isinstance(received["buffer_flushed"], messages.BufferFlushed)
    assert received["session_configured"].data.changed == ["final_chunk_duration"]
    assert received["interrupt_acknowledged"].data.reason == "assistant spoke"


async def test_a_missing_or_wrong_key_fails_at_once_without_retrying(stt_server):
    began = time.monotonic()
    with pytest.raises(AuthenticationError):
        await open_session(stt_server.ws, backoff=Backoff(attempts=5, base_delay=2.0))
    with pytest.raises(AuthenticationError):
        await open_session(stt_server.ws, api_key="ftk_not-a-key", backoff=Backoff(attempts=5, base_delay=2.0))
    assert time.monotonic() - began < 2.0


async def test_a_browser_token_minted_with_the_key_opens_a_session(stt_server):
    request = urllib.request.Request(f"{stt_server.base}/auth/token", method="POST",
                                     headers={"Authorization": f"Bearer {stt_server.keys['backend']}"})
    token = json.loads(urllib.request.urlopen(request, timeout=10).read())["token"]
    session = await open_session(stt_server.ws, token=token)
    assert session.connection.subprotocol == "fasttalk"
    assert (await session.end()) is not None


async def test_a_busy_key_is_retried_with_backoff_until_a_session_frees(stt_server):
    key = stt_server.keys["single"]  # one concurrent session
    holder = await open_session(stt_server.ws, api_key=key)

    async def release_later():
        await asyncio.sleep(1.5)
        await holder.end()

    releasing = asyncio.create_task(release_later())
    began = time.monotonic()
    second = await open_session(stt_server.ws, api_key=key, backoff=Backoff(attempts=8, base_delay=0.3))
    waited = time.monotonic() - began
    await releasing
    assert waited >= 1.4, "the second session opened only after the first ended"
    await second.end()
    with pytest.raises(SttClientError) as busy:
        holder = await open_session(stt_server.ws, api_key=key)
        try:
            await open_session(stt_server.ws, api_key=key, backoff=Backoff(attempts=2, base_delay=0.1))
        finally:
            await holder.end()
    assert busy.value.error is not None and busy.value.error.code == "too_many_sessions"
    assert busy.value.close_code == 1013 and busy.value.retryable


async def test_an_unreachable_server_is_retried_then_reported(unused_tcp_port):
    began = time.monotonic()
    with pytest.raises(SttClientError) as failed:
        await open_session(f"ws://127.0.0.1:{unused_tcp_port}/ws/transcribe",
                           backoff=Backoff(attempts=3, base_delay=0.2))
    assert failed.value.retryable and "cannot reach" in str(failed.value)
    assert time.monotonic() - began < 3


async def test_an_invalid_config_is_refused_by_the_server_not_retried(stt_server):
    # Valid for the client's model, refused by the server's bound (MAX_SILENCE_DURATION).
    with pytest.raises(SttClientError) as refused:
        await open_session(stt_server.ws, SessionConfig(final_chunk_duration=600.0),
                           api_key=stt_server.keys["backend"], backoff=Backoff(attempts=4, base_delay=1.0))
    assert refused.value.error.code == "invalid_config" and not refused.value.retryable


def test_the_client_does_not_need_django_or_the_model():
    import subprocess
    import sys

    probe = ("import sys, stt.client, stt.client.cli; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('django', 'faster_whisper', 'ctranslate2', 'torch', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"}, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_an_unknown_future_message_is_handed_over_not_fatal():
    text = json.dumps({"type": "speaker_changed", "data": {"speaker": 2}, "metadata": {"session_id": "s"}})
    message = messages.parse_server_message(text)
    assert isinstance(message, messages.UnknownServerMessage) and message.payload["data"]["speaker"] == 2
    with pytest.raises(Exception):
        messages.parse_server_message(text, strict=True)


def test_audio_arrays_are_converted_to_the_protocol_format():
    from stt.client import to_float32_mono

    stereo = np.stack([np.full(480, 16384, np.int16), np.full(480, -16384, np.int16)], axis=1)
    assert np.allclose(to_float32_mono(stereo[:, :1].reshape(-1)), 0.5)
    assert np.allclose(to_float32_mono(stereo), 0.0)  # mixed down
    tone = np.sin(2 * np.pi * 440 * np.arange(48000) / 48000).astype(np.float32)
    resampled = to_float32_mono(tone, 48000)
    assert abs(len(resampled) - 16000) <= 32
    peak_hz = np.argmax(np.abs(np.fft.rfft(resampled[:16000]))) * 16000 / 16000
    assert abs(peak_hz - 440) <= 2
