"""HTTP endpoints: service information, health and statistics.

Each view gets the service's parts as its `sources` argument (the URLconf passes it;
see monitoring/urls.py): monitoring imports nothing from stt.
"""

from __future__ import annotations

from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from monitoring import metrics as prometheus_metrics
from monitoring.health import check_model, overall_health, readiness
from monitoring.registry import registry
from monitoring.sources import ServiceSources

SERVICE_NAME = "Fasttalk STT"
VERSION = "0.1.0"


def _endpoints(request: HttpRequest) -> dict[str, str]:
    ws_scheme = "wss" if request.is_secure() else "ws"
    host = request.get_host()
    return {
        "websocket": f"{ws_scheme}://{host}/ws/transcribe",
        "openai_realtime": f"{ws_scheme}://{host}/v1/realtime?intent=transcription",
        "health": "/health",
        "stats": "/stats",
        "transcriptions": "/v1/audio/transcriptions",  # the OpenAI-compatible file API
        "models": "/v1/models",
        "admin": "/admin/",
        **({"monitoring_health": f":{settings.MONITORING_PORT}/health",
            "metrics": f":{settings.MONITORING_PORT}/metrics"} if settings.MONITORING_PORT else {}),
    }


async def index(request: HttpRequest, sources: ServiceSources):
    info = {
        "service": SERVICE_NAME,
        "version": VERSION,
        "protocol_version": sources.protocol_version,
        "description": "Real-time speech-to-text over WebSocket: partials while the user speaks, "
                       "a final when they stop, and voice-activity events for barge-in.",
        "endpoints": _endpoints(request),
        "audio": {"encoding": "float32le", "sample_rate": sources.sample_rate, "channels": 1},
        "model": await check_model(sources),
        "max_connections": settings.WEBSOCKET_MAX_CONNECTIONS,
        "active_connections": registry.active_connections,
        "documentation": "docs/protocol.md",
    }
    if "text/html" in request.headers.get("Accept", ""):
        return render(request, "index.html", {"info": info})
    return JsonResponse(info)


async def health(request: HttpRequest, sources: ServiceSources) -> JsonResponse:
    report, ready = await overall_health(sources, draining=registry.draining)
    # 503 whenever new sessions should go elsewhere (a load balancer's health check).
    return JsonResponse(report, status=200 if ready else 503)


async def ready(request: HttpRequest, sources: ServiceSources) -> JsonResponse:
    """Readiness for a load balancer's health check (deploy/haproxy.cfg): 200 while this
    process takes new sessions, 503 from the moment it starts shutting down."""
    state = readiness(sources.engine(), registry.draining, sources.capacity())
    state["active_connections"] = registry.active_connections
    return JsonResponse(state, status=200 if state["ready"] else 503)


@dataclass(frozen=True)
class StatsReader:
    """Who reads /stats: every session (staff, or anyone in open mode) when `key_id` is
    None, else the sessions of that API key only."""

    key_id: int | None = None


async def stats_reader(request: HttpRequest, sources: ServiceSources) -> StatsReader | None:
    """With AUTH_REQUIRED, the live session list is for an API key (Authorization:
    Bearer ftk_…, its own sessions) or a signed-in staff user (all of them); open mode
    shows it all to anyone (every session there is anonymous). None: refused."""
    if not settings.AUTH_REQUIRED:
        return StatsReader()
    user = await request.auser()
    if user.is_active and user.is_staff:
        return StatsReader()
    authorization = request.headers.get("Authorization", "")
    if not authorization:
        return None
    key = await sources.api_key_of(authorization)
    return None if key is None else StatsReader(key_id=key.pk)


async def stats(request: HttpRequest, sources: ServiceSources) -> JsonResponse:
    reader = await stats_reader(request, sources)
    if reader is None:
        return JsonResponse({"error": {"code": "unauthorized", "message": "send an API key as Authorization: "
                                       "Bearer ftk_..., or sign in to the admin as staff"}}, status=401)
    snapshot = registry.snapshot(of_key=reader.key_id)
    engine = sources.engine()
    history = sources.history
    snapshot["engine"] = {
        "model_loaded": engine.loaded,
        "queue_depth": engine.queue_depth,
        "in_flight": engine.in_flight,
        "inferences": engine.stats.inferences,
        "failures": engine.stats.failures,
        "timeouts": engine.stats.timeouts,
        "out_of_memory": engine.stats.out_of_memory,
        "gpu_failures": engine.stats.gpu_failures,
        "cpu_fallbacks": engine.stats.cpu_fallbacks,
        "max_batch": engine.max_batch,
        "audio_seconds": round(engine.stats.audio_seconds, 3),
        "inference_seconds": round(engine.stats.inference_seconds, 3),
        "batches": engine.stats.batches,
        "cache_hits": engine.stats.cache_hits,
        "superseded": engine.stats.superseded,
        "redone_the_long_way": engine.stats.fallbacks,
        "by_kind": {kind: {"inferences": count, "seconds": round(engine.stats.kind_seconds.get(kind, 0.0), 3)}
                    for kind, count in sorted(engine.stats.kind_inferences.items())},
    }
    snapshot["history"] = {
        "written": history.stats.written,
        "backlog": history.backlog,
        "backlog_bytes": history.backlog_bytes,
        "buffered_total": history.stats.buffered,
        "dropped": history.stats.dropped,
        "failures": history.stats.failures,
        "audio_lost": history.stats.audio_lost,
    }
    return JsonResponse(snapshot)


async def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition (on the monitoring port only). Merging several
    processes' files reads the disk: off the event loop."""
    body, content_type = await sync_to_async(prometheus_metrics.render, thread_sensitive=False)()
    return HttpResponse(body, content_type=content_type)
