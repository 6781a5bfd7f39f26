"""The monitoring endpoints' URL patterns, for a service's parts (`sources`): the
project's URLconfs (fasttalk/urls.py, fasttalk/port_urls.py) build them."""

from __future__ import annotations

from django.urls import URLPattern, path

from monitoring import views
from monitoring.sources import ServiceSources


def service_patterns(sources: ServiceSources) -> list[URLPattern]:
    """/, /health, /ready and /stats on the service's port."""
    given = {"sources": sources}
    return [
        path("", views.index, given, name="index"),
        path("health", views.health, given, name="health"),
        path("ready", views.ready, given, name="ready"),
        path("stats", views.stats, given, name="stats"),
    ]


def monitoring_port_patterns(sources: ServiceSources) -> list[URLPattern]:
    """/health, /ready and /metrics: all the monitoring port serves (see monitoring/middleware.py)."""
    return [
        path("health", views.health, {"sources": sources}, name="monitoring-health"),
        path("ready", views.ready, {"sources": sources}, name="monitoring-ready"),
        path("metrics", views.metrics, name="monitoring-metrics"),
    ]
