"""The API's routes, mounted under /v1/ by fasttalk/urls.py."""

from __future__ import annotations

from typing import Callable

from django.urls import path

from stt.openai_api.services import FileApiServices
from stt.openai_api.views import OpenAiApi


def api_patterns(services: Callable[[], FileApiServices]) -> list:
    views = OpenAiApi(services).urls()
    return [
        path("audio/transcriptions", views["transcriptions"], name="openai-transcriptions"),
        path("models", views["models"], name="openai-models"),
        path("models/<path:model_id>", views["model"], name="openai-model"),
    ]
