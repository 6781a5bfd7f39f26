"""One transcription session over one WebSocket, the way a backend uses the service.

    async with await open_session(url, SessionConfig(language="en"), api_key=key) as session:
        sender = asyncio.create_task(session.stream(samples))
        async for message in session.messages():
            if isinstance(message, TranscriptionFinal):
                print(message.data.text)

Opening retries with exponential backoff while the server is unreachable, busy (1013)
or restarting (1012); a refused credential (HTTP 403) is not retried. Messages arrive
as the models of stt/messages.py, through callbacks, an async iterator, or both.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stt import messages
from stt.client.audio import as_float32_frames
from stt.messages import SessionConfig

logger = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8000/ws/transcribe"
# 64 ms frames: inside the protocol's expected 512-2048 samples.
DEFAULT_FRAME_SAMPLES = 1024
# Close codes after which the same request may succeed later (server busy, restarting,
# or the connection dropped); others (policy, bad data) would fail again.
RETRYABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013})

Callback = Callable[[Any], Awaitable[None] | None]


class SttClientError(Exception):
    """The session could not be opened or was closed by the server."""

    def __init__(self, message: str, *, close_code: int | None = None,
                 error: messages.ErrorBody | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.error = error
        self.retryable = retryable


class AuthenticationError(SttClientError):
    """The handshake was refused (HTTP 403): missing, wrong or revoked credential, or a
    foreign Origin. Retrying does not help."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter; `retry_after` from the server wins when larger."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** attempt))
        return max(wait, retry_after or 0.0)


@dataclass
class Callbacks:
    """Optional handlers, called in arrival order from the receiving task."""

    on_partial: Callback | None = None
    on_final: Callback | None = None
    on_vad: Callback | None = None
    on_error: Callback | None = None
    on_message: Callback | None = None  # every message, after the specific handler

    def for_message(self, message: Any) -> list[Callback]:
        specific = {
            messages.TranscriptionPartial: self.on_partial,
            messages.TranscriptionFinal: self.on_final,
            messages.VoiceActivityDetected: self.on_vad,
            messages.Error: self.on_error,
        }.get(type(message))
        return [handler for handler in (specific, self.on_message) if handler is not None]


async def call_handler(handler: Callback, message: Any) -> None:
    """Call a callback, awaiting it if it is a coroutine function."""
    outcome = handler(message)
    if asyncio.iscoroutine(outcome):
        await outcome


@dataclass
class StreamProgress:
    """What a stream has sent, for progress displays and latency measurement."""

    samples_sent: int = 0
    frames_sent: int = 0
    # Per sent frame: the session-timeline sample it ended at, and when (time.monotonic).
    frame_ends: list[int] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)

    def record(self, samples: int) -> None:
        self.samples_sent += samples
        self.frames_sent += 1
        self.frame_ends.append(self.samples_sent)
        self.frame_times.append(time.monotonic())

    def time_audio_sent(self, sample: int) -> float | None:
        """When the frame holding `sample` (session timeline) had been sent."""
        if not self.frame_ends:
            return None
        index = bisect.bisect_left(self.frame_ends, sample)
        return self.frame_times[min(index, len(self.frame_times) - 1)]


