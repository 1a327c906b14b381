"""`python manage.py demo`: a repeatable tour of django-events in the example shop."""

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction
from django.db.models import Sum

from django_events import publish
from django_events.models import (
    DeadLetter,
    Delivery,
    EventRecord,
    GroupCursor,
    InboxRecord,
    Lease,
    OutboxMessage,
    StreamCheckpoint,
    Subscription,
)
from django_events.transports import transports
from shop.contracts import OrderPlacedV1
from shop.models import ConfirmationEmail, CrmContact, Order, SalesFigure
from shop.services import place_order

LEGACY_ORDER = ("dave@example.com", "15.00")
"""Placed by the previous release, which published `order.placed` version 1."""
DEMO_ORDERS = [
    ("alice@example.com", "19.90", Order.Kind.RETAIL),
    ("bob@example.com", "42.00", Order.Kind.RETAIL),
    ("carol@example.com", "7.50", Order.Kind.RETAIL),
    ("buyer@wholesale.example", "1250.00", Order.Kind.WHOLESALE),
]

# Children before parents, so protected foreign keys never block the reset.
# Subscriptions too: each service declares its own again below, as its deploy would.
EVENT_MODELS = [
    DeadLetter,
    InboxRecord,
    Delivery,
    Lease,
    GroupCursor,
    EventRecord,
    OutboxMessage,
    StreamCheckpoint,
    Subscription,
]
SHOP_MODELS = [ConfirmationEmail, SalesFigure, CrmContact, Order]

WAREHOUSE_SETTINGS = "warehouse_project.settings"
"""The second service: its own Django project, run as its own processes (manage.py is shared)."""
MANAGE_PY = Path(__file__).resolve().parents[3] / "manage.py"

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"  # noqa: S105 - local demo only


