"""Group execution for the PostgreSQL store's request-path writes (issue 27).

Every managed request with a hard limit settles: its usage row, its cost and the release
of its reservation, one statement.  Run one by one, N requests finishing together cost N
statements and N commits, and since they all update the same few counter rows (a
project's and a user's), each one waits for the row locks of the one before, held until
that one's commit is flushed: the commits are serialized, one WAL flush each.
``GroupRunner`` gathers the calls that arrive while earlier batches are in flight and runs
them as ONE statement (the store's batch function; per item, a result or that item's
own exception): one commit, one flush, one lock
acquisition per counter for the whole batch.

A call that arrives while fewer than ``in_flight`` batches run starts its own batch at
once, in its own coroutine (no task, no wait: concurrency 1 costs what it did).  Others
queue; when a batch ends, the queued calls leave together as the next batch, on a task of
the runner's.  Each call still gets its own answer, and its own exception: a batch the
store refuses on one item's data (``isolate``) is rerun item by item, so one bad row never
fails the others.  A queued call whose caller is cancelled is dropped before its batch
starts (its caller has taken the fallback path); once started, it runs to its end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")


class GroupRunner(Generic[I, R]):
    __slots__ = ("_run_batch", "_isolate", "_abandoned", "in_flight", "_running", "_queue", "_tasks")

    def __init__(
        self,
        run_batch: Callable[[Sequence[I]], Awaitable[list[R | BaseException]]],
        *,
        in_flight: int,
        isolate: Callable[[BaseException], bool],
        abandoned: Callable[[I, R], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        #: called with an item and its result when its caller left while its batch ran
        #: (a reservation made for nobody: given back)
        self._abandoned = abandoned
        self._isolate = isolate
        #: batches running at once (the pool's connections they may hold)
        self.in_flight = in_flight
        self._running = 0
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, item: I) -> R:
        if self._running < self.in_flight and not self._queue:
            self._running += 1
            try:
                result = (await self._run_batch((item,)))[0]
                if isinstance(result, BaseException):
                    raise result
                return result
            finally:
                self._running -= 1
                self._start_queued()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start_queued()
        return await future

    def _start_queued(self) -> None:
        while self._running < self.in_flight and self._queue:
            batch = [(item, f) for item, f in self._queue if not f.done()]  # callers gone: dropped
            self._queue = []
            if not batch:
                return
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._drain(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            await self._answer(batch)
        finally:
            self._running -= 1
            self._start_queued()

    async def _answer(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to each caller
            if len(batch) > 1 and self._isolate(exc):
                for one in batch:  # one item's data refused: each on its own
                    await self._answer([one])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (item, future), result in zip(batch, results, strict=True):
            if future.done():
                if self._abandoned is not None and not isinstance(result, BaseException):
                    self._abandoned(item, result)
                continue
            if isinstance(result, BaseException):  # that item's own failure
                future.set_exception(result)
            else:
                future.set_result(result)
