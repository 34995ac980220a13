"""A minimal Redis client for the request path: one pipelined connection per process.

Why not redis-py (used elsewhere: routing's session cache): its asyncio client costs
~90 µs of CPU per command in this process (connection pool checkout, command packing,
response callbacks), measured with EVALSHA on this machine; the rate-limit check runs on
every limited request, and the issue's budget is 60 µs of added latency.  This client
writes a command straight to one connection and waits on a future that the reply, parsed
by ``hiredis`` (the C parser redis-py itself uses when installed), resolves: ~18 µs.

Scope: the commands the rate limiter sends (EVALSHA/EVAL, INCRBY, EXPIRE), AUTH and
SELECT from the URL (``redis://[user:password@]host:port/db``, ``rediss://`` for TLS,
``unix:///path/redis.sock?db=N``).
Every caller's commands go down one TCP connection in order, and Redis answers in order,
so concurrent requests pipeline without a pool.  A reply not received within
``timeout_s`` closes the connection (every waiter fails); a failed connect is not retried
for ``retry_s`` (callers fail at once meanwhile), so an outage costs no wait per request
and recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis


class RedisUnavailable(ConnectionError):
    """No connection (refused, reset, timed out) or a Redis error reply."""


class ReplyError(RedisUnavailable):
    """Redis answered with an error (``NOSCRIPT``, ``WRONGTYPE``, ``OOM`` ...)."""


def pack_command(parts: tuple[bytes, ...]) -> bytes:
    """One RESP command (an array of bulk strings), packed by hiredis in C: ~1.9 µs for
    the rate limiter's ~12 parts where joining them in Python took ~5."""
    return cast(bytes, hiredis.pack_command(parts))  # type: ignore[arg-type]  # (its stub types a 1-tuple)


