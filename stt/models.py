"""What the service remembers: sessions, utterances (with their audio), errors, and the
runtime configuration profiles admins edit while the service runs."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models, transaction
from django.db.models import Q

from stt.languages import normalize_language
from stt.messages import MAX_KEYTERM_CHARS, MAX_KEYTERMS, clean_keyterm


class SessionRecord(models.Model):
    """One session, from its start to its end: a WebSocket session (start_session to
    its end), or one file sent to the HTTP API (its chunks are the utterances)."""

    class Source(models.TextChoices):
        WEBSOCKET = "websocket", "WebSocket"  # /ws/transcribe
        FILE = "file", "File"  # POST /v1/audio/transcriptions
        REALTIME = "realtime", "Realtime API"  # /v1/realtime

    connection_id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session_id = models.CharField(max_length=128, db_index=True)
    user_id = models.CharField(max_length=256, blank=True, db_index=True)
    conversation_id = models.CharField(max_length=256, blank=True, db_index=True)
    client_address = models.CharField(max_length=64, blank=True)
    profile = models.CharField(max_length=64, blank=True, help_text="Runtime profile the session ran with.")
    config = models.JSONField(default=dict, help_text="session_config as the client sent it.")
    effective_config = models.JSONField(default=dict)
    model = models.CharField(max_length=256, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.WEBSOCKET, db_index=True,
                              help_text="How the audio came: a WebSocket stream, a file, the realtime API.")
    started_at = models.DateTimeField(db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    close_reason = models.CharField(max_length=64, blank=True)
    utterances = models.PositiveIntegerField(default=0)
    finals = models.PositiveIntegerField(default=0)
    failed_finals = models.PositiveIntegerField(default=0)
    partials = models.PositiveIntegerField(default=0)
    speech_onsets = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    server_id = models.UUIDField(null=True, blank=True, db_index=True,
                                 help_text="The server process that held the session (ServerProcess).")
    audio_received_s = models.FloatField(default=0.0)
    audio_transcribed_s = models.FloatField(default=0.0)
    latency = models.JSONField(default=dict, help_text="Partial and final latency summary (ms).")

    class Meta:
        ordering = ["-started_at"]
        verbose_name = "session"

    def __str__(self) -> str:
        return f"{self.session_id} ({self.started_at:%Y-%m-%d %H:%M})"


def utterance_audio_path(instance: "Utterance", filename: str) -> str:
    return f"utterances/{instance.created_at:%Y/%m/%d}/{instance.utterance_id}.flac"


class Utterance(models.Model):
    """A final transcript with its words, timing, the decode that made it, and its audio;
    or, failed, the audio of a final that could not be transcribed (no text)."""

    class Status(models.TextChoices):
        FINAL = "final"
        FAILED = "failed"  # every attempt failed: the client got an error, not a final
        # The client heard of it (speech onset or a partial) and its final is pending; the
        # final's write replaces the row. Left open only if the process died first:
        OPEN = "open"
        # ...then the sweep (stt/liveness.py) marks it so: the process was lost with it open.
        INTERRUPTED = "interrupted"

    utterance_id = models.UUIDField(unique=True)
    session = models.ForeignKey(SessionRecord, on_delete=models.CASCADE, related_name="utterance_set")
    text = models.TextField(blank=True)
    words = models.JSONField(default=list, help_text="[{word, start_ms, end_ms, confidence}], relative to start_ms.")
    confidence = models.FloatField(null=True, blank=True)
    language = models.CharField(max_length=16, blank=True, db_index=True)
    start_ms = models.PositiveBigIntegerField(help_text="Start on the session's audio timeline.")
    end_ms = models.PositiveBigIntegerField()
    audio_duration_ms = models.PositiveIntegerField()
    reason = models.CharField(max_length=32, blank=True)
    partial_count = models.PositiveIntegerField(default=0)
    first_partial_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    final_latency_ms = models.PositiveIntegerField(help_text="Utterance end decided -> final ready.")
    model = models.CharField(max_length=256, blank=True)
    decode = models.JSONField(default=dict, help_text="Decode settings used for the final.")
    audio = models.FileField(upload_to=utterance_audio_path, blank=True, max_length=255)
    created_at = models.DateTimeField(db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.FINAL, db_index=True)
    error = models.TextField(blank=True, help_text="Why the final failed (code: message).")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["session", "start_ms"])]

    def __str__(self) -> str:
        return self.text[:60] or f"(no text) {self.utterance_id}"


class ServerProcess(models.Model):
    """A `manage.py serve` process, seen through its heartbeat (stt/liveness.py): sessions
    name it, and the sessions of a process that stopped being seen are closed for it."""

    server_id = models.UUIDField(primary_key=True, editable=False)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    port = models.PositiveIntegerField(null=True, blank=True, help_text="Its service port.")
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="Set by a clean exit.")
    lost_at = models.DateTimeField(null=True, blank=True, help_text="When the sweep found it gone.")

    class Meta:
        ordering = ["-started_at"]
        verbose_name = "server process"

    def __str__(self) -> str:
        return f"{self.hostname}:{self.port or '-'} pid {self.pid}"


class ErrorEvent(models.Model):
    """One error sent to a client."""

    event_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(SessionRecord, on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="error_events")
    session_label = models.CharField(max_length=128, blank=True, db_index=True,
                                     help_text="The session id the client saw (kept if the session row is gone).")
    code = models.CharField(max_length=64, db_index=True)
    category = models.CharField(max_length=32, db_index=True)
    severity = models.CharField(max_length=16)
    recoverable = models.BooleanField()
    message = models.TextField()
    field = models.CharField(max_length=128, blank=True)
    utterance_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.code} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class ErrorStatistic(models.Model):
    """Running count of one error code."""

    category = models.CharField(max_length=32, db_index=True)
    code = models.CharField(max_length=64)
    count = models.PositiveBigIntegerField(default=0)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    last_message = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["category", "code"], name="unique_error_statistic")]
        ordering = ["category", "-count"]

    def __str__(self) -> str:
        return f"{self.category}/{self.code}: {self.count}"


def _range(low: float, high: float) -> list:
    return [MinValueValidator(low), MaxValueValidator(high)]


class RuntimeProfile(models.Model):
    """Tunables an admin changes while the service runs. Empty fields inherit the
    server's setting of the same meaning (environment variable in brackets)."""

    name = models.CharField(max_length=64, unique=True, validators=[RegexValidator(r"^[A-Za-z0-9._-]+$")],
                            help_text="Sessions name it in start_session as session_config.profile.")
    description = models.CharField(max_length=256, blank=True)
    is_default = models.BooleanField(default=False, help_text="Used by sessions that name no profile (one at most).")
    vad_threshold = models.FloatField(null=True, blank=True, validators=_range(0.05, 0.95),
                                      help_text="Speech probability threshold [VAD_THRESHOLD].")
    vad_min_speech_ms = models.PositiveIntegerField(null=True, blank=True, validators=_range(32, 2000),
                                                    help_text="Speech before an onset counts [VAD_MIN_SPEECH_MS].")
    vad_speech_pad_ms = models.PositiveIntegerField(null=True, blank=True, validators=_range(0, 1000),
                                                    help_text="Audio kept around speech [VAD_SPEECH_PAD_MS].")
    min_audio_length = models.FloatField(null=True, blank=True, validators=_range(0.1, 5.0),
                                         help_text="Seconds before the first partial [MIN_AUDIO_LENGTH].")
    partial_chunk_duration = models.FloatField(null=True, blank=True, validators=_range(0.05, 10.0),
                                               help_text="Partial cadence, s [PARTIAL_CHUNK_DURATION].")
    final_chunk_duration = models.FloatField(null=True, blank=True, validators=_range(0.1, 10.0),
                                             help_text="Silence that ends an utterance, s [FINAL_CHUNK_DURATION].")
    max_silence_duration = models.FloatField(null=True, blank=True, validators=_range(0.1, 10.0),
                                             help_text="Most end silence a session may ask for [MAX_SILENCE_DURATION].")
    max_utterance_duration = models.FloatField(null=True, blank=True, validators=_range(2.0, 28.0),
                                               help_text="Longest utterance, s [MAX_UTTERANCE_DURATION].")
    partial_beam_size = models.PositiveSmallIntegerField(null=True, blank=True, validators=_range(1, 10),
                                                         help_text="[STT_PARTIAL_BEAM_SIZE]")
    final_beam_size = models.PositiveSmallIntegerField(null=True, blank=True, validators=_range(1, 10),
                                                       help_text="[STT_FINAL_BEAM_SIZE]")
    max_connections = models.PositiveIntegerField(null=True, blank=True, validators=_range(1, 100000),
                                                  help_text="Per server process; process-wide, so read from the default "
                                                            "profile only [WEBSOCKET_MAX_CONNECTIONS].")
    transcription_failure_threshold = models.PositiveIntegerField(
        null=True, blank=True, validators=_range(1, 1000),
        help_text="Process-wide: read from the default profile only [TRANSCRIPTION_FAILURE_THRESHOLD]")
    gpu_failure_threshold = models.PositiveIntegerField(
        null=True, blank=True, validators=_range(1, 1000),
        help_text="Process-wide: read from the default profile only [GPU_FAILURE_THRESHOLD]")
    max_session_errors = models.PositiveIntegerField(null=True, blank=True, validators=_range(1, 100000),
                                                     help_text="[MAX_SESSION_ERRORS]")
    default_language = models.CharField(max_length=16, blank=True,
                                        help_text="Language for sessions that set none (blank: auto/model's).")
    endpointing_eagerness = models.CharField(
        max_length=8, blank=True, choices=[
            ("off", "off: a fixed end silence (final chunk duration)"), ("low", "low: waits longest"),
            ("medium", "medium"), ("high", "high: ends a finished sentence soonest")],
        help_text="Semantic endpointing for sessions that set no session_config.endpointing: how soon a "
                  "finished sentence ends the utterance; a plainly incomplete one waits longer "
                  "[ENDPOINTING_EAGERNESS].")
    vocabulary = models.TextField(
        blank=True,
        help_text=f"Keyterms for every session of this profile, one word or phrase per line (names of people, "
                  f"products, places; at most {MAX_KEYTERMS}, each at most {MAX_KEYTERM_CHARS} characters). "
                  f"They follow a session's own keyterms in the decoder prompt, and reach running sessions too.")
    updated_at = models.DateTimeField(auto_now=True)

    # The tunables, in form order; each maps to the setting of the same name, upper-cased.
    TUNABLES = (
        "vad_threshold", "vad_min_speech_ms", "vad_speech_pad_ms", "min_audio_length",
        "partial_chunk_duration", "final_chunk_duration", "max_silence_duration", "max_utterance_duration",
        "partial_beam_size", "final_beam_size", "max_connections", "transcription_failure_threshold",
        "gpu_failure_threshold", "max_session_errors",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=Q(is_default=True), name="one_default_profile"),
        ]
        verbose_name = "runtime profile"

    def __str__(self) -> str:
        return f"{self.name}{' (default)' if self.is_default else ''}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        try:
            self.default_language = normalize_language(self.default_language or None) or ""
        except ValueError as exc:
            errors["default_language"] = str(exc)
        final = self.final_chunk_duration
        bound = self.max_silence_duration or settings.MAX_SILENCE_DURATION
        if final is not None and final > bound:
            errors["final_chunk_duration"] = f"must be at most the maximum silence duration ({bound} s)"
        try:
            self.vocabulary = "\n".join(checked_vocabulary(self.vocabulary))
        except ValueError as exc:
            errors["vocabulary"] = str(exc)
        if errors:
            raise ValidationError(errors)

    def validate_constraints(self, exclude: Any = None) -> None:
        # save() retires the old default itself: the form must not refuse a new default.
        exclude = set(exclude or ()) | {"is_default"}
        super().validate_constraints(exclude=exclude)

    def save(self, *args: Any, **kwargs: Any) -> None:
        with transaction.atomic():
            if self.is_default:  # one default: saving a new one retires the old
                RuntimeProfile.objects.filter(is_default=True).exclude(pk=self.pk).update(is_default=False)
            super().save(*args, **kwargs)

    def overrides(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.TUNABLES if getattr(self, name) is not None}
        if self.default_language:
            values["default_language"] = self.default_language
        if self.endpointing_eagerness:
            values["endpointing_eagerness"] = self.endpointing_eagerness
        terms = vocabulary_terms(self.vocabulary)
        if terms:
            values["vocabulary"] = tuple(terms)
        return values


