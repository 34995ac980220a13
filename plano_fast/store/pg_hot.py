"""PostgreSQL: one connection kept out of the pool for the request path's lone statements.

A managed request's synchronous usage write, a settle and a hard limit's reservation are
one statement each.  Through the
pool each one also paid ``Pool.acquire`` and its release: an ``asyncio.Queue`` get, the
holder's bookkeeping, and at release an ``asyncio.shield`` -- a Task of its own, run a turn
of the loop later, before the caller's ``async with`` ends and it is woken (issue 27:
measured ~130-190 µs more client CPU per write than the same statement on a connection
held, on a machine at load 14; ``benchmarks/results/pg-managed-20261206.md``).

``HotConnection.fetchval`` (``run``) runs the statement on the held connection when it is free, and
on the pool when it is busy (another statement on it: concurrent callers share the pool as
before) or not open yet.  It is opened in the background on first use (never on a
caller's time), again at most once per ``REOPEN_AFTER_S`` after an attempt failed.  A
connection that fails other than by the server reporting an error in a statement (lost,
timed out, cancelled mid-statement: its state is unknown) is terminated and forgotten, and
a new one opened in the background; the failure goes to the caller, who handles it as it
would the pool's (a usage write is idempotent: ``ON CONFLICT (request_id)``).

Only single statements whose loss the caller can answer may run here: a timed-out or
cancelled statement's connection is terminated, not cancelled on the server, so a
statement blocked on a lock can still commit after its caller saw the failure.  The usage
write and the settle are idempotent (the usage write inserts a request id once; a settle
finds its reservation already gone); a reservation is not, and its caller reads the
backend pid (``run``'s ``fn`` gets the connection) to end that backend before it checks,
reruns or gives back what the lost statement may have granted
(``PostgresStore._reserve_again``, ``_release_later``).  One connection per store (per
worker) beside the pool's ``max_size``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import asyncpg  # type: ignore[import-untyped]

log = logging.getLogger(__name__)
T = TypeVar("T")

REOPEN_AFTER_S: Final = 1.0
"""After a failed attempt to open the connection (the server away), the least time before
the next."""


class HotConnection:
    def __init__(self, dsn: str, command_timeout: float | None, connect_timeout_s: float) -> None:
        self.dsn = dsn
        self.command_timeout = command_timeout
        self.connect_timeout_s = connect_timeout_s
        self._conn: Any = None
        self._busy = False
        self._opening: asyncio.Task[None] | None = None
        self._next_open_s = 0.0
        self._closed = False

    async def fetchval(self, pool: Any, sql: str, *args: Any) -> Any:
        """``sql``'s value: on the held connection when it is free, else on ``pool``.
        (``run`` with ``conn.fetchval``, without its coroutine layer: the usage write's
        path at concurrency 1.)"""
        conn = self._free()
        if conn is None:
            return await pool.fetchval(sql, *args)
        self._busy = True
        try:
            return await conn.fetchval(sql, *args)
        except BaseException as exc:
            self._failed(conn, exc)
            raise
        finally:
            self._busy = False

    async def run(self, pool: Any, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``fn(conn, *args)`` -- one statement on ``conn`` -- on the held connection when
        it is free, else on a connection of ``pool``."""
        conn = self._free()
        if conn is None:
            async with pool.acquire() as pooled:
                return await fn(pooled, *args)
        self._busy = True
        try:
            return await fn(conn, *args)
        except BaseException as exc:
            self._failed(conn, exc)
            raise
        finally:
            self._busy = False

    def _free(self) -> Any:
        """The held connection if it is open and idle (None: use the pool; opened in the
        background when there is none)."""
        conn = self._conn
        if conn is not None and conn.is_closed():  # (lost while idle: known already)
            self._drop(conn)
            conn = None
        if conn is None:
            self._open_later()
            return None
        return None if self._busy else conn

    def _failed(self, conn: Any, exc: BaseException) -> None:
        # The server's own error in a statement leaves the connection idle and usable;
        # anything else (lost, timed out, cancelled while the statement ran) does not.
        if not isinstance(exc, asyncpg.PostgresError) or isinstance(
            exc, (asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError)
        ) or conn.is_closed():
            self._drop(conn)

    @property
    def pid(self) -> int | None:
        """The held connection's backend pid (None: none held)."""
        conn = self._conn
        return None if conn is None else int(conn.get_server_pid())

    def _drop(self, conn: Any) -> None:
        if self._conn is conn:
            self._conn = None
        conn.terminate()  # (the backend rolls back whatever it had not committed)

    def _open_later(self) -> None:
        if self._closed or self._opening is not None or time.monotonic() < self._next_open_s:
            return
        self._opening = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            conn = await asyncpg.connect(self.dsn, command_timeout=self.command_timeout,
                                         timeout=self.connect_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the pool serves meanwhile; tried again later
            self._next_open_s = time.monotonic() + REOPEN_AFTER_S
            log.debug("the store's hot connection could not be opened (%s)", type(exc).__name__)
            return
        finally:
            self._opening = None
        if self._closed:
            conn.terminate()
        else:
            self._conn = conn

    async def close(self) -> None:
        """``terminate``, and the background open (if any) waited for once cancelled."""
        opening = self._opening
        self.terminate()
        if opening is not None:
            await asyncio.gather(opening, return_exceptions=True)

    def terminate(self) -> None:
        """Closed on this side at once, never waited for: idle, the connection has nothing
        to roll back; busy, its statement is not waited for (as a stop's bound would not);
        and a server that hangs would hold a polite close up to its timeout."""
        self._closed = True
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
