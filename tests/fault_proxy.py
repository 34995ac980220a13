"""A TCP proxy that can cut or hang every connection on demand (after asyncpg's test fuzzer).

Put it between the gateway and PostgreSQL to make "the database went away" happen
without touching the shared server: ``cut()`` resets every open connection and refuses
new ones until ``restore()``; ``hang()`` makes the database a black hole — connections
are accepted, open ones stay open, and nothing is ever answered (bytes in both directions
are swallowed) until ``restore()``, which resets the hung connections;
``starting_up()`` answers every new connection's startup as a PostgreSQL server in crash
recovery does (FATAL 57P03 "the database system is starting up", asyncpg's
CannotConnectNowError) until ``restore()``.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def dsn_target(dsn: str) -> str | tuple[str, int]:
    """Where a PostgreSQL DSN points: a unix socket path or (host, port)."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "127.0.0.1"
    port = int(query.get("port") or parts.port or 5432)
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return (host, port)


def proxied_dsn(dsn: str, proxy_port: int) -> str:
    """The same DSN, reaching the server through the proxy on 127.0.0.1:proxy_port."""
    parts = urlsplit(dsn)
    query = {k: v for k, v in parse_qsl(parts.query) if k not in ("host", "port")}
    user = parts.username or "postgres"
    return urlunsplit(
        parts._replace(netloc=f"{user}@127.0.0.1:{proxy_port}", query=urlencode(query))
    )


#: the SSLRequest code (PostgreSQL protocol, "Message Formats")
_SSL_REQUEST = 80877103
_STARTING_UP = b"".join((
    b"SFATAL\0", b"VFATAL\0", b"C57P03\0", b"Mthe database system is starting up\0", b"\0",
))


async def _refuse_starting_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the client's startup (after an optional SSLRequest, declined) and answer the
    ErrorResponse a server in recovery sends, then close."""
    try:
        while True:
            length = int.from_bytes(await reader.readexactly(4), "big")
            payload = await reader.readexactly(length - 4)
            if length == 8 and int.from_bytes(payload, "big") == _SSL_REQUEST:
                writer.write(b"N")  # no TLS here: the client goes on in the clear
                continue
            break
        writer.write(b"E" + (len(_STARTING_UP) + 4).to_bytes(4, "big") + _STARTING_UP)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


class FaultProxy:
    def __init__(self, target: str | tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._hang = False
        self._starting_up = False
        self.connections_made = 0
        self.connections_hung = 0
        #: ``hold_closes``: a server's close is not passed on to its client until
        #: ``release_closes`` (what it sent before is); counted here as each is held
        self._hold_closes = False
        self._released: asyncio.Event | None = None
        self.closes_held = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        if self._starting_up:
            await _refuse_starting_up(reader, writer)
            return
        if self._hang:
            # Accept and never answer: read and drop whatever the client sends.
            self.connections_hung += 1
            self._writers.add(writer)
            try:
                while await reader.read(65536):
                    pass
            except OSError:
                pass
            finally:
                writer.transport.abort()
                self._writers.discard(writer)
            return
        try:
            if isinstance(self.target, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self.target)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        except BaseException:  # stop() cancelled us mid-connect: close what was accepted
            writer.transport.abort()
            raise
        self.connections_made += 1
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, to_client: bool) -> None:
            try:
                while data := await src.read(65536):
                    if self._hang:
                        continue  # swallowed: neither side hears from the other
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                released = self._released
                if to_client and self._hold_closes and released is not None:
                    self.closes_held += 1
                    await released.wait()
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    def cut(self) -> None:
        def do() -> None:
            self._cut = True
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(do)

    def hang(self) -> None:
        def do() -> None:
            self._hang = True

        self._loop.call_soon_threadsafe(do)

    def hold_closes(self) -> None:
        """A server that closes (a backend terminated) is heard closing late: the bytes it
        sent before its close reach the client, the close itself waits for
        ``release_closes`` (PostgreSQL's FATAL before its backend's exit, stretched)."""

        def do() -> None:
            self._released = asyncio.Event()
            self._hold_closes = True

        self._loop.call_soon_threadsafe(do)

    def release_closes(self) -> None:
        def do() -> None:
            self._hold_closes = False
            if self._released is not None:
                self._released.set()

        self._loop.call_soon_threadsafe(do)

    def starting_up(self) -> None:
        def do() -> None:
            self._starting_up = True

        self._loop.call_soon_threadsafe(do)

    def restore(self) -> None:
        def do() -> None:
            self._starting_up = False
            if self._hang:
                # A hung connection has lost bytes: it can only be reset.
                for w in list(self._writers):
                    w.transport.abort()
                self._writers.clear()
            self._cut = False
            self._hang = False

        self._loop.call_soon_threadsafe(do)

    def stop(self) -> None:
        async def close() -> None:
            self.cut()
            if self._server is not None:
                self._server.close()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        # Aborted transports close in callbacks that may be queued behind the stop.
        self._loop.run_until_complete(asyncio.sleep(0.01))
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
