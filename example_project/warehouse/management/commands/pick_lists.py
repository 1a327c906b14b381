"""`python manage.py pick_lists --settings warehouse_project.settings`: what `picking` did."""

from django.core.management.base import BaseCommand, CommandParser

from warehouse.models import PickList


class Command(BaseCommand):
    help = "Print the warehouse's pick lists (what the group `picking` did); --clear empties them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--clear", action="store_true", help="Delete every pick list (the demo's reset)."
        )

    def handle(self, *args: object, **options: object) -> None:
        if options["clear"]:
            PickList.objects.all().delete()
            return
        picks = PickList.objects.all()
        self.stdout.write(
            f"  {self.style.MIGRATE_LABEL('picking')} (warehouse): {picks.count()} pick list(s)"
        )
        for pick in picks:
            self.stdout.write(
                f"    order #{pick.order_id:<3} {pick.kind:<9}"
                f" from order.placed v{pick.event_version}, event {pick.event_id}"
            )
