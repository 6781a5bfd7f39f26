"""The Celery application: re-transcriptions and reports (tasks in stt/tasks.py).

Worker:  .venv/bin/celery -A fasttalk worker --loglevel INFO   (bin/worker)
Beat:    .venv/bin/celery -A fasttalk beat --loglevel INFO     (bin/beat)

Broker and result store are REDIS_URL (settings, "Celery" section). Without one, tasks
run in the calling process (CELERY_TASK_ALWAYS_EAGER), so the embedded mode needs no
worker.
"""

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fasttalk.settings")

app = Celery("fasttalk")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _load_refinement_model(**_: object) -> None:
    """Load the refinement model once per worker process, before its first task."""
    from django.conf import settings

    if settings.REFINE_FINALS:
        from stt.refinement import get_refiner

        get_refiner().model()
