"""plano_fast.periodic.Periodic: the one reload/check loop (first run one interval after
start, failures handed on and survived, a bounded stop)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from plano_fast.periodic import STOP_TIMEOUT_S, Periodic


def test_runs_every_interval_first_after_one_interval() -> None:
    async def main() -> None:
        runs: list[float] = []

        async def work() -> None:
            runs.append(time.monotonic())

        loop = Periodic("t-every", work, 0.05)
        started = time.monotonic()
        loop.start()
        assert loop.running
        await asyncio.sleep(0.02)
        assert runs == []  # sleeps first: the owner ran the first cycle itself
        await asyncio.sleep(0.5)
        await loop.stop()
        assert not loop.running
        assert len(runs) >= 3
        assert runs[0] - started >= 0.045
        assert all(b - a >= 0.045 for a, b in zip(runs, runs[1:], strict=False))
        count = len(runs)
        await asyncio.sleep(0.12)
        assert len(runs) == count  # stopped means stopped

    asyncio.run(main())


def test_failures_go_to_on_error_and_the_loop_goes_on() -> None:
    async def main() -> None:
        calls = 0
        errors: list[Exception] = []

        async def work() -> None:
            nonlocal calls
            calls += 1
            if calls % 2:
                raise ValueError(f"cycle {calls}")

        loop = Periodic("t-errors", work, 0.01, on_error=errors.append)
        loop.start()
        while calls < 6:
            await asyncio.sleep(0.01)
        await loop.stop()
        assert [str(e) for e in errors][:3] == ["cycle 1", "cycle 3", "cycle 5"]
        assert all(isinstance(e, ValueError) for e in errors)

    asyncio.run(main())


def test_without_on_error_a_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        calls = 0

        async def work() -> None:
            nonlocal calls
            calls += 1
            raise KeyError("x")

        loop = Periodic("t-logged", work, 0.01)
        loop.start()
        while calls < 2:
            await asyncio.sleep(0.01)
        await loop.stop()

    with caplog.at_level(logging.WARNING, logger="plano_fast"):
        asyncio.run(main())
    assert "t-logged failed: KeyError" in caplog.text


def test_a_failing_error_handler_does_not_end_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> int:
        calls = 0

        async def work() -> None:
            nonlocal calls
            calls += 1
            raise ValueError

        def on_error(exc: Exception) -> None:
            raise RuntimeError("handler broke")

        loop = Periodic("t-handler", work, 0.01, on_error=on_error)
        loop.start()
        while calls < 3:
            await asyncio.sleep(0.01)
        await loop.stop()
        return calls

    with caplog.at_level(logging.ERROR, logger="plano_fast"):
        assert asyncio.run(main()) >= 3
    assert "t-handler: error handler failed" in caplog.text


def test_the_interval_is_read_before_every_sleep() -> None:
    async def main() -> None:
        interval = 10.0
        runs = 0

        async def work() -> None:
            nonlocal runs
            runs += 1

        loop = Periodic("t-interval", work, lambda: interval)
        interval = 0.01  # read when the loop first sleeps, after start
        loop.start()
        await asyncio.sleep(0.1)
        assert runs >= 2
        interval = 10.0
        await asyncio.sleep(0.05)  # the sleep under way ends, the next is 10 s
        seen = runs
        await asyncio.sleep(0.1)
        assert runs == seen
        await loop.stop()

    asyncio.run(main())


def test_stop_mid_cycle_cancels_without_calling_on_error() -> None:
    async def main() -> None:
        entered = asyncio.Event()
        errors: list[Exception] = []
        cancelled: list[bool] = []

        async def work() -> None:
            entered.set()
            try:
                await asyncio.Event().wait()  # a cycle that would never end by itself
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        loop = Periodic("t-cancel", work, 0.0, on_error=errors.append)
        loop.start()
        task = loop._task
        assert task is not None
        await entered.wait()
        await loop.stop()
        # stop returned with the cycle cancelled and its task over: it cancelled the cycle,
        # not waited it out (it never ends) nor gave up on it at the timeout
        assert cancelled == [True] and task.cancelled()
        assert errors == []
        assert not loop.running

    asyncio.run(main())


def test_stop_is_bounded_when_a_cycle_ignores_cancellation(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        entered = asyncio.Event()
        release = asyncio.Event()

        async def stubborn() -> None:
            entered.set()
            while True:
                try:
                    await release.wait()
                    return
                except asyncio.CancelledError:
                    continue  # ignores cancellation until released

        loop = Periodic("t-stuck", stubborn, 0.0)
        loop.start()
        task = loop._task
        assert task is not None
        await entered.wait()
        started = time.monotonic()
        await loop.stop(timeout_s=0.1)
        took = time.monotonic() - started
        # bounded by the timeout given (the cycle never ends by itself), not the default one
        assert 0.09 <= took < STOP_TIMEOUT_S / 2, took
        assert not task.done()
        release.set()  # let it end, so the event loop closes cleanly
        await asyncio.wait((task,), timeout=1.0)
        assert task.done()

    with caplog.at_level(logging.WARNING, logger="plano_fast"):
        asyncio.run(main())
    assert "t-stuck did not stop within 0.1s" in caplog.text


def test_start_twice_is_refused_and_stop_is_idempotent() -> None:
    async def main() -> None:
        runs = 0

        async def work() -> None:
            nonlocal runs
            runs += 1

        loop = Periodic("t-twice", work, 0.01)
        await loop.stop()  # never started: nothing to do
        loop.start()
        with pytest.raises(RuntimeError):
            loop.start()
        await loop.stop()
        await loop.stop()
        before = runs
        loop.start()  # a stopped loop can start again
        await asyncio.sleep(0.05)
        await loop.stop()
        assert runs > before

    asyncio.run(main())
