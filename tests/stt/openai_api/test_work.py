"""The file pool and the decode that can be stopped (stt/openai_api/work.py): real
PyAV decoding of a real recording, read from a source that stalls like a slow disk."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
import soundfile

from stt.openai_api.work import DecodeStopped, FileWorkPool, decode_upload, deadline_check
from tests.conftest import AUDIO_DIR, load_audio


class SlowDisk(io.BytesIO):
    """A file whose every read waits until the test lets one more through."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = threading.Semaphore(0)
        self.read_count = 0

    def read(self, size: int = -1) -> bytes:
        self.reads.acquire()
        self.read_count += 1
        return super().read(size)


@pytest.fixture(scope="module")
def talk_wav() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, load_audio(AUDIO_DIR / "long_gates_ted.wav"), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_a_decode_told_to_stop_stops_at_its_next_read(talk_wav):
    disk = SlowDisk(talk_wav)
    stop = threading.Event()
    pool = FileWorkPool(1)
    decoding = pool.submit(decode_upload, disk, 1800.0, stop.is_set)
    for _ in range(3):
        disk.reads.release()
    stop.set()
    for _ in range(3):
        disk.reads.release()  # the read under way, and at most one more
    with pytest.raises(DecodeStopped):
        decoding.result(timeout=30)
    assert disk.read_count < 10, "the rest of the 4 MB file was not read"


def test_without_a_stop_the_whole_file_is_decoded(talk_wav):
    audio = decode_upload(io.BytesIO(talk_wav), 1800.0, deadline_check(60))
    assert abs(audio.size / 16000 - 122.3) < 0.1 and np.abs(audio).max() > 0.1


def test_the_file_threads_run_below_the_process_priority():
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    theirs = FileWorkPool(1).submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result(10)
    assert theirs > mine
