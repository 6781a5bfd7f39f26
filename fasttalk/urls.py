from django.contrib import admin
from django.urls import include, path

from stt.views import issue_token

urlpatterns = [
    path("admin/", admin.site.urls),
    path("auth/token", issue_token, name="issue-token"),
    path("", include("monitoring.urls")),
]
