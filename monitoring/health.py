"""Health checks of the parts the service depends on.

The parts are handed in (monitoring.sources.ServiceSources, built by the project in
fasttalk/sources.py): monitoring imports nothing from stt.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

import numpy as np

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from monitoring.sources import ServiceSources

CHECK_TIMEOUT_SECONDS = 2.0


# The model counts as answering if it decoded something this recently; otherwise a
# health check decodes a short probe (at most once per PROBE_INTERVAL_SECONDS).
RECENT_INFERENCE_SECONDS = 60.0
PROBE_INTERVAL_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 5.0
_last_probes: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


async def model_answers(engine: Any, probe_options: Any) -> tuple[bool, str | None]:
    """Whether the model decodes audio now: recent traffic says so, else a probe decoded
    with `probe_options`."""
    now = time.monotonic()
    last = engine.stats.last_inference_at
    if last is not None and now - last < RECENT_INFERENCE_SECONDS:
        return True, None
    probe = _last_probes.setdefault(engine, {"at": None, "ok": False, "error": None, "lock": asyncio.Lock()})
    async with probe["lock"]:  # concurrent health checks share one probe
        if probe["at"] is not None and time.monotonic() - probe["at"] < PROBE_INTERVAL_SECONDS:
            return probe["ok"], probe["error"]
        # Faint noise, new each time: loud enough to be decoded, never a cache hit.
        noise = (np.random.default_rng().standard_normal(8000) * 0.05).astype(np.float32)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                await engine.transcribe(noise, probe_options, health_probe=True)
            ok, error = True, None
        except Exception as exc:
            ok, error = False, _short(exc)
        probe.update(at=time.monotonic(), ok=ok, error=error)
        return ok, error


def _short(exc: BaseException) -> str:
    """An error for a public endpoint: its kind and first line, not a whole DSN dump."""
    text = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def check_model(sources: ServiceSources) -> dict[str, Any]:
    engine = sources.engine()
    info = engine.info
    if info is not None:
        answering, error = await model_answers(engine, sources.probe_options)
        return {
            "status": "ok" if answering else "error",
            "answering": answering,
            **({"error": error} if error else {}),
            "model": info.model,
            "device": info.device,
            "compute_type": info.compute_type,
            "load_seconds": round(info.load_seconds, 3),
            "queue_depth": engine.queue_depth,
            "in_flight": engine.in_flight,
            "breakers": {
                "transcription": engine.transcription_breaker.state.value,
                "gpu": engine.gpu_breaker.state.value,
            },
        }
    if engine.load_error is not None:
        return {"status": "error", "model": engine.model_reference, "error": _short(engine.load_error)}
    return {"status": "loading", "model": engine.model_reference}


def _query_database() -> None:
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # a pool thread: leave no connection behind


async def check_database(history: Any) -> dict[str, Any]:
    """The database answers a query, and the history reaches it: `degraded` while the
    history writer journals or loses writes (its `condition()`: lately, or its backlog
    full), although the database answers; and how many writes wait for it."""
    started = time.perf_counter()
    condition = history.condition()
    stats = history.stats
    figures = {"history": condition, "history_backlog": history.backlog, "history_dropped": stats.dropped,
               "history_journaled": stats.journaled, "history_lost": stats.lost,
               "history_audio_lost": stats.audio_lost}
    try:
        await asyncio.wait_for(sync_to_async(_query_database, thread_sensitive=False)(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        return {"status": "error", "vendor": connection.vendor, "error": _short(exc), **figures}
    return {"status": "ok" if condition == "ok" else "degraded", "vendor": connection.vendor,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1), **figures}


async def check_channel_layer() -> dict[str, Any]:
    """A message sent to a fresh channel must come back."""
    layer = get_channel_layer()
    backend = type(layer).__name__
    started = time.perf_counter()
    try:
        channel = await layer.new_channel()  # default prefix, see runtime_config
        await asyncio.wait_for(layer.send(channel, {"type": "health.ping"}), CHECK_TIMEOUT_SECONDS)
        reply = await asyncio.wait_for(layer.receive(channel), CHECK_TIMEOUT_SECONDS)
        if reply.get("type") != "health.ping":
            raise RuntimeError("the layer returned another message")
    except Exception as exc:
        return {"status": "error", "backend": backend, "error": _short(exc)}
    return {"status": "ok", "backend": backend, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def _ping_broker(app: Any) -> None:
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)


async def check_celery_broker(app: Any) -> dict[str, Any]:
    """The broker re-transcriptions and reports are queued on answers (in the
    embedded mode there is none: tasks run in-process)."""
    if app.conf.task_always_eager:
        return {"status": "ok", "mode": "in-process"}
    started = time.perf_counter()
    try:
        await asyncio.wait_for(sync_to_async(_ping_broker, thread_sensitive=False)(app), CHECK_TIMEOUT_SECONDS + 1)
    except Exception as exc:
        return {"status": "error", "mode": "broker", "error": _short(exc)}
    return {"status": "ok", "mode": "broker", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def check_breakers(engine: Any) -> dict[str, Any]:
    parts = {}
    for breaker in (engine.transcription_breaker, engine.gpu_breaker):
        state = breaker.state.value
        parts[breaker.name] = {"status": "ok" if state == "closed" else "error", "state": state,
                               "failure_threshold": breaker.failure_threshold,
                               "retry_after": round(breaker.retry_after(), 1)}
    return {"status": "ok" if all(p["status"] == "ok" for p in parts.values()) else "error", **parts}


def readiness(engine: Any, draining: bool, capacity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Whether a load balancer should send this process new sessions: only what is true
    of this process (shutting down, model loading or failed, transcription breaker open,
    at its measured capacity), never a shared dependency. A Redis or database outage
    affects every process alike, and a balancer that took them all out would refuse
    sessions the processes can still serve (degraded). A model not loaded yet and not
    loading (STT_PRELOAD_MODEL off) loads with the first session, which must be let in.
    Cheap: no I/O, polled every half second."""
    if draining:
        reason: str | None = "draining"
    elif engine.info is None and engine.load_error is not None:
        reason = "model_unavailable"
    elif engine.info is None and engine.loading:
        reason = "model_loading"  # preloaded at start (STT_PRELOAD_MODEL): ready once loaded
    elif engine.transcription_breaker.state.value == "open":
        reason = "transcription_breaker_open"
    elif capacity and capacity.get("full"):
        reason = "at_capacity"
    else:
        reason = None
    return {"ready": reason is None, "reason": reason}


