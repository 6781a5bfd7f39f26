"""The URLs of the monitoring port (MONITORING_PORT; see monitoring/middleware.py)."""

from fasttalk.sources import service_sources
from monitoring.urls import monitoring_port_patterns

urlpatterns = monitoring_port_patterns(service_sources())
