"""Faults on the sharded PostgreSQL usage writer (migration 11): the chaos run.

    .venv/bin/python -m benchmarks.pg_writer_chaos --dsn postgresql://127.0.0.1:5432/test --rounds 40

Two store instances, each with managed mode's synchronous writer (``GroupWriter``: up to
``Store.write_batches_in_flight`` = 3 usage batches in flight, each on its own counter
shard), write rows of one project and user while hard-limited requests of another project
reserve and settle from both instances.  Each round stacks batches in flight (a
transaction holds the counter rows locked) and then does one of:

* ``kill``: ``pg_terminate_backend`` of the instances' busy backends (or all of them)
  while the batches wait, then the lock goes;
* ``pause``: instance B reaches PostgreSQL through a fault proxy that stops passing bytes
  (the server paused, as B sees it) for a while, then resets B's connections;
* ``abandon``: instance A's writer gives up its batches in flight (``GroupWriter.abandon``,
  what a stop past its bound does: the events are journaled) and instance B replays them
  while the originals still wait on the lock; then the lock goes and the originals commit
  too (or are killed: ``abandon+kill``).

Rows a writer could not write go to its fallback and are replayed (through
``write_usage``, as the journal's replay does) until they are written; a settle that
fails is replayed the same way and its reservation released (as managed mode does).
Afterwards: every request has exactly one usage row; each counter, summed across its
shards, equals the log summed; nothing is reserved; the hard limit is not overshot.
``tests/test_pg_writer_faults.py`` runs a few rounds of this in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from plano_fast.managed.context import BATCH_BESIDE_BEHIND, BATCH_BESIDE_MIN_ROWS, GroupWriter
from plano_fast.store import BudgetTarget, Reservation, Store, UsageRow, open_store
from plano_fast.store.migrate import migrate
from plano_fast.usage import STATUS_OK, UsageEvent

FAULTS = ("kill", "kill", "pause", "abandon", "abandon+kill")
#: the hard-limited project's limit (by default: reached about half-way through 40 rounds)
#: and what each of its requests reserves (then spends up to 300 less)
LIMIT_NANO_USD = 100_000
RESERVE_NANO_USD = 1_000


@dataclass
class Report:
    rounds: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    reservations_asked: int = 0
    reservations_granted: int = 0
    reserve_errors: int = 0
    settle_errors: int = 0
    fallback_rows: int = 0
    abandoned_rows: int = 0
    backends_killed: int = 0
    replays: int = 0
    limit_nano_usd: int = 0
    #: the most batches instance A's writer had in flight when a fault struck
    in_flight_at_fault: int = 0
    limited_spent_nano_usd: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"rounds {dict(self.rounds)}, {self.rows} rows, reservations {self.reservations_granted}/"
                f"{self.reservations_asked} granted ({self.reserve_errors} reserve errors, {self.settle_errors} "
                f"settle errors), {self.fallback_rows} rows to the fallback, {self.abandoned_rows} abandoned, "
                f"{self.backends_killed} backends killed, {self.replays} replay writes, up to "
                f"{self.in_flight_at_fault} batches in flight at a fault, hard limit "
                f"{self.limited_spent_nano_usd}/{self.limit_nano_usd} spent; "
                f"problems: {self.problems or 'none'}")


def _row(request_id: str, cost: int, project: str, user: str) -> UsageRow:
    return UsageRow(
        request_id=request_id, time_ns=time.time_ns(), project_id=project, user_id=user, key_hash=None,
        token_id=None, provider="openai", model="gpt-4o-mini", input_tokens=10, output_tokens=2,
        cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0, streaming=False, status="ok",
        http_status=200, priced=True, cost_nano_usd=cost, duration_us=100,
    )  # fmt: skip


def _event(row: UsageRow) -> UsageEvent:
    return UsageEvent(row.request_id, row.time_ns, "openai", "gpt-4o-mini", False, STATUS_OK, 200, 10, 2,
                      has_usage=True, project_id=row.project_id)


class _Instance:
    """One store instance, its writer, and what it owes a replay."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self.fallback: list[UsageEvent] = []
        self.writer = GroupWriter(store, self.fallback.append)


async def _until_done(call: Callable[[], Awaitable[object]], what: str, report: Report) -> bool:
    """``call`` retried until the database takes it (60 s at most: then a problem)."""
    end = time.monotonic() + 60
    while True:
        try:
            await call()
            return True
        except Exception as exc:  # noqa: BLE001 - retried, as the journal's replay and release_soon are
            if time.monotonic() > end:
                report.problems.append(f"{what} kept failing: {type(exc).__name__}")
                return False
            await asyncio.sleep(0.2)


