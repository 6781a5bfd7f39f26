"""Prometheus metrics, served as /metrics on the monitoring port (MONITORING_PORT).

One server process: the metrics live in its memory. Several processes on one host:
set PROMETHEUS_MULTIPROC_DIR to a directory shared by the group (emptied when the
group starts): each process writes its samples there, and whichever process serves
/metrics reports the sum over all of them (gauges: the sum of live processes' values,
or the max for breaker states), as prometheus_client's multi-process mode does.
"""

from __future__ import annotations

import glob
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}

connections_active = Gauge("fasttalk_connections_active", "Open WebSocket connections.",
                           multiprocess_mode="livesum")
connections_total = Counter("fasttalk_connections", "WebSocket connections admitted.")
connections_rejected = Counter("fasttalk_connections_rejected", "Connections refused at the connection limit.")
sessions_total = Counter("fasttalk_sessions", "Sessions started (start_session accepted).")
sessions_ended = Counter("fasttalk_sessions_ended", "Sessions ended, by reason.", ["reason"])
utterances_total = Counter("fasttalk_utterances", "Finals sent.")
partial_latency = Histogram("fasttalk_partial_latency_seconds", "Partial: audio available -> partial sent.",
                            buckets=_LATENCY_BUCKETS)
final_latency = Histogram("fasttalk_final_latency_seconds", "Final: end of utterance decided -> final ready.",
                          buckets=_LATENCY_BUCKETS)
real_time_factor = Histogram("fasttalk_real_time_factor", "Decode time of a final over its audio time.",
                             buckets=_RTF_BUCKETS)
errors_total = Counter("fasttalk_errors", "Errors sent to clients, by category and code.", ["category", "code"])
queue_depth = Gauge("fasttalk_engine_queue_depth", "Inference jobs waiting in the engine's queue.",
                    multiprocess_mode="livesum")
out_of_memory_total = Counter("fasttalk_out_of_memory", "CUDA out-of-memory errors (each halved the batch).")
gpu_failures_total = Counter("fasttalk_gpu_failures", "GPU inferences that failed and were redone on the CPU.")
cpu_fallbacks_total = Counter("fasttalk_cpu_fallbacks", "Jobs decoded on the CPU because the GPU failed.")
breaker_state = Gauge("fasttalk_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                      ["breaker"], multiprocess_mode="livemax")
history_journaled_total = Counter(
    "fasttalk_history_journaled", "History writes kept in the journal instead of the database, by reason "
    "(refused, backlog_full, exit).", ["reason"])
history_lost_total = Counter(
    "fasttalk_history_lost", "History lost: `write`, a write not even the journal took; `audio`, a final "
    "kept without its audio (the disk refused it or stalled).", ["what"])


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """The exposition text of this process, or of every process of the group."""
    if multiprocess_dir():
        _forget_dead_processes()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _forget_dead_processes() -> None:
    """A process killed outright never marked itself dead: its live gauges (open
    connections, queue depth, breaker states) would count for ever."""
    directory = multiprocess_dir()
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        try:
            pids.add(int(os.path.basename(path).rsplit("_", 1)[1].split(".")[0]))
        except (IndexError, ValueError):
            continue
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid)
        except PermissionError:
            pass  # alive, another user's


def process_exited(pid: int) -> None:
    """Drop a dead process's live gauges (multi-process mode)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


def set_breaker_state(name: str, state: str) -> None:
    breaker_state.labels(breaker=name).set(BREAKER_STATE_VALUES.get(state, 0))


class SessionMetrics:
    """What sessions count, onto the Prometheus metrics above (a session receives one)."""

    def error_sent(self, category: str, code: str) -> None:
        errors_total.labels(category=category, code=code).inc()

    def session_started(self) -> None:
        sessions_total.inc()

    def session_ended(self, reason: str) -> None:
        sessions_ended.labels(reason=reason).inc()
