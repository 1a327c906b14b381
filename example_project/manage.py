#!/usr/bin/env python
"""Django's command-line utility for the django-events example shop."""

import os
import sys
from pathlib import Path

# django-events is normally installed (editable) into the repo's .venv. As a
# fallback, make the repository root importable so `import django_events` works
# when running this project straight from a checkout.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    try:
        from django.core.management import execute_from_command_line
    except ImportError as exc:
        raise ImportError(
            "Couldn't import Django. Run `make demo` from the repository root, or "
            "activate the virtualenv (../.venv/bin/activate) first."
        ) from exc
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
