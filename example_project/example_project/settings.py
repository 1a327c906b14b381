"""Settings for the django-events example shop (local demo only; not for production)."""

import os
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

# Demo only: a fixed key and DEBUG on. Never deploy this project as-is.
SECRET_KEY = "django-insecure-django-events-example-shop"  # noqa: S105
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_events",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The embedded SQLite default (EXAMPLE_DATABASE puts the file elsewhere). IMMEDIATE
# transactions take the write lock when they begin, so concurrent writers (a web request
# and `consume_events`) wait on the busy timeout instead of failing with "database is
# locked" when a read transaction would have to upgrade to a write.
# EXAMPLE_DATABASE=postgresql://USER@HOST:PORT/NAME uses PostgreSQL instead.
_DATABASE = os.environ.get("EXAMPLE_DATABASE", "")
if _DATABASE.startswith(("postgres://", "postgresql://")):
    _url = urlsplit(_DATABASE)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _url.path.lstrip("/"),
            "USER": _url.username or "postgres",
            "PASSWORD": _url.password or "",
            "HOST": _url.hostname or "127.0.0.1",
            "PORT": str(_url.port or 5432),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _DATABASE or BASE_DIR / "db.sqlite3",
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

# django-events: the log transport, the database as the queue (each event is one row of
# the event log, which every consumer group reads through a cursor of its own), and three
# consumer groups for the `order.placed` event. The CRM group gives up after three
# attempts, retrying immediately, so the demo reaches its dead letter within one run.
DJANGO_EVENTS = {
    # This project's name among the services sharing the event store (the warehouse,
    # ../warehouse_project, is the other).
    "SERVICE": "shop",
    "TRANSPORTS": {
        "default": {
            "BACKEND": "django_events.transports.log.LogTransport",
            "OPTIONS": {},
        },
    },
    "GROUPS": {
        "emails": {},
        "analytics": {},
        "crm": {"MAX_ATTEMPTS": 3, "BACKOFF_BASE": 0},
    },
    # The committed event contracts: `manage.py events_schema` writes them,
    # `events_schema --check` (and system check W021) compares against them.
    "SCHEMA_DIR": BASE_DIR / "events",
}

# The first-generation database transport (an outbox the relay moves, a delivery row per
# event and group): `DJANGO_EVENTS_TRANSPORT=database python manage.py demo`.
if os.environ.get("DJANGO_EVENTS_TRANSPORT") == "database":
    DJANGO_EVENTS["TRANSPORTS"]["default"] = {
        "BACKEND": "django_events.transports.database.DatabaseTransport",
        "OPTIONS": {},
    }

# Level 1, by settings alone: `DJANGO_EVENTS_TRANSPORT=redis python manage.py demo` runs the
# same shop on Redis Streams (DJANGO_EVENTS_REDIS_URL, default the local Redis). No handler
# or publishing code changes; `manage.py setup_events` creates the streams ahead of time.
if os.environ.get("DJANGO_EVENTS_TRANSPORT") == "redis":
    DJANGO_EVENTS["TRANSPORTS"]["default"] = {
        "BACKEND": "django_events.transports.redis.RedisStreamsTransport",
        "OPTIONS": {
            "url": os.environ.get("DJANGO_EVENTS_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "prefix": "example-shop",
        },
    }

# Level 3, RabbitMQ, by settings alone: `DJANGO_EVENTS_TRANSPORT=rabbitmq python manage.py demo`
# (DJANGO_EVENTS_RABBITMQ_URL, default guest on the local broker). `setup_events` declares
# the exchange, the queues and their bindings.
if os.environ.get("DJANGO_EVENTS_TRANSPORT") == "rabbitmq":
    DJANGO_EVENTS["TRANSPORTS"]["default"] = {
        "BACKEND": "django_events.transports.rabbitmq.RabbitMQTransport",
        "OPTIONS": {
            "url": os.environ.get(
                "DJANGO_EVENTS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"
            ),
            "prefix": os.environ.get("EXAMPLE_RABBITMQ_PREFIX", "example-shop"),
        },
    }

# The same demo on SNS + SQS, by settings alone: start a local server (`moto_server -p 5000`)
# and set EXAMPLE_SQS_ENDPOINT=http://127.0.0.1:5000. Credentials come from boto3's usual
# chain (for moto, any: AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing).
if os.environ.get("EXAMPLE_SQS_ENDPOINT"):
    DJANGO_EVENTS["TRANSPORTS"]["default"] = {
        "BACKEND": "django_events.transports.sqs.SnsSqsTransport",
        "OPTIONS": {
            "endpoint_url": os.environ["EXAMPLE_SQS_ENDPOINT"],
            "region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "prefix": os.environ.get("EXAMPLE_SQS_PREFIX", "example-shop-"),
        },
    }

# The demo's second service, the warehouse (../warehouse_project), consumes the shop's
# events from its own Django project, on every transport: the database (Level 0), Redis
# (Level 1, the `<prefix>:subscriptions` hash), SNS + SQS (Level 2, its own queue
# subscribed to the shop's topic by its own `setup_events`) and RabbitMQ (its own queues
# bound to the exchange). EXAMPLE_WAREHOUSE=0 leaves it out.
EXAMPLE_WAREHOUSE = os.environ.get("EXAMPLE_WAREHOUSE", "1") == "1"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "simple": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            # stdout, so log lines interleave in order with `manage.py demo`'s report.
            "stream": "ext://sys.stdout",
            "formatter": "simple",
        },
    },
    "loggers": {
        "django_events": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "shop": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
