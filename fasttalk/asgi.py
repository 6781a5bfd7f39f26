"""ASGI entry point, served by Daphne: HTTP to Django, /ws/transcribe and /v1/realtime to Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fasttalk.settings")
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (needs Django set up)
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from stt.engine import get_engine  # noqa: E402
from stt.handshake import HandshakeMiddleware  # noqa: E402
from stt.routing import websocket_urlpatterns  # noqa: E402

from monitoring.middleware import RefuseOnMonitoringPort  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Static files (the admin's CSS and JS, the demo page's scripts) straight from the
        # apps: the service is one process with no web server in front of it by default.
        "http": ASGIStaticFilesHandler(django_application),
        # The monitoring port serves /health and /metrics only: no sessions there. Then
        # Origin and credentials: the consumer gets an admitted connection only.
        "websocket": RefuseOnMonitoringPort(HandshakeMiddleware(URLRouter(websocket_urlpatterns))),
    }
)

if settings.STT_PRELOAD_MODEL:
    # Load the model while the server starts, so the first session does not wait.
    get_engine().start_loading()
