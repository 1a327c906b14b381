"""Views the tests call through Django's test client."""

from __future__ import annotations

import json

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from django_events import publish


@csrf_exempt
def place(request: HttpRequest) -> HttpResponse:
    """Publish ``test.happened`` with the posted data, in the request's transaction."""
    with transaction.atomic():
        event = publish("test.happened", json.loads(request.body))
    return HttpResponse(str(event.id))
