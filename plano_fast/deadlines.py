"""Connection timeouts checked on one periodic tick, not with a loop timer per request.

Every request used to arm and cancel three loop timers (client request body, keep-alive
idle, upstream first byte): with uvloop each is an allocated handle plus a libuv timer
start and stop, ~3 % of the gateway's CPU at saturation.  Timeouts here are seconds long
and need not be exact, so a connection only stores ``deadline`` (loop time, 0 = none) and
one ticker per process looks at every member each ``tick_s``: a timeout fires between its
deadline and one tick later.  ``tick_for`` picks the tick from the shortest configured
timeout (a quarter of it, within 20 ms..1 s), so the lateness stays a small fraction of
any timeout.  Walking a few thousand members once a tick costs microseconds.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

MIN_TICK_S = 0.02
MAX_TICK_S = 1.0


class HasDeadline(Protocol):
    #: loop time at which ``on_deadline`` is due; 0.0 = nothing due
    deadline: float

    def on_deadline(self) -> None: ...


def tick_for(*timeouts_s: float) -> float:
    """The tick for a set of timeouts: a quarter of the shortest, within bounds."""
    return min(MAX_TICK_S, max(MIN_TICK_S, min(timeouts_s) / 4))


class DeadlineClock:
    """One ticker for many connections' deadlines (started and stopped by its owner)."""

    __slots__ = ("loop", "tick_s", "_members", "_handle")

    def __init__(self, tick_s: float) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self.loop = asyncio.get_running_loop()
        self.tick_s = tick_s
        self._members: set[HasDeadline] = set()
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: HasDeadline) -> None:
        self._members.add(member)

    def discard(self, member: HasDeadline) -> None:
        self._members.discard(member)

    def start(self) -> None:
        if self._handle is None:
            self._handle = self.loop.call_later(self.tick_s, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self.loop.time()
        due = [m for m in self._members if 0.0 < m.deadline <= now]
        for member in due:
            # An earlier callback in this tick may have re-armed or cleared this one.
            if 0.0 < member.deadline <= now:
                member.deadline = 0.0
                try:
                    member.on_deadline()
                except Exception as exc:  # noqa: BLE001 - one bad member must not stop the clock
                    self.loop.call_exception_handler(
                        {"message": "error in a connection timeout", "exception": exc}
                    )
        self._handle = self.loop.call_later(self.tick_s, self._tick)
