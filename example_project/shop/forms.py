from decimal import Decimal

from django import forms

from shop.models import Order


class OrderForm(forms.Form):
    email = forms.EmailField(initial="alice@example.com")
    total = forms.DecimalField(
        max_digits=10, decimal_places=2, min_value=Decimal("0.01"), initial=Decimal("19.90")
    )
    kind = forms.ChoiceField(choices=Order.Kind.choices, initial=Order.Kind.RETAIL)
