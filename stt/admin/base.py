"""What every history admin shares; the site's titles."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest



admin.site.site_header = "Fasttalk STT administration"
admin.site.site_title = "Fasttalk STT"
admin.site.index_title = "Speech-to-text service"



class ReadOnlyAdmin(admin.ModelAdmin):
    """What happened is not edited; it may be deleted by staff allowed to."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
