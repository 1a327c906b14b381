"""Logged-in admin clients for the admin tests."""

from __future__ import annotations

from django.contrib.auth.models import Permission, User
from django.test import Client


def staff_client(
    *perms: str, name: str = "op", client: Client | None = None, is_staff: bool = True
) -> Client:
    """``client`` (a new one by default) logged in as a user ``name`` who holds exactly
    these ``django_events`` permissions, staff unless ``is_staff`` is False."""
    user = User.objects.create_user(name, password="pw", is_staff=is_staff)  # noqa: S106
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_events", codename__in=perms)
    )
    client = client or Client()
    client.force_login(user)
    return client
