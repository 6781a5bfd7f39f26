"""Settings come from the environment, with the embedded defaults when it is silent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from stt.messages import EAGERNESS_LEVELS

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'db': s.DATABASES['default']['ENGINE'], 'layer': s.CHANNEL_LAYERS['default']['BACKEND'], "
    "'eager': s.CELERY_TASK_ALWAYS_EAGER, 'port': s.WEBSOCKET_PORT, 'host': s.WEBSOCKET_HOST, "
    "'max': s.WEBSOCKET_MAX_CONNECTIONS, 'tft': s.TRANSCRIPTION_FAILURE_THRESHOLD, "
    "'gft': s.GPU_FAILURE_THRESHOLD, 'mse': s.MAX_SESSION_ERRORS, 'buf': s.BUFFER_DURATION, "
    "'min': s.MIN_AUDIO_LENGTH, 'sil': s.MAX_SILENCE_DURATION, 'model': s.STT_MODEL, 'device': s.STT_DEVICE, "
    "'eagerness': s.ENDPOINTING_EAGERNESS}))"
)
DOCUMENTED = {"WEBSOCKET_HOST", "WEBSOCKET_PORT", "WEBSOCKET_MAX_CONNECTIONS", "TRANSCRIPTION_FAILURE_THRESHOLD",
              "GPU_FAILURE_THRESHOLD", "MAX_SESSION_ERRORS", "BUFFER_DURATION", "MIN_AUDIO_LENGTH",
              "MAX_SILENCE_DURATION", "DATABASE_URL", "REDIS_URL", "STT_MODEL", "STT_DEVICE", "STT_COMPUTE_TYPE",
              "ENDPOINTING_EAGERNESS"}


def settings_with(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in DOCUMENTED}
    clean.update(env, DJANGO_SETTINGS_MODULE="fasttalk.settings")
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True)


def test_without_the_environment_the_embedded_defaults_apply():
    values = json.loads(settings_with({}).stdout)
    assert values == {
        "db": "django.db.backends.sqlite3", "layer": "channels.layers.InMemoryChannelLayer", "eager": True,
        "port": 8000, "host": "0.0.0.0", "max": 50, "tft": 5, "gft": 3, "mse": 10,
        "buf": 2.0, "min": 0.5, "sil": 2.0, "model": "tiny.en", "device": "auto", "eagerness": "medium",
    }


def test_database_and_redis_urls_switch_to_postgresql_and_channels_redis():
    values = json.loads(settings_with({"DATABASE_URL": "postgres://u@db:5432/stt",
                                       "REDIS_URL": "redis://cache:6379/1"}).stdout)
    assert values["db"] == "django.db.backends.postgresql"
    assert values["layer"] == "fasttalk.channel_layer.ResilientRedisChannelLayer"
    assert values["eager"] is False


def test_the_design_documents_variables_are_read():
    values = json.loads(settings_with({"WEBSOCKET_PORT": "9000", "WEBSOCKET_MAX_CONNECTIONS": "7",
                                       "MAX_SILENCE_DURATION": "1.5", "STT_MODEL": "/models/base"}).stdout)
    assert (values["port"], values["max"], values["sil"], values["model"]) == (9000, 7, 1.5, "/models/base")


def test_a_malformed_value_stops_start_up_with_its_name():
    result = settings_with({"WEBSOCKET_PORT": "eighty"})
    assert result.returncode != 0
    assert "WEBSOCKET_PORT='eighty' is not an integer" in result.stderr


def test_the_endpointing_eagerness_is_one_of_the_protocols_levels():
    assert json.loads(settings_with({"ENDPOINTING_EAGERNESS": "High"}).stdout)["eagerness"] == "high"
    result = settings_with({"ENDPOINTING_EAGERNESS": "eager"})
    assert result.returncode != 0
    # The levels the setting names are exactly those session_config.endpointing takes.
    assert f"ENDPOINTING_EAGERNESS='eager' is not one of {', '.join(EAGERNESS_LEVELS)}" in result.stderr


def test_every_variable_the_settings_read_is_documented_in_the_readme():
    source = (ROOT / "fasttalk" / "settings.py").read_text()
    names = set(re.findall(r'env_(?:str|bool|int|float|list|choice)\("([A-Z_]+)"', source))
    assert DOCUMENTED <= names
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in readme)
    assert not missing, f"README.md's configuration table lacks {missing}"
