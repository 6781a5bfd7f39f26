"""Writing the history: sessions, finals with their audio, errors.

Writes run on threads of their own, in order, never on the event loop: no database
call, FLAC encode or file I/O happens there. A final is written before it is sent
(`await history.write(...)`) unless the database cannot take it within
PERSISTENCE_WRITE_TIMEOUT. A write is plain data (kind and JSON payload), so it can
wait and be retried, or be kept in a journal file:

- The database cannot be reached, or is slower than PERSISTENCE_WRITE_TIMEOUT: the
  write joins a backlog, the final is sent all the same, and a background task replays
  the backlog in order once the database answers. The backlog is bounded in number
  (PERSISTENCE_BACKLOG_LIMIT) and in memory (PERSISTENCE_BACKLOG_BYTES); a waiting
  final's audio goes to storage at once, off the loop, and a final whose audio would
  pass the memory bound waits for the disk to take it. Every write is idempotent
  (keyed by connection, utterance and event ids), so replaying one that did land is
  harmless.
- The database refuses a write for good (bad data): it goes to the journal
  (HISTORY_JOURNAL, JSON lines) and out of the way, so one bad row cannot hold up
  the rest.
- The process exits with writes still waiting, or the backlog is full: they go to the
  journal too. `manage.py replay_history_journal` writes journaled rows later, while
  servers go on appending to it.

So nothing a client saw is lost from the history: it is in the database, on its way,
or in the journal, and each outcome is logged and counted. Only a disk that refuses
the journal or the audio (full, unwritable), or stalls, loses anything; /health
reports `degraded` while writes are journaled or lost (HistoryWriter.condition).
The journal and stored audio are private: files 0600, folders 0700. A final that failed after
its retries is kept too, with a failed status and its audio, for the refinement model
to transcribe and for analysts to listen to.

Modules: facts (writes as data), rows (applying them), backlog, journal, writer.
"""

from stt.persistence.facts import (
    FinalFacts,
    SessionFacts,
    Write,
    error_write,
    failed_final_write,
    final_write,
    session_write,
    utterance_discarded_write,
    utterance_opened_write,
)
from stt.persistence.journal import Journal, keep_in_journal, replay_journal
from stt.persistence.rows import APPLIERS, TRANSIENT_ERRORS, encode_flac
from stt.persistence.writer import HistoryStats, HistoryWriter

history = HistoryWriter()

__all__ = [
    "APPLIERS", "TRANSIENT_ERRORS", "FinalFacts", "HistoryStats", "HistoryWriter", "Journal", "SessionFacts",
    "Write", "encode_flac", "error_write", "failed_final_write", "final_write", "history", "keep_in_journal",
    "replay_journal", "session_write", "utterance_discarded_write", "utterance_opened_write",
]
