"""One named background task that runs a coroutine every interval.

The gateway's reload and check loops (firewall key registry, managed state, budget
checker, price calculator) all have the same shape: the owner runs the first cycle itself
in ``start`` (so it can report readiness), then a task sleeps an interval, runs a cycle,
and keeps going whatever a cycle raises; ``stop`` cancels it.  ``Periodic`` is that task.

* The interval is a number or a function read before every sleep (the firewall registry
  retries every second until its first load succeeds).
* A cycle that raises ``Exception`` is handed to ``on_error`` (the owner's log line and
  failure counter) and the loop goes on; without ``on_error`` it is logged.  Cancellation
  is not an error: it ends the loop.
* ``stop`` cancels the task and waits for it at most ``timeout_s``: a cycle stuck in
  something that ignores cancellation cannot hold up a shutdown (it is logged), and a
  cycle that swallowed the cancellation ends the loop when it returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("plano_fast")

#: how long ``stop`` waits for a cancelled task to end
STOP_TIMEOUT_S = 5.0


class Periodic:
    """``work()`` every ``interval_s`` (the first run one interval after ``start``)."""

    __slots__ = ("name", "_work", "_interval", "_on_error", "_task")

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[object]],
        interval_s: float | Callable[[], float],
        *,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.name = name
        self._work = work
        self._interval = interval_s
        self._on_error = on_error
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the loop on the running event loop (once; ``stop`` before starting again)."""
        if self.running:
            raise RuntimeError(f"periodic task {self.name!r} is already running")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Cancel the loop and wait for it to end, at most ``timeout_s``."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait((task,), timeout=timeout_s)
        if not done:
            log.warning("periodic task %s did not stop within %.1fs; left cancelled", self.name, timeout_s)
        elif not task.cancelled() and task.exception() is not None:  # retrieved: no "never retrieved" noise
            log.warning("periodic task %s ended with %r", self.name, task.exception())

    async def _run(self) -> None:
        interval = self._interval
        task = asyncio.current_task()
        while True:
            await asyncio.sleep(interval() if callable(interval) else interval)
            try:
                await self._work()
            except Exception as exc:  # noqa: BLE001 - a failed cycle never ends the loop
                self._failed(exc)
            if task is not None and task.cancelling():
                return  # a cycle swallowed the cancellation ``stop`` sent: end here anyway

    def _failed(self, exc: Exception) -> None:
        on_error = self._on_error
        if on_error is None:
            log.warning("%s failed: %s", self.name, type(exc).__name__)
            return
        try:
            on_error(exc)
        except Exception:  # noqa: BLE001 - the error handler's own failure must not end the loop
            log.exception("%s: error handler failed", self.name)
