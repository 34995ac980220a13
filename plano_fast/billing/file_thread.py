"""One thread of its own for the usage write-ahead log's file work, its results awaited on the loop.

The log hands its thread a job every ``sync_interval_s`` (10 a second by default: write and
fsync the events of the last interval) and one per flush (unlink the resolved segments).
``loop.run_in_executor`` on a one-worker ``ThreadPoolExecutor`` did that with a
``concurrent.futures.Future`` chained to an asyncio one, a work item, the executor's lock
and its idle-worker semaphore: ~53k instructions of the loop's thread a job (callgrind,
config mode at concurrency 1, where a sync carries the events of a few requests: ~13k a
request there; issue 27).  Here a job is a tuple on a ``queue.SimpleQueue`` and its result
comes back with one ``call_soon_threadsafe``: the same thread hop, without the machinery.

Jobs run one at a time, in the order given.  A job always runs once given, even when the
future that waits for it is cancelled (the log's unlinks rely on it, as they relied on
``asyncio.shield`` before; a cancelled sync puts its events back for the next one, so a
cancelled write may then be in the log twice: replayed, its rows are stored once, the
store being idempotent on request_id).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class FileThread:
    """``run(fn, *args)``: ``fn(*args)`` on this object's thread; the loop awaits its result."""

    __slots__ = ("_jobs", "_thread")

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # A daemon: a process that ends without ``stop`` (a crash) is not held up by a
        # thread waiting for work; what it had not synced is what the log's bound allows
        # to be lost (``sync_interval_s``).
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; the future (of the running loop) gets its result or exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def stop(self) -> None:
        """Run the jobs already queued, then end the thread (waits for it)."""
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            loop, future, fn, args = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting future
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits for the result
                pass
            del job, future, result, error  # (not kept alive until the next job)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
