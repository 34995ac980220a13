"""One suite, both stores: every test runs against SQLite (a temp file) and PostgreSQL (a
fresh schema in this session's own database, see tests/pg.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import os
import random
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from plano_fast.store import (
    REQUIRED_SCHEMA_VERSION,
    AlreadyExists,
    BudgetTarget,
    CounterKey,
    InvalidValue,
    MissingReference,
    PipeTarget,
    SchemaTooNew,
    SchemaTooOld,
    SqlStore,
    Store,
    UsageRow,
    counter_deltas,
    day_start,
    month_start,
    open_store,
    period_start,
    usage_row_from_event,
)
from plano_fast.store.migrate import load_migrations, migrate, run_migrate, schema_version
from tests import pg

ROOT = Path(__file__).resolve().parents[1]
Body = Callable[[Store], Awaitable[None]]


def ns(year: int, month: int, day: int, h: int = 0, m: int = 0, s: int = 0, frac_ns: int = 0) -> int:
    t = dt.datetime(year, month, day, h, m, s, tzinfo=dt.UTC)
    return int(t.timestamp()) * 1_000_000_000 + frac_ns


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Backend:
    kind: str
    database_url: str | None
    sqlite_path: str

    def store(self, **options: Any) -> Store:
        return open_store(self.database_url, self.sqlite_path, **options)

    def run(self, body: Body, *, migrated: bool = True, **options: Any) -> None:
        async def main() -> None:
            async with self.store(**options) as store:
                if migrated:
                    await migrate(store)
                await body(store)

        asyncio.run(main())


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", None, str(tmp_path / "plano_fast.db"))
        return
    database: str = request.getfixturevalue("pg_database")
    with pg.temp_schema(database) as dsn:
        yield Backend("postgres", dsn, str(tmp_path / "unused.db"))


_counter = 0


def usage(
    *,
    t: int,
    project: str | None = "p1",
    user: str | None = None,
    key: str | None = None,
    cost: int | None = None,
    model: str | None = "gpt-4o-mini",
    request_id: str | None = None,
    provider: str = "openai",
) -> UsageRow:
    global _counter
    _counter += 1
    return UsageRow(
        request_id=request_id or f"req-{_counter}-{random.getrandbits(40):x}",
        time_ns=t,
        project_id=project,
        user_id=user,
        key_hash=key,
        token_id=None,
        provider=provider,
        model=model,
        input_tokens=100,
        output_tokens=20,
        cache_read_tokens=5,
        cache_write_tokens=1,
        reasoning_tokens=3,
        streaming=True,
        status="ok",
        http_status=200,
        priced=cost is not None,
        cost_nano_usd=cost,
        duration_us=1234,
    )


async def all_usage(store: Store) -> list[UsageRow]:
    return await store.recent_usage(None, limit=10**9)


async def assert_counters_match_log(store: Store) -> None:
    """spent of every counter == sum of the priced log rows in its scope and period."""
    expected = counter_deltas(await all_usage(store))
    actual = {c.key: c.spent_nano_usd for c in await store.load_counters() if c.spent_nano_usd}
    assert actual == expected
    for key, spent in expected.items():
        if key.period == "total":
            assert await store.sum_usage_cost(key.scope_id, scope_kind=key.scope_kind) == spent


# --------------------------------------------------------------------------- migrations


def test_migrate_from_empty_then_nothing(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert store.kind == backend.kind
        assert await store.applied_migrations() == []
        assert await schema_version(store) == 0
        with pytest.raises(SchemaTooOld) as info:
            await store.check_schema()
        assert "plano-fast migrate" in str(info.value)
        latest = len(load_migrations(store.kind))
        assert await migrate(store) == list(range(1, latest + 1))
        assert await migrate(store) == []
        assert await store.applied_migrations() == list(range(1, latest + 1))
        assert await schema_version(store) == latest >= REQUIRED_SCHEMA_VERSION
        await store.check_schema()

    backend.run(body, migrated=False)


def test_migration_8_drops_only_the_unread_indexes(backend: Backend) -> None:
    """Schema 8 drops usage_log_price_status (no query reads it) and spending_reservations'
    expiry and owner indexes (the sweeps scan the small table of in-flight reservations);
    the indexes the usage queries use stay."""
    async def body(store: Store) -> None:
        assert isinstance(store, SqlStore)
        if store.kind == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN (?, ?)"
        else:
            sql = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename IN (?, ?)"
        names = {r[0] for r in await store._fetch(sql, ("usage_log", "spending_reservations"))}
        assert not names & {"usage_log_price_status", "spending_reservations_expiry", "spending_reservations_owner"}
        assert {"usage_log_project_time", "usage_log_unpriced"} <= names

    backend.run(body)


def test_migration_9_drops_the_user_time_index(backend: Backend) -> None:
    """Schema 9 drops usage_log_user_time: no query reads usage_log by user (issue 27: an
    index insert and a WAL page per managed row); a user's spend is still summed right,
    from a usage_log scan, and the indexes the usage queries use stay."""
    async def body(store: Store) -> None:
        assert isinstance(store, SqlStore)
        assert await store.schema_version() == REQUIRED_SCHEMA_VERSION >= 9
        if store.kind == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
        else:
            sql = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ?"
        names = {r[0] for r in await store._fetch(sql, ("usage_log",))}
        assert "usage_log_user_time" not in names
        assert {"usage_log_project_time", "usage_log_unpriced"} <= names
        t = 1_700_000_000 * 10**9
        await store.write_usage(
            [usage(t=t, user="u1", cost=700), usage(t=t, user="u2", cost=11), usage(t=t + 1, user="u1", cost=5)]
        )
        assert await store.sum_usage_cost("u1", scope_kind="user") == 705

    backend.run(body)


def test_schema_older_than_required_is_refused(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert isinstance(store, SqlStore)
        await store._execute("DELETE FROM schema_migrations WHERE version = ?", (REQUIRED_SCHEMA_VERSION,))
        with pytest.raises(SchemaTooOld) as info:
            await store.check_schema()
        assert info.value.current == REQUIRED_SCHEMA_VERSION - 1
        assert "plano-fast migrate" in str(info.value)

    backend.run(body)


def test_schema_newer_than_known_is_refused_before_anything_is_applied(backend: Backend) -> None:
    """A database that records a version newer than this code ships (here N+1, with N's own
    row removed, so there is one migration this code could apply): ``check_schema`` (what
    the gateway's start and its store-retry loop run) and ``migrate`` raise ``SchemaTooNew``
    naming N+1 and N, and ``migrate`` applied nothing (N is still absent).  On main both
    passed: ``migrate`` applied N to a newer database."""
    async def body(store: Store) -> None:
        assert isinstance(store, SqlStore)
        newest = len(load_migrations(store.kind))
        await store._execute("DELETE FROM schema_migrations WHERE version = ?", (newest,))
        await store._execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ns) VALUES (?, ?, ?)",
            (newest + 1, "from_a_newer_release", 1),
        )
        for refused in (store.check_schema, lambda: migrate(store)):
            with pytest.raises(SchemaTooNew) as info:
                await refused()
            assert (info.value.current, info.value.known) == (newest + 1, newest)
            assert f"schema version {newest + 1}" in str(info.value)
        assert newest not in await store.applied_migrations()

    backend.run(body)


def test_failed_migration_leaves_nothing_behind(backend: Backend) -> None:
    async def body(store: Store) -> None:
        bad = "CREATE TABLE oops (a INTEGER);\nINSERT INTO oops VALUES (1);\nSELECT * FROM no_such_table;\n"
        with pytest.raises(Exception):  # noqa: B017 - the backend's own SQL error
            await store.apply_migration(900, "bad", bad)
        assert 900 not in await store.applied_migrations()
        # The table was rolled back too: creating it again works.
        assert await store.apply_migration(900, "good", "CREATE TABLE oops (a INTEGER);\n")
        assert 900 in await store.applied_migrations()
        assert not await store.apply_migration(900, "good", "CREATE TABLE oops (a INTEGER);\n")

    backend.run(body)


def test_concurrent_migrate_applies_once(backend: Backend) -> None:
    async def main() -> None:
        a, b = backend.store(), backend.store()
        async with a, b:
            results = await asyncio.gather(migrate(a), migrate(b))
            latest = len(load_migrations(backend.kind))
            assert sorted(results[0] + results[1]) == list(range(1, latest + 1))
            await a.check_schema()

    asyncio.run(main())


def test_run_migrate_helper(backend: Backend) -> None:
    latest = len(load_migrations(backend.kind))
    assert asyncio.run(run_migrate(backend.database_url, backend.sqlite_path)) == list(range(1, latest + 1))
    assert asyncio.run(run_migrate(backend.database_url, backend.sqlite_path)) == []


def test_migration_files_are_shipped_in_the_package() -> None:
    # The package holds the real files (a symlink there left wheels without them); the
    # top-level migrations/ the design card names is a link to the package's copy.
    packaged_dir = ROOT / "plano_fast" / "migrations"
    assert not packaged_dir.is_symlink()
    for kind in ("sqlite", "postgres"):
        assert not (packaged_dir / kind).is_symlink()
        files = sorted(packaged_dir.joinpath(kind).glob("*.sql"))
        assert files and not any(p.is_symlink() for p in files)
        assert (ROOT / "migrations" / kind).resolve() == (packaged_dir / kind).resolve()
        assert [m.sql for m in load_migrations(kind)] == [p.read_text(encoding="utf-8") for p in files]
    sqlite_versions = [(m.version, m.name) for m in load_migrations("sqlite")]
    postgres_versions = [(m.version, m.name) for m in load_migrations("postgres")]
    assert sqlite_versions == postgres_versions
    assert sqlite_versions[-1][0] == REQUIRED_SCHEMA_VERSION


def test_both_backends_have_the_same_tables_and_columns(pg_database: str, tmp_path: Path) -> None:
    async def columns(store: Store) -> dict[str, list[str]]:
        assert isinstance(store, SqlStore)
        if store.kind == "sqlite":
            tables = [r[0] for r in await store._fetch("SELECT name FROM sqlite_master WHERE type = 'table'")]
            out = {}
            for t in tables:
                out[t] = sorted(r[1] for r in await store._fetch(f"PRAGMA table_info({t})"))
            return out
        rows = await store._fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
        result: dict[str, list[str]] = {}
        for t, c in rows:
            result.setdefault(t, []).append(c)
        return {t: sorted(c) for t, c in result.items()}

    found: dict[str, dict[str, list[str]]] = {}
    with pg.temp_schema(pg_database) as dsn:
        for b in (Backend("sqlite", None, str(tmp_path / "x.db")), Backend("postgres", dsn, "")):

            async def body(store: Store, kind: str = b.kind) -> None:
                found[kind] = await columns(store)

            b.run(body)
    assert found["sqlite"] == found["postgres"]
    for table in ("users", "projects", "registered_api_keys", "proxy_tokens", "pipes", "pipe_targets",
                  "provider_keys", "usage_log", "spending_limits", "spending_counters", "custom_pricing",
                  "spending_reservations", "schema_migrations"):  # fmt: skip
        assert table in found["postgres"], table


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    b = Backend("sqlite", None, str(tmp_path / "sub" / "dir" / "plano.db"))

    async def body(store: Store) -> None:
        assert isinstance(store, SqlStore)
        assert (await store._fetch("PRAGMA journal_mode"))[0][0] == "wal"
        assert (await store._fetch("PRAGMA foreign_keys"))[0][0] == 1

    b.run(body)
    # The file is a plain SQLite database other tools can read.
    with sqlite3.connect(b.sqlite_path) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] >= 1
    conn.close()


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    from plano_fast.store.postgres import PostgresStore
    from plano_fast.store.sqlite import SqliteStore

    assert isinstance(open_store(None, str(tmp_path / "a.db")), SqliteStore)
    assert isinstance(open_store("", str(tmp_path / "a.db")), SqliteStore)
    assert isinstance(open_store("postgresql://u@h/db", "x"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db", "x"), PostgresStore)
    with pytest.raises(InvalidValue):
        open_store("mysql://u@h/db", "x")


# --------------------------------------------------------------------------- usage + counters


def test_period_starts() -> None:
    assert period_start("total", ns(2024, 5, 6, 7)) == 0
    assert period_start("daily", ns(2024, 1, 31, 23, 59, 59, 999_999_999)) == ns(2024, 1, 31) // 10**9
    assert period_start("daily", ns(2024, 2, 1, 0, 0, 0, 1)) == ns(2024, 2, 1) // 10**9
    assert period_start("monthly", ns(2024, 2, 29, 23, 59, 59, 999_999_999)) == ns(2024, 2, 1) // 10**9
    assert period_start("monthly", ns(2024, 12, 31, 23, 59, 59)) == ns(2024, 12, 1) // 10**9
    assert month_start(ns(2025, 1, 1)) == ns(2025, 1, 1) // 10**9
    assert day_start(ns(2024, 3, 1, 12)) == ns(2024, 3, 1) // 10**9
    with pytest.raises(InvalidValue):
        period_start("weekly", 0)


def test_usage_row_from_event() -> None:
    from plano_fast.usage import UsageEvent

    ev = UsageEvent(
        request_id="r1", time_ns=5, provider="openai", model="gpt-4o", streaming=True, status="ok",
        http_status=200, input_tokens=10, output_tokens=2, cache_read_tokens=1, reasoning_tokens=3,
        has_usage=True, project_id="p", key_hash=sha("k"), duration_ms=12.3456,
    )  # fmt: skip
    row = usage_row_from_event(ev)
    assert (row.request_id, row.project_id, row.key_hash, row.user_id) == ("r1", "p", sha("k"), None)
    assert (row.input_tokens, row.output_tokens, row.cache_read_tokens, row.reasoning_tokens) == (10, 2, 1, 3)
    assert not row.priced and row.cost_nano_usd is None and row.duration_us == 12346
    priced = usage_row_from_event(ev, user_id="u", token_id="t", cost_nano_usd=99)
    assert priced.priced and priced.cost_nano_usd == 99 and (priced.user_id, priced.token_id) == ("u", "t")


def test_write_usage_is_idempotent(backend: Backend) -> None:
    async def body(store: Store) -> None:
        t = ns(2024, 6, 1, 12)
        batch = [
            usage(t=t, cost=1_000, user="u1", key=sha("k1")),
            usage(t=t + 1, cost=2_500, user="u2"),
            usage(t=t + 2, cost=None, key=sha("k1")),
            usage(t=t + 3, cost=700, project="p2"),
            usage(t=t + 4, cost=0),
            usage(t=t + 5, cost=50, project=None, user=None),
        ]
        assert await store.write_usage(batch) == 6
        counters_once = await store.load_counters()
        assert await store.write_usage(batch) == 0
        assert await store.write_usage(list(reversed(batch))) == 0
        assert await store.load_counters() == counters_once
        assert len(await all_usage(store)) == 6
        assert await store.sum_usage_cost("p1") == 3_500
        assert await store.sum_usage_cost("p2") == 700
        assert await store.sum_usage_cost("u1", scope_kind="user") == 1_000
        assert await store.sum_usage_cost(sha("k1"), scope_kind="key") == 1_000
        total = await store.get_counter(CounterKey("project", "p1", "total", 0))
        assert total is not None and total.spent_nano_usd == 3_500 and total.reserved_nano_usd == 0
        await assert_counters_match_log(store)
        # A partly replayed batch inserts (and counts) only the new rows.
        fresh = usage(t=t + 9, cost=11)
        assert await store.write_usage([batch[0], fresh, batch[1]]) == 1
        assert await store.sum_usage_cost("p1") == 3_511
        await assert_counters_match_log(store)
        assert await store.write_usage([]) == 0

    backend.run(body)


def test_duplicate_request_id_within_one_batch_is_written_once(backend: Backend) -> None:
    async def body(store: Store) -> None:
        row = usage(t=ns(2024, 6, 1), cost=100, request_id="same")
        assert await store.write_usage([row, replace(row, cost_nano_usd=999), row]) == 1
        rows = await all_usage(store)
        assert [(r.request_id, r.cost_nano_usd) for r in rows] == [("same", 100)]
        await assert_counters_match_log(store)

    backend.run(body)


def test_rows_round_trip(backend: Backend) -> None:
    async def body(store: Store) -> None:
        row = usage(t=ns(2024, 6, 1, 1, 2, 3, 456_789_123), cost=123_456_789_012, user="u", key=sha("k"))
        row.token_id = "tok-1"
        unpriced = usage(t=ns(2024, 6, 1, 1, 2, 4), cost=None, model=None)
        unpriced.streaming = False
        await store.write_usage([row, unpriced])
        got = await store.recent_usage("p1")
        assert [r.request_id for r in got] == [unpriced.request_id, row.request_id]  # newest first
        assert replace(got[1], row_id=None, price_status="pending") == replace(row, price_status="pending")
        assert got[1].price_status == "priced" and got[1].row_id is not None
        assert replace(got[0], row_id=None) == unpriced
        assert await store.recent_usage("p1", limit=1) == got[:1]
        assert await store.recent_usage("nope") == []

    backend.run(body)


def test_daily_and_monthly_boundaries(backend: Backend) -> None:
    async def body(store: Store) -> None:
        late = ns(2024, 1, 31, 23, 59, 59, 900_000_000)  # last day of January
        early = ns(2024, 2, 1, 0, 0, 0, 100_000_000)  # first day of February
        mid_late = ns(2024, 3, 15, 23, 59, 59, 900_000_000)
        mid_early = ns(2024, 3, 16, 0, 0, 0, 100_000_000)
        await store.write_usage(
            [
                usage(t=late, cost=1, user="u"),
                usage(t=early, cost=10, user="u"),
                usage(t=mid_late, cost=100, user="u"),
                usage(t=mid_early, cost=1000, user="u"),
            ]
        )
        s = 1_000_000_000

        async def spent(period: str, start: int, kind: str = "project", scope: str = "p1") -> int | None:
            c = await store.get_counter(CounterKey(kind, scope, period, start))
            return None if c is None else c.spent_nano_usd

        for kind, scope in (("project", "p1"), ("user", "u")):
            assert await spent("total", 0, kind, scope) == 1111
            assert await spent("daily", ns(2024, 1, 31) // s, kind, scope) == 1
            assert await spent("daily", ns(2024, 2, 1) // s, kind, scope) == 10
            assert await spent("daily", ns(2024, 3, 15) // s, kind, scope) == 100
            assert await spent("daily", ns(2024, 3, 16) // s, kind, scope) == 1000
            assert await spent("monthly", ns(2024, 1, 1) // s, kind, scope) == 1
            assert await spent("monthly", ns(2024, 2, 1) // s, kind, scope) == 10
            assert await spent("monthly", ns(2024, 3, 1) // s, kind, scope) == 1100
        # Counters of the periods containing an instant: total + that month + that day.
        current = await store.load_counters(at_ns=mid_early)
        assert {(c.scope_kind, c.period, c.spent_nano_usd) for c in current} == {
            ("project", "total", 1111), ("project", "monthly", 1100), ("project", "daily", 1000),
            ("user", "total", 1111), ("user", "monthly", 1100), ("user", "daily", 1000),
        }  # fmt: skip
        assert await store.sum_usage_cost("p1", start_ns=ns(2024, 2, 1), end_ns=ns(2024, 3, 16)) == 110
        await assert_counters_match_log(store)

    backend.run(body)


def test_counters_always_equal_the_log(backend: Backend) -> None:
    rng = random.Random(1234)

    async def body(store: Store) -> None:
        base = ns(2024, 1, 30)
        rows = [
            usage(
                t=base + rng.randrange(0, 5 * 86_400) * 1_000_000_000 + rng.randrange(10**9),
                project=rng.choice(["pa", "pb", "pc", None]),
                user=rng.choice(["ua", "ub", None]),
                key=rng.choice([sha("x"), sha("y"), None]),
                cost=rng.choice([None, rng.randrange(0, 10**12)]),
            )
            for _ in range(600)
        ]
        # Batches overlapping each other: every row is sent twice or more.
        for i in range(0, len(rows), 50):
            await store.write_usage(rows[max(0, i - 30) : i + 50])
        await store.write_usage(rng.sample(rows, 200))
        assert len(await all_usage(store)) == 600
        await assert_counters_match_log(store)
        # Price what is left, twice over, in two shuffled passes.
        todo = await store.fetch_unpriced(1000)
        assert {r.request_id for r in todo} == {r.request_id for r in rows if not r.priced}
        prices = [(r.row_id or 0, rng.choice([None, rng.randrange(10**9)]), "x") for r in todo]
        for _ in range(2):
            rng.shuffle(prices)
            await store.set_prices([(i, c, "priced" if c is not None else "unpriced_unknown") for i, c, _ in prices])
        await assert_counters_match_log(store)

    backend.run(body)


def test_set_prices_never_double_counts(backend: Backend) -> None:
    async def body(store: Store) -> None:
        t = ns(2024, 7, 4, 10)
        rows = [usage(t=t + i, user="u1", key=sha("k"), model=f"m{i % 3}") for i in range(10)]
        rows.append(usage(t=t + 20, cost=5))  # priced on arrival: never fetched
        assert await store.write_usage(rows) == 11
        todo = await store.fetch_unpriced(100)
        assert [r.request_id for r in todo] == [r.request_id for r in rows[:10]]
        assert all(r.row_id is not None and not r.priced and r.price_status == "pending" for r in todo)
        assert len(await store.fetch_unpriced(3)) == 3
        results = [
            (r.row_id or 0, None if r.model == "m2" else 1_000 * (i + 1), "priced" if r.model != "m2" else "unpriced_unknown")
            for i, r in enumerate(todo)
        ]
        assert await store.set_prices(results) == 7
        after_first = await store.sum_usage_cost("p1")
        assert after_first == 5 + sum(c for _, c, _ in results if c is not None)
        # Again, and with different costs: nothing changes.
        assert await store.set_prices(results) == 0
        assert await store.set_prices([(i, 999_999, "priced") for i, c, _ in results if c is not None]) == 0
        assert await store.sum_usage_cost("p1") == after_first
        await assert_counters_match_log(store)
        # Rows with no known price are not fetched again...
        assert await store.fetch_unpriced(100) == []
        unknown = [r for r in await all_usage(store) if r.model == "m2"]
        assert {r.price_status for r in unknown} == {"unpriced_unknown"} and not any(r.priced for r in unknown)
        # ...until requeued (e.g. a custom price for that model was added).
        assert await store.requeue_unpriced(model="m1") == 0
        assert await store.requeue_unpriced(model="m2") == 3
        again = await store.fetch_unpriced(100)
        assert sorted(r.request_id for r in again) == sorted(r.request_id for r in unknown)
        assert await store.set_prices([(r.row_id or 0, 10, "priced") for r in again]) == 3
        assert await store.sum_usage_cost("p1") == after_first + 30
        assert await store.fetch_unpriced(100) == []
        await assert_counters_match_log(store)
        with pytest.raises(InvalidValue):
            await store.set_prices([(1, -5, "priced")])
        assert await store.set_prices([]) == 0

    backend.run(body)


def test_priced_row_needs_integer_cost(backend: Backend) -> None:
    async def body(store: Store) -> None:
        bad = usage(t=ns(2024, 1, 1), cost=10)
        with pytest.raises(InvalidValue):
            await store.write_usage([replace(bad, cost_nano_usd=None)])
        with pytest.raises(InvalidValue):
            await store.write_usage([replace(bad, cost_nano_usd=1.5)])  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await store.write_usage([replace(bad, cost_nano_usd=-1)])
        assert await all_usage(store) == []

    backend.run(body)


def test_priced_row_cost_must_not_be_a_bool(backend: Backend) -> None:
    async def body(store: Store) -> None:
        bad = replace(usage(t=ns(2024, 1, 1), cost=10), cost_nano_usd=True)
        with pytest.raises(InvalidValue):
            await store.write_usage([bad])
        assert await all_usage(store) == []

    backend.run(body)


def test_counter_deltas_equal_a_row_by_row_sum() -> None:
    rng = random.Random(5)
    rows = [
        usage(t=ns(2024, 1, 30, 23) + rng.randrange(3 * 86_400) * 10**9,
              cost=rng.choice([None, 0, rng.randrange(1, 10_000)]),
              project=rng.choice([None, "p1", "p2"]), user=rng.choice([None, "u1", "u2"]),
              key=rng.choice([None, sha("k1")]))
        for _ in range(2_000)
    ]  # fmt: skip
    expected: dict[CounterKey, int] = {}
    for r in rows:
        if not r.priced or not r.cost_nano_usd:
            continue
        for kind, scope_id in (("project", r.project_id), ("user", r.user_id), ("key", r.key_hash)):
            if scope_id is None:
                continue
            for period in ("total", "monthly", "daily"):
                k = CounterKey(kind, scope_id, period, period_start(period, r.time_ns))
                expected[k] = expected.get(k, 0) + r.cost_nano_usd
    assert counter_deltas(rows) == expected


def test_counter_keys_of_a_scope_and_day_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit after commit touches the same scopes' counters: their keys (and the month
    start, a datetime computation) are kept, bounded, not rebuilt per write (issue 27);
    the deltas are the same (the test above)."""
    from plano_fast.store import sql as sql_module

    months: list[int] = []
    real = sql_module._month_start_of_day

    def counted(day_start_s: int) -> int:
        months.append(day_start_s)
        return real(day_start_s)

    monkeypatch.setattr(sql_module, "_month_start_of_day", counted)
    monkeypatch.setattr(sql_module, "_DAY_KEYS", {})
    t = ns(2024, 3, 5, 12)
    for i in range(5):  # five commits of one row each, one project and one user
        deltas = counter_deltas([usage(t=t + i, project="p1", user="u1", cost=10)])
        assert deltas[CounterKey("user", "u1", "monthly", ns(2024, 3, 1) // 10**9)] == 10
    assert len(months) == 2  # (project, user) x one day: once each, not per commit
    for day in range(sql_module._DAY_KEYS_MAX + 5):
        counter_deltas([usage(t=t + day * 86_400 * 10**9, project="p1", cost=1)])
        assert len(sql_module._DAY_KEYS) <= sql_module._DAY_KEYS_MAX


@pytest.mark.parametrize("size", [1, 127, 128, 129, 300, 1000])
def test_partly_replayed_batches_count_only_new_rows(backend: Backend, size: int) -> None:
    """Skipped rows anywhere in a batch (first, middle or last insert chunk)."""

    async def body(store: Store) -> None:
        t = ns(2024, 2, 28, 23)
        rows = [usage(t=t + i * 10**10, cost=i % 5 or None, user=f"u{i % 3}", key=sha(f"k{i % 4}"))
                for i in range(size)]  # fmt: skip
        old = rows[: size // 3] + rows[-(size // 4) :] if size > 3 else rows[:1]
        assert await store.write_usage(old) == len({r.request_id for r in old})
        await assert_counters_match_log(store)
        assert await store.write_usage(rows) == size - len({r.request_id for r in old})
        await assert_counters_match_log(store)
        assert len(await all_usage(store)) == size

    backend.run(body)


def test_sqlite_insert_statement_shapes() -> None:
    from plano_fast.store.sqlite import _INSERT_CHUNK, _chunk_params, _chunk_sizes, _usage_params

    shapes: set[int] = set()
    for n in range(0, 3 * _INSERT_CHUNK + 2):
        sizes = _chunk_sizes(n)
        assert sum(sizes) == n and all(0 < s <= _INSERT_CHUNK for s in sizes)
        assert len(sizes) == -(-n // _INSERT_CHUNK)  # a batch of up to 32 rows: one statement
        shapes.update(sizes)
    assert shapes == set(range(1, _INSERT_CHUNK + 1))
    rows = [usage(t=1, cost=c) for c in (None, 0, 5)]
    rows.append(replace(rows[0], priced=1, cost_nano_usd=7))  # type: ignore[arg-type]
    rows.append(replace(rows[0], priced=0, cost_nano_usd=7))  # type: ignore[arg-type]
    rows.append(replace(rows[0], priced=False, cost_nano_usd=7, streaming=2))  # type: ignore[arg-type]
    assert _chunk_params(rows) == [v for r in rows for v in _usage_params(r)]


def test_sqlite_insert_leaves_out_only_all_null_columns_and_all_zero_parts() -> None:
    """A chunk's INSERT drops exactly the optional columns None in every row and each group
    of rare usage parts (NOT NULL DEFAULT 0) 0 in every row, and binds the rest of the flat
    parameters in order; cache reads and reasoning are always bound."""
    from plano_fast.store.sql import USAGE_WRITE_COLUMNS
    from plano_fast.store.sqlite import (
        _OMITTABLE,
        _OMITTABLE_ZERO_GROUPS,
        _USAGE_WIDTH,
        _chunk_params,
        _insert_of,
        _multi_insert,
    )

    rows = [replace(usage(t=1, cost=c, user=u, model=m), cache_write_tokens=0, cache_read_tokens=0)
            for c, u, m in ((None, None, "m"), (5, None, None), (0, "u1", None))]  # fmt: skip
    rows[1].audio_input_tokens = 3  # a part set in one row only: kept, with its group
    params = _chunk_params(rows)
    sql, bound = _insert_of(len(rows), params)
    columns = sql[sql.index("(") + 1 : sql.index(")")].split(", ")
    all_null = [c for i, c in enumerate(USAGE_WRITE_COLUMNS)
                if all(params[r * _USAGE_WIDTH + i] is None for r in range(len(rows)))]  # fmt: skip
    all_zero = [c for i, c in enumerate(USAGE_WRITE_COLUMNS)
                if all(params[r * _USAGE_WIDTH + i] == 0 for r in range(len(rows)))]  # fmt: skip
    assert "token_id" in all_null and "user_id" not in all_null and "model" not in all_null
    assert "audio_output_tokens" in all_zero and "audio_input_tokens" not in all_zero
    assert {"cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens"} <= set(all_zero)
    left_out = {c for i, c in enumerate(USAGE_WRITE_COLUMNS) if i in _OMITTABLE and c in all_null}
    for group in _OMITTABLE_ZERO_GROUPS:
        if all(USAGE_WRITE_COLUMNS[i] in all_zero for i in group):
            left_out.update(USAGE_WRITE_COLUMNS[i] for i in group)
    assert {"token_id", "cache_write_tokens", "cache_write_1h_tokens"} <= left_out
    # bound: a part set in one row keeps its whole group; cache reads are never left out
    assert not {"audio_output_tokens", "tool_use_prompt_tokens", "cache_read_tokens"} & left_out
    assert "http_status" not in left_out and "duration_us" not in left_out  # never left out
    assert columns == [c for c in USAGE_WRITE_COLUMNS if c not in left_out]
    kept = [USAGE_WRITE_COLUMNS.index(c) for c in columns]
    assert list(bound) == [params[r * _USAGE_WIDTH + i] for r in range(len(rows)) for i in kept]
    assert sql.count("?") == len(bound)
    # every optional column set somewhere: the full statement, unchanged parameters
    full = replace(rows[0], user_id="u", token_id="t", key_hash=sha("k"), project_id="p", usage_api="openai_chat",
                   usage_raw="{}", price_entry="e", reservation_overrun_nano_usd=1, requested_model="r",
                   attempts=1, attempt_trail="200", cost_nano_usd=3, priced=True, cache_read_tokens=1,
                   cache_write_tokens=1, reasoning_tokens=1, tool_use_prompt_tokens=1, cache_write_1h_tokens=1,
                   audio_input_tokens=1, audio_output_tokens=1)  # fmt: skip
    params = _chunk_params([full])
    assert _insert_of(1, params) == (_multi_insert(1), params)


def test_sqlite_insert_shapes_on_mixed_traffic_stay_few_and_cached() -> None:
    """Mixed traffic (cache reads on 30% of rows, reasoning on 20%, cache writes on 5%,
    the rarer parts on 1% or less, a retry trail on 2%) in batches of 1..120 rows: the
    distinct INSERT shapes are at most 32 chunk sizes x 4 zero-part states per pattern of
    all-None columns, and they all stay in the statement-text cache (no shape is rebuilt
    and prepared again: each miss is ~45 us plus a ~300 us sqlite3 prepare on the event
    loop).  Was: every all-zero part column was left out on its own, 75 shapes here for a
    64-entry cache."""
    from plano_fast.store.sqlite import (
        _HOT_STATEMENTS,
        _OMITTABLE,
        _OMIT_SHAPES,
        _USAGE_WIDTH,
        _chunk_params,
        _chunk_sizes,
        _insert_of,
        _sparse_insert,
    )

    rng = random.Random(1)

    def part(rate: float) -> int:
        return rng.randint(1, 50) if rng.random() < rate else 0

    _sparse_insert.cache_clear()
    shapes: set[str] = set()
    null_patterns: set[tuple[int, ...]] = set()
    for _ in range(2000):
        rows = [replace(usage(t=1, cost=7), cache_read_tokens=part(0.3), reasoning_tokens=part(0.2),
                        cache_write_tokens=part(0.05), cache_write_1h_tokens=part(0.01),
                        tool_use_prompt_tokens=part(0.01), audio_input_tokens=part(0.005),
                        audio_output_tokens=part(0.005), attempt_trail="503,200" if rng.random() < 0.02 else None)
                for _ in range(rng.randint(1, 120))]  # fmt: skip
        start = 0
        for size in _chunk_sizes(len(rows)):
            params = _chunk_params(rows[start : start + size])
            start += size
            shapes.add(_insert_of(size, params)[0])
            null_patterns.add(tuple(i for i in _OMITTABLE if params[i::_USAGE_WIDTH].count(None) == size))
    assert len(null_patterns) == 2  # with and without a retry trail
    assert len(shapes) <= 32 * 4 * len(null_patterns), len(shapes)
    assert 32 * 4 * len(null_patterns) <= _OMIT_SHAPES < _HOT_STATEMENTS
    info = _sparse_insert.cache_info()
    assert info.misses == info.currsize  # every shape built once, none evicted and rebuilt


def test_sqlite_sparse_inserts_store_what_full_ones_do(tmp_path: Path) -> None:
    """Rows written through the column-dropping INSERTs read back exactly as the rows given:
    every None as NULL, every 0 part as 0, every value in its column, whatever mix of
    Nones and zeros each chunk has."""
    base = [usage(t=10**18 + i, cost=(None if i % 3 else i), user=(f"u{i}" if i % 5 == 0 else None),
                  key=(sha(f"k{i}") if i % 7 == 0 else None), model=(None if i % 11 == 0 else "gpt-4o-mini"))
            for i in range(75)]  # fmt: skip
    rows = [replace(r, attempts=None if i % 2 else 2, attempt_trail="503,200" if i % 13 == 0 else None,
                    requested_model="alias" if i == 40 else None, usage_raw='{"u":1}' if i < 32 else None,
                    # usage parts 0 in whole chunks, in some rows of a chunk, or never
                    cache_read_tokens=0 if i < 32 else i % 3, cache_write_tokens=0 if i >= 40 else 1,
                    reasoning_tokens=i if i % 4 == 0 else 0, tool_use_prompt_tokens=0,
                    cache_write_1h_tokens=1 if i == 70 else 0, audio_input_tokens=0, audio_output_tokens=7)
            for i, r in enumerate(base)]  # fmt: skip

    async def body(store: Store) -> None:
        assert await store.write_usage(rows) == len(rows)
        stored = {r.request_id: r for r in await all_usage(store)}
        for r in rows:
            got = stored[r.request_id]
            assert replace(got, row_id=None, price_status=r.price_status) == r
        await assert_counters_match_log(store)

    Backend("sqlite", None, str(tmp_path / "sparse.db")).run(body)


def _raw_usage_log(path: str) -> list[tuple[object, ...]]:
    """Every stored column of every row, with SQLite's type of each value."""
    conn = sqlite3.connect(path)
    try:
        names = [r[1] for r in conn.execute("PRAGMA table_info(usage_log)")]
        select = ", ".join(f"{n}, typeof({n})" for n in names)
        return conn.execute(f"SELECT {select} FROM usage_log ORDER BY id").fetchall()
    finally:
        conn.close()


def test_sqlite_shared_values_store_what_rows_written_alone_do(tmp_path: Path) -> None:
    """Batches whose chunks bind some columns once (a scope, model or outcome alike in every
    row of a chunk) store exactly the rows, column for column and type for type, that the
    same rows written one at a time store (a one-row chunk binds everything per row): chunks
    of one key, of mixed projects, with NULLs in some rows only, unicode, a long raw usage,
    equal strs that are different objects, and one row priced partial or unpriced."""
    long_raw = '{"usage":{"prompt_tokens":1,"pad":"' + "x" * 100_000 + '"}}'
    rows: list[UsageRow] = []
    for i in range(110):
        chunk = i // 32  # 0: one key; 1: mixed projects and models; 2: NULLs in some rows; 3: the rest
        project = "projekt-ü-😀" if chunk == 0 else f"p{i % 3}" if chunk == 1 else "p1"
        row = replace(
            usage(t=10**18 + i, project=project, key=sha("k"), cost=None if i == 75 else 1000 + i,
                  model="модель-x" if chunk != 1 else f"m{i % 2}", user=None if chunk == 2 and i % 2 else "u-é"),
            usage_api="openai_chat", usage_raw=long_raw if i % 10 == 0 else f'{{"n":{i}}}',
            price_entry="".join(["openai/", "gpt"]),  # equal, a new str each row
            price_status="priced_partial" if i == 70 else "priced",
            requested_model="alias" if i in (65, 66) else None, attempt_trail="503,200" if i == 100 else None,
            status="ok" if i != 99 else "upstream_error", http_status=200 if i != 99 else 502,
        )  # fmt: skip
        rows.append(row)

    async def batch(store: Store) -> None:
        assert await store.write_usage(rows) == len(rows)
        await assert_counters_match_log(store)

    async def alone(store: Store) -> None:
        for r in rows:
            assert await store.write_usage([r]) == 1
        await assert_counters_match_log(store)

    from plano_fast.store.sqlite import _insert_of, _chunk_params

    shared = [_insert_of(n, _chunk_params(rows[i : i + n]))[0].count("?1,") for i, n in ((0, 32), (32, 32))]
    assert all(shared), "the chunks bind some columns once"
    Backend("sqlite", None, str(tmp_path / "batch.db")).run(batch)
    Backend("sqlite", None, str(tmp_path / "alone.db")).run(alone)
    written = _raw_usage_log(str(tmp_path / "batch.db"))
    assert len(written) == len(rows)
    assert written == _raw_usage_log(str(tmp_path / "alone.db"))


def test_postgres_usage_records() -> None:
    from plano_fast.store.postgres import _USAGE_COLUMNS, _usage_records

    rows = [usage(t=1, cost=c) for c in (None, 0, 5)]
    rows.append(replace(rows[0], priced=1, cost_nano_usd=7))  # type: ignore[arg-type]
    rows.append(replace(rows[0], priced=0, cost_nano_usd=7, streaming=2))  # type: ignore[arg-type]
    rows.append(replace(rows[2], price_status="priced_partial", cache_write_1h_tokens=1, usage_api="anthropic",
                        usage_raw='{"usage":{}}', price_entry="anthropic/claude-x"))  # fmt: skip
    rows.append(replace(rows[0], price_status="priced_partial"))  # unpriced: pending whatever it says
    expected = [
        tuple(bool(getattr(r, c)) if c in ("streaming", "priced") else getattr(r, c) for c in _USAGE_COLUMNS[:17])
        + (r.cost_nano_usd if r.priced else None, r.duration_us,
           ("priced_partial" if r.price_status == "priced_partial" else "priced") if r.priced else "pending")
        + tuple(getattr(r, c) for c in _USAGE_COLUMNS[20:])
        for r in rows
    ]  # fmt: skip
    assert _usage_records(rows) == expected
    assert [type(v) for v in _usage_records(rows)[3]] == [type(v) for v in expected[3]]


def test_bulk_write_of_ten_thousand_rows(backend: Backend) -> None:
    async def body(store: Store) -> None:
        t = ns(2024, 8, 31, 22)
        rows = [
            usage(t=t + i * 1_000_000_000, cost=i if i % 3 else None, user=f"u{i % 7}", key=sha(f"k{i % 5}"),
                  project=f"p{i % 11}")
            for i in range(10_000)
        ]  # fmt: skip
        assert await store.write_usage(rows) == 10_000
        assert await store.write_usage(rows) == 0
        assert len(await store.fetch_unpriced(20_000)) == sum(1 for r in rows if not r.priced)
        await assert_counters_match_log(store)
        more = [usage(t=t + i, cost=1) for i in range(5_000)]
        for i in range(0, len(more), 1_000):
            assert await store.write_usage(more[i : i + 1_000]) == 1_000
        await assert_counters_match_log(store)

    backend.run(body)


def test_concurrent_overlapping_writers_keep_counters_exact(backend: Backend) -> None:
    async def main() -> None:
        rows = [
            usage(t=ns(2024, 9, 1) + i * 3_600_000_000_000, cost=1 + i, user=f"u{i % 3}", project=f"p{i % 2}")
            for i in range(400)
        ]
        stores = [backend.store() for _ in range(3)]
        for s in stores:
            await s.open()
        try:
            await migrate(stores[0])

            async def writer(store: Store, seed: int) -> int:
                rng = random.Random(seed)
                written = 0
                for i in range(10):
                    # Both PostgreSQL write paths: arrays (< 100 rows) and COPY (>= 100).
                    written += await store.write_usage(rng.sample(rows, 60 if i % 2 else 150))
                return written

            counts = await asyncio.gather(*(writer(stores[i % 3], i) for i in range(6)))
            inserted = await stores[0].write_usage(rows)
            assert sum(counts) + inserted == 400
            await assert_counters_match_log(stores[0])
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


def test_usage_totals(backend: Backend) -> None:
    async def body(store: Store) -> None:
        d1, d2 = ns(2024, 5, 1, 10), ns(2024, 5, 2, 9)
        await store.write_usage(
            [
                usage(t=d1, cost=10, model="a"),
                usage(t=d1 + 1, cost=None, model="a"),
                usage(t=d1 + 2, cost=5, model="b"),
                usage(t=d2, cost=7, model="a"),
                usage(t=d2, cost=7, model=None, provider="anthropic"),
                usage(t=d2, cost=1_000, model="a", project="other"),
            ]
        )
        totals = await store.usage_totals("p1")
        got = [(t.day_start, t.provider, t.model, t.requests, t.cost_nano_usd, t.unpriced_requests) for t in totals]
        day1, day2 = ns(2024, 5, 1) // 10**9, ns(2024, 5, 2) // 10**9
        assert got == [
            (day1, "openai", "a", 2, 10, 1),
            (day1, "openai", "b", 1, 5, 0),
            (day2, "anthropic", None, 1, 7, 0),
            (day2, "openai", "a", 1, 7, 0),
        ]
        assert totals[0].input_tokens == 200 and totals[0].output_tokens == 40
        assert totals[0].cache_read_tokens == 10 and totals[0].reasoning_tokens == 6
        everyone = await store.usage_totals()
        assert sum(t.cost_nano_usd for t in everyone) == 1_029
        only_day2 = await store.usage_totals("p1", start_ns=ns(2024, 5, 2), end_ns=ns(2024, 5, 3))
        assert [t.day_start for t in only_day2] == [day2, day2]

    backend.run(body)


# --------------------------------------------------------------------------- CRUD


def test_projects_and_users(backend: Backend) -> None:
    async def body(store: Store) -> None:
        p = await store.create_project("alpha")
        q = await store.create_project("beta", project_id="fixed-id")
        assert await store.get_project(p.id) == p
        assert await store.get_project("fixed-id") == q
        assert await store.get_project("missing") is None
        assert [x.id for x in await store.list_projects()] == [p.id, q.id]
        with pytest.raises(AlreadyExists):
            await store.create_project("again", project_id="fixed-id")
        u = await store.create_user("Ada", email="ada@example.com")
        assert await store.get_user(u.id) == u
        assert await store.list_users() == [u]
        with pytest.raises(AlreadyExists):
            await store.create_user("Other Ada", email="ada@example.com")
        assert await store.delete_user(u.id)
        assert not await store.delete_user(u.id)
        assert await store.get_user(u.id) is None
        assert await store.delete_project(q.id)
        assert not await store.delete_project(q.id)
        assert await store.list_projects() == [p]

    backend.run(body)


def test_registered_api_keys(backend: Backend) -> None:
    async def body(store: Store) -> None:
        p = await store.create_project("fw")
        h1, h2 = sha("sk-live-one"), sha("sk-live-two")
        k1 = await store.register_api_key(h1, p.id, "openai", "https://api.openai.com", "one", "10.0.0.7")
        k2 = await store.register_api_key(h2, p.id, "anthropic", "https://api.anthropic.com")
        assert await store.get_api_key(h1) == k1
        assert k1.is_active and k1.egress_ip == "10.0.0.7" and k2.display_name is None
        assert {k.key_hash for k in await store.list_active_api_keys()} == {h1, h2}
        assert {k.key_hash for k in await store.list_api_keys(p.id)} == {h1, h2}
        assert await store.list_api_keys("other") == []
        with pytest.raises(AlreadyExists):
            await store.register_api_key(h1, p.id, "openai", "https://api.openai.com")
        with pytest.raises(MissingReference):
            await store.register_api_key(sha("x"), "no-such-project", "openai", "https://api.openai.com")
        # Raw keys are refused, by the API and by the schema itself.
        for raw in ("sk-live-one", h1.upper(), h1[:-1], h1 + "0"):
            with pytest.raises(InvalidValue):
                await store.register_api_key(raw, p.id, "openai", "https://api.openai.com")
        assert isinstance(store, SqlStore)
        with pytest.raises(InvalidValue):
            await store._execute(
                "INSERT INTO registered_api_keys (key_hash, project_id, provider, upstream_url, "
                "created_at_ns, updated_at_ns) VALUES (?, ?, ?, ?, ?, ?)",
                ("sk-" + "a" * 61, p.id, "openai", "https://x", 0, 0),
            )
        assert await store.deactivate_api_key(h1)
        assert [k.key_hash for k in await store.list_active_api_keys()] == [h2]
        got = await store.get_api_key(h1)
        assert got is not None and not got.is_active
        assert await store.set_api_key_active(h1, True)
        assert {k.key_hash for k in await store.list_active_api_keys()} == {h1, h2}
        assert not await store.deactivate_api_key(sha("unknown"))
        assert await store.delete_api_key(h2)
        assert await store.get_api_key(h2) is None
        # Deleting the project removes its keys.
        assert await store.delete_project(p.id)
        assert await store.list_api_keys() == []

    backend.run(body)


def test_spending_limits(backend: Backend) -> None:
    async def body(store: Store) -> None:
        a = await store.set_spending_limit("project", "p1", "monthly", 5_000_000_000)
        assert (a.enforcement, a.is_active, a.limit_nano_usd) == ("soft", True, 5_000_000_000)
        b = await store.set_spending_limit("user", "u1", "daily", 1_000, "hard")
        c = await store.set_spending_limit("key", sha("k"), "total", 10, active=False)
        again = await store.set_spending_limit("project", "p1", "monthly", 7, "hard")
        assert again.id == a.id and again.limit_nano_usd == 7 and again.enforcement == "hard"
        assert again.created_at_ns == a.created_at_ns
        assert {x.id for x in await store.list_spending_limits()} == {a.id, b.id, c.id}
        assert [x.id for x in await store.list_spending_limits("user")] == [b.id]
        assert [x.id for x in await store.list_spending_limits("project", "p1")] == [a.id]
        assert {x.id for x in await store.list_active_spending_limits()} == {a.id, b.id}
        assert await store.delete_spending_limit(b.id)
        assert not await store.delete_spending_limit(b.id)
        assert {x.id for x in await store.list_spending_limits()} == {a.id, c.id}
        for args in (("team", "x", "daily", 1), ("project", "x", "weekly", 1), ("project", "x", "daily", -1)):
            with pytest.raises(InvalidValue):
                await store.set_spending_limit(*args)
        with pytest.raises(InvalidValue):
            await store.set_spending_limit("project", "x", "daily", 1, "strict")
        with pytest.raises(InvalidValue):
            await store.set_spending_limit("project", "x", "daily", 1.5)  # type: ignore[arg-type]

    backend.run(body)


def test_custom_pricing(backend: Backend) -> None:
    async def body(store: Store) -> None:
        p = await store.create_project("priced")
        g = await store.set_custom_price("gpt-4o", input_per_mtok_nano_usd=2_500_000_000, output_per_mtok_nano_usd=10_000_000_000)
        mine = await store.set_custom_price(
            "gpt-4o", project_id=p.id, input_per_mtok_nano_usd=20_000_000, output_per_mtok_nano_usd=80_000_000,
            cache_read_per_mtok_nano_usd=10_000_000, cache_write_per_mtok_nano_usd=25_000_000,
        )  # fmt: skip
        assert g.project_id is None and mine.project_id == p.id
        assert mine.cache_read_per_mtok_nano_usd == 10_000_000
        g2 = await store.set_custom_price("gpt-4o", input_per_mtok_nano_usd=1, output_per_mtok_nano_usd=2)
        assert g2.id == g.id and (g2.input_per_mtok_nano_usd, g2.output_per_mtok_nano_usd) == (1, 2)
        other = await store.set_custom_price("claude", input_per_mtok_nano_usd=3, output_per_mtok_nano_usd=4)
        listed = await store.list_custom_prices()
        assert [(x.project_id, x.model) for x in listed] == [(None, "claude"), (None, "gpt-4o"), (p.id, "gpt-4o")]
        assert await store.delete_custom_price(other.id)
        assert not await store.delete_custom_price(other.id)
        with pytest.raises(MissingReference):
            await store.set_custom_price("x", project_id="nope", input_per_mtok_nano_usd=1, output_per_mtok_nano_usd=1)
        with pytest.raises(InvalidValue):
            await store.set_custom_price("x", input_per_mtok_nano_usd=0.5, output_per_mtok_nano_usd=1)  # type: ignore[arg-type]
        await store.delete_project(p.id)
        assert [(x.project_id, x.model) for x in await store.list_custom_prices()] == [(None, "gpt-4o")]

    backend.run(body)


def test_tokens_pipes_and_provider_keys(backend: Backend) -> None:
    async def body(store: Store) -> None:
        p = await store.create_project("managed")
        u = await store.create_user("Bob")
        pk = await store.create_provider_key("openai", b"\x00sealed\xff", b"n" * 12, "kek-1", project_id=p.id, display_name="main")
        shared = await store.create_provider_key("anthropic", b"c", b"n", "kek-1")
        assert await store.get_provider_key(pk.id) == pk
        assert [k.id for k in await store.list_provider_keys(p.id)] == [pk.id]
        assert {k.id for k in await store.list_provider_keys()} == {pk.id, shared.id}
        with pytest.raises(InvalidValue):
            await store.create_provider_key("openai", "sk-plaintext", b"n", "kek-1")  # type: ignore[arg-type]
        targets = [
            PipeTarget("openai", model="gpt-4o-mini", provider_key_id=pk.id, weight=3),
            PipeTarget("anthropic", model_filter="claude-*", provider_key_id=shared.id),
        ]
        pipe = await store.create_pipe(p.id, "default", targets)
        assert await store.get_pipe(pipe.id) == pipe
        assert pipe.targets == tuple(targets)
        assert await store.list_pipes(p.id) == [pipe]
        assert await store.list_pipes("other") == []
        with pytest.raises(AlreadyExists):
            await store.create_pipe(p.id, "default", targets)
        with pytest.raises(MissingReference):
            await store.create_pipe(p.id, "bad-key", [PipeTarget("openai", model="m", provider_key_id="nope")])
        assert [x.name for x in await store.list_pipes()] == ["default"]  # the failed one left nothing
        with pytest.raises(InvalidValue):
            await store.create_pipe(p.id, "empty", [])
        with pytest.raises(InvalidValue):
            await store.create_pipe(p.id, "no-model", [PipeTarget("openai")])

        now = 1_700_000_000 * 10**9
        th = sha("xproxy_abc")
        tok = await store.create_proxy_token(th, p.id, user_id=u.id, pipe_id=pipe.id, name="ci")
        old = await store.create_proxy_token(sha("xproxy_old"), p.id, expires_at_ns=now - 1)
        later = await store.create_proxy_token(sha("xproxy_later"), p.id, expires_at_ns=now + 10**12)
        with pytest.raises(InvalidValue):
            await store.create_proxy_token("xproxy_abc", p.id)
        with pytest.raises(AlreadyExists):
            await store.create_proxy_token(th, p.id)
        assert await store.get_proxy_token(th) == tok
        assert await store.get_proxy_token(sha("nope")) is None
        assert [x.id for x in await store.list_proxy_tokens(user_id=u.id)] == [tok.id]
        assert {x.id for x in await store.list_proxy_tokens(p.id)} == {tok.id, old.id, later.id}
        assert {x.id for x in await store.list_active_proxy_tokens(now)} == {tok.id, later.id}
        await store.touch_proxy_tokens({tok.id: 500, later.id: 100})
        await store.touch_proxy_tokens({tok.id: 400})  # never moves backwards
        got = await store.get_proxy_token(th)
        assert got is not None and got.last_used_at_ns == 500
        assert await store.revoke_proxy_token(tok.id)
        assert not await store.revoke_proxy_token(tok.id)
        got = await store.get_proxy_token(th)
        assert got is not None and got.revoked and got.revoked_at_ns is not None
        assert {x.id for x in await store.list_active_proxy_tokens(now)} == {later.id}
        # Deleting a pipe detaches tokens from it (they then fail closed).
        later_with_pipe = await store.create_proxy_token(sha("xproxy_p"), p.id, pipe_id=pipe.id)
        assert await store.delete_pipe(pipe.id)
        assert await store.get_pipe(pipe.id) is None
        got = await store.get_proxy_token(later_with_pipe.token_hash)
        assert got is not None and got.pipe_id is None
        assert await store.revoke_provider_key(pk.id)
        assert not await store.revoke_provider_key(pk.id)
        revoked = await store.get_provider_key(pk.id)
        assert revoked is not None and not revoked.is_active and revoked.ciphertext == b"\x00sealed\xff"
        # Deleting the user deletes their tokens; deleting the project everything else.
        assert await store.delete_user(u.id)
        assert await store.list_proxy_tokens(user_id=u.id) == []
        assert await store.delete_project(p.id)
        assert await store.list_proxy_tokens() == []
        assert [k.id for k in await store.list_provider_keys()] == [shared.id]

    backend.run(body)


def test_deleting_a_project_keeps_usage_and_counters(backend: Backend) -> None:
    async def body(store: Store) -> None:
        p = await store.create_project("gone")
        await store.set_spending_limit("project", p.id, "total", 100)
        await store.write_usage([usage(t=ns(2024, 1, 1), project=p.id, cost=42)])
        assert await store.delete_project(p.id)
        assert await store.list_spending_limits() == []
        assert await store.sum_usage_cost(p.id) == 42
        assert (await store.get_counter(CounterKey("project", p.id, "total", 0))) is not None

    backend.run(body)


# --------------------------------------------------------------------------- reservations


def _targets(limit: int, start: int = 0) -> list[BudgetTarget]:
    return [BudgetTarget("project", "p1", "total", 0, limit)]


def test_concurrent_reservations_never_exceed_the_limit(backend: Backend) -> None:
    async def body(store: Store) -> None:
        limit, amount = 1_000, 7
        await store.write_usage([usage(t=ns(2024, 1, 1), cost=100)])  # 100 already spent
        results = await asyncio.gather(*(store.reserve(_targets(limit), amount) for _ in range(200)))
        granted = [r for r in results if r is not None]
        assert len(granted) == (limit - 100) // amount
        c = await store.get_counter(CounterKey("project", "p1", "total", 0))
        assert c is not None and c.spent_nano_usd == 100 and c.reserved_nano_usd == len(granted) * amount
        # Settle half with the real (smaller) cost, release the rest.
        half = len(granted) // 2
        settled = await asyncio.gather(
            *(store.settle(r, usage(t=ns(2024, 1, 2), cost=5)) for r in granted[:half])
        )
        assert all(settled)
        released = await asyncio.gather(*(store.release(r) for r in granted[half:]))
        assert all(released)
        c = await store.get_counter(CounterKey("project", "p1", "total", 0))
        assert c is not None and c.reserved_nano_usd == 0 and c.spent_nano_usd == 100 + 5 * half
        assert await store.sum_usage_cost("p1") == 100 + 5 * half
        # Twice is a no-op.
        assert not await store.release(granted[0])
        assert not await store.settle(granted[-1], usage(t=ns(2024, 1, 2), cost=None))
        c2 = await store.get_counter(CounterKey("project", "p1", "total", 0))
        assert c2 is not None and c2.reserved_nano_usd == 0 and c2.spent_nano_usd == c.spent_nano_usd
        await assert_counters_match_log(store)

    backend.run(body, max_size=20) if backend.kind == "postgres" else backend.run(body)


def test_reservations_across_two_store_instances(backend: Backend) -> None:
    """Two processes' worth of stores (own pools / own SQLite connections) share the limit."""

    async def main() -> None:
        a, b = backend.store(), backend.store()
        async with a, b:
            await migrate(a)
            results = await asyncio.gather(
                *(s.reserve(_targets(500), 10) for _ in range(60) for s in (a, b))
            )
            assert sum(r is not None for r in results) == 50
            c = await a.get_counter(CounterKey("project", "p1", "total", 0))
            assert c is not None and c.reserved_nano_usd == 500

    asyncio.run(main())


def test_two_limit_reservations_on_fresh_counters_race_without_partial_holds(backend: Backend) -> None:
    """Many two-counter reservations at once, from two store instances, on counters that do
    not exist yet (the first requests of a new day): PostgreSQL's one-statement reserve
    then sees counters created by a concurrent reservation between its check and its
    upsert, the case it rolls back and runs again.  Exactly what fits the tighter (user)
    limit is granted, both counters hold exactly the granted amounts, and every granted
    reservation has one row per counter (nothing held that no reservation names)."""

    async def main() -> None:
        t = ns(2024, 6, 1, 0, 0, 1)
        day, month = period_start("daily", t), period_start("monthly", t)
        amount = 7
        for round_ in range(3):  # fresh counters each round: a new user and project
            targets = [
                BudgetTarget("project", f"race-p{round_}", "monthly", month, 10_000),
                BudgetTarget("user", f"race-u{round_}", "daily", day, 10 * amount),
            ]
            a, b = backend.store(), backend.store()
            async with a, b:
                if round_ == 0:
                    await migrate(a)
                results = await asyncio.gather(*(s.reserve(targets, amount) for _ in range(20) for s in (a, b)))
                granted = [r for r in results if r is not None]
                assert len(granted) == 10
                for key in (targets[0].key, targets[1].key):
                    c = await a.get_counter(key)
                    assert c is not None and (c.spent_nano_usd, c.reserved_nano_usd) == (0, 10 * amount)
                assert all(await asyncio.gather(*(a.release(r) for r in granted)))
                for key in (targets[0].key, targets[1].key):
                    c = await a.get_counter(key)
                    assert c is not None and c.reserved_nano_usd == 0

    asyncio.run(main())


def test_settle_frees_counters_the_row_does_not_count_in(backend: Backend) -> None:
    """The settle takes the reservation off the counters it was made on, whatever the row
    adds: an unpriced row adds nothing; a row dated the next day (a request that ran over
    midnight) adds to the next day's counter while the reservation leaves the first day's."""

    async def body(store: Store) -> None:
        t = ns(2024, 7, 31, 23, 59, 59)
        day = period_start("daily", t)
        next_t = ns(2024, 8, 1, 0, 0, 2)
        targets = [BudgetTarget("user", "u1", "daily", day, 1_000), BudgetTarget("project", "p1", "total", 0, 1_000)]
        unpriced = await store.reserve(targets, 300)
        late = await store.reserve(targets, 200)
        assert unpriced is not None and late is not None
        assert await store.settle(unpriced, usage(t=t, cost=None, user="u1"))
        assert await store.settle(late, usage(t=next_t, cost=150, user="u1"))
        first_day = await store.get_counter(CounterKey("user", "u1", "daily", day))
        second_day = await store.get_counter(CounterKey("user", "u1", "daily", period_start("daily", next_t)))
        total = await store.get_counter(CounterKey("project", "p1", "total", 0))
        assert first_day is not None and (first_day.spent_nano_usd, first_day.reserved_nano_usd) == (0, 0)
        assert second_day is not None and (second_day.spent_nano_usd, second_day.reserved_nano_usd) == (150, 0)
        assert total is not None and (total.spent_nano_usd, total.reserved_nano_usd) == (150, 0)
        await assert_counters_match_log(store)

    backend.run(body)


def test_reservation_is_all_or_nothing(backend: Backend) -> None:
    async def body(store: Store) -> None:
        t = ns(2024, 4, 10, 12)
        day, month = period_start("daily", t), period_start("monthly", t)
        targets = [
            BudgetTarget("project", "p1", "monthly", month, 10_000),
            BudgetTarget("user", "u1", "daily", day, 100),
            BudgetTarget("project", "p1", "monthly", month, 50_000),  # same counter: tightest wins
        ]
        r = await store.reserve(targets, 80)
        assert r is not None and len(r.counters) == 2
        assert await store.reserve(targets, 30) is None  # the user's daily limit refuses
        proj = await store.get_counter(CounterKey("project", "p1", "monthly", month))
        user = await store.get_counter(CounterKey("user", "u1", "daily", day))
        assert proj is not None and proj.reserved_nano_usd == 80
        assert user is not None and user.reserved_nano_usd == 80
        assert await store.reserve([BudgetTarget("user", "u9", "total", 0, 10)], 11) is None
        assert await store.get_counter(CounterKey("user", "u9", "total", 0)) is None
        zero = await store.reserve([BudgetTarget("user", "u9", "total", 0, 10)], 0)
        assert zero is not None
        # Settling moves spend from reserved to spent with the row, for every scope of the row.
        assert await store.settle(r, usage(t=t, cost=60, user="u1"))
        proj = await store.get_counter(CounterKey("project", "p1", "monthly", month))
        user = await store.get_counter(CounterKey("user", "u1", "daily", day))
        assert proj is not None and (proj.spent_nano_usd, proj.reserved_nano_usd) == (60, 0)
        assert user is not None and (user.spent_nano_usd, user.reserved_nano_usd) == (60, 0)
        assert await store.reserve(targets, 40) is not None  # 60 spent + 40 <= 100
        assert await store.reserve(targets, 1) is None
        for bad in ([BudgetTarget("team", "x", "total", 0, 1)], [BudgetTarget("user", "x", "weekly", 0, 1)]):
            with pytest.raises(InvalidValue):
                await store.reserve(bad, 1)
        with pytest.raises(InvalidValue):
            await store.reserve(targets, -1)
        await assert_counters_match_log(store)

    backend.run(body)


def test_expired_reservations_are_released(backend: Backend) -> None:
    async def body(store: Store) -> None:
        short = await store.reserve(_targets(100), 30, ttl_s=0)
        long = await store.reserve(_targets(100), 20, ttl_s=3600)
        assert short is not None and long is not None
        assert await store.release_expired() == 1
        assert await store.release_expired() == 0
        c = await store.get_counter(CounterKey("project", "p1", "total", 0))
        assert c is not None and c.reserved_nano_usd == 20
        assert not await store.release(short)
        assert await store.release_expired(now_ns=long.expires_at_ns) == 1
        c = await store.get_counter(CounterKey("project", "p1", "total", 0))
        assert c is not None and c.reserved_nano_usd == 0

    backend.run(body)


def test_reservations_of_gone_instances_are_released(backend: Backend) -> None:
    """Owner + heartbeat: a live owner's reservations stay; a stale or forgotten owner's
    are released (only those made before the staleness bound); unowned ones wait for expiry."""

    async def body(store: Store) -> None:
        import time

        await store.heartbeat("alive", "h", 1, 0)
        await store.heartbeat("dead", "h", 2, 0)
        mine = await store.reserve(_targets(1000), 10, owner="alive")
        theirs = await store.reserve(_targets(1000), 20, owner="dead")
        unowned = await store.reserve(_targets(1000), 40)
        assert mine is not None and theirs is not None and unowned is not None
        assert (mine.owner, unowned.owner) == ("alive", None)
        t0 = time.time_ns()
        # Everyone's heartbeat is recent: nothing is an orphan.
        assert await store.release_orphaned(t0 - 60 * 10**9) == 0
        await store.heartbeat("alive", "h", 1, 0)  # "dead" beats no more
        assert await store.release_orphaned(t0) == 1  # dead's heartbeat is older than t0
        c = await store.get_counter(CounterKey("project", "p1", "total", 0))
        assert c is not None and c.reserved_nano_usd == 50
        assert not await store.release(theirs)
        # A reservation newer than the bound is left alone even if its owner is unknown
        # (an instance that has not beaten yet).
        fresh = await store.reserve(_targets(1000), 80, owner="not-yet")
        assert fresh is not None
        assert await store.release_orphaned(t0) == 0
        await store.forget_instance("alive")
        assert await store.release_orphaned(time.time_ns()) == 2  # alive's, not-yet's
        c = await store.get_counter(CounterKey("project", "p1", "total", 0))
        assert c is not None and c.reserved_nano_usd == 40  # the unowned one: expiry only
        assert await store.release_expired(now_ns=unowned.expires_at_ns) == 1

    backend.run(body)


# -- rows the store refuses: set aside, never holding back the rest --------------------


def test_flusher_sets_aside_what_the_store_refuses_and_writes_the_rest(
    backend: Backend, tmp_path: Path
) -> None:
    """Token counts the scanner accepts (up to 18 digits) can price above 64 bits, and a
    negative count cannot be priced at all.  Such rows once failed their whole batch on
    every retry, holding back all billing behind them; now the store's refusal
    (SQLite's OverflowError, asyncpg's DataError) is isolated to those rows, which are
    kept in the rejected file, and every other row is written and counted."""
    import json

    from plano_fast.billing.flusher import UsageFlusher
    from plano_fast.billing.journal import Journal
    from plano_fast.billing.metrics import BillingMetrics
    from plano_fast.pricing import PricingRegistry
    from plano_fast.usage import STATUS_OK, UsageEvent

    now = ns(2026, 12, 3, 12)

    def event(i: int, input_tokens: int = 100, output_tokens: int = 20) -> UsageEvent:
        return UsageEvent(
            f"req-poison-{i}", now + i, "openai", "gpt-4o-mini", False, STATUS_OK, 200,
            input_tokens, output_tokens, has_usage=True, project_id="p1", key_hash=sha("k"),
        )  # fmt: skip

    huge = 10**18 - 1  # fits a 64-bit column; its price does not
    good = [event(i) for i in range(40)]
    overflowing = [event(100, input_tokens=huge), event(101, output_tokens=huge)]
    impossible = event(102, output_tokens=-1)
    submitted = good[:13] + overflowing[:1] + good[13:30] + [impossible] + good[30:] + overflowing[1:]

    async def body(store: Store) -> None:
        journal = Journal(tmp_path / "usage.journal")
        metrics = BillingMetrics()
        flusher = UsageFlusher(store, PricingRegistry(), journal, metrics, interval_s=3600.0)
        for e in submitted:
            flusher.submit(e)
        await flusher.flush_now()
        assert flusher.backlog == 0
        stored = {r.request_id: r for r in await all_usage(store)}
        assert sorted(stored) == sorted(e.request_id for e in good)
        assert all(r.priced and r.cost_nano_usd for r in stored.values())
        assert metrics.rows_rejected == 3
        assert metrics.rows_written == 40 and metrics.rows_duplicate == 0
        kept = [json.loads(line) for line in journal.rejected_path.read_text().splitlines()]
        assert sorted(k["record"]["request_id"] for k in kept) == ["req-poison-100", "req-poison-101", "req-poison-102"]
        assert all(k["reason"] for k in kept)
        assert not list(tmp_path.glob("usage.journal.*"))  # nothing for a replay to trip on
        await assert_counters_match_log(store)
        # Billing goes on.
        flusher.submit(event(200))
        await flusher.flush_now()
        assert "req-poison-200" in {r.request_id for r in await all_usage(store)}

    backend.run(body)


def test_one_batch_touching_hundreds_of_counters(backend: Backend) -> None:
    """200 days of one project's and user's rows in one batch: ~420 counters (daily,
    monthly, total per scope), more than one multi-row upsert statement holds."""
    rows = [usage(t=ns(2025, 1, 1) + d * 86_400_000_000_000, cost=1_000 + d, user="u1") for d in range(200)]

    async def body(store: Store) -> None:
        assert await store.write_usage(rows) == 200
        counters = [c for c in await store.load_counters() if c.spent_nano_usd]
        assert len(counters) > 400
        await assert_counters_match_log(store)

    backend.run(body)


def test_a_counter_sum_past_64_bits_is_refused_not_rounded(backend: Backend) -> None:
    """Each row's cost fits 64 bits, their sum does not: SQLite would silently make the
    counter a REAL (inexact forever after), PostgreSQL says bigint out of range.  Both
    refuse the write as data (so the flusher sets the row aside) and keep the counters
    equal to the log."""
    t = ns(2026, 12, 4, 9)
    first = usage(t=t, cost=2**63 - 10, key=sha("k"))
    second = usage(t=t + 1, cost=100, key=sha("k"))

    async def body(store: Store) -> None:
        assert await store.write_usage([first]) == 1
        with pytest.raises(Exception) as refused:
            await store.write_usage([second])
        assert store.rejects_data(refused.value)
        assert [r.request_id for r in await all_usage(store)] == [first.request_id]
        counter = await store.get_counter(CounterKey("project", "p1", "total", 0))
        assert counter is not None and counter.spent_nano_usd == 2**63 - 10
        assert type(counter.spent_nano_usd) is int
        await assert_counters_match_log(store)

    backend.run(body)


@functools.cache
def _pricing() -> Any:
    from plano_fast.pricing import PricingRegistry

    return PricingRegistry()


def _group_item(prefix: str, now: int, i: int, input_tokens: int = 100) -> tuple[UsageRow, Any]:
    """A GroupWriter item: a priced row and its event (project p1, one client key)."""
    from plano_fast.billing.rows import price_event
    from plano_fast.store import usage_row_from_event
    from plano_fast.usage import STATUS_OK, UsageEvent

    event = UsageEvent(
        f"{prefix}-{i}", now + i, "openai", "gpt-4o-mini", False, STATUS_OK, 200,
        input_tokens, 20, has_usage=True, project_id="p1", key_hash=sha("k"),
    )  # fmt: skip
    return usage_row_from_event(event, cost_nano_usd=price_event(_pricing(), event)), event


def test_group_writer_owns_its_rows(backend: Backend) -> None:
    """Managed mode's synchronous writer: a waiter cancelled mid-write (its client left)
    does not take its row with it; a row the store refuses is handed to the asynchronous
    pipeline alone, while the rows of the same batch are still written synchronously."""
    from plano_fast.managed.context import GroupWriter
    from plano_fast.usage import UsageEvent

    def item(i: int, input_tokens: int = 100) -> tuple[UsageRow, UsageEvent]:
        return _group_item("req-group", ns(2026, 12, 3, 12), i, input_tokens)

    async def body(store: Store) -> None:
        handed_over: list[UsageEvent] = []
        writer = GroupWriter(store, handed_over.append)
        waiters = [writer.write(*item(i)) for i in range(6)]
        waiters.append(writer.write(*item(6, input_tokens=10**18 - 1)))  # cost over 64 bits
        waiters[2].cancel()  # its client left: only the wait ends
        await asyncio.gather(*waiters, return_exceptions=True)
        assert all(w.done() for w in waiters)
        written = {r.request_id for r in await all_usage(store)}
        assert written == {f"req-group-{i}" for i in range(6)}
        assert [e.request_id for e in handed_over] == ["req-group-6"]
        await assert_counters_match_log(store)

    backend.run(body)


def test_group_writer_writes_a_lone_row_before_returning(backend: Backend) -> None:
    """``alone`` (no other answer under way) and an idle writer: the row is committed by
    the time ``write`` returns (SQLite's hot connection; the future comes back done), or
    queued as before where the store cannot write without waiting (PostgreSQL).  With
    others in flight, or a batch already gathering, the row joins the batch (the group
    commit).  A row the store refuses goes to the fallback, the future done all the same."""
    from plano_fast.managed.context import GroupWriter
    from plano_fast.usage import UsageEvent

    def item(i: int, input_tokens: int = 100) -> tuple[UsageRow, UsageEvent]:
        return _group_item("req-alone", ns(2026, 12, 5, 12), i, input_tokens)

    async def body(store: Store) -> None:
        handed_over: list[UsageEvent] = []
        writer = GroupWriter(store, handed_over.append)
        now_capable = backend.kind == "sqlite"
        first = writer.write(*item(0), alone=True)
        assert first.done() is now_capable
        if now_capable:
            # Committed: another connection sees it, before any turn of the loop.
            with sqlite3.connect(backend.sqlite_path) as other:
                assert other.execute("SELECT count(*) FROM usage_log").fetchone()[0] == 1
            other.close()
        await first
        # Others in flight: queued for the batch, written by the writer's task.
        queued = writer.write(*item(1), alone=False)
        joined = writer.write(*item(2), alone=True)  # a batch is gathering: it joins it
        assert not queued.done() and not joined.done()
        await asyncio.gather(queued, joined)
        refused = writer.write(*item(3, input_tokens=10**18 - 1), alone=True)  # cost over 64 bits
        await refused
        assert [e.request_id for e in handed_over] == ["req-alone-3"]
        assert writer.metrics.rows_written == 3
        assert {r.request_id for r in await all_usage(store)} == {f"req-alone-{i}" for i in range(3)}
        await assert_counters_match_log(store)

    backend.run(body)


def test_group_writer_idle_is_whether_a_row_could_be_written_at_once(backend: Backend) -> None:
    """``GroupWriter.idle`` (what a managed answer tests before it asks the upstream pool
    for its busy count): True exactly when no row waits and no batch is being written --
    from the first queued row until its batch's drain is over it is False, then True again;
    an ``alone`` write to an idle writer on SQLite comes back written."""
    from plano_fast.managed.context import GroupWriter
    from plano_fast.usage import UsageEvent

    def item(i: int) -> tuple[UsageRow, UsageEvent]:
        return _group_item("req-idle", ns(2026, 12, 6, 12), i)

    async def body(store: Store) -> None:
        writer = GroupWriter(store, [].append)
        assert writer.idle is True
        queued = [writer.write(*item(i)) for i in range(3)]
        assert writer.idle is False  # rows waiting for the drain
        joined = writer.write(*item(3), alone=True)  # busy: it joins the batch
        assert not joined.done() and writer.idle is False
        await asyncio.gather(*queued, joined)
        await asyncio.sleep(0)  # the drain's task ends after it resolved the futures
        assert writer.idle is True
        lone = writer.write(*item(4), alone=True)
        assert lone.done() is (backend.kind == "sqlite") and writer.idle is (backend.kind == "sqlite")
        await lone
        await asyncio.sleep(0)
        assert writer.idle is True
        assert {r.request_id for r in await all_usage(store)} == {f"req-idle-{i}" for i in range(5)}
        await assert_counters_match_log(store)

    backend.run(body)


def test_group_writer_logs_a_run_of_failed_writes_once_and_counts_them(backend: Backend, caplog: Any) -> None:
    """A store that fails every synchronous write (an outage; here each row is refused)
    logged one ERROR line per request; now one line, then at most one per
    ``FAILURE_LOG_INTERVAL_S``, the sum of the ones in between in the next line (or in one
    warning once a write succeeds again), every failure counted in the metrics."""
    import logging

    from plano_fast.managed.context import GroupWriter
    from plano_fast.usage import UsageEvent

    def item(i: int, input_tokens: int = 100) -> tuple[UsageRow, UsageEvent]:
        return _group_item("req-outage", ns(2026, 12, 5, 12), i, input_tokens)

    failing = 30

    async def body(store: Store) -> None:
        handed_over: list[UsageEvent] = []
        writer = GroupWriter(store, handed_over.append)
        for i in range(failing):  # one request after another, each write failing
            await writer.write(*item(i, input_tokens=10**18 - 1), alone=True)
        await writer.write(*item(failing), alone=True)  # the store writes again
        assert len(handed_over) == failing
        assert (writer.metrics.sync_write_failures, writer.metrics.sync_rows_fallback) == (failing, failing)
        assert writer.metrics.rows_written == 1

    with caplog.at_level(logging.INFO, logger="plano_fast.managed"):
        backend.run(body)
    lines = [r for r in caplog.records if r.name == "plano_fast.managed"]
    errors = [r.getMessage() for r in lines if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "synchronous billing failed" in errors[0], errors
    (summary,) = [r.getMessage() for r in lines if r.levelno == logging.WARNING]
    assert f"{failing - 1} usage rows in {failing - 1} writes" in summary, summary


def test_group_writer_calls_then_in_its_step_once_the_batch_is_written(backend: Backend) -> None:
    """``then`` (the task-free managed path's end of the answer): called with the future,
    done, in the writer's own step right after the batch holding its row is written --
    its row already visible to another connection on SQLite -- or handed to the fallback;
    never for a row written before ``write`` returned (the caller sends that end itself)."""
    from plano_fast.managed.context import GroupWriter
    from plano_fast.usage import UsageEvent

    def item(i: int, input_tokens: int = 100) -> tuple[UsageRow, UsageEvent]:
        return _group_item("req-then", ns(2026, 12, 5, 12), i, input_tokens)

    async def body(store: Store) -> None:
        handed_over: list[UsageEvent] = []
        writer = GroupWriter(store, handed_over.append)
        seen: list[tuple[int, bool, int]] = []

        def then(i: int) -> Callable[[asyncio.Future[None]], None]:
            def call(future: asyncio.Future[None]) -> None:
                stored = -1
                if backend.kind == "sqlite":
                    with sqlite3.connect(backend.sqlite_path) as other:
                        stored = other.execute("SELECT count(*) FROM usage_log").fetchone()[0]
                    other.close()
                seen.append((i, future.done(), stored))
            return call

        lone = writer.write(*item(0), alone=True, then=then(0))
        if backend.kind == "sqlite":
            assert lone.done() and seen == []  # written before returning: no call
        await lone
        seen.clear()
        futures = [writer.write(*item(i), then=then(i)) for i in range(1, 4)]
        futures.append(writer.write(*item(4, input_tokens=10**18 - 1), then=then(4)))  # refused
        await asyncio.gather(*futures)
        stored = 4 if backend.kind == "sqlite" else -1
        assert seen[:3] == [(i, True, stored) for i in range(1, 4)]
        assert [(i, done) for i, done, _ in seen[3:]] == [(4, True)]
        assert [e.request_id for e in handed_over] == ["req-then-4"]
        await assert_counters_match_log(store)

    backend.run(body)


def test_group_writer_after_a_large_batch_gathers_one_more_turn(backend: Backend) -> None:
    """Under load (the last batch had ``GATHER_AFTER_ROWS`` rows or more) a new batch waits
    one turn of the loop on SQLite, whose commit runs inside the writer's step: the rows of
    the next turn's answers share its commit.  After a small batch, or on PostgreSQL (its
    commits are awaited: the next rows gather meanwhile), nothing waits.  Every row is
    written either way, each future resolved once its own row is."""
    from plano_fast.managed.context import GATHER_AFTER_ROWS, GroupWriter
    from plano_fast.usage import UsageEvent

    def item(i: int) -> tuple[UsageRow, UsageEvent]:
        return _group_item("req-gather", ns(2026, 12, 6, 13), i)

    async def body(store: Store) -> None:
        handed_over: list[UsageEvent] = []
        writer = GroupWriter(store, handed_over.append)
        batches: list[int] = []  # rows of each batch the store committed, in order
        now, later = store.write_usage_now, store.write_usage

        def write_now(rows: Sequence[UsageRow]) -> int | None:
            written = now(rows)
            if written is not None:
                batches.append(len(rows))
            return written

        async def write(rows: Sequence[UsageRow]) -> int:
            written = await later(rows)
            batches.append(len(rows))
            return written

        store.write_usage_now, store.write_usage = write_now, write  # type: ignore[method-assign]
        await asyncio.gather(*[writer.write(*item(i)) for i in range(GATHER_AFTER_ROWS)])
        assert batches == [GATHER_AFTER_ROWS]
        # Two rows now and two answered a turn later (the drain's task has started by then).
        first = [writer.write(*item(i)) for i in range(100, 102)]
        await asyncio.sleep(0)
        second = [writer.write(*item(i)) for i in range(102, 104)]
        await asyncio.gather(*first, *second)
        # SQLite: one commit of the four (it waited a turn); PostgreSQL: the two first,
        # then the two that came while that commit was awaited.
        assert batches[1:] == ([4] if backend.kind == "sqlite" else [2, 2])
        # The last batch was small: the next rows do not wait.
        first = [writer.write(*item(i)) for i in range(200, 202)]
        await asyncio.sleep(0)
        second = [writer.write(*item(i)) for i in range(202, 204)]
        await asyncio.gather(*first, *second)
        assert batches[-2:] == [2, 2]
        # A lone answer written at once after a large batch also turns the wait off (SQLite).
        await asyncio.gather(*[writer.write(*item(i)) for i in range(300, 300 + GATHER_AFTER_ROWS)])
        await writer.write(*item(400), alone=True)
        first = [writer.write(*item(i)) for i in range(401, 403)]
        await asyncio.sleep(0)
        second = [writer.write(*item(i)) for i in range(403, 405)]
        await asyncio.gather(*first, *second)
        assert batches[-4:] == [GATHER_AFTER_ROWS, 1, 2, 2]
        assert len(await all_usage(store)) == 2 * GATHER_AFTER_ROWS + 13 and handed_over == []
        await assert_counters_match_log(store)

    backend.run(body)