class SttSession:
    """An open session: send audio and control messages, receive typed messages."""

    def __init__(self, connection: ClientConnection, started: messages.SessionStarted,
                 callbacks: Callbacks | None = None, keep_messages: bool = True) -> None:
        self.connection = connection
        self.started = started
        self.session_id = started.session_id
        self.callbacks = callbacks or Callbacks()
        self.progress = StreamProgress()
        self.ended: messages.SessionEnded | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        # Messages for messages(); a session read through callbacks only keeps none, so
        # a long session does not pile them up.
        self._keep_messages = keep_messages
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._receiver = asyncio.create_task(self._receive())

    # --- sending ------------------------------------------------------------------------

    async def send_audio(self, samples: np.ndarray | bytes, sample_rate: int = messages.SAMPLE_RATE) -> None:
        """Send audio as it comes (one or more frames); converted to 16 kHz float32 mono."""
        for frame in as_float32_frames(samples, sample_rate, DEFAULT_FRAME_SAMPLES):
            await self._send_frame(frame)

    async def stream(self, source: np.ndarray | Iterable[np.ndarray] | AsyncIterable[np.ndarray],
                     *, sample_rate: int = messages.SAMPLE_RATE, pace: float | None = 1.0,
                     frame_samples: int = DEFAULT_FRAME_SAMPLES,
                     on_progress: Callable[[float], None] | None = None) -> None:
        """Send a whole source: a numpy array, or an (async) iterator of chunks.

        `pace` 1.0 sends at real time (as a microphone would), 2.0 twice as fast, None as
        fast as the connection takes it. Chunks from an iterator are sent as they come
        (a live source paces itself). `on_progress` gets the seconds of audio sent."""
        started = time.monotonic()
        base = self.progress.samples_sent
        async for chunk in _chunks(source):
            for frame in as_float32_frames(chunk, sample_rate, frame_samples):
                if pace:
                    due = started + (self.progress.samples_sent - base) / messages.SAMPLE_RATE / pace
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self._send_frame(frame)
                if on_progress is not None:
                    on_progress((self.progress.samples_sent - base) / messages.SAMPLE_RATE)

    async def _send_frame(self, frame: np.ndarray) -> None:
        await self.connection.send(frame.astype("<f4", copy=False).tobytes())
        self.progress.record(len(frame))

    async def send(self, message: Any) -> None:
        """Send a control message (a model from stt.messages)."""
        await self.connection.send(message.model_dump_json(exclude_unset=False))

    async def configure(self, **changes: Any) -> None:
        await self.send(messages.Configure(config=SessionConfig(**changes).wire()))

    async def flush(self) -> None:
        await self.send(messages.FlushBuffer())

    async def interrupt(self, reason: str | None = None) -> None:
        await self.send(messages.Interrupt(data=messages.InterruptData(reason=reason)))

    async def update_context(self, **data: Any) -> None:
        await self.send(messages.ContextUpdate(data=messages.ContextData(**data)))

    async def end(self, timeout: float = 60.0) -> messages.SessionEnded | None:
        """Send end_session and wait for the server to finish pending speech and close.
        Returns the session summary (None if the connection ended without one)."""
        try:
            await self.send(messages.EndSession())
        except ConnectionClosed:
            pass
        await asyncio.wait_for(asyncio.shield(self._receiver), timeout)
        return self.ended

    async def close(self) -> None:
        """Drop the connection without ending the session (the server finalizes and stores
        pending speech but sends nothing more)."""
        await self.connection.close()
        await asyncio.gather(self._receiver, return_exceptions=True)

    # --- receiving ----------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[Any]:
        """Every server message (session_started first) until the connection closes.
        Not available when the session was opened with callbacks and keep_messages=False."""
        if not self._keep_messages:
            raise RuntimeError("this session delivers through callbacks only (keep_messages=False)")
        while True:
            message = await self._queue.get()
            if message is None:
                return
            yield message

    async def _receive(self) -> None:
        try:
            await self._deliver(self.started)
            async for text in self.connection:
                if isinstance(text, bytes):
                    continue  # the protocol sends no binary frames
                message = messages.parse_server_message(text)
                if isinstance(message, messages.SessionEnded):
                    self.ended = message
                await self._deliver(message)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.connection.close_code
            self.close_reason = self.connection.close_reason or ""
            self._queue.put_nowait(None)

    async def _deliver(self, message: Any) -> None:
        if self._keep_messages:
            self._queue.put_nowait(message)
        for handler in self.callbacks.for_message(message):
            try:
                await call_handler(handler, message)
            except Exception:  # a faulty callback must not stop the stream
                logger.exception("client callback failed on %s", message.type)

    @property
    def closed(self) -> bool:
        return self._receiver.done()

    async def __aenter__(self) -> "SttSession":
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        if not self.closed:
            if kind is None:
                await self.end()
            else:
                await self.close()