def vocabulary_terms(text: str) -> list[str]:
    """A profile's vocabulary as its terms: one per line, whitespace tidied, blank lines skipped."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def checked_vocabulary(text: str) -> list[str]:
    """The terms of a vocabulary an admin typed, or a ValueError saying what is wrong."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_KEYTERMS:
        raise ValueError(f"at most {MAX_KEYTERMS} terms (one per line); there are {len(lines)}")
    terms = []
    for number, line in enumerate(lines, start=1):
        try:
            term = clean_keyterm(line.replace("\t", " "))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if len(term) > MAX_KEYTERM_CHARS:
            raise ValueError(f"line {number} is longer than {MAX_KEYTERM_CHARS} characters: {term[:20]}…")
        terms.append(term)
    return terms


class Refinement(models.Model):
    """A final re-transcribed from its stored audio by a Celery worker with a larger
    model, kept beside the streamed text with the word-level difference. One row per
    (utterance, model): the task is idempotent on that key."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    utterance = models.ForeignKey(Utterance, on_delete=models.CASCADE, related_name="refinements")
    model = models.CharField(max_length=256)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    language = models.CharField(max_length=16, blank=True)
    text = models.TextField(blank=True)
    words = models.JSONField(default=list, help_text="[{word, start_ms, end_ms, confidence}], relative to the utterance.")
    diff = models.JSONField(default=list, help_text="[{op, live, refined}]: equal, replace, delete, insert.")
    word_error_rate = models.FloatField(null=True, blank=True, help_text="Live text against the refined text.")
    differs = models.BooleanField(null=True, blank=True, db_index=True)
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker started it.")
    task_id = models.CharField(max_length=255, blank=True)
    error = models.TextField(blank=True)
    processing_ms = models.PositiveIntegerField(null=True, blank=True)
    real_time_factor = models.FloatField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["utterance", "model"], name="one_refinement_per_model")]
        ordering = ["-queued_at"]
        verbose_name = "re-transcription"
        # Queueing costs worker time: granted apart from viewing.
        permissions = [("queue_refinement", "Can queue re-transcriptions")]

    def __str__(self) -> str:
        return f"{self.model} refinement of {self.utterance.utterance_id} ({self.status})"

    @property
    def progress(self) -> str:
        return f"{self.chunks_done}/{self.chunks_total}" if self.chunks_total else "-"


class Report(models.Model):
    """Service figures over a time range, built by Celery (beat or an admin request)."""

    class Kind(models.TextChoices):
        SCHEDULED = "scheduled"
        MANUAL = "manual"

    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.MANUAL)
    period_start = models.DateTimeField(db_index=True)
    period_end = models.DateTimeField()
    built_at = models.DateTimeField()
    build_ms = models.PositiveIntegerField(default=0)
    sessions = models.PositiveIntegerField(default=0)
    utterances = models.PositiveIntegerField(default=0)
    audio_hours = models.FloatField(default=0.0)
    partial_latency_ms = models.JSONField(default=dict, help_text="First partial latency: {p50, p95, p99}.")
    final_latency_ms = models.JSONField(default=dict, help_text="Final latency: {p50, p95, p99}.")
    real_time_factor = models.FloatField(null=True, blank=True, help_text="Live decode time / audio time.")
    refined_real_time_factor = models.FloatField(null=True, blank=True)
    errors_by_category = models.JSONField(default=dict)
    refined_utterances = models.PositiveIntegerField(default=0)
    disagreement_rate = models.FloatField(null=True, blank=True,
                                          help_text="Share of refined utterances whose live text differs.")
    mean_word_error_rate = models.FloatField(null=True, blank=True, help_text="Live against refined, mean.")
    hourly = models.JSONField(default=list, help_text="Utterances and audio seconds per hour of day (UTC), 24 rows.")

    class Meta:
        ordering = ["-period_start", "-built_at"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "period_start", "period_end"], name="one_report_per_period"),
        ]
        permissions = [("build_report", "Can build reports")]

    def __str__(self) -> str:
        return f"{self.kind} report {self.period_start:%Y-%m-%d %H:%M} - {self.period_end:%Y-%m-%d %H:%M}"

    @property
    def busiest_hours(self) -> list[dict]:
        return sorted((h for h in self.hourly if h["utterances"]), key=lambda h: -h["utterances"])[:3]


class ApiKey(models.Model):
    """A backend's credential for /ws/transcribe. Only a hash is kept: the key itself
    is shown once, when the admin creates it (stt/auth.py)."""

    name = models.CharField(max_length=128, help_text="Who uses it, e.g. the voice-assistant backend.")
    prefix = models.CharField(max_length=16, editable=False, help_text="The key's first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    max_concurrent_sessions = models.PositiveIntegerField(
        null=True, blank=True, validators=_range(1, 100000),
        help_text="Open sessions at once with this key, per server process [AUTH_MAX_SESSIONS_PER_KEY].")
    max_messages_per_second = models.PositiveIntegerField(
        null=True, blank=True, validators=_range(1, 100000),
        help_text="Messages (audio frames and control) per second over all its sessions, per server "
                  "process [AUTH_MAX_MESSAGES_PER_SECOND].")

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…{', revoked' if self.revoked_at else ''})"

    @property
    def active(self) -> bool:
        return self.revoked_at is None
