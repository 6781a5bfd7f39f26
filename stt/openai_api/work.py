"""Where an upload's blocking work runs: a bounded pool of its own, below live streams.

Reading the multipart form, decoding the file (PyAV) and the file's VAD steps run on
`stt-file_*` threads, never on the event loop's default pool: that pool also serves the
API-key lookups of handshakes and of /stats, which must never queue behind uploads
(issue 23). The pool has one thread per upload the process admits (FILE_MAX_UPLOADS),
so an admitted upload's work never waits for another's, and a thread that hangs holds
its upload's slot, not the threads of the next uploads. Its threads run at a lower CPU
priority (nice +FILE_NICENESS): on a busy machine the live streams' segmenter and
inference threads are scheduled first, as the engine's queue already ranks a file's
chunks below live work.

A thread cannot be killed, so a decode is stopped from inside: the file is read
through `StoppableReader`, which raises `DecodeStopped` at its next read once the
decode's time limit has passed or its client has gone (PyAV reads a file in 32 KiB
pieces, so that is soon).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, Callable, Protocol, Union

import numpy as np

from stt.audio import DecodeStopped, decode_file
from stt.engine.priority import lower_this_thread

logger = logging.getLogger(__name__)

FILE_NICENESS = 10  # added to the process's nice value for the file threads (Linux: per thread)

StopCheck = Callable[[], bool]


class Decoder(Protocol):
    """What the views decode an upload with (stt.openai_api.work.decode_upload)."""

    def __call__(self, source: Union[str, IO[bytes]], max_seconds: float,
                 should_stop: StopCheck | None = None) -> np.ndarray: ...


def _lower_priority() -> None:
    """Each file thread's CPU priority, below the process's other threads."""
    lower_this_thread(FILE_NICENESS)


class FileWorkPool:
    """The process's threads for uploads' blocking work (see the module's docstring)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="stt-file", initializer=_lower_priority)

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        return self._executor.submit(function, *args)


class StoppableReader:
    """A binary file read for PyAV that raises DecodeStopped at the next read or seek
    once `should_stop()` is true."""

    def __init__(self, file: IO[bytes], should_stop: StopCheck) -> None:
        self._file = file
        self._should_stop = should_stop

    def _check(self) -> None:
        if self._should_stop():
            raise DecodeStopped("the decode was stopped")

    def read(self, size: int = -1) -> bytes:
        self._check()
        return self._file.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check()
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def decode_upload(source: Union[str, IO[bytes]], max_seconds: float,
                  should_stop: StopCheck | None = None) -> np.ndarray:
    """stt.audio.decode_file, read through a StoppableReader: DecodeStopped once
    `should_stop()` is true, at the next read or between packets (UndecodableAudio,
    AudioTooLong as decode_file raises them)."""
    if should_stop is None:
        return decode_file(source, max_seconds)
    file = open(source, "rb") if isinstance(source, str) else source
    try:
        return decode_file(StoppableReader(file, should_stop), max_seconds,  # type: ignore[arg-type]
                           cancelled=should_stop)
    except Exception:
        if should_stop():
            raise DecodeStopped("the decode was stopped") from None
        raise
    finally:
        if file is not source:
            file.close()


def deadline_check(seconds: float, also: StopCheck | None = None) -> StopCheck:
    """A stop check that turns true `seconds` from now (or when `also` does)."""
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() > deadline or (also is not None and also())
