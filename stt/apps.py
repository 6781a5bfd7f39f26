from django.apps import AppConfig


class SttConfig(AppConfig):
    name = "stt"
    verbose_name = "Speech to text"
    default_auto_field = "django.db.models.BigAutoField"
