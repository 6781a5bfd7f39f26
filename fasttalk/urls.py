from django.contrib import admin
from django.urls import include, path

from fasttalk.sources import service_sources
from monitoring.urls import service_patterns
from stt.openai_api.urls import api_patterns
from stt.services import process_file_services
from stt.views import demo, demo_token, issue_token

urlpatterns = [
    path("admin/", admin.site.urls),
    path("auth/token", issue_token, name="issue-token"),
    path("demo/", demo, name="demo"),
    path("demo/token", demo_token, name="demo-token"),
    path("v1/", include(api_patterns(process_file_services))),
    path("", include(service_patterns(service_sources()))),
]
