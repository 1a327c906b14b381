from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from shop.forms import OrderForm
from shop.models import Order
from shop.services import place_order


@require_http_methods(["GET", "POST"])
def order_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = OrderForm(request.POST)
        if form.is_valid():
            order = place_order(
                form.cleaned_data["email"], form.cleaned_data["total"], form.cleaned_data["kind"]
            )
            messages.success(
                request,
                f"Order #{order.pk} placed and order.placed published. "
                "Run `python manage.py consume_events` to process it.",
            )
            return redirect("order-list")
    else:
        form = OrderForm()

    orders = Order.objects.prefetch_related("confirmation_emails", "sales_figures")[:50]
    return render(request, "shop/order_list.html", {"form": form, "orders": orders})
