"""Recordings and transcripts are private to the service's user: the journal and stored
utterance audio are created 0600 in 0700 folders, whatever the umask lets through."""

from __future__ import annotations

import os
import stat
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import TemporaryUploadedFile

from stt.persistence import FinalFacts, Journal, SessionFacts, error_write, final_write, keep_in_journal
from stt.persistence.rows import save_audio


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """The umask of a careless launcher: it would let the world read what is created."""
    previous = os.umask(0o000)
    yield
    os.umask(previous)


def a_final() -> tuple[str, object]:
    now = datetime.now(timezone.utc)
    session = SessionFacts(connection_id=str(uuid.uuid4()), session_id="private", user_id=None,
                           conversation_id=None, client_address=None, profile="", config={}, effective_config={},
                           model="tiny.en", started_at=now)
    utterance_id = str(uuid.uuid4())
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, 16000).astype(np.float32)
    return utterance_id, final_write(FinalFacts(
        session=session, utterance_id=utterance_id, text="private", words=[], confidence=0.9, language="en",
        start_ms=0, end_ms=1000, reason="silence_detected", partial_count=1, first_partial_latency_ms=100,
        final_latency_ms=300, decode={}, audio=audio, created_at=now))


def test_the_journal_and_its_folder_are_private(tmp_path, open_umask):
    journal = Journal(tmp_path / "history" / "journal.jsonl")
    journal.append(['{"kind": "error"}'])
    assert (mode(journal.path), mode(journal.path.parent)) == (0o600, 0o700)


def test_a_journal_left_world_readable_by_an_older_release_is_made_private(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text("")
    path.chmod(0o644)
    Journal(path).append(['{"kind": "error"}'])
    assert mode(path) == 0o600


def test_a_final_kept_in_the_journal_is_private_with_its_audio(settings, tmp_path, open_umask):
    settings.HISTORY_JOURNAL = str(tmp_path / "var" / "journal.jsonl")
    settings.MEDIA_ROOT = str(tmp_path / "media")
    utterance_id, write = a_final()
    keep_in_journal(write, "test")
    audio = Path(settings.MEDIA_ROOT) / write.payload["row"]["audio"]
    assert audio.name == f"{utterance_id}.flac"
    assert mode(settings.HISTORY_JOURNAL) == 0o600 and mode(audio) == 0o600
    folders = [audio.parent, *[p for p in audio.parents if str(p).startswith(settings.MEDIA_ROOT)]]
    assert {str(f): mode(f) for f in folders} == {str(f): 0o700 for f in folders}, "MEDIA_ROOT and every folder below"


def test_stored_audio_is_private(settings, tmp_path, open_umask):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    _, write = a_final()
    save_audio(write)
    audio = Path(settings.MEDIA_ROOT) / write.payload["row"]["audio"]
    assert mode(audio) == 0o600 and mode(audio.parent) == 0o700 and mode(settings.MEDIA_ROOT) == 0o700


def test_an_upload_spooled_to_disk_is_private(settings, tmp_path, open_umask):
    """Django spools uploads over 2.5 MB to a temporary file (tempfile: 0600 already)."""
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    upload = TemporaryUploadedFile("speech.wav", "audio/wav", 0, None)
    try:
        assert mode(upload.temporary_file_path()) == 0o600
    finally:
        upload.close()


def test_error_events_in_the_journal_are_private_too(settings, tmp_path, open_umask):
    settings.HISTORY_JOURNAL = str(tmp_path / "journal.jsonl")
    keep_in_journal(error_write({"code": "invalid_json", "category": "protocol", "severity": "low",
                                 "recoverable": True, "message": "m"}, None, "s"), "test")
    assert mode(settings.HISTORY_JOURNAL) == 0o600
