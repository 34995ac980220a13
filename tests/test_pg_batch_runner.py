"""plano_fast.store.pg_batch.GroupRunner on its own (no database): who runs when, and
whose answer or exception each caller gets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from plano_fast.store.pg_batch import GroupRunner


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()

    async def run(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def test_calls_that_arrive_while_batches_run_leave_together() -> None:
    async def main() -> None:
        rec = Recorder()
        runner = GroupRunner(rec.run, in_flight=1, isolate=lambda exc: False)
        calls = [asyncio.ensure_future(runner.run(i)) for i in range(5)]
        await asyncio.sleep(0)
        assert rec.batches == [[0]]  # the first runs at once, in its own coroutine
        rec.gate.set()
        assert await asyncio.gather(*calls) == [0, 10, 20, 30, 40]
        assert rec.batches == [[0], [1, 2, 3, 4]]

    asyncio.run(main())


def test_each_caller_gets_its_own_exception() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.set()
        runner = GroupRunner(rec.run, in_flight=1, isolate=lambda exc: False)
        results = await asyncio.gather(*(runner.run(i) for i in (1, -2, 3)), return_exceptions=True)
        assert results[0] == 10 and results[2] == 30
        assert isinstance(results[1], ValueError) and str(results[1]) == "bad -2"
        with pytest.raises(ValueError, match="bad -5"):
            await runner.run(-5)  # alone, on the direct path

    asyncio.run(main())


def test_a_batch_refused_on_one_item_is_rerun_item_by_item() -> None:
    async def main() -> None:
        seen: list[list[int]] = []
        gate = asyncio.Event()

        async def run(items: Sequence[int]) -> list[int | BaseException]:
            seen.append(list(items))
            await gate.wait()
            if 7 in items and len(items) > 1:
                raise ValueError("the batch holds a bad row")
            if items == [7]:
                raise ValueError("bad row")
            return [i for i in items]

        runner = GroupRunner(run, in_flight=1, isolate=lambda exc: isinstance(exc, ValueError))
        calls = [asyncio.ensure_future(runner.run(i)) for i in (1, 2, 7, 3)]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results[:2] == [1, 2] and results[3] == 3
        assert isinstance(results[2], ValueError) and str(results[2]) == "bad row"
        assert seen == [[1], [2, 7, 3], [2], [7], [3]]

    asyncio.run(main())


def test_a_queued_caller_that_is_cancelled_is_dropped_from_its_batch() -> None:
    async def main() -> None:
        rec = Recorder()
        runner = GroupRunner(rec.run, in_flight=1, isolate=lambda exc: False)
        calls = [asyncio.ensure_future(runner.run(i)) for i in range(3)]
        await asyncio.sleep(0)
        calls[1].cancel()
        await asyncio.sleep(0)
        rec.gate.set()
        assert await calls[0] == 0 and await calls[2] == 20
        assert calls[1].cancelled()
        assert rec.batches == [[0], [2]]

    asyncio.run(main())
