from django.urls import path

from stt.consumers import TranscribeConsumer

websocket_urlpatterns = [
    path("ws/transcribe", TranscribeConsumer.as_asgi()),
]
