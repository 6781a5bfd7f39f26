"""Production settings pass Django's deployment checks; CORS covers the public
endpoints for allowed origins only, never the admin."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_check_deploy_is_clean_with_production_settings():
    env = {**os.environ, "DJANGO_SECURE": "1", "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
           "DJANGO_ALLOWED_HOSTS": "stt.example.com", "AUTH_REQUIRED": "1"}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_the_development_secret_key():
    env = {**os.environ, "DJANGO_SECURE": "1"}
    env.pop("DJANGO_SECRET_KEY", None)
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    assert result.returncode != 0 and "DJANGO_SECRET_KEY" in result.stderr


@pytest.mark.django_db
class TestCors:
    @pytest.fixture(autouse=True)
    def origins(self, settings):
        settings.ALLOWED_ORIGINS = ["https://app.example.com"]

    def test_an_allowed_origin_may_read_health(self, client):
        response = client.get("/stats", HTTP_ORIGIN="https://app.example.com")
        assert response["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "Origin" in response["Vary"]

    def test_a_preflight_for_the_token_endpoint_is_answered(self, client):
        response = client.options("/auth/token", HTTP_ORIGIN="https://app.example.com",
                                  HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
        assert response.status_code == 204 and "Authorization" in response["Access-Control-Allow-Headers"]

    def test_other_origins_and_the_admin_get_no_cors_headers(self, client):
        assert "Access-Control-Allow-Origin" not in client.get("/stats", HTTP_ORIGIN="https://evil.example.com")
        assert "Access-Control-Allow-Origin" not in client.get("/admin/login/", HTTP_ORIGIN="https://app.example.com")


def test_by_default_no_other_origin_may_read_the_public_endpoints():
    """Issue 14 #9: with the default ALLOWED_ORIGINS, any website could read /stats."""
    env = {k: v for k, v in os.environ.items() if k != "ALLOWED_ORIGINS"}
    probe = ("import django; django.setup(); from django.conf import settings; from django.test import Client; "
             "settings.ALLOWED_HOSTS = ['*']; "
             "r = Client().get('/stats', HTTP_ORIGIN='https://evil.example'); "
             "print(settings.ALLOWED_ORIGINS, r.headers.get('Access-Control-Allow-Origin'))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                            env={**env, "DJANGO_SETTINGS_MODULE": "fasttalk.settings", "AUTH_REQUIRED": "0"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "[] None"