def command(*parts: bytes) -> bytes:
    """One RESP command from its parts."""
    return pack_command(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: RespClient) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.owner.waiting
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not waiting:
                return  # a reply nobody waits for: a protocol error; the next loss resets
            target, _sent = waiting.popleft()
            if target is None:
                continue
            if isinstance(reply, hiredis.ReplyError):
                _deliver(target, None, ReplyError(str(reply)))
            else:
                _deliver(target, reply, None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.owner._lost(self, exc)


#: Who gets a reply (``waiting``): a future, or a callback ``(reply, error)`` run as soon
#: as the reply is parsed (no future, no extra loop turn: the rate limiter's check
#: forwards the request from it).
def _deliver(target: Any, reply: Any, error: BaseException | None) -> None:
    if isinstance(target, asyncio.Future):
        if not target.done():
            if error is not None:
                target.set_exception(error)
            else:
                target.set_result(reply)
        return
    try:
        target(reply, error)
    except Exception as exc:  # noqa: BLE001 - a caller's bug must not stop the replies after it
        asyncio.get_running_loop().call_exception_handler({"message": "error in a Redis reply callback", "exception": exc})


class RespClient:
    """One lazily opened, pipelined connection to the Redis at ``url``."""

    WATCH_S: Final = 0.25

    def __init__(self, url: str, timeout_s: float = 1.0, retry_s: float = 0.5) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"redis_url: expected redis://, rediss:// or unix://, got {parts.scheme}://")
        self.unix_path = unquote(parts.path) if parts.scheme == "unix" else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.tls = parts.scheme == "rediss"
        self.prelude = b""
        self.prelude_count = 0
        if parts.password is not None:
            user = [unquote(parts.username).encode()] if parts.username else []
            self.prelude += command(b"AUTH", *user, unquote(parts.password).encode())
            self.prelude_count += 1
        db = parse_qs(parts.query).get("db", ["0"])[0] if self.unix_path else parts.path.strip("/")
        if db and db != "0":
            self.prelude += command(b"SELECT", db.encode())
            self.prelude_count += 1
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        #: (future, callback or None for a reply nobody reads, loop time sent), in send order
        self.waiting: deque[tuple[Any, float]] = deque()
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._retry_at = 0.0
        self._watch: asyncio.TimerHandle | None = None
        self._closed = False

    def call(self, data: bytes, replies: int = 1) -> asyncio.Future[Any]:
        """Send ``data`` (``replies`` commands); the future gets the last reply (or
        RedisUnavailable).  Writes at once when connected; otherwise connects first."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        proto = self._proto
        if proto is not None and proto.transport is not None:
            self._send(proto, data, replies, future, loop.time())
        else:
            loop.create_task(self._connect_and_send(data, replies, future))
        return future

    def call_back(self, data: bytes, callback: Callable[[Any, BaseException | None], None]) -> None:
        """Send ``data`` (one command); ``callback(reply, None)`` or ``callback(None,
        RedisUnavailable)`` runs from the reply's read, without a future."""
        proto = self._proto
        if proto is not None and proto.transport is not None:
            self._send(proto, data, 1, callback, asyncio.get_running_loop().time())
        else:
            self.call(data).add_done_callback(
                lambda f: callback(None, f.exception()) if f.exception() is not None else callback(f.result(), None)
            )

    def _send(self, proto: _Protocol, data: bytes, replies: int, future: Any, now: float) -> None:
        waiting = self.waiting
        for _ in range(replies - 1):
            waiting.append((None, now))
        waiting.append((future, now))
        assert proto.transport is not None
        proto.transport.write(data)
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(self.WATCH_S, self._check_timeouts)

    async def _connect_and_send(self, data: bytes, replies: int, future: asyncio.Future[Any]) -> None:
        try:
            proto = await self._connection()
        except RedisUnavailable as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if proto.transport is None or proto.transport.is_closing():
            if not future.done():
                future.set_exception(RedisUnavailable("connection lost"))
            return
        self._send(proto, data, replies, future, asyncio.get_running_loop().time())

    async def _connection(self) -> _Protocol:
        if self._proto is not None:
            return self._proto
        loop = asyncio.get_running_loop()
        if self._closed or loop.time() < self._retry_at:
            raise RedisUnavailable("not connected (retrying shortly)")
        if self._connecting is None:
            self._connecting = loop.create_future()
            loop.create_task(self._open(self._connecting))
        return await asyncio.shield(self._connecting)

    async def _open(self, done: asyncio.Future[_Protocol]) -> None:
        loop = asyncio.get_running_loop()
        proto: _Protocol | None = None
        try:
            if self.unix_path is not None:
                opening = loop.create_unix_connection(lambda: _Protocol(self), self.unix_path)
            else:
                opening = loop.create_connection(
                    lambda: _Protocol(self), self.host, self.port,
                    ssl=ssl.create_default_context() if self.tls else None,
                )
            _, opened = await asyncio.wait_for(opening, self.timeout_s)
            proto = opened
            if self.prelude:
                ready: asyncio.Future[Any] = loop.create_future()
                self._send(proto, self.prelude, self.prelude_count, ready, loop.time())
                await asyncio.wait_for(ready, self.timeout_s)
            self._proto = proto
            done.set_result(proto)
        except (OSError, asyncio.TimeoutError, RedisUnavailable) as exc:
            if proto is not None and proto.transport is not None:
                proto.transport.close()  # e.g. AUTH refused: not kept half set up
            self._retry_at = loop.time() + self.retry_s
            done.set_exception(RedisUnavailable(f"cannot connect: {type(exc).__name__}: {exc}"))
            done.exception()  # retrieved: no "never retrieved" warning when nobody waits
        finally:
            self._connecting = None

    def _check_timeouts(self) -> None:
        self._watch = None
        waiting = self.waiting
        if not waiting:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - waiting[0][1] > self.timeout_s:
            proto = self._proto
            if proto is not None and proto.transport is not None:
                proto.transport.abort()  # connection_lost fails every waiter
                return
        self._watch = loop.call_later(self.WATCH_S, self._check_timeouts)

    def _lost(self, proto: _Protocol, exc: BaseException | None) -> None:
        if self._proto is proto:
            self._proto = None
        waiting, self.waiting = self.waiting, deque()
        error = RedisUnavailable(f"connection lost: {exc}" if exc else "connection closed")
        for target, _ in waiting:
            if target is not None:
                _deliver(target, None, error)

    async def aclose(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            self._proto = None