async def overall_health(sources: ServiceSources, draining: bool = False) -> tuple[dict[str, Any], bool]:
    """The health report and whether this process is ready for new sessions.

    Serving needs the model and the channel layer, and the transcription breaker not
    open; a database or broker outage, or a GPU breaker open (the CPU stands in),
    degrades the service without stopping it (`status`). Ready for new sessions
    (`ready`) also needs the process not draining (shutting down) and not at its
    measured capacity: a load balancer sends new sessions elsewhere while it is not
    (sessions already here go on). `/ready` (readiness) is the load balancer's check.
    """
    database, channel_layer, broker = await asyncio.gather(
        check_database(sources.history), check_channel_layer(), check_celery_broker(sources.celery_app))
    checks = {"model": await check_model(sources), "database": database, "channel_layer": channel_layer,
              "celery_broker": broker, "breakers": check_breakers(sources.engine())}
    serving = (checks["model"]["status"] == "ok" and channel_layer["status"] == "ok"
               and checks["breakers"]["transcription"]["state"] != "open")
    if draining:
        serving, status = False, "draining"
    elif not serving:
        status = "unhealthy"
    elif any(part["status"] != "ok" for part in checks.values()):
        status = "degraded"
    else:
        status = "healthy"
    capacity = sources.capacity()
    full = bool(capacity and capacity.get("full"))
    not_ready = [why for why, applies in (("unhealthy", not serving and not draining), ("draining", draining),
                                          ("at_capacity", full)) if applies]
    report = {"status": status, "ready": not not_ready, "not_ready": not_ready, "checks": checks}
    if capacity is not None:
        report["capacity"] = capacity
    return report, not not_ready
