"""A settle a stop cancels keeps its reservation held until its row's cost is counted,
across instances sharing one database and across the stopped instance's restart.

Before: the cancelled settle's row went to the usage journal (on the stopped instance's
disk) and its reservation was left to the sweepers; the stop deregistered the instance,
so another instance's next sweep released the reservation as an orphan at once.  Until
the stopped instance's next start replayed the row, the hard limit held neither the
row's cost nor the reservation: a request admitted through the other instance then
overshot it.  Now the stop vouches for its reservations (``Gateway._vouch``), keeps the
cancelled settle on disk (``plano_fast.managed.settle_journal``) and is not forgotten;
the restart settles it (row counted, reservation freed) before its sweeper runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.store import CounterKey
from plano_fast.store.migrate import prepare_schema
from tests.gateway_proc import write_config
from tests.test_managed import DEFAULT_PIPE, MASTER_KEY, REQUEST_BODY, fire, provision, request_cost, rows, store_call


def _post(url: str, token: str, outcome: dict[str, Any]) -> None:
    request = urllib.request.Request(url + "/v1/chat/completions", data=REQUEST_BODY, headers={
        "authorization": f"Bearer {token}", "content-type": "application/json",
        "x-fake-input-tokens": str(len(REQUEST_BODY)), "x-fake-output-tokens": "50"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            outcome["status"] = resp.status
    except urllib.error.HTTPError as exc:
        outcome["status"] = exc.code
    except Exception as exc:  # noqa: BLE001 - the stop cuts it
        outcome["error"] = exc


def _hang_the_row_writes(store: Any) -> None:
    """The store hangs for this instance's usage rows and settles (a connection stuck
    mid-statement); its other statements (the heartbeat, deregistering) still answer."""

    async def hang(*args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    store.settle_now = lambda *args: None  # (cannot settle without waiting: the task path)
    store.write_usage_now = lambda *args: None
    store.settle = hang
    store.write_usage = hang


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_settle_cut_by_a_stop_holds_the_limit_until_its_row_is_counted(
    fake: FakeProviderThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, request: Any
) -> None:
    """A limit that fits three requests; two served by instance A; the third's settle
    hangs and A stops (SIGTERM's path) with it cut.  Instance B (another host: its own
    journal directory) on the same database sweeps as it would 5 minutes later, then
    serves a request: 402 (before: 200, the fourth admitted on the room of the released
    reservation).  A restarts: the counter holds exactly three rows' cost, none reserved."""
    from tests.test_billing_faults import InProcessGateway

    monkeypatch.setenv("PLANO_FAST_MASTER_KEY", MASTER_KEY)
    database_url: str | None = request.getfixturevalue("pg_dsn") if backend == "postgres" else None
    cost = request_cost(REQUEST_BODY)
    limit = 3 * cost

    def config_of(name: str) -> Path:
        settings: dict[str, Any] = {
            "managed": "true", "managed_reload_s": 600, "reservation_sweep_interval_s": 60,
            "store_stop_timeout_s": 2, "usage_journal_path": str(tmp_path / name / "usage.journal"),
            "sqlite_path": str(tmp_path / "shared.db")}
        if database_url is not None:
            settings["database_url"] = f'"{database_url}"'
        (tmp_path / name).mkdir(exist_ok=True)
        return write_config(tmp_path / name / "plano_config.yaml", fake.port, settings)

    config_a, config_b = config_of("a"), config_of("b")
    sqlite_path = str(tmp_path / "shared.db")
    asyncio.run(prepare_schema(database_url, sqlite_path, allow_migrate=True))
    tenant = provision(database_url, sqlite_path, DEFAULT_PIPE, limit_nano_usd=limit)
    key = CounterKey("project", tenant.project_id, "total", 0)

    def counter() -> tuple[int, int]:
        found = store_call(database_url, sqlite_path, lambda s: s.get_counter(key))
        assert found is not None
        return found.spent_nano_usd, found.reserved_nano_usd

    a = InProcessGateway(config_a)
    try:
        assert asyncio.run(fire(a.url, tenant.token, REQUEST_BODY, 2, concurrency=1)) == [200, 200]
        _hang_the_row_writes(a.gateway.store)
        outcome: dict[str, Any] = {}
        client = threading.Thread(target=_post, args=(a.url, tenant.token, outcome), daemon=True)
        client.start()
        deadline = time.monotonic() + 10
        while counter() != (2 * cost, cost):  # the third request's reservation, its settle hanging
            assert time.monotonic() < deadline, counter()
            time.sleep(0.05)
    finally:
        a.stop()
    client.join(10)
    assert "status" not in outcome or outcome["status"] != 200, outcome  # never answered as billed
    assert counter() == (2 * cost, cost)  # the row on A's disk, its reservation held

    b = InProcessGateway(config_b)
    try:
        later_ns = time.time_ns() + int(300e9)
        asyncio.run_coroutine_threadsafe(b.gateway.sweep_reservations(later_ns), b.loop).result(10)
        statuses = asyncio.run(fire(b.url, tenant.token, REQUEST_BODY, 1, concurrency=1))
    finally:
        b.stop()
    assert statuses == [402], statuses

    restarted = InProcessGateway(config_a)  # A again: same host, same journal directory
    restarted.stop()
    recorded = [r for r in rows(sqlite_path, database_url) if r.project_id == tenant.project_id]
    assert len(recorded) == 3 and sum(r.cost_nano_usd or 0 for r in recorded) == 3 * cost
    assert counter() == (3 * cost, 0)


