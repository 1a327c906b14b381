"""The shop's ``place_orders``, for the warehouse to publish its own events (``--type``)."""

from tests.services.shop.management.commands.place_orders import Command

__all__ = ["Command"]
