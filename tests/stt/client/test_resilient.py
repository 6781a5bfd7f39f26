"""transcribe(): a recording is transcribed whole although the connection drops midway."""

from __future__ import annotations

import asyncio

import pytest

from stt.client import Backoff, Callbacks, SessionConfig, transcribe
from stt.evaluation import word_error_rate
from tests.conftest import JFK_TEXT
from tests.servers import TcpProxy

pytestmark = pytest.mark.realtime


async def test_a_dropped_connection_resumes_in_a_new_session_from_the_last_final(stt_server, jfk_audio):
    proxy = TcpProxy(stt_server.server.port)
    finals_seen = []

    async def drop_after_the_first_final(message):
        finals_seen.append(message)
        if len(finals_seen) == 1:
            proxy.cut()  # the network between client and server goes away
            await asyncio.sleep(1.0)
            proxy.restore()

    try:
        transcript = await transcribe(
            jfk_audio, f"ws://127.0.0.1:{proxy.port}/ws/transcribe", SessionConfig(language="en"),
            api_key=stt_server.keys["backend"], pace=2.0, callbacks=Callbacks(on_final=drop_after_the_first_final),
            backoff=Backoff(attempts=10, base_delay=0.3))
    finally:
        proxy.close()
    assert transcript.reconnects == 1
    assert transcript.close_codes == [1006, 1000], "the first connection dropped; the second ended the recording"
    assert word_error_rate(JFK_TEXT, transcript.text) <= 0.1, transcript.text
    # The second session started where the first session's confirmed audio ended.
    assert transcript.offsets_ms[0] == 0 and transcript.offsets_ms[-1] >= transcript.finals[0].data.end_ms
    assert transcript.text.lower().count("americans") == 1, "confirmed speech is not transcribed twice"


async def test_without_drops_it_is_one_session(stt_server, jfk_audio):
    transcript = await transcribe(jfk_audio, stt_server.ws, api_key=stt_server.keys["backend"], pace=None)
    assert transcript.sessions == 1 and word_error_rate(JFK_TEXT, transcript.text) <= 0.1
    assert transcript.close_codes == [1000]
