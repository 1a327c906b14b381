"""Settings of the warehouse service: a second Django project that consumes the shop's events.

Its own apps and its own handlers (`warehouse/events.py`, group `picking`), but the shop's
database and transport: at Level 0 services that share the database see each other's
subscriptions (docs/services.md). Run its commands from this directory with
`--settings warehouse_project.settings` after the command, e.g. `python manage.py
consume_events --settings warehouse_project.settings`. Local demo only, like the shop.
"""

from example_project import settings as shop

# The shop's database (SQLite file, or EXAMPLE_DATABASE) and the switch that says whether
# the demo runs the warehouse on the shop's transport.
DATABASES = shop.DATABASES
EXAMPLE_WAREHOUSE = shop.EXAMPLE_WAREHOUSE
DEFAULT_AUTO_FIELD = shop.DEFAULT_AUTO_FIELD
USE_TZ = True

SECRET_KEY = "django-insecure-django-events-example-warehouse"  # noqa: S105 - demo only
DEBUG = True
INSTALLED_APPS = ["django_events", "warehouse"]
TIME_ZONE = "UTC"

DJANGO_EVENTS = {
    "SERVICE": "warehouse",
    # The same transport as the shop (the database, Redis or SNS + SQS, by the same
    # environment variables): its events are what the warehouse consumes.
    "TRANSPORTS": shop.DJANGO_EVENTS["TRANSPORTS"],
    "GROUPS": {"picking": {}},
}

LOGGING = {
    **shop.LOGGING,
    "loggers": {
        "django_events": shop.LOGGING["loggers"]["django_events"],
        "warehouse": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
