"""Sphinx configuration for the django-events documentation."""

from __future__ import annotations

from importlib import metadata

project = "django-events"
author = "django-events contributors"
copyright = "2026, django-events contributors"

try:
    release = metadata.version("django-events-outbox")
except metadata.PackageNotFoundError:  # building docs without the package installed
    release = "0.1.0"
version = ".".join(release.split(".")[:2])

extensions = ["myst_parser"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = f"django-events {release}"