class Command(BaseCommand):
    help = (
        "Reset the example shop, deploy the warehouse service next to it, place five orders "
        "(one as a version-1 event), consume their events once in both services and report "
        "what each consumer group did, including the dead letter."
    )

    def handle(self, *args: object, **options: object) -> None:
        self.heading("1. Database")
        call_command("migrate", verbosity=0, interactive=False)
        self.reset()
        self.stdout.write("  migrated, and emptied the shop and django-events tables")
        # Creates the topic and queues on SNS/SQS; the database transport needs nothing.
        call_command("setup_events", stdout=self.stdout)

        self.heading("2. Deploy the warehouse service (its own Django project, same database)")
        self.deploy_warehouse()

        self.heading("3. Place orders (order + order.placed event, one transaction each)")
        for email, total, kind in DEMO_ORDERS:
            order = place_order(email, total, kind)
            self.stdout.write(
                f"  order #{order.pk:<3} {order.kind:<9} {order.total:>8}"
                f"  {order.customer_email:<24} -> published order.placed v2, key order-{order.pk}"
            )
        order = self.place_legacy_order(*LEGACY_ORDER)
        self.stdout.write(
            f"  order #{order.pk:<3} {order.kind:<9} {order.total:>8}"
            f"  {order.customer_email:<24} -> order.placed v1, as the previous release published"
        )

        self.heading("4. consume_events --once, in each service")
        self.consume()

        self.heading("5. What each consumer group did")
        self.report_emails()
        self.report_analytics()
        self.report_crm()
        self.report_warehouse()

        self.heading("6. Dead letters")
        self.report_dead_letters()

        self.heading("7. Subscriptions, by service (events_status, from the shop)")
        self.report_subscriptions()

        self.heading("8. Admin")
        self.ensure_admin()

        self.heading("9. Event contracts (events_schema --check)")
        self.stdout.write(
            "  Every shop handler received OrderPlaced v2: the v1 event was upcast on its way"
            " (the warehouse reads each version's JSON as published)."
        )
        call_command("events_schema", check=True, stdout=self.stdout, stderr=self.stderr)

    # ------------------------------------------------------------------ steps

    def reset(self) -> None:
        with transaction.atomic():
            for model in [*EVENT_MODELS, *SHOP_MODELS]:
                model.objects.all().delete()
        flush = getattr(transports["default"], "flush", None)
        if flush is not None:  # a broker (Redis): forget the previous run's entries too
            flush()

    def place_legacy_order(self, email: str, total: str) -> Order:
        with transaction.atomic():
            order = Order.objects.create(customer_email=email, total=Decimal(total))
            legacy = OrderPlacedV1(
                order_id=order.pk, email=email, total=order.total, kind=order.kind
            )
            publish(legacy, key=f"order-{order.pk}", allow_old_version=True)
        return order

    def deploy_warehouse(self) -> None:
        """The warehouse's deploy declares its subscription (`picking` on `order.placed`)
        before the shop publishes, the deploy rule of docs/services.md: `migrate` on the
        database and Redis, `setup_events` on SNS + SQS (it subscribes the warehouse's own
        queue to the shop's topic). From then on every order reaches `picking`."""
        if not settings.EXAMPLE_WAREHOUSE:
            self.stdout.write(self.style.WARNING("  skipped: EXAMPLE_WAREHOUSE is 0"))
            return
        self.warehouse("migrate", "--no-input")
        self.warehouse("setup_events")
        self.warehouse("pick_lists", "--clear")
        self.stdout.write("  emptied the warehouse's pick lists")

    def warehouse(self, *args: str) -> None:
        """Run one management command of the warehouse project, in its own process."""
        self.stdout.flush()
        done = subprocess.run(
            [sys.executable, str(MANAGE_PY), *args, "--settings", WAREHOUSE_SETTINGS],
            cwd=MANAGE_PY.parent,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": WAREHOUSE_SETTINGS},
            capture_output=True,
            text=True,
            check=False,
        )
        self.stdout.write(done.stdout, ending="")
        if done.returncode:
            self.stderr.write(done.stderr)
            raise SystemExit(f"warehouse: {' '.join(args)} exited {done.returncode}")

    def consume(self) -> None:
        if settings.EXAMPLE_WAREHOUSE:
            # The warehouse's worker runs first: on the log transport it reads the orders
            # from the event log through `picking`'s cursor (on the database transport its
            # relay moves the shop's outbox and fans each order out to every group).
            self.stdout.write(self.style.MIGRATE_LABEL("  warehouse:"))
            self.warehouse("consume_events", "--once")
            self.stdout.write(self.style.MIGRATE_LABEL("  shop:"))
        # The crm group retries immediately (BACKOFF_BASE 0) and gives up after
        # MAX_ATTEMPTS. One `--once` pass is meant to take the wholesale order
        # all the way to the dead letters; should a pass make only one attempt,
        # a few more passes (at most MAX_ATTEMPTS) get it there. Extra passes
        # find nothing due and do nothing.
        crm = settings.DJANGO_EVENTS["GROUPS"]["crm"]
        max_passes = int(crm.get("MAX_ATTEMPTS", 1))
        for _ in range(max_passes):
            call_command("consume_events", once=True, stdout=self.stdout, stderr=self.stderr)
            if DeadLetter.objects.exists():
                break

    def report_emails(self) -> None:
        emails = ConfirmationEmail.objects.select_related("order")
        self.group_title("emails", f"{emails.count()} confirmation email(s) sent")
        for email in emails:
            self.stdout.write(
                f"    order #{email.order_id:<3} to {email.order.customer_email:<24}"
                f" idempotency key {email.event_id}"
            )

    def report_analytics(self) -> None:
        figures = SalesFigure.objects.all()
        revenue = figures.aggregate(total=Sum("total"))["total"] or Decimal("0.00")
        self.group_title("analytics", f"{figures.count()} sale(s) recorded, revenue {revenue:.2f}")
        for figure in figures:
            self.stdout.write(f"    order #{figure.order_id:<3} {figure.total:>8}")

    def report_crm(self) -> None:
        contacts = CrmContact.objects.all()
        self.group_title("crm", f"{contacts.count()} contact(s) created")
        for contact in contacts:
            self.stdout.write(f"    {contact.email}")
        wholesale = Order.objects.filter(kind=Order.Kind.WHOLESALE).count()
        if wholesale:
            self.stdout.write(
                self.style.WARNING(
                    f"    {wholesale} wholesale order(s) rejected by the CRM: see the dead letters"
                )
            )

    def report_warehouse(self) -> None:
        if settings.EXAMPLE_WAREHOUSE:
            self.warehouse("pick_lists")
        else:
            self.group_title("picking", "the warehouse service did not run (see step 2)")

    def report_subscriptions(self) -> None:
        call_command("events_status", stdout=self.stdout, stderr=self.stderr)

    def report_dead_letters(self) -> None:
        dead_letters = DeadLetter.objects.select_related("event").order_by("pk")
        count = dead_letters.count()
        if not count:
            self.stdout.write(self.style.SUCCESS("  none"))
            return
        self.stdout.write(self.style.ERROR(f"  {count} dead letter(s)"))
        for dead in dead_letters:
            self.stdout.write(
                f"  - group {dead.group}, handler {dead.handler}\n"
                f"    event {dead.event.type} (key {dead.event.key})"
                f" gave up after {dead.attempts} attempt(s)\n"
                f"    {dead.error_class}: {dead.error_message}"
            )
        self.stdout.write(
            "  The other groups were not held up: emails and analytics processed the same event."
        )

    def ensure_admin(self) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(username=ADMIN_USERNAME).exists():
            self.stdout.write(f"  superuser '{ADMIN_USERNAME}' already exists")
        else:
            user_model.objects.create_superuser(ADMIN_USERNAME, "admin@example.com", ADMIN_PASSWORD)
            self.stdout.write(
                f"  created superuser '{ADMIN_USERNAME}' / password '{ADMIN_PASSWORD}'"
                " (for this local demo only)"
            )
        what = "the orders and what each group wrote"
        if admin.site.is_registered(DeadLetter):
            what += ", the events and the dead letters"
        self.stdout.write(f"  Browse {what} in the admin:")
        self.stdout.write(
            self.style.SUCCESS("    cd example_project && ../.venv/bin/python manage.py runserver")
        )
        self.stdout.write(
            "  then open http://127.0.0.1:8000/admin/ (log in as admin / admin),"
            " or http://127.0.0.1:8000/ to place orders."
        )
        if admin.site.is_registered(DeadLetter) and DeadLetter.objects.exists():
            self.stdout.write(
                "  Triage the dead letter there: Events > Failure groups, then retry or discard it."
            )

    # --------------------------------------------------------------- helpers

    def heading(self, text: str) -> None:
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(text))

    def group_title(self, group: str, summary: str) -> None:
        self.stdout.write(f"  {self.style.MIGRATE_LABEL(group)}: {summary}")
