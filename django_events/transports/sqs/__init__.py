"""Level 2: SNS + SQS (docs/transport-sqs.md). The backend keeps its path,
``django_events.transports.sqs.SnsSqsTransport``; the modules beside it provision topics,
queues and subscriptions (``setup``) and keep the subscription store in queue tags
(``subscriptions``)."""

from .transport import SnsSqsTransport, message_group_id

__all__ = ["SnsSqsTransport", "message_group_id"]
