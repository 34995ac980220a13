"""A hard-limited request whose synchronous settle fails keeps its reservation until its row's
cost is on the counters (round i: found with the database's backends killed under load, where
two requests of 58 went over the limit).

The failed settle's row is journaled (written by the flusher later) and, before this fix, its
reservation was released at once: for as long as the journaled row waited, the limit counted
neither the row's cost nor its reservation, and requests admitted in that window overshot it.
Now the settle itself is retried in the background (``ManagedContext.settle_soon``): the
reservation is freed by the same transaction that adds the row's cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.store import CounterKey
from plano_fast.store.migrate import prepare_schema
from plano_fast.store.sqlite import SqliteStore
from tests.gateway_proc import write_config
from tests.test_managed import DEFAULT_PIPE, MASTER_KEY, REQUEST_BODY, fire, provision, request_cost, rows, store_call


@pytest.fixture
def settle_fails_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """SQLite's synchronous settle (``settle_now``) raises on its first call (a lost
    connection, a busy database), as the real one does under faults."""
    calls: list[int] = []
    real = SqliteStore.settle_now

    def flaky(self: SqliteStore, *args: Any) -> bool | None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the database went away mid-settle")
        return real(self, *args)

    monkeypatch.setattr(SqliteStore, "settle_now", flaky)
    yield calls


def test_a_failed_settle_keeps_its_reservation_until_its_row_is_counted(
    fake: FakeProviderThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settle_fails_once: list[int]
) -> None:
    """A limit that fits three requests, the first request's settle failing, the flusher
    slow (30 s: the journaled row waits).  Returns: three 200s, then 402s -- before the fix
    four 200s (the fourth admitted on the room the released reservation left); afterwards
    the counter holds exactly the three rows' cost, within the limit, nothing reserved."""
    from tests.test_billing_faults import InProcessGateway

    monkeypatch.setenv("PLANO_FAST_MASTER_KEY", MASTER_KEY)
    cost = request_cost(REQUEST_BODY)
    limit = 3 * cost
    config = write_config(tmp_path / "plano_config.yaml", fake.port,
                          {"managed": "true", "managed_reload_s": 600, "usage_flush_interval_s": 30})
    sqlite_path = str(config.with_suffix(".db"))
    asyncio.run(prepare_schema(None, sqlite_path))
    tenant = provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=limit)
    gateway = InProcessGateway(config)
    try:
        statuses = asyncio.run(fire(gateway.url, tenant.token, REQUEST_BODY, 6, concurrency=1))
    finally:
        gateway.stop()  # (the journaled row flushed at stop, if the retried settle had not)
    assert len(settle_fails_once) >= 2  # (the premise: the first settle failed, later ones ran)
    assert statuses == [200, 200, 200, 402, 402, 402], statuses
    recorded = [r for r in rows(sqlite_path) if r.project_id == tenant.project_id]
    assert len(recorded) == 3 and sum(r.cost_nano_usd or 0 for r in recorded) == 3 * cost
    key = CounterKey("project", tenant.project_id, "total", 0)
    counter = store_call(None, sqlite_path, lambda s: s.get_counter(key))
    assert counter is not None and (counter.spent_nano_usd, counter.reserved_nano_usd) == (3 * cost, 0)
    assert counter.spent_nano_usd <= limit
