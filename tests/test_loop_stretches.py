"""Background work of the usage path runs in short stretches of the event loop (issue 27:
a request arriving during a long one waits for all of it, the concurrency-1 p99).

Each test checks the bound (no stretch handles more than its slice) and that slicing
loses, reorders or duplicates nothing, cancellation included."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from plano_fast import access_log
from plano_fast.access_log import LINES_PER_SLICE, RECORD, AccessLog
from plano_fast.billing.journal import Journal, WriteAheadLog
from plano_fast.store import UsageRow, open_store
from plano_fast.store.migrate import migrate
from plano_fast.store.sql import NORMALIZE_SLICE
from plano_fast.usage import UsageEvent


def _values(i: int) -> tuple[object, ...]:
    """One access-log record (RECORD order) whose request id is ``r<i>``."""
    base = dict.fromkeys(RECORD)
    base.update(started_ns=1_733_000_000_000_000_000 + i, request_id=f"r{i}", mode="config",
                provider="openai", model="gpt-4o-mini", endpoint="/v1/chat/completions", status=200,
                outcome="ok", stream=False, ended_ns=1_733_000_000_001_000_000 + i, attempts=1)
    return tuple(base[k] for k in RECORD)


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


def test_the_access_log_writes_a_slice_per_stretch_in_order(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "access.log"
    per_stretch: list[int] = []
    real_lines = access_log.access_log_lines

    def counting_lines(records: list[tuple[object, ...]]) -> bytes:
        per_stretch[-1] += len(records)
        return real_lines(records)

    monkeypatch.setattr(access_log, "access_log_lines", counting_lines)

    async def main() -> None:
        log = AccessLog(str(path), flush_interval_s=3600)
        log.open()
        n = 3 * LINES_PER_SLICE + 5
        for i in range(n):
            log.record(_values(i))
        loop = asyncio.get_running_loop()
        flush = loop.create_task(log._flush_sliced())
        while not flush.done():
            per_stretch.append(0)
            await asyncio.sleep(0)
            log.record(_values(n + len(per_stretch)))  # recorded meanwhile: the next flush
        assert max(per_stretch) <= LINES_PER_SLICE
        assert sum(per_stretch) == n
        assert _ids(path) == [f"r{i}" for i in range(n)]  # written and flushed, in order
        later = len(log._pending)
        await log.stop()
        assert _ids(path) == [f"r{i}" for i in range(n)] + [f"r{n + k}" for k in range(1, later + 1)]

    asyncio.run(main())


def test_a_cancelled_access_log_flush_leaves_the_rest_for_stop(tmp_path: Path) -> None:
    path = tmp_path / "access.log"

    async def main() -> None:
        log = AccessLog(str(path), flush_interval_s=3600)
        log.open()
        n = 4 * LINES_PER_SLICE
        for i in range(n):
            log.record(_values(i))
        flush = asyncio.get_running_loop().create_task(log._flush_sliced())
        await asyncio.sleep(0)  # the first slice is written
        await asyncio.sleep(0)
        flush.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flush
        assert 0 < len(log._pending) < n
        await log.stop()
        assert _ids(path) == [f"r{i}" for i in range(n)]

    asyncio.run(main())


def _event(request_id: str) -> UsageEvent:
    return UsageEvent(request_id, 1_733_000_000_000_000_000, "openai", "gpt-4o-mini", True, "ok", 200,
                      input_tokens=12, output_tokens=3, has_usage=True, duration_ms=1.25)


def test_resolved_wal_segments_are_unlinked_off_the_loop_even_when_cancelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unlinked_on: list[int] = []
    real_unlink = Path.unlink

    def recording_unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".wal"):
            unlinked_on.append(threading.get_ident())
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", recording_unlink)

    async def main() -> None:
        wal = WriteAheadLog(Journal(tmp_path / "usage.journal"), sync_interval_s=3600)
        wal.start()
        try:
            wal.append(_event("a"))
            await wal.sync()
            [first] = wal.files
            await wal.resolved(1)
            assert not first.exists()
            wal.append(_event("b"))
            await wal.sync()
            [second] = wal.files
            assert second != first
            resolving = asyncio.get_running_loop().create_task(wal.resolved(2))
            await asyncio.sleep(0)  # into the unlink, then cancelled (a stopping flusher)
            resolving.cancel()
            await asyncio.gather(resolving, return_exceptions=True)
        finally:
            await wal.stop()  # waits for the thread's queued work
        assert not second.exists()
        assert wal.files == []

    asyncio.run(main())
    assert len(unlinked_on) == 2
    assert threading.get_ident() not in unlinked_on


def _row(request_id: str, tokens: int) -> UsageRow:
    return UsageRow(
        request_id=request_id, time_ns=1_733_000_000_000_000_000, project_id="p1", user_id=None,
        key_hash="k" * 64, token_id=None, provider="openai", model="gpt-4o-mini",
        input_tokens=tokens, output_tokens=1, cache_read_tokens=0, cache_write_tokens=0,
        reasoning_tokens=0, streaming=False, status="ok", http_status=200, priced=True,
        cost_nano_usd=7,
    )  # fmt: skip


def test_a_batch_validated_in_slices_still_drops_a_repeated_id_across_slices(tmp_path: Path) -> None:
    path = tmp_path / "plano.db"
    n = 2 * NORMALIZE_SLICE + 10

    async def main() -> None:
        async with open_store(None, str(path)) as store:
            await migrate(store)
            batch = [_row(f"q{i}", 5) for i in range(n)]
            # the same id again, in a later slice, with other values: the first one wins
            batch.append(_row("q3", 999))
            assert await store.write_usage(batch) == n

    asyncio.run(main())
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM usage_log").fetchone()[0] == n
        assert conn.execute("SELECT input_tokens FROM usage_log WHERE request_id = 'q3'").fetchone()[0] == 5
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_both_stores_validate_a_usage_batch_a_slice_per_stretch(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """write_usage validates a flusher-sized batch NORMALIZE_SLICE rows per stretch of the
    loop, in both stores (PostgreSQL validated it whole: one ~0.25 ms stretch per flush)."""
    from plano_fast.store import postgres, sql
    from plano_fast.store import sqlite as sqlite_store

    database_url = request.getfixturevalue("pg_dsn") if kind == "postgres" else None
    n = 3 * NORMALIZE_SLICE + 10
    per_stretch: list[int] = []
    real_normalize = sql.normalize_usage

    def counting_normalize(rows: list[UsageRow], seen: set[str] | None = None) -> list[UsageRow]:
        per_stretch[-1] += len(rows)
        return real_normalize(rows, seen)

    monkeypatch.setattr(sql, "normalize_usage", counting_normalize)
    # (the name a store module imported for itself, if it validates without slicing)
    monkeypatch.setattr(postgres, "normalize_usage", counting_normalize)
    # (SQLite's choice of the compiled one or its twin, handed to normalize_usage_sliced)
    monkeypatch.setattr(sqlite_store, "_normalize_usage", counting_normalize)

    async def main() -> None:
        async with open_store(database_url, str(tmp_path / "plano.db")) as store:
            await migrate(store)
            batch = [_row(f"s{i}", 5) for i in range(n)]
            per_stretch.append(0)
            write = asyncio.get_running_loop().create_task(store.write_usage(batch))
            while not write.done():
                await asyncio.sleep(0)
                per_stretch.append(0)
            assert await write == n

    asyncio.run(main())
    assert sum(per_stretch) == n
    assert max(per_stretch) == NORMALIZE_SLICE


def test_the_key_registry_parses_a_slice_of_keys_per_stretch(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from plano_fast import key_registry
    from plano_fast.key_registry import RELOAD_SLICE, ApiKeyRegistry

    n = 3 * RELOAD_SLICE + 7
    per_stretch: list[int] = []
    real_parse = key_registry.parse_upstream

    def counting_parse(key: object) -> object:
        per_stretch[-1] += 1
        return real_parse(key)  # type: ignore[arg-type]

    monkeypatch.setattr(key_registry, "parse_upstream", counting_parse)

    async def main() -> None:
        async with open_store(None, str(tmp_path / "plano.db")) as store:
            await migrate(store)
            project = await store.create_project("p")
            hashes = [f"{i:064x}" for i in range(n)]
            for h in hashes:
                await store.register_api_key(h, project.id, "openai", "http://127.0.0.1:9", "k")
            registry = ApiKeyRegistry(store, reload_interval_s=3600)
            per_stretch.append(0)
            reload = asyncio.get_running_loop().create_task(registry.reload())
            while not reload.done():
                await asyncio.sleep(0)
                per_stretch.append(0)
            await reload
            assert registry.ready and len(registry) == n
            assert all(registry.lookup(h) is not None for h in hashes)
            assert max(per_stretch) <= RELOAD_SLICE and sum(per_stretch) == n

            # A reload started during another (an admin change) waits for it, then reads
            # the store: keys revoked in between are gone once both are done, although the
            # later reload alone (few keys left: one stretch) would finish first.
            monkeypatch.setattr(key_registry, "RELOAD_SLICE", 1)  # the first: n stretches
            first = asyncio.get_running_loop().create_task(registry.reload())
            while sum(per_stretch) == n:  # until the first is parsing
                await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert not first.done()
            with sqlite3.connect(tmp_path / "plano.db") as admin:
                admin.execute("UPDATE registered_api_keys SET is_active = 0 WHERE key_hash <> ?", (hashes[0],))
            admin.close()
            await asyncio.gather(first, registry.reload())
            assert registry.lookup(hashes[0]) is not None and len(registry) == 1

    asyncio.run(main())


def test_a_wal_sync_encodes_a_slice_per_stretch_and_loses_nothing_when_cancelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plano_fast.billing import journal
    from plano_fast.billing.journal import SYNC_SLICE

    per_stretch: list[int] = []
    real_line = journal._wal_line

    def counting_line(events: list[UsageEvent], start: int, stop: int) -> bytes:
        per_stretch[-1] += stop - start
        return real_line(events, start, stop)

    monkeypatch.setattr(journal, "_wal_line", counting_line)
    n = 3 * SYNC_SLICE + 5

    async def main() -> None:
        wal = WriteAheadLog(Journal(tmp_path / "usage.journal"), sync_interval_s=3600)
        wal.start()
        try:
            for i in range(n):
                wal.append(_event(f"e{i}"))
            per_stretch.append(0)
            sync = asyncio.get_running_loop().create_task(wal.sync())
            await asyncio.sleep(0)  # the first slice is encoded
            per_stretch.append(0)
            sync.cancel()  # mid-encoding: the events go back to the buffer, in order
            with pytest.raises(asyncio.CancelledError):
                await sync
            assert wal.syncs == 0 and len(wal._buffer) == n
            wal.append(_event(f"e{n}"))
            sync = asyncio.get_running_loop().create_task(wal.sync())
            while not sync.done():
                per_stretch.append(0)
                await asyncio.sleep(0)
            await sync
            assert wal.syncs == 1
            assert max(per_stretch) <= SYNC_SLICE
            [segment] = wal.files
            read = [e.request_id for batch in Journal.read_events(segment, 1000) for e in batch]
            assert read == [f"e{i}" for i in range(n + 1)]
        finally:
            await wal.stop()

    asyncio.run(main())
