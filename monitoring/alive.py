"""Liveness of a server process, for a container's health check:
`python -m monitoring.alive [URL]` exits 0 while the process works, 1 when it is broken.

/health's HTTP status follows `ready` (whether new sessions are welcome), so it is 503
also while the process is at its measured capacity or draining: neither is a fault, and
a health check that flagged (or an orchestrator that restarted) a full process would
only make matters worse. Alive here means: /health answers within the timeout (the
event loop runs) with its report, and the report's model check is `ok` or `loading`,
not `error` (the model failed to load, or it did not decode a probe in time). Outages of
shared dependencies (the database, Redis, the broker) do not count: they are not this
process's fault, and restarting it would not mend them. A loading model counts as alive:
the container's start period covers the load.

Standard library only, so the check starts fast and does not load Django.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000/health"
# Below the compose health check's own timeout (10 s): /health may decode a probe
# (monitoring/health.py, up to 5 s) when the model has been idle.
TIMEOUT_SECONDS = 8.0
LIVE_MODEL_STATES = ("ok", "loading")


def alive(report: Any) -> bool:
    """Whether a /health report (of a 200 or a 503) is that of a working process."""
    try:
        return report["checks"]["model"]["status"] in LIVE_MODEL_STATES
    except (KeyError, TypeError):
        return False  # not /health's report: something else answers there


def health_report(url: str = DEFAULT_URL, timeout: float = TIMEOUT_SECONDS) -> Any:
    """/health's report, whatever its HTTP status; None when nothing (or no JSON) answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as refusal:  # 503: not ready; the report says why
        try:
            return json.loads(refusal.read())
        except (OSError, ValueError):
            return None
        finally:
            refusal.close()
    except (OSError, ValueError):  # refused, timed out, or not JSON
        return None


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    url = arguments[0] if arguments else DEFAULT_URL
    return 0 if alive(health_report(url)) else 1


if __name__ == "__main__":
    sys.exit(main())
