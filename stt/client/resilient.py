"""Transcribe a whole recording across dropped connections.

A backend transcribing a file (a voicemail, a call recording) wants every word even if
the connection drops or the server process restarts midway. `transcribe()` streams the
audio, and when the connection ends early with a retryable close (1006 dropped, 1011,
1012 restarting, 1013 busy) it opens a new session, with backoff, and resends the audio
from the end of the last final it received: what was confirmed is not sent twice, what
was in flight is transcribed again. A process that refuses the new session because it
is full (1013, `server_overloaded` or `capacity_exhausted`) is asked again no sooner
than the `retry_after` it gave (open_session's Backoff); behind a load balancer the
next attempt usually lands on a process with room.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from websockets.exceptions import ConnectionClosed

from stt import messages
from stt.client.audio import to_float32_mono
from stt.client.session import (RETRYABLE_CLOSE_CODES, Backoff, Callbacks, SttClientError, call_handler,
                                open_session)
from stt.messages import SAMPLE_RATE, SessionConfig


@dataclass
class Transcript:
    """The finals of a recording, in order, with their times on the recording's timeline."""

    finals: list[messages.TranscriptionFinal] = field(default_factory=list)
    offsets_ms: list[int] = field(default_factory=list)  # where each final's session began
    sessions: int = 0
    # How each session's connection ended, in order: 1000 for the one that finished the
    # recording; before it, why each resumed (1012 its process restarted, 1006 dropped ...).
    close_codes: list[int | None] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(final.data.text for final in self.finals if final.data.text)

    @property
    def reconnects(self) -> int:
        return max(0, self.sessions - 1)


async def transcribe(audio: np.ndarray, url: str, config: SessionConfig | None = None, *,
                     sample_rate: int = SAMPLE_RATE, api_key: str | None = None, token: str | None = None,
                     pace: float | None = 1.0, callbacks: Callbacks | None = None,
                     backoff: Backoff | None = None, max_reconnects: int = 5) -> Transcript:
    """Every final of `audio`, resuming in a new session after a dropped connection."""
    samples = to_float32_mono(audio, sample_rate)
    backoff = backoff or Backoff()
    transcript = Transcript()
    confirmed = 0  # samples of `samples` covered by finals received
    attempt = 0
    user_final = callbacks.on_final if callbacks else None
    while True:
        base = confirmed

        async def on_final(message: messages.TranscriptionFinal, base: int = base) -> None:
            nonlocal confirmed
            transcript.finals.append(message)
            transcript.offsets_ms.append(round(base * 1000 / SAMPLE_RATE))
            confirmed = max(confirmed, base + message.data.end_ms * SAMPLE_RATE // 1000)
            if user_final is not None:
                await call_handler(user_final, message)

        session_callbacks = replace(callbacks or Callbacks(), on_final=on_final)
        session = await open_session(url, config, api_key=api_key, token=token, callbacks=session_callbacks,
                                     backoff=backoff)
        transcript.sessions += 1
        try:
            await session.stream(samples[base:], pace=pace)
            ended = await session.end()
        except ConnectionClosed:
            ended = None
            await session.close()
        transcript.close_codes.append(session.close_code)
        if ended is not None:
            return transcript
        code = session.close_code
        if code not in RETRYABLE_CLOSE_CODES and code is not None:
            raise SttClientError(f"the session ended with close code {code} {session.close_reason}",
                                 close_code=code)
        attempt += 1
        if attempt > max_reconnects:
            raise SttClientError(f"gave up after {max_reconnects} reconnects", close_code=code, retryable=True)


