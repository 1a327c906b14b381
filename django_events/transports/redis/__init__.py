"""Level 1: Redis Streams (docs/transport-redis.md). The backend keeps its path,
``django_events.transports.redis.RedisStreamsTransport``; the modules beside it are its
scripts (``lua``), its recovery from a Redis that lost data (``recovery``) and its
subscription store (``subscriptions``)."""

from .transport import CONSUMER_GROUP, RedisStreamsTransport

__all__ = ["CONSUMER_GROUP", "RedisStreamsTransport"]
