from django_events import handler


@handler("bench.noop", group="bench")
def noop(event):
    """Does nothing: the benchmark measures the machinery around it."""
