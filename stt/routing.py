from django.urls import path

from stt.consumers import TranscribeConsumer
from stt.realtime.consumer import RealtimeConsumer

websocket_urlpatterns = [
    path("ws/transcribe", TranscribeConsumer.as_asgi()),
    # OpenAI-compatible realtime transcription (?intent=transcription): stt/realtime.
    path("v1/realtime", RealtimeConsumer.as_asgi()),
]
