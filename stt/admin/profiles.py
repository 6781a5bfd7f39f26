"""Runtime profiles: the tunables admins change while the service runs."""

from __future__ import annotations


from django.contrib import admin
from django.utils.html import format_html_join

from stt.models import RuntimeProfile
from stt.runtime_config import RuntimeValues


@admin.register(RuntimeProfile)
class RuntimeProfileAdmin(admin.ModelAdmin):
    list_display = ("name", "is_default", "description", "vad_threshold", "partial_chunk_duration",
                    "final_chunk_duration", "endpointing_eagerness", "final_beam_size", "updated_at")
    list_editable = ()
    search_fields = ("name", "description")
    readonly_fields = ("effective_values", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "is_default")}),
        ("Voice activity detection", {"fields": ("vad_threshold", "vad_min_speech_ms", "vad_speech_pad_ms")}),
        ("Partial and final triggers", {"fields": ("min_audio_length", "partial_chunk_duration",
                                                   "final_chunk_duration", "endpointing_eagerness",
                                                   "max_silence_duration", "max_utterance_duration")}),
        ("Decoding", {"fields": ("partial_beam_size", "final_beam_size", "default_language")}),
        ("Vocabulary", {"fields": ("vocabulary",),
                        "description": "Keyterms that bias every partial and final of the profile's sessions "
                                       "(Whisper's prompt): the session's own keyterms first, then these, as many "
                                       "as fit in STT_PROMPT_MAX_TOKENS tokens."}),
        ("Limits and error thresholds", {"fields": ("max_connections", "max_session_errors",
                                                    "transcription_failure_threshold", "gpu_failure_threshold")}),
        ("In force", {"fields": ("effective_values", "updated_at"),
                      "description": "New sessions pick up a saved change within "
                                     "RUNTIME_CONFIG_REFRESH_SECONDS, in every server process; running "
                                     "sessions pick up the vocabulary (only) within the same time."}),
    )

    @admin.display(description="effective values (empty fields inherit the server settings)")
    def effective_values(self, obj: RuntimeProfile) -> str:
        base = RuntimeValues.from_settings()
        values = base.overlaid(obj.name, obj.overrides()) if obj.pk else base
        return format_html_join(
            "", "<div><code>{}</code> = {}{}</div>",
            ((key, value, "" if obj.pk and key in obj.overrides() else " (server setting)")
             for key, value in values.as_dict().items() if key != "profile"),
        )


# --- re-transcriptions and reports (Celery) ---------------------------------------------
