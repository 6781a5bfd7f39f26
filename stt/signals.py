"""Model signals: announce runtime profile changes; remove audio with its utterance."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.db import transaction

from stt.runtime_config import announce_change, store

logger = logging.getLogger(__name__)


def profile_changed(sender: Any, **kwargs: Any) -> None:
    # After the commit, so that the processes told re-read the new row, not the old one.
    transaction.on_commit(_announce)


def _announce() -> None:
    store.invalidate()
    try:
        async_to_sync(announce_change)()
    except Exception as exc:  # the channel layer is down: processes re-read within the refresh bound
        logger.warning("could not announce the runtime profile change: %s", exc)


def utterance_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """An utterance's audio file goes with its row (admin delete, session cascade, retention)."""
    audio = instance.audio
    if not audio:
        return
    name, storage = audio.name, audio.storage

    def remove() -> None:
        try:
            storage.delete(name)
        except Exception as exc:
            logger.error("could not delete the audio file %s: %s", name, exc)

    transaction.on_commit(remove)
