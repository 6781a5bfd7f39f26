"""How much audio a client may have transcribed: seconds of audio per second of wall
time, per API key (per connection in open mode), `rate_per_session` for each of its
live sessions in this process.

Over budget, a frame is not refused: its session waits before taking it, and the
server's inbound backpressure then stops reading that client's socket. A client
pushing a file at full speed is thus slowed to its budget, and every frame it sent
is still transcribed; other keys keep their share of the model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Hashable

# A key may get ahead of real time by this much (seconds of wall time at its rate).
BURST_SECONDS = 2.0
# A session that had to wait for its budget counts as over it (its work yields to
# sessions within theirs, and admission does not protect it) for its wait and this long after.
OVER_BUDGET_GRACE_SECONDS = 2.0


@dataclass
class _Account:
    members: int = 0
    balance: float = 0.0  # seconds of audio; negative while its sessions wait
    updated_at: float | None = None


class AudioBudget:
    def __init__(self, rate_per_session: Callable[[], float]) -> None:
        self._rate_per_session = rate_per_session  # read on each charge (live settings); 0: no budget
        self._lock = threading.Lock()
        self._accounts: dict[Hashable, _Account] = {}

    def join(self, owner: Hashable) -> None:
        """A session of `owner` (an API key id, or a connection id) opened."""
        with self._lock:
            self._accounts.setdefault(owner, _Account()).members += 1

    def leave(self, owner: Hashable) -> None:
        with self._lock:
            account = self._accounts.get(owner)
            if account is None:
                return
            account.members -= 1
            if account.members <= 0:
                del self._accounts[owner]

    def refund(self, owner: Hashable, audio_seconds: float) -> None:
        """Give back a charge whose audio was not taken after all (its session ended while
        it waited), up to the burst; an account already closed has nothing to get back."""
        per_session = self._rate_per_session()
        with self._lock:
            account = self._accounts.get(owner)
            if account is None or per_session <= 0:
                return
            cap = per_session * max(1, account.members) * BURST_SECONDS
            account.balance = min(cap, account.balance + audio_seconds)

    def wait_for(self, owner: Hashable, audio_seconds: float, now: float) -> float:
        """Charge `audio_seconds` to `owner`; how long (s) to wait before taking them."""
        per_session = self._rate_per_session()
        if per_session <= 0:
            return 0.0
        with self._lock:
            account = self._accounts.setdefault(owner, _Account(members=1))
            rate = per_session * max(1, account.members)
            if account.updated_at is None:
                account.balance = rate * BURST_SECONDS
            else:
                account.balance = min(rate * BURST_SECONDS,
                                      account.balance + (now - account.updated_at) * rate)
            account.updated_at = now
            account.balance -= audio_seconds
            return 0.0 if account.balance >= 0 else -account.balance / rate
