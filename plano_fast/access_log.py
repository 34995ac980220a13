"""The data-plane access log: one JSON line per request, written off the hot path.

The request path appends a tuple of values it already holds (:meth:`AccessLog.record`, a
list append); a task of the gateway turns the pending tuples into JSON lines and writes
them every ``flush_interval_s`` (and at stop).  Never a credential or a body: the caller
identifies by the key's SHA-256 (its first 12 hex digits here) and the project.

Fields: ``time`` (RFC 3339, UTC, ms), ``request_id``, ``mode``, ``project``, ``key``
(hash prefix), ``provider``, ``model``, ``endpoint``, ``status`` (HTTP), ``outcome``,
``stream``, ``input_tokens``, ``output_tokens``, ``cache_read_tokens``,
``reasoning_tokens``, ``duration_ms``, ``ttft_ms``, ``upstream_ms``, ``overhead_us``,
``attempts``, ``attempt_trail`` (with more than one attempt, each one's status or error
kind: the usage row's), ``client``, ``guardrails`` (the detectors that matched, never the text),
``route`` (the preference route that chose the model, or null).

An answer the server gives before any mode handles the request -- an unparseable or
oversized request, 404, 405, the store not open yet, a handler bug -- has its line too
(:func:`refusal_record`): ``outcome`` ``refused``, ``mode`` null, ``endpoint`` the path
(never its query string, where Gemini clients put their key), ``attempt_trail`` the error
code, no key, no body.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from plano_fast.wire import ACCESS_LOG_FIELDS, ACCESS_LOG_RECORD, access_log_lines, record_appender

if TYPE_CHECKING:
    from plano_fast.errors import GatewayError

log = logging.getLogger("plano_fast.access_log")

#: the line's fields, in order
FIELDS = ACCESS_LOG_FIELDS
#: What the request path hands over (:meth:`AccessLog.record`): values it holds, raw --
#: clock readings in ns, the whole key hash -- so that every derived field (durations,
#: the time stamp, the hash prefix) is computed by the writer, off the request.  The
#: writer (plano_fast/wire/_obs.pyx, twin _obs_py.py) writes the JSON bytes itself, in
#: one buffer per flush: measured (benchmarks/bench_observability.py, callgrind) ~27k
#: instructions per line with a dict and orjson, ~5k this way.
RECORD = ACCESS_LOG_RECORD


#: Lines formatted and written per synchronous stretch of the loop (~3 µs a line with the
#: dict + orjson writer this was measured with; the compiled writer takes ~5k instructions
#: a line, about a fifth of that).  One
#: flush of everything at 1,000 req/s (200 lines every 0.2 s) measured 0.6-1 ms of the
#: loop's CPU each time: a stall five times a second, a p99 cost at concurrency 1
#: (issue 27, benchmarks/tail_probe.py --hooks --access-log).
LINES_PER_SLICE = 32


#: a refused request's path, as its line's ``endpoint``, is cut to this many characters
MAX_REFUSED_PATH_CHARS = 200


def refusal_record(
    error: GatewayError, path: bytes | None, request_id: str, client: str
) -> tuple[Any, ...]:
    """The RECORD of a refusal no mode's exchange logged (see the module docstring): only
    what the server knows without identifying anyone -- the path without its query, the
    status and code, the client's address."""
    now_ns = time.time_ns()
    endpoint = None if path is None else path[:MAX_REFUSED_PATH_CHARS].decode("latin-1")
    return (
        now_ns, request_id, None, None, None, None, None, endpoint, error.status, "refused",
        False, None, None, None, None, now_ns, 0, 0, 0, client, None, None, error.code,
    )  # fmt: skip


class AccessLog:
    """``target``: "stdout" or a file path (appended to)."""

    def __init__(self, target: str, flush_interval_s: float = 0.2) -> None:
        self.target = target
        self.flush_interval_s = flush_interval_s
        self._pending: list[tuple[Any, ...]] = []
        #: One request's values, in RECORD order: the hot path's call, an append to the
        #: pending list in C (no Python frame), which takes a record of scalars out of the
        #: cyclic GC (wire.record_appender); flush empties that same list.
        self.record: Callable[[tuple[Any, ...]], None] = record_appender(self._pending)
        self._out: IO[bytes] | None = None
        self._task: asyncio.Task[None] | None = None

    def open(self) -> None:
        """The output, binary (the writer makes UTF-8 bytes): stdout's buffer or the file, appended."""
        self._out = sys.stdout.buffer if self.target == "stdout" else open(self.target, "ab")  # noqa: SIM115

    def start(self) -> None:
        self.open()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="access-log")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self._flush_sliced()

    async def _flush_sliced(self) -> None:
        """What was recorded when the flush began, ``LINES_PER_SLICE`` lines per stretch of
        the loop (lines recorded meanwhile wait for the next flush: the order holds).  A
        cancellation between slices leaves the rest in ``_pending`` for ``flush``."""
        todo = len(self._pending)
        while todo > 0:
            n = min(todo, LINES_PER_SLICE)
            todo -= n
            self._write(n, flush=todo == 0)
            if todo:
                await asyncio.sleep(0)

    def flush(self) -> None:
        """Everything recorded so far, in one go (at stop)."""
        self._write(len(self._pending), flush=True)

    def _write(self, n: int, flush: bool) -> None:
        """Format and write the oldest ``n`` pending records (taken out of the very list
        ``record`` appends to)."""
        pending = self._pending
        if n >= len(pending):
            batch = pending.copy()
            pending.clear()
        else:
            batch = pending[:n]
            del pending[:n]
        out = self._out
        if not batch or out is None:
            return
        try:
            data = access_log_lines(batch)
        except (TypeError, ValueError, OverflowError) as exc:
            # A record the writer cannot write (a bug, not a client's doing: every text
            # is escaped): the others are written, the task goes on.
            log.warning("access log: a record not written: %s", exc)
            data = b"".join([_line_or_empty(values) for values in batch])
        try:
            out.write(data)
            if flush:
                out.flush()
        except OSError as exc:
            log.warning("access log not written (%d lines lost): %s", len(batch), exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.flush()
        if self._out is not None and self._out is not sys.stdout.buffer:
            self._out.close()
        self._out = None


def _line_or_empty(values: tuple[Any, ...]) -> bytes:
    try:
        return access_log_lines((values,))
    except (TypeError, ValueError, OverflowError):
        return b""
