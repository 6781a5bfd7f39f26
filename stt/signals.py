"""Announce runtime profile changes to every server process."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync

from stt.runtime_config import announce_change, store

logger = logging.getLogger(__name__)


def profile_changed(sender: Any, **kwargs: Any) -> None:
    store.invalidate()
    try:
        async_to_sync(announce_change)()
    except Exception as exc:  # the channel layer is down: processes re-read within the refresh bound
        logger.warning("could not announce the runtime profile change: %s", exc)
