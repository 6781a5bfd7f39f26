"""The Celery application (re-transcriptions and reports build on it).

With REDIS_URL set it uses Redis as broker and result store; without it, tasks run
eagerly in the calling process, so the embedded mode needs no worker.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fasttalk.settings")

app = Celery("fasttalk")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