def test_a_settle_retry_cut_between_attempts_is_kept(tmp_path: Path) -> None:
    """``settle_soon``'s retry cancelled by a stop while it sleeps between attempts (not in a
    store call) is kept too: in ``unsettled``, then on disk, then settled by ``settle_kept``
    (the reservation freed, the row counted once)."""
    from plano_fast.managed.context import ManagedContext
    from plano_fast.managed.settle_journal import SettleJournal, finish_or_keep, settle_kept
    from plano_fast.store import BudgetTarget
    from plano_fast.store.sqlite import SqliteStore
    from tests.test_store_pg_batch import row

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "kept.db"))
        await store.open()
        try:
            await prepare_schema(None, str(tmp_path / "kept.db"))
            held = await store.reserve([BudgetTarget("project", "p1", "total", 0, 10**9)], 50)
            assert held is not None
            mctx = ManagedContext(None, store, None, max_output_tokens=1, usage_sink=lambda e: None)  # type: ignore[arg-type]
            real_settle = store.settle
            failures: list[int] = []

            async def failing(*args: Any) -> bool:
                failures.append(1)
                raise OSError("the database went away")

            store.settle = failing  # type: ignore[method-assign]
            mctx.settle_soon(held, row(1, cost=30))
            while not failures:
                await asyncio.sleep(0.01)
            for task in list(mctx.tasks):  # (now in its back-off sleep)
                task.cancel()
            await asyncio.gather(*mctx.tasks, return_exceptions=True)
            assert list(mctx.unsettled) == [held.id]
            journal = SettleJournal(str(tmp_path / "usage.journal"))
            assert await finish_or_keep(mctx, journal, 0.2) == 1  # (the store still fails: kept)
            store.settle = real_settle  # type: ignore[method-assign]
            assert await settle_kept(mctx, journal, 5.0) == set()  # (the reservation names no owner)
            counter = await store.get_counter(CounterKey("project", "p1", "total", 0))
            assert counter is not None and (counter.spent_nano_usd, counter.reserved_nano_usd) == (30, 0)
        finally:
            await store.close()

    asyncio.run(main())


def test_a_kept_settle_line_that_cannot_be_read_does_not_hold_up_the_others(tmp_path: Path) -> None:
    """``SettleJournal.read``: a row field this version does not know is left out (as the
    usage journal's replay does); a line it cannot read at all (no reservation, a bad
    amount) is skipped alone, where before it aborted the whole start's ``settle_kept``
    (the file then claimed again at every start); a torn last line is skipped."""
    import json

    from plano_fast.managed.settle_journal import SettleJournal, _record
    from plano_fast.store.records import Reservation
    from tests.test_store_pg_batch import row

    def line(reservation_id: str, request: int) -> dict[str, Any]:
        reservation = Reservation(reservation_id, 50, (CounterKey("project", "p1", "total", 0),), 10**19, None)
        return _record(reservation, row(request, cost=30))

    newer = line("r-newer", 2)
    newer["row"]["a_field_of_a_later_version"] = 1  # type: ignore[index]
    no_reservation = line("r-x", 3)
    del no_reservation["reservation"]
    bad_amount = line("r-y", 4)
    bad_amount["reservation"]["amount_nano_usd"] = "fifty"  # type: ignore[index]
    path = tmp_path / "kept.settles"
    path.write_text("\n".join(json.dumps(d) for d in (line("r-1", 1), no_reservation, newer, bad_amount))
                    + '\n{"reservation": {"id": "r-torn"')
    pairs = SettleJournal.read(path)
    assert [(reservation.id, usage.request_id) for reservation, usage in pairs] == [
        ("r-1", row(1).request_id), ("r-newer", row(2).request_id)]
