from django.contrib import admin
from django.urls import path

from shop import views

urlpatterns = [
    path("", views.order_list, name="order-list"),
    path("admin/", admin.site.urls),
]
