from django.contrib import admin

from shop.models import ConfirmationEmail, CrmContact, Order, SalesFigure


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "customer_email", "total", "kind", "created_at")
    list_filter = ("kind",)
    search_fields = ("customer_email",)


@admin.register(ConfirmationEmail)
class ConfirmationEmailAdmin(admin.ModelAdmin):
    list_display = ("id", "order", "event_id", "sent_at")
    list_select_related = ("order",)
    search_fields = ("event_id",)


@admin.register(SalesFigure)
class SalesFigureAdmin(admin.ModelAdmin):
    list_display = ("id", "order", "event_id", "total")
    list_select_related = ("order",)
    search_fields = ("event_id",)


@admin.register(CrmContact)
class CrmContactAdmin(admin.ModelAdmin):
    list_display = ("id", "email", "event_id", "created_at")
    search_fields = ("email", "event_id")
