"""The journal: history writes kept on disk (refused, over the backlog's bounds, left at
exit) and written to the database later, while live servers keep appending to it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stt.models import ErrorEvent
from stt.persistence import replay_journal

ROOT = Path(__file__).resolve().parents[3]

# Another process, as a live server would: journals `count` error events, one at a time.
APPENDER = """
import sys, time, django
django.setup()
from stt.persistence import error_write, keep_in_journal
for n in range(int(sys.argv[1])):
    payload = {"code": "invalid_json", "category": "protocol", "severity": "low", "recoverable": True,
               "message": f"appended {n}"}
    keep_in_journal(error_write(payload, None, f"appended-{n}"), "test")
    time.sleep(0.002)
"""


@pytest.mark.django_db(transaction=True)
def test_replaying_while_another_process_appends_loses_nothing_and_writes_nothing_twice(tmp_path):
    journal = tmp_path / "journal.jsonl"
    count = 300
    appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(count)], cwd=ROOT,
                                env={**os.environ, "HISTORY_JOURNAL": str(journal)})
    written = 0
    while appender.poll() is None:
        written += replay_journal(journal)[0]
    assert appender.wait() == 0
    written += replay_journal(journal)[0]
    stored = ErrorEvent.objects.filter(session_label__startswith="appended-").count()
    assert stored == count, "every appended line reached the database"
    assert written == count, "and each was written once"
    assert [p.name for p in tmp_path.iterdir() if p.name != "journal.jsonl"] == [], "no rotated file is left"
