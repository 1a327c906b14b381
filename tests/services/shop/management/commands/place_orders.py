from django.core.management.base import BaseCommand
from django.db import transaction

from django_events import publish


class Command(BaseCommand):
    help = "Publish COUNT events numbered from --start, a few per transaction, then exit."

    def add_arguments(self, parser):
        parser.add_argument("count", type=int)
        parser.add_argument("--start", type=int, default=0)
        parser.add_argument("--type", default="order.placed")
        parser.add_argument("--per-transaction", type=int, default=10)

    def handle(self, *args, **options):
        start, end, step = options["start"], options["start"] + options["count"], 0
        while start + step < end:
            with transaction.atomic():
                for n in range(start + step, min(start + step + options["per_transaction"], end)):
                    publish(options["type"], {"n": n}, key=f"order-{n}")
            step += options["per_transaction"]
