from django.contrib import admin
from django.urls import path

from django_events.prometheus import metrics_view

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("place/", views.place),
    path("metrics/", metrics_view),
]
