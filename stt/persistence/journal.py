"""The journal (HISTORY_JOURNAL, JSON lines): history writes the database refused, or
that could not wait for it (backlog full, process exit), kept on disk until
`manage.py replay_history_journal` writes them.

Several server processes append to it while a replay runs, so a replay never rewrites
the file: it renames it aside first (new appends start a new file), waits for appends
already under way, replays the renamed file, puts the lines that still fail back by
appending them, and deletes it. An appender locks the file (flock) for its line and
checks, once it holds the lock, that the path still names the file it opened.

It holds transcripts: the file is created 0600 and a folder made for it 0700, whatever
the umask (a file an older release left readable by others is narrowed on the next
append, when this user owns it).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator

from django.conf import settings

from stt.persistence.facts import Write
from stt.persistence.rows import APPLIERS, TRANSIENT_ERRORS, apply, save_audio

logger = logging.getLogger(__name__)

ROTATED = ".replaying-"  # a rotated journal: <name>.replaying-<random>


def _names_same_file(handle: IO, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def _open_private(path: Path) -> IO:
    """Open `path` for appending, created 0600 (the mode is given at creation, so there
    is no moment when another user could open it)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE)
    if os.fstat(fd).st_mode & 0o077:
        with contextlib.suppress(PermissionError):  # another user's file: leave it as it is
            os.fchmod(fd, PRIVATE_FILE)
    return os.fdopen(fd, "a", encoding="utf-8")


def _make_folder(folder: Path) -> None:
    """The journal's folder, 0700 if this creates it (an existing one keeps its mode:
    it may be shared, e.g. var/; the file itself is private either way)."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # another appender made it meanwhile
        folder.mkdir(mode=PRIVATE_FOLDER)
        os.chmod(folder, PRIVATE_FOLDER)  # mkdir's mode passes through the umask


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, lines: list[str]) -> None:
        """Append whole lines, atomically with respect to other appenders and rotation."""
        if not lines:
            return
        _make_folder(self.path.parent)
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        while True:
            with _open_private(self.path) as handle:
                while _names_same_file(handle, self.path):
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        time.sleep(0.001)  # another appender, for one line; or a rotation
                        continue
                    if not _names_same_file(handle, self.path):
                        break  # rotated between the open and the lock: open the new file
                    handle.write(text)
                    handle.flush()
                    return  # closing releases the lock

    def rotate(self) -> IO | None:
        """Rename the journal aside; the renamed file, open and locked once the appends
        under way are done (None when there is no journal)."""
        rotated = self.path.with_name(f"{self.path.name}{ROTATED}{uuid.uuid4().hex}")
        try:
            os.rename(self.path, rotated)
        except FileNotFoundError:
            return None
        try:
            handle = rotated.open("r", encoding="utf-8")
        except FileNotFoundError:
            return None  # a concurrent replay took it up as abandoned
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not _names_same_file(handle, rotated):
            handle.close()  # ...and has replayed it
            return None
        return handle

    def abandoned(self) -> Iterator[IO]:
        """Rotated files another replay left (it died), each open and locked, one at a time."""
        for path in sorted(self.path.parent.glob(f"{self.path.name}{ROTATED}*")):
            try:
                handle = path.open("r", encoding="utf-8")
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()  # a replay is working on it
                continue
            if not _names_same_file(handle, path):
                handle.close()  # replayed and deleted meanwhile
                continue
            yield handle


def journal_line(item: Write, reason: str) -> str:
    return json.dumps({"kind": item.kind, "payload": item.payload, "reason": reason,
                       "at": datetime.now(timezone.utc).isoformat()})


class Kept(enum.Enum):
    """What keeping a write in the journal came to."""

    WHOLE = "journaled"  # the line, and a final's audio in storage (or it had none)
    WITHOUT_AUDIO = "journaled without audio"  # the disk took the line, not the audio
    LOST = "lost"  # the disk took not even the line


def keep_in_journal(item: Write, reason: str) -> Kept:
    """Journal one write, its audio saved to storage first if the disk takes it.
    File I/O: call it on a history thread, never on the event loop."""
    kept = Kept.WHOLE
    try:
        if item.kind == "final" and item.audio is not None:
            save_audio(item)
    except Exception as exc:
        kept = Kept.WITHOUT_AUDIO
        with item.audio_lock:
            item.audio = None  # the line goes without it: counted lost once, here
        logger.error("could not save the audio of %s: %s", item.description, exc)
    try:
        Journal(Path(settings.HISTORY_JOURNAL)).append([journal_line(item, reason)])
        logger.error("history write %s journaled (%s)", item.description, reason)
    except Exception as exc:
        logger.critical("history write %s LOST (%s; journal failed: %s)", item.description, reason, exc)
        return Kept.LOST
    return kept


@dataclass(frozen=True)
class Refusal:
    """A write the database refused for good, and what the journal made of it."""

    error: Exception
    kept: Kept


def apply_or_journal(item: Write) -> Refusal | None:
    """On the history thread: apply one write. A database that cannot be reached raises
    (the write waits); a write refused for good is journaled, out of the way, and its
    refusal returned."""
    try:
        apply(item)
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:
        return Refusal(exc, keep_in_journal(item, f"refused: {exc!r}"))
    return None


def _replay_lines(lines: list[str]) -> tuple[int, list[str]]:
    written, kept = 0, []
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            APPLIERS[entry["kind"]](Write(entry["kind"], entry["payload"]))
            written += 1
        except Exception as exc:
            logger.error("journaled write still fails: %s", exc)
            kept.append(line)
    return written, kept


def replay_journal(path: Path) -> tuple[int, int]:
    """Apply the journal's writes (synchronously) while servers may go on appending;
    keep the ones that fail. Returns (written, still failing)."""
    journal = Journal(path)
    written = failing = 0
    for handle in [*journal.abandoned(), journal.rotate()]:
        if handle is None:
            continue
        with handle:
            done, kept = _replay_lines(handle.read().splitlines())
            journal.append(kept)
            os.unlink(handle.name)  # still locked: no other replay takes it up meanwhile
        written, failing = written + done, failing + len(kept)
    return written, failing
