"""A small TCP fault proxy between the workers and PostgreSQL, for F7 (127.0.0.1 only).

Modes, switched at any time with ``set_mode``:

``pass``      forward both ways.
``drop``      close every open connection and refuse new ones (accept, then close).
``stall``     half-open: every connection open now, and every new one, stops forwarding
              for good, without closing. Like a peer that vanished behind a middlebox,
              the client's socket stays open and nothing ever answers; only a client-side
              timeout gets it out. A stalled connection stays dead after the fault ends.
``delay``     forward each chunk after ``delay_ms`` of latency (order kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


class _Conn:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.stalled = False

    def abort(self) -> None:
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.delay_ms = 0
        self.port = 0
        self.accepted = 0
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._server: Any = None

    # -- control, from any thread ---------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def set_mode(self, mode: str, delay_ms: int = 0) -> None:
        assert mode in ("pass", "drop", "stall", "delay"), mode
        done = threading.Event()

        def apply() -> None:
            self.mode, self.delay_ms = mode, delay_ms
            if mode == "drop":
                for conn in list(self._conns):
                    conn.abort()
                self._conns.clear()
            elif mode == "stall":
                for conn in self._conns:
                    conn.stalled = True
            done.set()

        self._loop.call_soon_threadsafe(apply)
        done.wait(10)

    def close(self) -> None:
        def shutdown() -> None:
            for conn in list(self._conns):
                conn.abort()
            if self._server is not None:
                self._server.close()
            # abort() closes each socket in a callback: let those run before stopping.
            self._loop.call_later(0.3, self._loop.stop)

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(shutdown)
            self._thread.join(10)

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.sleep(0.05))
            self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "drop":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), timeout=10
            )
        except Exception:
            writer.transport.abort()
            return
        conn = _Conn(writer, up_writer)
        conn.stalled = self.mode == "stall"
        self._conns.add(conn)
        await asyncio.gather(
            self._pump(conn, reader, up_writer),
            self._pump(conn, up_reader, writer),
            return_exceptions=True,
        )
        conn.abort()
        self._conns.discard(conn)

    async def _pump(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if conn.stalled:
                    continue  # swallowed: the half-open connection never answers again
                if self.mode == "delay" and self.delay_ms:
                    await asyncio.sleep(self.delay_ms / 1000)
                writer.write(data)
                await writer.drain()
        finally:
            conn.abort()
