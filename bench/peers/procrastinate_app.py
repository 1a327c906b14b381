"""procrastinate, as its docs set it up: a psycopg connector, one no-op task, its worker."""

from __future__ import annotations

from bench import pg


def make_app(db: str):  # type: ignore[no-untyped-def]
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=pg.dsn(db)))

    @app.task(name="noop", queue="bench")
    async def noop(**kwargs: object) -> None:
        """No-op, async: procrastinate's cheapest kind of task."""

    return app


def install(db: str) -> None:
    """Create the schema with procrastinate's own API."""
    app = make_app(db)
    with app.open():
        app.schema_manager.apply_schema()


def defer(db: str, n: int, chunk: int = 1000) -> None:
    app = make_app(db)
    with app.open():
        task = app.tasks["noop"]
        for start in range(0, n, chunk):
            task.batch_defer(
                *({"n": i, "payload": pg.PAYLOAD} for i in range(start, min(n, start + chunk)))
            )


def work(db: str) -> None:
    """Run a worker until the queue is empty (``wait=False``), concurrency 1 (the default)."""
    app = make_app(db)
    app.run_worker(queues=["bench"], wait=False, concurrency=1, install_signal_handlers=False)