async def _replay(store: Store, rows: list[UsageRow], report: Report) -> None:
    """``rows`` written (a row that committed already is skipped by the store), retried
    until the database takes them: the journal's replay."""
    if rows and await _until_done(lambda: store.write_usage(rows), f"replay of {len(rows)} rows", report):
        report.replays += 1


async def _release(store: Store, reservation: Reservation, report: Report) -> None:
    """The reservation given back, retried: managed mode's ``release_soon``."""
    await _until_done(lambda: store.release(reservation), "release", report)


async def _kill(admin: Any, tag: str, busy_only: bool) -> int:
    killed = await admin.fetchval(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name "
        "LIKE $1 AND datname = current_database() AND pid <> pg_backend_pid()"
        + (" AND state <> 'idle'" if busy_only else "") + ") t", tag + "-%")
    return int(killed)


async def _until_in_flight(writer: GroupWriter, batches: int, timeout_s: float = 5.0) -> int:
    end = time.monotonic() + timeout_s
    while len(writer._inflight) < batches and time.monotonic() < end:  # noqa: SLF001 - observed, not changed
        await asyncio.sleep(0.02)
    return len(writer._inflight)  # noqa: SLF001


async def chaos(dsn: str, *, rounds: int, seed: int, rows_per_round: int = 40, proxy_dsn: str | None = None,
                proxy: Any = None, faults: Sequence[str] = (), limit_nano_usd: int = LIMIT_NANO_USD) -> Report:
    """The run: ``rounds`` rounds of faults on the database ``dsn`` (a fresh schema),
    ``faults`` in turn or, without them, drawn at random; instance B through ``proxy_dsn``
    (a ``tests.fault_proxy.FaultProxy`` in front of the same database, ``proxy``) when
    given, else the pause rounds are kill rounds."""
    from tests.pg import with_query

    rng = random.Random(seed)
    report = Report()
    tag = "pfchaos-" + secrets.token_hex(4)
    rows: dict[str, UsageRow] = {}
    limited = [BudgetTarget("project", "p2", "total", 0, limit_nano_usd)]
    report.limit_nano_usd = limit_nano_usd
    admin = await asyncpg.connect(dsn)
    a_store = open_store(with_query(dsn, application_name=tag + "-a"), "unused.db", max_size=8, command_timeout=30)
    b_store = open_store(with_query(proxy_dsn or dsn, application_name=tag + "-b"), "unused.db", max_size=8,
                         command_timeout=30)
    async with a_store as sa, b_store as sb:
        await migrate(sa)
        a, b = _Instance(sa, "a"), _Instance(sb, "b")
        # the counters exist on several shards before the faults start
        for n in range(4):
            rid = f"seed-{n}"
            rows[rid] = _row(rid, 3, "p1", "u1")
            await (sa if n % 2 else sb).write_usage([rows[rid]])
        settle_tasks: list[asyncio.Task[None]] = []
        serial = 0

        async def limited_request(inst: _Instance, rid: str) -> None:
            report.reservations_asked += 1
            try:
                res = await inst.store.reserve(limited, RESERVE_NANO_USD, ttl_s=600)
            except Exception:  # noqa: BLE001 - managed mode answers 503: nothing forwarded, no row
                report.reserve_errors += 1
                return
            if res is None:
                return
            report.reservations_granted += 1
            row = rows[rid] = _row(rid, RESERVE_NANO_USD - rng.randrange(300), "p2", "u1")
            await asyncio.sleep(rng.random() * 0.05)  # (the provider answering)
            try:
                await inst.store.settle(res, row)
            except Exception:  # noqa: BLE001 - managed mode: the row journaled, the reservation released
                report.settle_errors += 1
                await _replay(inst.store, [row], report)
                await _release(inst.store, res, report)

        for round_no in range(rounds):
            fault = faults[round_no % len(faults)] if faults else rng.choice(FAULTS)
            if fault == "pause" and proxy is None:
                fault = "kill"
            report.rounds[fault] += 1
            holder = await asyncpg.connect(dsn)
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT 1 FROM spending_counters WHERE scope_id IN ('p1', 'u1') FOR UPDATE")
            if fault == "pause":
                proxy.hang()
            futures: dict[str, asyncio.Future[None]] = {}
            # waves of rows: each writer gets batches beside each other (each wave enough to
            # start one: BATCH_BESIDE_MIN_ROWS, and BATCH_BESIDE_BEHIND x the rows in flight)
            in_flight_rows = 0
            for _ in range(3):
                wave = max(BATCH_BESIDE_MIN_ROWS, rows_per_round // 6, BATCH_BESIDE_BEHIND * in_flight_rows)
                in_flight_rows += wave
                for inst in (a, b):
                    for _ in range(wave):
                        serial += 1
                        rid = f"r{round_no}-{serial}"
                        rows[rid] = _row(rid, 1 + rng.randrange(50), "p1", "u1")
                        report.rows += 1
                        futures[rid] = inst.writer.write(rows[rid], _event(rows[rid]))
                await asyncio.sleep(0.05)
            for _ in range(rng.randrange(2, 8)):
                serial += 1
                rid = f"h{round_no}-{serial}"
                settle_tasks.append(asyncio.create_task(limited_request(rng.choice((a, b)), rid)))
            in_flight = await _until_in_flight(a.writer, a.writer.in_flight)
            report.in_flight_at_fault = max(report.in_flight_at_fault, in_flight)
            await asyncio.sleep(rng.random() * 0.2)
            if fault == "pause":
                await asyncio.sleep(0.3 + rng.random() * 0.7)
                proxy.restore()
            if fault.startswith("abandon"):
                abandoned = a.writer.abandon()
                report.abandoned_rows += len(abandoned)
                for event in abandoned:  # (a queued one's future is never resolved: the stop left)
                    futures.pop(event.request_id, None)
                # replayed by the other instance while the originals still wait on the lock
                settle_tasks.append(asyncio.create_task(
                    _replay(b.store, [rows[e.request_id] for e in abandoned], report)))
                await asyncio.sleep(0.1)
            if "kill" in fault:
                report.backends_killed += await _kill(admin, tag, busy_only=rng.random() < 0.7)
            await asyncio.sleep(rng.random() * 0.1)
            await tx.rollback()
            await holder.close()
            pending = (await asyncio.wait(futures.values(), timeout=60))[1] if futures else set()
            if pending:
                report.problems.append(f"round {round_no}: {len(pending)} writes never resolved")
            for inst in (a, b):
                if inst.fallback:
                    report.fallback_rows += len(inst.fallback)
                    await _replay(inst.store, [rows[e.request_id] for e in inst.fallback], report)
                    inst.fallback.clear()
        await asyncio.gather(*settle_tasks)
        await _check(admin, rows, report)
    await admin.close()
    return report


async def _check(admin: Any, rows: dict[str, UsageRow], report: Report) -> None:
    """The ledger: one row per request, counters == the log across shards, nothing
    reserved, the hard limit held."""
    logged = Counter(r[0] for r in await admin.fetch("SELECT request_id FROM usage_log"))
    missing = set(rows) - set(logged)
    extra = set(logged) - set(rows)
    twice = [rid for rid, n in logged.items() if n > 1]
    if missing or extra or twice:
        report.problems.append(f"rows: {len(missing)} missing, {len(extra)} unknown, {len(twice)} twice")
    for kind, column, scope in (("project", "project_id", "p1"), ("project", "project_id", "p2"),
                                ("user", "user_id", "u1")):
        spent, reserved = await admin.fetchrow(
            "SELECT COALESCE(SUM(spent_nano_usd), 0), COALESCE(SUM(reserved_nano_usd), 0) FROM spending_counters "
            "WHERE scope_kind = $1 AND scope_id = $2 AND period = 'total'", kind, scope)
        log_sum = await admin.fetchval(
            f"SELECT COALESCE(SUM(cost_nano_usd), 0) FROM usage_log WHERE priced AND {column} = $1",  # noqa: S608
            scope)
        expected = sum(r.cost_nano_usd or 0 for r in rows.values()
                       if (r.project_id if kind == "project" else r.user_id) == scope)
        if not (int(spent) == int(log_sum) == expected and int(reserved) == 0):
            report.problems.append(f"{kind} {scope}: spent {spent}, log {log_sum}, expected {expected}, "
                                   f"reserved {reserved}")
        if scope == "p2":
            report.limited_spent_nano_usd = int(spent)
            if int(spent) > report.limit_nano_usd:
                report.problems.append(f"hard limit overshot: {spent} > {report.limit_nano_usd}")
    open_reservations = await admin.fetchval("SELECT count(*) FROM spending_reservations")
    if open_reservations:
        report.problems.append(f"{open_reservations} reservations left")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from tests.fault_proxy import FaultProxy, dsn_target, proxied_dsn
    from tests.pg import temp_schema

    with temp_schema(args.dsn, "pfchaos") as dsn, FaultProxy(dsn_target(dsn)) as proxy:
        started = time.monotonic()
        report = asyncio.run(chaos(dsn, rounds=args.rounds, seed=args.seed,
                                   proxy_dsn=proxied_dsn(dsn, proxy.port), proxy=proxy))
    print(f"{args.rounds} rounds in {time.monotonic() - started:.1f} s: {report.line()}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
