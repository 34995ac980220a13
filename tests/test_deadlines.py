"""The shared deadline clock (pure asyncio, real loop): timeouts fire once, between their
deadline and one tick later; re-armed and cleared deadlines are honoured."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from plano_fast.deadlines import MAX_TICK_S, MIN_TICK_S, DeadlineClock, tick_for


class Member:
    def __init__(self) -> None:
        self.deadline = 0.0
        self.fired: list[float] = []

    def on_deadline(self) -> None:
        self.fired.append(asyncio.get_running_loop().time())


def test_tick_is_a_quarter_of_the_shortest_timeout_within_bounds() -> None:
    assert tick_for(10.0, 60.0, 0.5) == pytest.approx(0.125)
    assert tick_for(3600.0) == MAX_TICK_S
    assert tick_for(0.001) == MIN_TICK_S


def test_deadlines_fire_once_within_one_tick() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        clock = DeadlineClock(0.02)
        clock.start()
        due, cleared, rearmed, never = Member(), Member(), Member(), Member()
        for m in (due, cleared, rearmed, never):
            clock.add(m)
        start = loop.time()
        due.deadline = start + 0.05
        cleared.deadline = start + 0.05
        rearmed.deadline = start + 0.05
        await asyncio.sleep(0.01)
        cleared.deadline = 0.0
        rearmed.deadline = start + 0.15
        await asyncio.sleep(0.3)
        clock.stop()
        assert len(due.fired) == 1 and start + 0.05 <= due.fired[0] <= start + 0.05 + 0.02 + 0.05
        assert cleared.fired == [] and never.fired == []
        assert len(rearmed.fired) == 1 and rearmed.fired[0] >= start + 0.15
        assert due.deadline == 0.0  # cleared before the callback: it fires once

    uvloop.run(go())


def test_a_failing_member_does_not_stop_the_clock() -> None:
    class Bad(Member):
        def on_deadline(self) -> None:
            raise RuntimeError("boom")

    async def go() -> None:
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx["exception"]))
        clock = DeadlineClock(0.02)
        clock.start()
        bad, good = Bad(), Member()
        clock.add(bad)
        clock.add(good)
        bad.deadline = good.deadline = loop.time() + 0.03
        await asyncio.sleep(0.15)
        later = Member()
        clock.add(later)
        later.deadline = loop.time() + 0.03
        await asyncio.sleep(0.15)
        clock.stop()
        assert len(good.fired) == 1 and len(later.fired) == 1
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
        clock.discard(later)
        assert len(clock) == 2

    uvloop.run(go())
