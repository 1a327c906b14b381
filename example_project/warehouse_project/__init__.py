"""The warehouse service: a second Django project next to the shop (see settings.py)."""
