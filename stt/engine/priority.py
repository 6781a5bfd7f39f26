"""A thread's CPU priority: work that must never slow live streams (uploads) runs niced.

Linux keeps a nice value per thread, and a thread starts with its creator's: a model
loaded from a niced thread has niced compute threads too (CTranslate2 starts them
there). Elsewhere, or where it is not allowed, priorities stay as they are.
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger(__name__)

# The nice value background work runs at: about a tenth of a core's time against one busy
# thread at nice 0 (CFS weights 110 and 1024), so it yields to live work and still ends.
# (19 would give it 1.5%: on a saturated host an upload's chunk ran past its time limit.)
BACKGROUND = 10
LOWEST = 19


def lower_this_thread(increment: int = BACKGROUND) -> None:
    """Raise the calling thread's nice value by `increment` (at most to LOWEST)."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(LOWEST, os.getpriority(os.PRIO_PROCESS, thread) + increment))
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: same priority
        logger.debug("thread %s keeps its priority: %s", threading.current_thread().name, exc)


def this_thread_nice() -> int:
    """The calling thread's nice value (0 where it cannot be read)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (AttributeError, OSError):
        return 0
