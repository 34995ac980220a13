"""UsageFlusher: the request path's usage events, batched into the store.

The request path calls ``submit`` (a list append: never awaits, never touches the
database).  The flusher writes a batch when ``batch_size`` events are waiting or every
``interval_s``, whichever comes first, in one bulk statement that also updates the
spending counters (the store does both in one transaction, deriving the counter deltas
from exactly the rows it inserted — so counters and log cannot disagree, and a replayed
batch cannot count twice).

Events are priced in memory (``plano_fast.billing.rows``) before they are written (the row records the price
entry used, and ``priced_partial`` when a dimension had no price of its own): the pricing
registry needs no I/O, and a row priced at flush time reaches the spending counters one pricing cycle
sooner, which shortens the soft-limit delay.  Rows whose model has no price are written
unpriced; the PriceCalculator retries them when custom prices change.

All of it runs on the event loop, so no stretch of it may be long: events are priced and
turned into rows ``DRAIN_SLICE`` at a time with a yield to the loop in between, and a
flush hands the store at most ``batch_size`` rows (the SQLite store splits those further
into small statements, see ``plano_fast.store.sqlite``).

Overflow policy (explicit and counted): while the store is failing, rows stay in memory
up to ``max_pending_rows``; past that the oldest are appended to the spill journal, and
replayed from it on the next start.  Nothing is dropped.

Poison policy: a row the store refuses for what it holds (``Store.rejects_data``: a count
or cost over 64 bits, a broken constraint) must not hold back the rows behind it, which
retrying the batch forever would.  The batch is split in halves until the refused rows
are alone; the rest are written, and each refused row (or an event that cannot even be
priced) is set aside in the journal's rejected file, counted and logged, for an operator.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import time
from pathlib import Path

from plano_fast.billing.drain import row_totals
from plano_fast.billing.journal import WAL_SUFFIX, Journal, WriteAheadLog
from plano_fast.billing.metrics import BillingMetrics
from plano_fast.billing.rows import rows_of_events
from plano_fast.pricing import PricingRegistry
from plano_fast.store.base import BillingStore
from plano_fast.store.records import UsageRow
from plano_fast.usage import UsageEvent

log = logging.getLogger("plano_fast.billing")

MAX_RETRY_DELAY_S = 30.0
#: after the journal refused an overflow spill, the next attempt waits this long
JOURNAL_RETRY_S = 5.0

DRAIN_SLICE = 32
"""Events priced and converted per synchronous stretch of the event loop (~0.1 ms).  128
measured ~0.35 ms of the loop's CPU a slice (benchmarks/tail_probe.py --hooks): at
1,000 req/s eight such stalls a second put ~0.5% of concurrency-1 requests behind one,
next to the 1 ms p99 target; smaller slices only add loop turns (issue 27)."""


class UsageFlusher:
    def __init__(
        self,
        store: BillingStore,
        pricing: PricingRegistry,
        journal: Journal,
        metrics: BillingMetrics,
        *,
        interval_s: float,
        batch_size: int = 1000,
        max_pending_rows: int = 100_000,
        wal: WriteAheadLog | None = None,
    ) -> None:
        self.store = store
        self.wal = wal
        self._wal_append = wal.append if wal is not None else None
        #: how many of the oldest submitted events are durable elsewhere (written, spilled,
        #: set aside): everything flows first in, first out, so a count is enough
        self._resolved = 0
        self.pricing = pricing
        self.journal = journal
        self.metrics = metrics
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.max_pending_rows = max(max_pending_rows, batch_size)
        # Submitted events: ``submit`` appends to ``_queue``; a drain takes the whole list
        # over as ``_draining`` and converts it from the front a slice at a time, so the
        # event loop never runs long without a break.
        self._queue: list[UsageEvent] = []
        self._draining: list[UsageEvent] = []
        self._pending: collections.deque[UsageRow] = collections.deque()
        self._batch_ready = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._retry_delay_s = 0.0
        self._replayed: list[Path] = []
        #: spills the journal refused in a row (``_journal_failed``), and when to try again
        self._journal_failures = 0
        self._journal_retry_at = 0.0

    # -- the request path -------------------------------------------------------------
    def submit(self, event: UsageEvent) -> None:
        """The UsageSink: called on the request path; never blocks."""
        queue = self._queue
        queue.append(event)
        wal_append = self._wal_append
        if wal_append is not None:
            wal_append(event)
        self.metrics.events_submitted += 1
        if len(queue) >= self.batch_size:
            self._batch_ready.set()

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        self._replayed = self.journal.claim()
        await self._replay_journals()
        if self.wal is not None:
            self.wal.start()  # after the claim: our own segments are never claimed
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-flusher")

    async def _replay_journals(self) -> None:
        """Write claimed journal files straight to the store, a batch at a time.

        They bypass the in-memory backlog (which may be small) and are deleted only once
        fully written; a failure leaves the file for the next cycle, and re-writing rows
        already stored is harmless (idempotent on request_id).
        """
        while self._replayed:
            path = self._replayed[0]
            written = 0
            duplicates_before = self.metrics.rows_duplicate
            try:
                if path.name.endswith(WAL_SUFFIX):
                    for events in Journal.read_events(path, self.batch_size):
                        rows: collections.deque[UsageRow] = collections.deque()
                        rows_of_events(self.pricing, events, rows)
                        self.metrics.rows_duplicate += len(rows) - await self.store.write_usage(list(rows))
                        written += len(rows)
                else:
                    for batch in Journal.read_batches(path, self.batch_size):
                        self.metrics.rows_duplicate += len(batch) - await self.store.write_usage(batch)
                        written += len(batch)
            except Exception as exc:  # noqa: BLE001 - retried on a later cycle
                self.metrics.flush_failures += 1
                log.warning("journal replay of %s paused (%s)", path, type(exc).__name__)
                return
            log.info("replayed %d usage rows from %s (%d already stored)", written, path,
                     self.metrics.rows_duplicate - duplicates_before)
            self.metrics.rows_replayed += written
            path.unlink(missing_ok=True)
            self._replayed.pop(0)

    async def stop(self, deadline_s: float = 10.0) -> None:
        """Drain: everything submitted so far is written, or journaled if the store is down."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._drain()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while self._pending and loop.time() < end:
            if not await self._flush_once():
                await asyncio.sleep(min(0.5, max(0.0, end - loop.time())))
        if self._pending:
            try:
                spilled = self.journal.spill(self._pending)
            except OSError as exc:
                # Not resolved: the write-ahead log's segments holding them stay, for the
                # next start (those it could sync).
                log.error("store unavailable at shutdown and the journal %s cannot be written (%s: %s): "
                          "%d usage rows only in the write-ahead log, as far as it synced", self.journal.path,
                          type(exc).__name__, exc, len(self._pending))
            else:
                self.metrics.rows_spilled += spilled
                self._resolved += spilled
                log.error("store unavailable at shutdown: %d usage rows kept in %s", spilled, self.journal.path)
            self._pending.clear()
        if self.wal is not None:
            await self.wal.stop()
            if not self._queued:
                await self.wal.resolved(self._resolved)  # everything: the segments go

    def spill_all(self) -> int:
        """Journal every event and row not yet written, synchronously (no store call): for
        a stop whose bound ran out while the store hangs.  Returns how many rows."""
        while self._queued:
            self._convert_slice(DRAIN_SLICE)
        try:
            spilled = self.journal.spill(self._pending) if self._pending else 0
        except OSError as exc:
            log.error("the journal %s cannot be written (%s: %s): %d usage rows only in the write-ahead "
                      "log, as far as it synced", self.journal.path, type(exc).__name__, exc, len(self._pending))
            spilled = 0
        else:
            self._resolved += spilled
        self._pending.clear()
        self.metrics.rows_spilled += spilled
        # The write-ahead log's segments stay: replaying them next time only finds rows
        # already stored or spilled (idempotent), and no store call can be made here.
        return spilled

    @property
    def _queued(self) -> int:
        """Events submitted and not yet converted to rows."""
        return len(self._queue) + len(self._draining)

    @property
    def backlog(self) -> int:
        return len(self._pending) + self._queued

    async def flush_now(self) -> None:
        """Write everything waiting (used by tests and the admin API)."""
        await self._drain()
        while self._pending:
            if not await self._flush_once():
                break

    # -- the loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        """The flusher's task: its cycles, resumed after an unexpected error (a task that
        ended on one wrote no row again until a restart, and said nothing)."""
        while True:
            try:
                await self._cycles()
            except Exception as exc:  # noqa: BLE001 - billing must go on; the rows are kept
                self.metrics.flush_failures += 1
                delay_s = max(1.0, self._retry_delay_s)
                log.error("usage flusher: unexpected %s (%s); resumed in %.1fs", type(exc).__name__, exc, delay_s)
                await asyncio.sleep(delay_s)

    async def _cycles(self) -> None:
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + self.interval_s
        while True:
            wait_s = max(0.0, next_flush - loop.time())
            if self._retry_delay_s:
                wait_s = max(wait_s, self._retry_delay_s)
            try:
                async with asyncio.timeout(wait_s):
                    await self._batch_ready.wait()
            except TimeoutError:
                pass
            self._batch_ready.clear()
            await self._drain()
            if loop.time() >= next_flush or len(self._pending) >= self.batch_size:
                healthy = True
                while self._pending:
                    if not await self._flush_once():
                        healthy = False
                        break
                    if len(self._pending) < self.batch_size and loop.time() < next_flush:
                        break
                if healthy and self._replayed:
                    await self._replay_journals()
                next_flush = loop.time() + self.interval_s

    async def _drain(self) -> None:
        """Price and convert every event queued when called, a slice at a time.

        Between slices the event loop runs (events submitted meanwhile wait for the next
        drain); the state between slices is consistent, so a concurrent drain (``flush_now``
        while the loop task drains) just shares the work, and a cancellation loses nothing.
        """
        todo = self._queued
        while todo > 0:
            done = self._convert_slice(min(todo, DRAIN_SLICE))
            if not done:  # a concurrent drain converted the rest
                break
            todo -= done
            if todo > 0:
                await asyncio.sleep(0)
        self._spill_overflow()

    def _convert_slice(self, limit: int) -> int:
        """Price and convert up to ``limit`` queued events, oldest first; returns how many."""
        events = self._draining
        if not events:
            if not self._queue:
                return 0
            events = self._draining = self._queue
            self._queue = []
        end = min(len(events), limit)
        pending = self._pending
        before = len(pending)
        try:
            unpriced = rows_of_events(self.pricing, events[:end], pending)
        except Exception as exc:  # noqa: BLE001 - one impossible event must not stop billing
            # Rows before the failing event are in; it is set aside; the rest wait for the
            # next slice.
            end = len(pending) - before + 1
            self._set_aside(dataclasses.asdict(events[end - 1]), "event", exc)
            self._resolved += 1
            unpriced = sum(1 for row in itertools.islice(pending, before, None) if not row.priced)
        finally:
            # Dropped slice by slice, so their deallocation is spread out too.
            del events[:end]
        metrics = self.metrics
        metrics.rows_unpriced_at_flush += unpriced
        # Costs summed per (provider, model) here (compiled where built: the rows' slots
        # read in place), then one ``add_cost`` per pair: a method call per row was ~0.3 µs
        # of the drain.  Pairs are added in order of first appearance, so the metric's
        # bound on distinct models picks the same ones.
        costs: dict[tuple[str, str | None], int] = {}
        partial = row_totals(pending, before, costs)
        for (provider, model), cost in costs.items():
            metrics.add_cost(provider, model, cost)
        metrics.rows_priced_partial += partial
        return end

    def _set_aside(self, record: dict[str, object], kind: str, exc: BaseException) -> None:
        self.journal.set_aside(record, f"{type(exc).__name__}: {exc}")
        self.metrics.rows_rejected += 1
        log.error("usage %s %s refused (%s: %s); kept in %s", kind, record.get("request_id"),
                  type(exc).__name__, exc, self.journal.rejected_path)

    def _spill_overflow(self) -> None:
        pending = self._pending
        overflow = len(pending) - self.max_pending_rows
        if overflow > 0:
            now = time.monotonic()
            if now < self._journal_retry_at:
                return  # (the journal failed a moment ago: not a JSON dump of the backlog per drain)
            spill = list(itertools.islice(pending, overflow))
            try:
                self.metrics.rows_spilled += self.journal.spill(spill)
            except OSError as exc:
                # The journal cannot take them (a full disk, an unwritable directory): they
                # stay in memory, over the bound, for the store or a later drain's spill.
                # (Popped first, they were lost; raised, the error ended the flusher's task:
                # nothing was flushed again until a restart.)
                self._journal_retry_at = now + JOURNAL_RETRY_S
                self._journal_failed(exc, len(spill))
                return
            for _ in range(overflow):
                pending.popleft()
            self._journal_failures = 0
            self._resolved += overflow
            log.warning("usage backlog over %d rows: %d spilled to %s",
                        self.max_pending_rows, overflow, self.journal.path)

    def _journal_failed(self, exc: OSError, rows: int) -> None:
        """A spill failed: logged at the first failure of a run and every 100th after."""
        self.metrics.flush_failures += 1
        self._journal_failures += 1
        if self._journal_failures == 1 or self._journal_failures % 100 == 0:
            log.error("usage backlog: %d rows could not be journaled to %s (%s: %s); kept in memory "
                      "(%d rows), %d failures", rows, self.journal.path, type(exc).__name__, exc,
                      len(self._pending), self._journal_failures)

    async def _flush_once(self) -> bool:
        # One flush at a time: two (flush_now while the loop task flushes) would write the
        # same head of the backlog and then both pop it, losing the rows after it.
        async with self._flush_lock:
            return await self._flush_head()

    async def _flush_head(self) -> bool:
        pending = self._pending
        batch = list(itertools.islice(pending, self.batch_size))
        if not batch:
            return True
        started = time.perf_counter()
        rejected_before = self.metrics.rows_rejected
        try:
            inserted = await self._write_isolating(batch)
        except Exception as exc:  # noqa: BLE001 - any store failure: keep the rows, retry later
            self.metrics.flush_failures += 1
            self._retry_delay_s = min(MAX_RETRY_DELAY_S, max(0.5, self._retry_delay_s * 2))
            log.warning("usage flush of %d rows failed (%s); retrying in %.1fs",
                        len(batch), type(exc).__name__, self._retry_delay_s)
            return False
        for _ in batch:
            pending.popleft()
        self._resolved += len(batch)
        if self.wal is not None:
            await self.wal.resolved(self._resolved)
        retried = self._retry_delay_s > 0
        self._retry_delay_s = 0.0
        self.metrics.rows_written += inserted
        duplicates = len(batch) - inserted - (self.metrics.rows_rejected - rejected_before)
        if duplicates:
            # Never silent: a batch retried after a failure whose commit may have happened
            # explains some; anything else is two requests with one id.
            self.metrics.rows_duplicate += duplicates
            if not retried:
                self.metrics.rows_duplicate_id += duplicates
            log.log(logging.WARNING if retried else logging.ERROR,
                    "usage flush: %d of %d rows had a request id already stored, skipped (%s)",
                    duplicates, len(batch),
                    "a retried batch" if retried else "duplicate request ids")
        self.metrics.flushes += 1
        self.metrics.last_flush_s = time.perf_counter() - started
        self.metrics.observe_flush(self.metrics.last_flush_s)
        return True

    async def _write_isolating(self, rows: list[UsageRow]) -> int:
        """``write_usage``, splitting the batch around rows the store refuses (see the
        poison policy above); any other failure is raised with nothing set aside, and the
        halves already written are idempotent when the batch is retried."""
        try:
            return await self.store.write_usage(rows)
        except Exception as exc:
            if not self.store.rejects_data(exc):
                raise
            if len(rows) == 1:
                self._set_aside(Journal.record_of(rows[0]), "row", exc)
                return 0
        mid = len(rows) // 2
        return await self._write_isolating(rows[:mid]) + await self._write_isolating(rows[mid:])
