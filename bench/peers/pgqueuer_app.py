"""PgQueuer with its psycopg driver: one no-op entrypoint, a QueueManager in drain mode."""

from __future__ import annotations

import asyncio
import json

from bench import pg


async def _connect(db: str):  # type: ignore[no-untyped-def]
    import psycopg

    return await psycopg.AsyncConnection.connect(pg.dsn(db), autocommit=True)


def install(db: str) -> None:
    """Create the schema with PgQueuer's own API (what ``pgq install`` runs)."""
    from pgqueuer import Queries

    async def main() -> None:
        conn = await _connect(db)
        try:
            await Queries.from_psycopg_connection(conn).install()
        finally:
            await conn.close()

    asyncio.run(main())


def defer(db: str, n: int, chunk: int = 1000) -> None:
    from pgqueuer import Queries

    async def main() -> None:
        conn = await _connect(db)
        try:
            q = Queries.from_psycopg_connection(conn)
            for start in range(0, n, chunk):
                size = min(chunk, n - start)
                payloads = [
                    json.dumps({**pg.PAYLOAD, "order_id": start + i}).encode() for i in range(size)
                ]
                await q.enqueue(["noop"] * size, payloads, [0] * size)
        finally:
            await conn.close()

    asyncio.run(main())


def work(db: str, batch_size: int) -> None:
    from pgqueuer import Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    async def main() -> None:
        conn = await _connect(db)
        qm = QueueManager(Queries.from_psycopg_connection(conn))

        @qm.entrypoint("noop")
        async def noop(job: object) -> None:
            """No-op."""

        try:
            await qm.run(batch_size=batch_size, mode=QueueExecutionMode.drain)
        finally:
            await conn.close()

    asyncio.run(main())
