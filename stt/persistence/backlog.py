"""Writes waiting for the database, in order, bounded in number
(PERSISTENCE_BACKLOG_LIMIT) and in the memory they hold (PERSISTENCE_BACKLOG_BYTES).

A final's audio is the bulk of it, so the writer spills it to storage off the event
loop as soon as the final joins; until then it counts here. Writes on their way to
the journal count too, until they are on disk. Room is judged on rows: audio past the
byte bound makes its writer wait for the disk (stt/persistence/writer.py), it does not
send the write to the journal."""

from __future__ import annotations

from collections import deque

from django.conf import settings

from stt.persistence.facts import Write


class Backlog:
    def __init__(self) -> None:
        self._waiting: deque[Write] = deque()
        self.held_bytes = 0  # waiting, or on the way to the journal

    def __len__(self) -> int:
        return len(self._waiting)

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def has_room(self, item: Write) -> bool:
        """Room for `item`'s row: in number, and in bytes once its audio is on disk."""
        return (len(self._waiting) < settings.PERSISTENCE_BACKLOG_LIMIT
                and self.held_bytes + item.row_bytes() <= settings.PERSISTENCE_BACKLOG_BYTES)

    def full(self) -> bool:
        return len(self._waiting) >= settings.PERSISTENCE_BACKLOG_LIMIT

    def over_bytes(self) -> bool:
        return self.held_bytes > settings.PERSISTENCE_BACKLOG_BYTES

    def append(self, item: Write) -> None:
        self._waiting.append(item)
        self.hold(item)

    def head(self) -> Write:
        return self._waiting[0]

    def pop(self) -> Write:
        item = self._waiting.popleft()
        self.release(item)
        return item

    def take_all(self) -> list[Write]:
        items = list(self._waiting)
        self._waiting.clear()
        for item in items:
            self.release(item)
        return items

    def hold(self, item: Write) -> None:
        """Count `item` (again: its audio may have gone to storage since)."""
        size = item.memory_bytes()
        self.held_bytes += size - item.counted
        item.counted = size

    def recount(self, item: Write) -> None:
        if item.counted:  # still held
            self.hold(item)

    def release(self, item: Write) -> None:
        self.held_bytes -= item.counted
        item.counted = 0
