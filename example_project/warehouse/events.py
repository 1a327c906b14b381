"""The warehouse's consumer of the shop's `order.placed`, in its own group `picking`.

Another team's code: it reads the event's JSON (`order_id` and `kind` are in every
version the shop has published) instead of importing the shop's typed contracts. The
warehouse declares this subscription when it runs `migrate`, and from then on every
`order.placed` reaches `picking`, read from the event log through the group's own cursor
(on the database transport, whichever service's relay moves the shop's outbox;
docs/services.md).
"""

import logging

from django_events import handler
from warehouse.models import PickList

logger = logging.getLogger(__name__)


@handler("order.placed", group="picking")
def make_pick_list(event) -> None:
    _, created = PickList.objects.get_or_create(
        event_id=event.id,
        defaults={
            "order_id": event.data["order_id"],
            "kind": event.data["kind"],
            "event_version": event.version,
        },
    )
    if created:
        logger.info("Pick list for order #%s (event %s)", event.data["order_id"], event.id)
