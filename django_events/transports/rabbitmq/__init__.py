"""Level 3: RabbitMQ (docs/transport-rabbitmq.md). The backend's path is
``django_events.transports.rabbitmq.RabbitMQTransport``; beside it, the connections
(``link``), the wire form of a message (``messages``) and the subscription store
(``subscriptions``)."""

from .transport import RabbitMQTransport

__all__ = ["RabbitMQTransport"]
