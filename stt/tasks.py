"""Celery tasks: re-transcriptions, reports, retention; and how the service queues them.

Tasks are acknowledged late (settings: a worker lost mid-task puts it back on the
queue), retried with exponential backoff when the database or broker is away, and
bounded by time limits. Their bodies live in plain modules (stt/refinement.py,
stt/reports.py, stt/retention.py) so they are testable without a worker.

The streaming server queues a refinement for each final it has written
(`queue_refinement_soon`) from a thread of its own, so a slow or absent broker never
holds up history writes; a beat task sweeps up finals whose task never got queued.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from stt.refinement import TRANSIENT_FAILURES

logger = logging.getLogger(__name__)

# Passing failures are retried with backoff. (Settings read at import: the worker's.)
_RETRY = {
    "autoretry_for": TRANSIENT_FAILURES,
    "retry_backoff": 2,
    "retry_backoff_max": settings.TASK_RETRY_BACKOFF_MAX,
    "retry_jitter": settings.TASK_RETRY_JITTER,
    "max_retries": settings.TASK_MAX_RETRIES,
}


@shared_task(bind=True, **_RETRY)
def refine_utterance(self: Any, utterance_id: str, model: str | None = None) -> dict[str, Any]:
    """Re-transcribe one stored final with the refinement model (idempotent)."""
    from stt.models import Refinement
    from stt.refinement import get_refiner, run_refinement

    model = model or settings.REFINE_MODEL
    refiner = get_refiner(model, in_server_process=bool(self.request.is_eager))
    try:
        return run_refinement(utterance_id, model, task_id=self.request.id or "", refiner=refiner)
    except SoftTimeLimitExceeded:
        # Only this delivery's run: another may have taken the refinement over since.
        Refinement.objects.filter(utterance__utterance_id=utterance_id, model=model, task_id=self.request.id or "",
                                  status=Refinement.Status.RUNNING).update(
            status=Refinement.Status.FAILED, error="time limit exceeded (CELERY_TASK_TIME_LIMIT)",
            finished_at=datetime.now(timezone.utc))
        raise


@shared_task(bind=True, **_RETRY)
def build_report(self: Any, start: str, end: str, kind: str = "manual") -> dict[str, Any]:
    """Build (or rebuild) the report of [start, end); ISO-8601 times."""
    from stt.reports import build_report as build

    report = build(datetime.fromisoformat(start), datetime.fromisoformat(end), kind=kind)
    return {"report_id": report.pk, "utterances": report.utterances, "build_ms": report.build_ms}


@shared_task(**_RETRY)
def build_scheduled_reports() -> dict[str, Any]:
    """Beat: reports of the last complete periods (REPORT_PERIOD_HOURS) that have
    none, oldest first, catching up on up to a week of periods missed while beat was down."""
    from stt.models import Report
    from stt.reports import build_report as build, missing_periods

    now = datetime.now(timezone.utc)
    horizon = now - timedelta(hours=settings.REPORT_PERIOD_HOURS * 8)
    built = set(Report.objects.filter(kind=Report.Kind.SCHEDULED, period_start__gte=horizon)
                .values_list("period_start", "period_end"))
    limit = max(1, 7 * 24 // settings.REPORT_PERIOD_HOURS)
    made = [build(start, end, kind=Report.Kind.SCHEDULED).pk for start, end in missing_periods(now, built, limit)]
    return {"built": len(made), "report_ids": made}


@shared_task(**_RETRY)
def refine_missed_finals() -> dict[str, int]:
    """Beat: queue refinements for recent finals that have none (their task was never
    queued, e.g. the broker was down when the final was written), and again for those
    abandoned: queued or running for longer than a task may live (the hard time limit
    killed it, or its message was lost), up to REFINE_MAX_ATTEMPTS starts."""
    from stt.models import Refinement, Utterance

    if not settings.REFINE_FINALS:
        return {"queued": 0, "abandoned": 0, "gave_up": 0}
    now = datetime.now(timezone.utc)
    recent = Utterance.objects.filter(created_at__gte=now - timedelta(hours=settings.REFINE_SWEEP_HOURS),
                                      created_at__lt=now - timedelta(minutes=1)).exclude(audio="")
    missed = recent.exclude(refinements__model=settings.REFINE_MODEL).values_list("utterance_id", flat=True)
    # Longer than the broker keeps an unacknowledged task plus the task's own limit.
    stale = now - timedelta(seconds=settings.CELERY_VISIBILITY_TIMEOUT + settings.CELERY_TASK_TIME_LIMIT)
    stuck = Refinement.objects.filter(
        utterance__in=recent, model=settings.REFINE_MODEL,
        status__in=(Refinement.Status.QUEUED, Refinement.Status.RUNNING), queued_at__lt=stale)
    gave_up = stuck.filter(attempts__gte=settings.REFINE_MAX_ATTEMPTS).update(
        status=Refinement.Status.FAILED, finished_at=now,
        error=f"gave up after {settings.REFINE_MAX_ATTEMPTS} attempts without a result")
    abandoned = stuck.filter(attempts__lt=settings.REFINE_MAX_ATTEMPTS)
    abandoned_ids = [str(u) for u in abandoned.values_list("utterance__utterance_id", flat=True)[:1000]]
    abandoned.filter(utterance__utterance_id__in=abandoned_ids).update(
        status=Refinement.Status.FAILED, error="abandoned: no result within the task's time limit")
    queued = queue_refinements([str(u) for u in missed[:1000]] + abandoned_ids)
    return {"queued": queued, "abandoned": len(abandoned_ids), "gave_up": gave_up}


@shared_task(**_RETRY)
def recover_lost_sessions() -> dict[str, int]:
    """Beat: close the sessions of server processes that died (not seen for
    SERVER_LOST_SECONDS) and mark the utterances their clients were hearing interrupted
    (stt/liveness.py)."""
    from stt.liveness import recover_lost_sessions as recover

    return recover(settings.SERVER_LOST_SECONDS)


@shared_task(**_RETRY)
def purge_history() -> dict[str, int]:
    """Beat: delete history older than RETENTION_DAYS (as manage.py purge_history)."""
    from stt.retention import purge_before

    if settings.RETENTION_DAYS <= 0:
        return {}
    return purge_before(datetime.now(timezone.utc) - timedelta(days=settings.RETENTION_DAYS))


def queue_refinements(utterance_ids: Iterable[str], model: str | None = None,
                      retry_failed: bool = True) -> int:
    """Queue refinements (from the admin, the sweep, or after a final). An utterance
    already refined, queued or running with this model is left alone; a failed one is
    queued again when retry_failed. Returns how many were queued."""
    from stt.models import Refinement, Utterance

    model = model or settings.REFINE_MODEL
    queued = 0
    for utterance in Utterance.objects.filter(utterance_id__in=list(utterance_ids)):
        refinement, created = Refinement.objects.get_or_create(
            utterance=utterance, model=model,
            defaults={"status": Refinement.Status.QUEUED, "queued_at": datetime.now(timezone.utc)})
        if not created:
            if refinement.status != Refinement.Status.FAILED or not retry_failed:
                continue
            Refinement.objects.filter(pk=refinement.pk).update(
                status=Refinement.Status.QUEUED, queued_at=datetime.now(timezone.utc), error="")
        try:
            # A stable task id: the same refinement is one task in the result store.
            refine_utterance.apply_async((str(utterance.utterance_id), model),
                                         task_id=f"refine-{utterance.utterance_id}-{model}")
        except Exception:
            # Broker away (the row stays queued; the sweep sends it again once stale),
            # or, run in-process, a failure the row now records.
            logger.warning("refinement of %s not queued", utterance.utterance_id, exc_info=True)
            continue
        queued += 1
    return queued


# Finals waiting to be queued (or, in the embedded mode, refined) by the dispatch
# thread. Bounded: in the embedded mode one CPU thread refines, and speech can come
# faster than that; beyond the bound a final is left for the sweep or the admin action.
DISPATCH_BACKLOG = 1000
_dispatch_queue: "queue.Queue[str]" = queue.Queue(maxsize=DISPATCH_BACKLOG)
_dispatch_thread: threading.Thread | None = None
_dispatch_lock = threading.Lock()


def queue_refinement_soon(utterance_id: str) -> None:
    """After a final is committed: queue its refinement from a thread of its own. In
    the embedded mode (no broker) the task itself runs there, off the streaming path;
    the thread is a daemon, so a backlog never holds up the process's exit."""
    global _dispatch_thread
    if not settings.REFINE_FINALS:
        return
    with _dispatch_lock:
        if _dispatch_thread is None or not _dispatch_thread.is_alive():
            _dispatch_thread = threading.Thread(target=_dispatch_forever, name="stt-refine-dispatch", daemon=True)
            _dispatch_thread.start()
    try:
        _dispatch_queue.put_nowait(utterance_id)
    except queue.Full:
        logger.warning("refinement backlog full (%d); %s is left for the sweep", DISPATCH_BACKLOG, utterance_id)


