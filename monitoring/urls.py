from django.urls import path

from monitoring import views

urlpatterns = [
    path("", views.index, name="index"),
    path("health", views.health, name="health"),
    path("stats", views.stats, name="stats"),
]
