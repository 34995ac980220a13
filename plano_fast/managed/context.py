"""What managed exchanges share: the token and pipe state, the store, prices, the group
writer of synchronous billing and the background releases of reservations (owned by the
Gateway; the per-request policy is plano_fast.gateway.modes.managed)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from plano_fast.billing.metrics import BillingMetrics
from plano_fast.failover import RetryPolicy
from plano_fast.managed.state import ManagedState
from plano_fast.pricing import PricingRegistry
from plano_fast.store import Reservation, Store, UsageRow
from plano_fast.store.base import UsageStore
from plano_fast.usage import UsageEvent

log = logging.getLogger("plano_fast.managed")

T = TypeVar("T")

RELEASE_RETRY_FIRST_S = 0.1
RELEASE_RETRY_MAX_S = 5.0
"""Back-off between attempts to release a reservation while the store fails."""

#: seconds: at most one log line of failed synchronous writes per this (a store outage
#: failed every request's write; the counts are in /metrics)
FAILURE_LOG_INTERVAL_S = 10.0

BATCH_BESIDE_MIN_ROWS = 8
"""Rows waiting before a batch is started beside one in flight (``Store.write_batches_in_flight``
above 1).  Fewer ride with the next batch, a moment later: each batch is a statement and a
commit, and with no minimum the batches beside came out small -- callgrind, managed-pg at
concurrency 32: 175k -> 190k gateway instructions a request."""

BATCH_BESIDE_BEHIND = 2
"""... and only once this many times the rows of the batches in flight wait: the batch in
flight has fallen behind (a slow commit: a WAL flush of several ms on a busy disk), not
merely run while the next rows came, as every batch does.  Each batch is a statement and a
commit whose fixed cost is most of a small batch's (PostgreSQL, 13 rows: ~0.8 ms of backend
CPU a statement, ~20 µs a row more), so splitting the rows that gather during one batch
into batches beside it cost CPU on both sides for nothing: at concurrency 32 and 64
(``pg_server_probe --shapes writer --beside-behind 0|2``, eight interleaved pairs) backend
CPU a request -12% to -40%, the client's -5% to -39%; two gateways at c=64, statements a
request 0.0107 -> 0.0052 (``benchmarks/results/managed-pg-k-20261206.md``)."""

GATHER_AFTER_ROWS = 8
"""A batch that starts right after one of at least this many rows (the writer is under load)
waits one more turn of the loop before it is written, where the store commits without
waiting (``Store.write_usage_now``: SQLite).  There the commit runs inside the drain's step,
so a batch holds only the answers of one turn of the loop (~13 at concurrency 32); with the
turn, those of two: each commit's fixed cost (~200k instructions: BEGIN/COMMIT, the counters'
UPDATE, the WAL frames of the table's and indexes' last pages) is shared by twice the rows.
Under a light load the batches are small, so nothing waits (a lone answer is written at
once, ``write``'s ``alone``); the first small batch after a burst turns the wait off."""
GATHER_MAX_ROWS = 16
"""... and only while fewer rows than this wait: twice as many still fit one INSERT
statement (``plano_fast.store.sqlite._INSERT_CHUNK``, 32 rows), committed in the step."""

#: a queued row: the row, its event, its future and what to call once it is written
_Item = tuple[UsageRow, UsageEvent, asyncio.Future[None], Callable[[asyncio.Future[None]], None] | None]


class GroupWriter:
    """Group commit for synchronous billing: each request still waits until its own row is
    written, but rows of requests finishing together share one transaction.  While one
    batch is being written the next gathers, so the commit cost is paid once per batch,
    not once per request (measured: ~730 CPU µs per managed request before, on SQLite).

    The writer owns a row from ``write`` on: a waiter that is cancelled (its client left)
    stops waiting, but the row is written all the same; and when a batch cannot be
    written, its events go to the asynchronous pipeline (``fallback``: journaled,
    retried, a refused row set aside there), so no waiter has to be alive to save them.
    """

    def __init__(
        self, store: Store, fallback: Callable[[UsageEvent], None], metrics: BillingMetrics | None = None
    ) -> None:
        self.store = store
        self.fallback = fallback
        self.metrics = metrics or BillingMetrics()
        self._pending: list[_Item] = []
        #: the batches being written (each by one ``_drain``)
        self._inflight: list[list[_Item]] = []
        #: their rows, together
        self._inflight_rows = 0
        #: ``_drain`` tasks running, at most ``in_flight``: while one batch commits the
        #: next may be written beside it where the store gains from it (PostgreSQL: each
        #: on its own counter rows, ``Store.write_batches_in_flight``)
        self._drains = 0
        #: the running ``_drain`` tasks themselves (the loop keeps only weak references to
        #: a task: one nobody holds could be collected mid-batch)
        self._drain_tasks: set[asyncio.Task[None]] = set()
        #: no row waiting and no batch being written: only then can a row be written at
        #: once (``write``'s ``alone``).  Kept as a plain attribute so that a caller tests it
        #: before it asks the upstream pool whether other answers are under way (its
        #: ``busy_count``, a property that walks the idle lists: ~1.5k instructions, asked
        #: by every managed answer; at concurrency 32 the writer is busy for ~12 of 13 of
        #: them, issue 27, benchmarks/results/managed-sqlite-k-20261206.md)
        self.idle = True
        self.in_flight = max(1, store.write_batches_in_flight)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: whether the store can ever write without waiting (``write_usage_now``: SQLite);
        #: else ``write`` never asks it (nothing to pay per row on PostgreSQL)
        self.writes_now = type(store).write_usage_now is not UsageStore.write_usage_now
        #: rows of the last batch written (``GATHER_AFTER_ROWS``)
        self._last_rows = 0
        #: failed writes (and their rows) not in a log line yet, and when the next may be
        self._quiet_failures = 0
        self._quiet_rows = 0
        self._next_failure_log = 0.0

    def write(
        self, row: UsageRow, event: UsageEvent, alone: bool = False,
        then: Callable[[asyncio.Future[None]], None] | None = None,
    ) -> asyncio.Future[None]:
        """Queue ``row``; the future resolves once it is written or handed to the fallback.

        ``then``: called with the future in the writer's step, right after the future
        resolves, instead of a done callback a turn of the loop later (a Handle scheduled
        and run per request); not called when the future comes back done.

        ``alone``: no other request is in flight to share a batch with (the caller
        knows: no upstream answer is under way).  Then, when the writer is idle and the
        store can write without waiting (``Store.write_usage_now``: SQLite), the row is
        written before this returns and the future comes back done: no task, no turn of
        the loop before the store call or after it (issue 27, concurrency 1).  Not when
        others are in flight: their rows, finishing in the same turn, share the batch's
        transaction (the group commit), which is what throughput under load rests on."""
        loop = self._loop
        if loop is None:
            # Once: asyncio.get_running_loop() costs a getpid() system call per call.
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        item = (row, event, future, then)
        if alone and self.writes_now and not self._drains and not self._pending:
            if self._write_now(item):
                self._last_rows = 1  # (a batch of one: the load is light, nothing gathers)
                future.set_result(None)
                return future
        self._pending.append(item)
        self.idle = False
        drains = self._drains
        if not drains or (drains < self.in_flight and self._behind()):
            self._drains = drains + 1
            task = loop.create_task(self._drain())
            self._drain_tasks.add(task)
            task.add_done_callback(self._drain_tasks.discard)
        return future

    def _behind(self) -> bool:
        """Enough rows wait to start a batch beside those in flight (``BATCH_BESIDE_MIN_ROWS``,
        ``BATCH_BESIDE_BEHIND``)."""
        waiting = len(self._pending)
        return waiting >= BATCH_BESIDE_MIN_ROWS and waiting >= BATCH_BESIDE_BEHIND * self._inflight_rows

    async def _drain(self) -> None:
        try:
            if self.writes_now and self._last_rows >= GATHER_AFTER_ROWS and len(self._pending) < GATHER_MAX_ROWS:
                await asyncio.sleep(0)  # the next turn's answers join this batch
            # (The last drain running takes whatever waits; another leaves the rows to it
            # unless the batches still in flight are behind.)
            while self._pending and (self._drains == 1 or self._behind()):
                batch, self._pending = self._pending, []
                self._last_rows = len(batch)
                inflight = self._inflight
                inflight.append(batch)
                self._inflight_rows += len(batch)
                try:
                    await self._write(batch)  # (cancelled: left in flight, for ``abandon``)
                finally:
                    self._inflight_rows -= len(batch)
                inflight[:] = [b for b in inflight if b is not batch]
                for _, _, future, then in batch:
                    if not future.done():
                        future.set_result(None)
                    if then is not None:
                        try:
                            then(future)
                        except Exception:  # as the loop does for a done callback that raises
                            log.exception("synchronous billing: a written row's callback failed")
        finally:
            self._drains -= 1
            if not self._drains:
                self.idle = not self._pending

    def abandon(self) -> list[UsageEvent]:
        """The events of rows not known to be written (a stop whose bound ran out while
        the store hangs): the caller journals them; a replay skips any that did commit."""
        items = [item for batch in self._inflight for item in batch] + self._pending
        self._inflight.clear()
        self._pending = []
        self.idle = not self._drains
        return [item[1] for item in items]

    def _write_now(self, item: _Item) -> bool:
        """One row written (or handed to the fallback) before returning; False when the
        store cannot write without waiting now (nothing done: the caller queues it)."""
        try:
            inserted = self.store.write_usage_now([item[0]])
        except Exception as exc:  # noqa: BLE001 - the row takes the journaled path
            self._failed([item], exc)
            return True
        if inserted is None:
            return False
        self._count(inserted, 1)
        return True

    async def _write(self, batch: list[_Item]) -> None:
        rows = [item[0] for item in batch]
        try:
            # Committed in this step when the store can without waiting (SQLite's hot
            # connection idle, up to one INSERT chunk: a group commit under load) -- not
            # through write_usage's lock and coroutines; else awaited as usual.
            inserted = self.store.write_usage_now(rows) if self.writes_now else None
            if inserted is None:
                inserted = await self.store.write_usage(rows)
        except Exception as exc:  # noqa: BLE001 - the rows take the journaled path
            if len(batch) > 1 and self.store.rejects_data(exc):
                # One row the store refuses must not push the others off the synchronous
                # path: each is tried alone (rare; the flusher isolates the refused one).
                for item in batch:
                    await self._write([item])
                return
            self._failed(batch, exc)
            return
        self._count(inserted, len(batch))

    def _failed(self, batch: list[_Item], exc: Exception) -> None:
        """A batch not written: its events take the journaled path.  Counted every time
        (``sync_write_failures``, ``sync_rows_fallback``); logged at most once per
        ``FAILURE_LOG_INTERVAL_S``, the failures in between summed in the next line (a
        store outage under load was one ERROR line per request: thousands a second)."""
        metrics = self.metrics
        metrics.sync_write_failures += 1
        metrics.sync_rows_fallback += len(batch)
        self._quiet_failures += 1
        self._quiet_rows += len(batch)
        now = time.monotonic()
        if now >= self._next_failure_log:
            self._next_failure_log = now + FAILURE_LOG_INTERVAL_S
            log.error("synchronous billing failed (%s: %s); %d usage rows in %d writes queued to the journal "
                      "since the last such line (logged at most every %gs)", type(exc).__name__, exc,
                      self._quiet_rows, self._quiet_failures, FAILURE_LOG_INTERVAL_S)
            self._quiet_failures = self._quiet_rows = 0
        for item in batch:
            self.fallback(item[1])

    def _recovered(self) -> None:
        """A write succeeded after failures that were not logged yet: their sum, once."""
        log.warning("synchronous billing writes again; %d usage rows in %d writes queued to the journal "
                    "since the last line", self._quiet_rows, self._quiet_failures)
        self._quiet_failures = self._quiet_rows = 0
        self._next_failure_log = 0.0

    def _count(self, inserted: int, rows: int) -> None:
        if self._quiet_failures:  # (one test per batch: the outage's tail is reported)
            self._recovered()
        metrics = self.metrics
        metrics.rows_written += inserted
        if inserted < rows:  # never silent: two requests with one id
            metrics.rows_duplicate += rows - inserted
            metrics.rows_duplicate_id += rows - inserted
            log.error("synchronous billing: %d of %d rows had a request id already stored, skipped",
                      rows - inserted, rows)


class ManagedContext:
    """What managed exchanges share (owned by the Gateway)."""

    __slots__ = ("state", "store", "pricing", "max_output_tokens", "reservation_ttl_s", "tasks",
                 "writer", "owner", "retry_policy", "unsettled")

    def __init__(
        self,
        state: ManagedState,
        store: Store,
        pricing: PricingRegistry,
        *,
        max_output_tokens: int,
        usage_sink: Callable[[UsageEvent], None],
        reservation_ttl_s: float = 600.0,
        metrics: BillingMetrics | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.pricing = pricing
        self.max_output_tokens = max_output_tokens
        self.reservation_ttl_s = reservation_ttl_s
        #: background releases, shielded from the cancellation of a client's task
        self.tasks: set[asyncio.Task[Any]] = set()
        self.writer = GroupWriter(store, usage_sink, metrics)
        #: this gateway instance's id, recorded on each reservation (see the sweeper)
        self.owner: str | None = None
        #: plano_fast.managed_retry_policy: how pipes' targets are walked on failures (None:
        #: each target once, in order -- plano_fast.failover.pipe_policy)
        self.retry_policy = retry_policy
        #: settles a stop cancelled, by reservation id: each reservation still held in the
        #: store, its row queued to the usage journal (``Gateway._finish_settles``)
        self.unsettled: dict[str, tuple[Reservation, UsageRow]] = {}

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def release_soon(self, reservation: Reservation) -> None:
        """Give ``reservation`` back in the background, retried until done (never a lost
        task: every failure is caught and logged)."""
        self.spawn(self._release_until_done(reservation))

    def settle_soon(self, reservation: Reservation, row: UsageRow) -> None:
        """Settle ``reservation`` with ``row`` in the background, retried until done: what
        follows a synchronous settle that failed (its row also journaled, for a restart).
        Not a release: a reservation given back before its row's cost is on the counters
        leaves the limit short of that cost until the journaled row is written, and
        requests admitted meanwhile overshot the hard limit (round i: two requests over, of
        58, with the database's backends killed under load).  A settle is idempotent (the
        row inserted and counted once, the reservation freed once), so it and the
        journaled copy of the row land in either order.  A row the store refuses
        (``rejects_data``) cannot settle: the reservation is then released, as before."""
        self.spawn(self._release_until_done(reservation, row))

    async def give_back_if_granted(self, call: asyncio.Task[Reservation | None]) -> None:
        """The request that asked for ``call``'s reservation stopped waiting for it (the
        gateway stops, the client left): whatever the store grants is given back."""
        try:
            reservation = await call
        except Exception:  # noqa: BLE001 - refused by a fault: nothing was taken
            return
        if reservation is not None:
            await self._release_until_done(reservation)

    async def _release_until_done(self, reservation: Reservation, row: UsageRow | None = None) -> None:
        """Released (``row`` None) or settled with ``row``, retried until done or expired.
        A settle cancelled (a stop), in a store call or between attempts, is recorded in
        ``unsettled``: its reservation stays held until its row is in (never released)."""
        try:
            await self._until_done(reservation, row)
        except asyncio.CancelledError:
            if row is not None:
                self.unsettled[reservation.id] = (reservation, row)
            raise

    async def _until_done(self, reservation: Reservation, row: UsageRow | None) -> None:
        delay_s = RELEASE_RETRY_FIRST_S
        failures = 0
        while True:
            try:
                if row is None:
                    await self.store.release(reservation)
                else:
                    await self.store.settle(reservation, row)
            except Exception as exc:  # noqa: BLE001 - retried; the sweeper is the backstop
                if row is not None and self.store.rejects_data(exc):
                    row = None  # (the journaled copy is set aside by the flusher too)
                    continue
                failures += 1
                if time.time_ns() + delay_s * 1e9 >= reservation.expires_at_ns:
                    log.warning("reservation %s still held after %d attempts (%s); left to the "
                                "sweeper at its expiry", reservation.id, failures, type(exc).__name__)
                    return
                if failures == 1:
                    log.warning("%s reservation %s failed (%s); retrying until done",
                                "releasing" if row is None else "settling", reservation.id, type(exc).__name__)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RELEASE_RETRY_MAX_S)
                continue
            if failures:
                log.info("reservation %s %s after %d failed attempts", reservation.id,
                         "released" if row is None else "settled", failures)
            return
