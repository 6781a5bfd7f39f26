"""A session's decoder prompt: its keyterms (session_config.keyterms), its runtime
profile's vocabulary and its prompt text (session_config.prompt), composed into the one
prompt its stream uses for every partial and final (stt/engine/prompt.py).

The prompt changes only when these do (configure, a vocabulary saved in the admin, a new
language's tokenizer), never per request: jobs batch and share results only with an
equal prompt. The session's own keyterms must fit in STT_PROMPT_MAX_TOKENS (else
invalid_config: the client learns at once that some would be left out); the profile's
vocabulary fills what is left, and what does not fit is left out (logged). The prompt
text is context: its latest words that fit in what the keyterms leave are written before
them (the text is never refused for its length: Whisper too reads only the end of a long
prompt). A running session follows its profile's vocabulary (only that: its other
tunables stay as they were when it started).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from django.conf import settings

from stt.engine import ComposedPrompt, compose_prompt, merge_keyterms, token_counter
from stt.errors import SttError
from stt.protocol import SessionConfig
from stt.session.state import SessionState

logger = logging.getLogger("stt.session")


class SessionKeyterms(SessionState):
    _dropped_reported: tuple[str, ...] = ()

    def _compose(self, terms: list[str], language: str | None, context: str = "") -> ComposedPrompt:
        return compose_prompt(terms, context, count_tokens=token_counter(self.engine.tokenizer(language)),
                              max_tokens=settings.STT_PROMPT_MAX_TOKENS)

    def _check_keyterms(self, config: SessionConfig, language: str | None) -> None:
        """The session's own keyterms must all fit in the prompt (or SttError)."""
        if not config.keyterms:
            return
        composed = self._compose(merge_keyterms(config.keyterms), language)
        if composed.dropped:
            raise SttError(
                "invalid_config",
                f"the keyterms need more than STT_PROMPT_MAX_TOKENS ({settings.STT_PROMPT_MAX_TOKENS}) tokens of "
                f"the decoder prompt: {len(composed.terms)} fit, {len(composed.dropped)} do not "
                f"(the first left out: {composed.dropped[0]!r}); send fewer or shorter ones; nothing was applied",
                field="keyterms",
            )

    def _decoder_prompt(self, language: str | None) -> ComposedPrompt:
        """The prompt of the session's prompt text, then its keyterms and its profile's
        vocabulary (text "" for none)."""
        assert self.config is not None
        terms = merge_keyterms(self.config.keyterms, self.runtime.vocabulary)
        if not terms and not self.config.prompt:
            return ComposedPrompt("", (), (), 0)
        composed = self._compose(terms, language, self.config.prompt)
        if composed.dropped and composed.dropped != self._dropped_reported:
            logger.warning("session %s: %d of the profile's vocabulary terms do not fit in the decoder prompt "
                           "(STT_PROMPT_MAX_TOKENS=%d) and are left out", self._session_id, len(composed.dropped),
                           settings.STT_PROMPT_MAX_TOKENS,
                           extra={"event": "keyterms_dropped", **self._log_ids(), "dropped": len(composed.dropped),
                                  "profile": self.runtime.profile})
        self._dropped_reported = composed.dropped
        return composed

    async def _follow_vocabulary(self) -> None:
        """Take up a change of the profile's vocabulary saved while the session runs.
        Never raises: it runs on the watchdog that also enforces the session's limits."""
        if self.stream is None or self._ending:
            return
        try:
            await self._take_up_vocabulary()
        except Exception:
            logger.exception("session %s: could not follow the profile's vocabulary", self._session_id,
                             extra={"event": "fault", **self._log_ids()})

    async def _take_up_vocabulary(self) -> None:
        try:
            current = await self.services.runtime.values(self.runtime.profile or None)
        except SttError:  # the profile was deleted meanwhile: keep what the session has
            return
        if current.vocabulary == self.runtime.vocabulary or self.stream is None or self._ending:
            return
        self.runtime = replace(self.runtime, vocabulary=current.vocabulary)
        self.stream.reconfigure(self._stream_params())
        logger.info("session %s: the profile's vocabulary changed (%d terms)", self._session_id,
                    len(current.vocabulary),
                    extra={"event": "vocabulary_changed", **self._log_ids(), "profile": self.runtime.profile})