async def open_session(url: str = DEFAULT_URL, config: SessionConfig | None = None, *,
                       api_key: str | None = None, token: str | None = None,
                       callbacks: Callbacks | None = None, keep_messages: bool | None = None,
                       backoff: Backoff | None = None, open_timeout: float = 30.0,
                       origin: str | None = None) -> SttSession:
    """Connect and start a session, retrying with backoff while the server is unreachable,
    full (1013) or restarting (1012). `api_key` goes in the Authorization header (backends);
    `token` (minted by POST /auth/token) as the `fasttalk.auth.<token>` subprotocol.
    Messages reach `callbacks` and, unless `keep_messages` is False (the default when
    callbacks are given), the session's messages() iterator."""
    backoff = backoff or Backoff()
    config = config or SessionConfig()
    attempt = 0
    while True:
        try:
            connection, started = await _open_once(url, config, api_key, token, open_timeout, origin)
            keep = keep_messages if keep_messages is not None else callbacks is None
            return SttSession(connection, started, callbacks=callbacks, keep_messages=keep)
        except SttClientError as error:
            retry_after = error.error.retry_after if error.error is not None else None
            if not error.retryable or attempt + 1 >= backoff.attempts:
                raise
            wait = backoff.delay(attempt, retry_after)
            logger.info("opening a session failed (%s); retrying in %.1f s", error, wait)
            attempt += 1
            await asyncio.sleep(wait)


async def _open_once(url: str, config: SessionConfig, api_key: str | None, token: str | None,
                     open_timeout: float, origin: str | None
                     ) -> tuple[ClientConnection, messages.SessionStarted]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    subprotocols = messages.token_subprotocols(token) if token else None
    try:
        connection = await connect(url, additional_headers=headers, subprotocols=subprotocols,
                                   open_timeout=open_timeout, max_size=2 ** 22, origin=origin)
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise AuthenticationError(f"the server refused the handshake (HTTP {status})") from None
        raise SttClientError(f"the server refused the handshake (HTTP {status})",
                             retryable=status in (502, 503, 504)) from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise SttClientError(f"cannot reach {url}: {exc}", retryable=True) from None
    try:
        try:
            await connection.send(messages.StartSession(session_config=config.wire()).model_dump_json())
        except ConnectionClosed:
            pass  # a refusal (busy, too many sessions) may close before we speak: read why
        while True:
            reply = messages.parse_server_message(await asyncio.wait_for(connection.recv(), open_timeout))
            if isinstance(reply, messages.SessionStarted):
                return connection, reply
            if isinstance(reply, messages.Error):
                body = reply.error
                if not body.recoverable or body.category != "connection":
                    await _drain_close(connection)
                    raise SttClientError(f"{body.code}: {body.message}", error=body,
                                         close_code=connection.close_code,
                                         retryable=connection.close_code in RETRYABLE_CLOSE_CODES)
                await connection.close()
                raise SttClientError(f"{body.code}: {body.message}", error=body)
    except ConnectionClosed:
        raise SttClientError("the server closed the connection before the session started",
                             close_code=connection.close_code,
                             retryable=connection.close_code in RETRYABLE_CLOSE_CODES) from None
    except asyncio.TimeoutError:
        await connection.close()
        raise SttClientError("no session_started within the open timeout", retryable=True) from None


async def _drain_close(connection: ClientConnection) -> None:
    try:
        await asyncio.wait_for(connection.wait_closed(), 5)
    except asyncio.TimeoutError:
        await connection.close()


async def _chunks(source: np.ndarray | Iterable[np.ndarray] | AsyncIterable[np.ndarray]) -> AsyncIterator[np.ndarray]:
    if isinstance(source, np.ndarray):
        yield source
    elif hasattr(source, "__aiter__"):
        async for chunk in source:  # type: ignore[union-attr]
            yield chunk
    else:
        for chunk in source:  # type: ignore[union-attr]
            yield chunk
