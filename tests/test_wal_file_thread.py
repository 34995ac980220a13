"""The usage write-ahead log's file work on its own thread (``billing/file_thread.py``):
each sync written and fsynced off the loop, in order, with no ``concurrent.futures``
machinery on the loop's side (issue 27: ~53k loop instructions a sync at concurrency 1),
into a segment kept open from one sync to the next (``journal.SegmentFile``);
a failed write reaches the sync (its events kept for the next one); a job runs even when
the future waiting for it is cancelled; ``stop`` waits for the jobs already given.
The gateway end to end (real sockets, SIGKILL, replay): ``test_billing_faults.py::
test_sigkill_loses_no_synced_usage``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from pathlib import Path

import pytest

from plano_fast.billing import journal as journal_module
from plano_fast.billing.file_thread import FileThread
from plano_fast.billing.journal import Journal, WriteAheadLog
from plano_fast.usage import UsageEvent


def _event(request_id: str) -> UsageEvent:
    return UsageEvent(request_id, 1_733_000_000_000_000_000, "openai", "gpt-4o-mini", True, "ok", 200,
                      input_tokens=12, output_tokens=3, has_usage=True, duration_ms=1.25)


def _ids(path: Path) -> list[str]:
    return [e.request_id for batch in Journal.read_events(path, 100) for e in batch]


async def _fail_then_sync_again(tmp_path: Path) -> list[str]:
    """Event "a" in a sync that fails ("disk full"), then "b" in one that does not: the
    request ids the segment holds after."""
    wal = WriteAheadLog(Journal(tmp_path / "usage.journal"), sync_interval_s=3600)
    wal.start()
    try:
        wal.append(_event("a"))
        with pytest.raises(OSError, match="disk full"):
            await wal.sync()
        assert wal.syncs == 0
        wal.append(_event("b"))
        await wal.sync()
        [segment] = wal.files
        return _ids(segment)
    finally:
        await wal.stop()


def test_syncs_run_on_the_logs_thread_without_an_executor_future(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    real_init = concurrent.futures.Future.__init__

    def counting_init(self: concurrent.futures.Future[object]) -> None:
        made.append(threading.get_ident())
        real_init(self)

    monkeypatch.setattr(concurrent.futures.Future, "__init__", counting_init)
    fsynced_on: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        fsynced_on.append(threading.get_ident())
        real_fsync(fd)

    monkeypatch.setattr(journal_module.os, "fsync", recording_fsync)
    opened: list[str] = []
    real_open = os.open

    def recording_open(path: str | Path, flags: int, mode: int = 0o777) -> int:
        opened.append(Path(path).name)
        return real_open(path, flags, mode)

    monkeypatch.setattr(journal_module.os, "open", recording_open)

    async def main() -> None:
        wal = WriteAheadLog(Journal(tmp_path / "usage.journal"), sync_interval_s=3600)
        wal.start()
        try:
            for n in range(5):
                wal.append(_event(f"r{n}"))
                await wal.sync()
            [segment] = wal.files
            assert _ids(segment) == [f"r{n}" for n in range(5)]
            await wal.resolved(5)
            assert not segment.exists() and wal.files == []
        finally:
            await wal.stop()

    asyncio.run(main())
    assert len(fsynced_on) == 5
    assert threading.get_ident() not in fsynced_on
    assert len(set(fsynced_on)) == 1  # one thread, the log's own
    # run_in_executor made a concurrent.futures.Future for every sync and unlink
    assert made == []
    # the segment opened by its first sync, kept open for the next four (was opened,
    # with its directory made, by every sync)
    assert len(opened) == 1 and opened[0].endswith(".wal")


def test_a_failed_write_fails_the_sync_and_its_events_wait_for_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    failures = [OSError("disk full")]

    def flaky_fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(journal_module.os, "fsync", flaky_fsync)

    # the failed sync's bytes were cut back (SegmentFile.append), then written again with "b"
    assert asyncio.run(_fail_then_sync_again(tmp_path)) == ["a", "b"]


def test_a_job_runs_when_its_waiter_is_cancelled_and_stop_waits_for_queued_jobs() -> None:
    ran: list[str] = []
    gate = threading.Event()

    def job(name: str) -> str:
        gate.wait(5)
        ran.append(name)
        return name

    async def main() -> None:
        thread = FileThread("test-files")
        first = thread.run(job, "first")
        second = thread.run(job, "second")
        second.cancel()  # queued behind ``first``, not started: it runs all the same
        third = thread.run(job, "third")
        gate.set()
        assert await first == "first"
        assert await third == "third"
        fourth = thread.run(job, "fourth")
        thread.stop()  # after the jobs already given
        assert ran == ["first", "second", "third", "fourth"]
        assert await fourth == "fourth"

    asyncio.run(main())


def test_a_write_cut_part_way_leaves_no_torn_line_before_the_next_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that stops part way (half of the line written, then an error): the segment is
    cut back to its size before, so the next sync's lines (the same events again) are not
    glued to the torn half, which would make the first of them unreadable to the replay."""
    real_write = os.write
    calls: list[int] = []

    def half_then_fail(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(fd, data)

    monkeypatch.setattr(journal_module.os, "write", half_then_fail)

    assert asyncio.run(_fail_then_sync_again(tmp_path)) == ["a", "b"]
