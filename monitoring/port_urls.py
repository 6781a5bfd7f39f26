"""The URLs of the monitoring port (see monitoring/middleware.py)."""

from django.urls import path

from monitoring import views

urlpatterns = [
    path("health", views.health, name="monitoring-health"),
    path("metrics", views.metrics, name="monitoring-metrics"),
]