def _dispatch_forever() -> None:
    from django.db import connections

    while True:
        utterance_id = _dispatch_queue.get()
        try:
            if _dispatch_stopping.is_set():
                leave_queued([utterance_id])  # shutting down: no new work
            else:
                _dispatch_in_hand[0] = utterance_id
                queue_refinements([utterance_id])
        except Exception:  # the beat sweep queues it later
            logger.warning("could not queue the refinement of %s; the sweep will", utterance_id, exc_info=True)
        finally:
            _dispatch_in_hand[0] = None
            if _dispatch_queue.empty():
                connections.close_all()  # idle: hold no connection
            _dispatch_queue.task_done()


# --- Shutdown ----------------------------------------------------------------------------

_dispatch_stopping = threading.Event()
_dispatch_in_hand: list[str | None] = [None]  # the utterance the dispatch thread works on


def leave_queued(utterance_ids: Iterable[str], model: str | None = None) -> int:
    """Record refinements as queued without running them (a worker's or the admin's to
    pick up); a running one goes back to queued. Returns how many rows changed."""
    from stt.models import Refinement, Utterance

    model = model or settings.REFINE_MODEL
    now = datetime.now(timezone.utc)
    changed = 0
    for utterance in Utterance.objects.filter(utterance_id__in=list(utterance_ids)):
        _, created = Refinement.objects.get_or_create(
            utterance=utterance, model=model, defaults={"status": Refinement.Status.QUEUED, "queued_at": now})
        changed += created or Refinement.objects.filter(
            utterance=utterance, model=model, status=Refinement.Status.RUNNING).update(
            status=Refinement.Status.QUEUED, queued_at=now, task_id="", chunks_done=0)
    return changed


def stop_refinement_dispatch(timeout: float) -> dict[str, int]:
    """At shutdown: the finals waiting for the dispatch thread are queued (to the broker)
    within `timeout`; in the embedded mode (refined in-process) none is started any more,
    they are left queued, and the one in progress may finish within `timeout`, else it is
    put back to queued. Never is a refinement left marked running by this process."""
    import time as clock

    if refine_utterance.app.conf.task_always_eager:
        _dispatch_stopping.set()
    deadline = clock.monotonic() + timeout
    while _dispatch_queue.unfinished_tasks and clock.monotonic() < deadline:
        clock.sleep(0.05)
    waiting: list[str] = []
    while True:  # still waiting at the deadline: left queued here
        try:
            waiting.append(_dispatch_queue.get_nowait())
        except queue.Empty:
            break
    in_hand = _dispatch_in_hand[0]
    requeued = leave_queued([*waiting, *([in_hand] if in_hand else [])])
    return {"left_queued": requeued, "interrupted": int(in_hand is not None)}
