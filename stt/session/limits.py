"""A session's limits: the message rate, the audio budget, the idle timeout and the
maximum duration.

Being limited is never a session error: a dropped message is reported (at most once a
second) without counting towards MAX_SESSION_ERRORS, and audio over budget is only
delayed (stt/session/budget.py).
"""

from __future__ import annotations

import asyncio

from django.conf import settings

from stt.errors import SttError
from stt.session.budget import OVER_BUDGET_GRACE_SECONDS
from stt.session.state import SessionState
from stt.streaming import FinalReason

# How often a session checks its idle and duration limits.
WATCH_INTERVAL_SECONDS = 1.0


class SessionLimits(SessionState):
    _rate_limited_reported_at = -1e9
    _watchdog: asyncio.Task | None = None

    async def _within_rate(self) -> bool:
        """Whether this message fits the key's rate; a dropped one is reported at most
        once a second, and never counts as a session error."""
        services = self.services
        if services.rate_limiter.allow(self.principal, self.connection_id, now=self._clock()):
            return True
        now = self._clock()
        if now - self._rate_limited_reported_at >= 1.0:
            self._rate_limited_reported_at = now
            who = "this API key" if self.principal.key_id is not None else "this connection"
            await self._send_error(SttError("rate_limited", f"more than {self.principal.max_messages_per_second} "
                                                            f"messages per second for {who}; dropped"))
        return False

    async def _within_audio_budget(self, audio_seconds: float) -> bool:
        """Wait until the key's audio budget covers these seconds of audio. False when the
        session starts ending meanwhile (its client gone, above all): the wait stops at
        once, the audio is not taken and its charge is given back. A wait that ran its
        course would hold the consumer, and the disconnect queued behind it, past Daphne's
        application_close_timeout (issue 23 #3)."""
        budget = self.services.audio_budget
        delay = budget.wait_for(self.budget_owner, audio_seconds, self._clock())
        if delay <= 0:
            return True
        self._mark_over_budget(delay + OVER_BUDGET_GRACE_SECONDS)
        try:
            await asyncio.wait_for(self._ending_event.wait(), delay)
        except TimeoutError:
            return True
        budget.refund(self.budget_owner, audio_seconds)
        return False

    def _mark_over_budget(self, seconds: float) -> None:
        """A client pushing audio faster than its budget: its decodes rank below those of
        sessions within theirs, and admission counts it as elastic load (issue 24 #4)."""
        if self.stream is not None:
            self.stream.over_budget(seconds)
        if self.services.capacity is not None:
            self.services.capacity.over_budget(self.connection_id, seconds)

    def _start_watchdog(self) -> None:
        self._watchdog = asyncio.ensure_future(self._watch_limits())

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()

    async def _watch_limits(self) -> None:
        """Ends a session that went quiet (SESSION_IDLE_TIMEOUT) or ran too long
        (MAX_SESSION_DURATION, with a warning SESSION_END_WARNING before); on the same
        beat, takes up a change of its profile's vocabulary."""
        warned = False
        while not self._ending:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            now = self._clock()
            idle_limit = settings.SESSION_IDLE_TIMEOUT
            if idle_limit and now - self._last_activity > idle_limit:
                await self._send_error(SttError("idle_timeout", f"nothing received for {idle_limit:g} s"))
                await self.end(FinalReason.SESSION_END, ended_reason="idle_timeout")
                return
            await self._follow_vocabulary()
            longest = settings.MAX_SESSION_DURATION
            if not longest or self.started_at is None:
                continue
            left = longest - (now - self.started_at)
            if left <= 0:
                await self._send_error(SttError("session_time_limit",
                                                f"the session reached its limit of {longest:g} s"))
                await self.end(FinalReason.MAX_DURATION, ended_reason="session_time_limit")
                return
            if not warned and left <= settings.SESSION_END_WARNING:
                warned = True
                await self._send_error(SttError("session_time_limit",
                                                f"the session ends in {left:.0f} s (limit {longest:g} s)",
                                                retry_after=round(left, 1)))
