"""The write-ahead log's sync task on an idle gateway: it waits for the next event instead
of waking every ``sync_interval_s`` to find nothing (issue 27: idle cost), and an event
appended after an idle stretch is still synced."""

from __future__ import annotations

import asyncio
from pathlib import Path

from plano_fast.billing.journal import Journal, WriteAheadLog
from plano_fast.usage import UsageEvent


def _event(request_id: str) -> UsageEvent:
    return UsageEvent(request_id, 1_733_000_000_000_000_000, "openai", "gpt-4o-mini", True, "ok", 200,
                      input_tokens=12, output_tokens=3, has_usage=True, duration_ms=1.25)


async def _wait_for(cond: object, timeout_s: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        if cond():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.005)
    return False


def test_idle_wal_does_not_wake_and_syncs_the_next_event(tmp_path: Path) -> None:
    async def scenario() -> None:
        wal = WriteAheadLog(Journal(tmp_path / "usage.journal"), sync_interval_s=0.01)
        calls: list[int] = []
        real_sync = wal.sync

        async def counting_sync() -> None:
            calls.append(len(wal._buffer))
            await real_sync()

        wal.sync = counting_sync  # type: ignore[method-assign]
        wal.start()
        try:
            await asyncio.sleep(0.3)  # ~30 intervals with nothing appended
            assert calls == []
            assert wal._parked is not None  # waiting for an event, not on a timer

            wal.append(_event("r1"))
            wal.append(_event("r2"))
            assert await _wait_for(lambda: wal.syncs == 1)
            assert calls == [2]
            [segment] = wal.files
            read = [e.request_id for batch in Journal.read_events(segment, 10) for e in batch]
            assert read == ["r1", "r2"]

            await asyncio.sleep(0.3)  # idle again: no more sync cycles
            assert calls == [2]
            wal.append(_event("r3"))
            assert await _wait_for(lambda: wal.syncs == 2)
            read = [e.request_id for batch in Journal.read_events(segment, 10) for e in batch]
            assert read == ["r1", "r2", "r3"]
        finally:
            await asyncio.wait_for(wal.stop(), 2.0)  # a parked task stops at once
        assert wal._parked is None
        assert not wal._loop.running

    asyncio.run(scenario())


def test_a_failed_sync_is_retried_without_a_new_event(tmp_path: Path) -> None:
    async def scenario() -> None:
        wal = WriteAheadLog(Journal(tmp_path / "usage.journal"), sync_interval_s=0.01)
        real_sync = wal.sync
        failures = [1]

        async def flaky_sync() -> None:
            if failures:
                failures.pop()
                raise OSError("disk full")
            await real_sync()

        wal.sync = flaky_sync  # type: ignore[method-assign]
        wal.start()
        try:
            wal.append(_event("r1"))
            assert await _wait_for(lambda: wal.syncs == 1)
            assert wal.sync_failures == 1
        finally:
            await wal.stop()

    asyncio.run(scenario())
