from django.apps import AppConfig


class SttConfig(AppConfig):
    name = "stt"
    verbose_name = "Speech to text"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from stt.models import RuntimeProfile, Utterance
        from stt.signals import profile_changed, utterance_deleted

        post_save.connect(profile_changed, sender=RuntimeProfile, dispatch_uid="stt-profile-saved")
        post_delete.connect(profile_changed, sender=RuntimeProfile, dispatch_uid="stt-profile-deleted")
        post_delete.connect(utterance_deleted, sender=Utterance, dispatch_uid="stt-utterance-deleted")
