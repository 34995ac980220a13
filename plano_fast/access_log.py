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
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import IO, Any, Final

import orjson

log = logging.getLogger("plano_fast.access_log")

FIELDS: Final = (
    "time", "request_id", "mode", "project", "key", "provider", "model", "endpoint", "status",
    "outcome", "stream", "input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens",
    "duration_ms", "ttft_ms", "upstream_ms", "overhead_us", "attempts", "client", "guardrails",
    "route", "attempt_trail",
)  # fmt: skip

#: What the request path hands over (:meth:`AccessLog.record`): values it holds, raw --
#: clock readings in ns, the whole key hash -- so that every derived field (durations,
#: rounding, the time stamp, the hash prefix) is computed by the writer, off the request.
#: Measured (benchmarks/bench_observability.py, callgrind): the record with ``round()``
#: and a ``dict(zip(FIELDS, ...))`` line cost ~44k instructions per request, this ~34k,
#: nearly all of it in the writer (the dict and orjson), off the request.
RECORD: Final = (
    "started_ns", "request_id", "mode", "project", "key_hash", "provider", "model", "endpoint",
    "status", "outcome", "stream", "input_tokens", "output_tokens", "cache_read_tokens",
    "reasoning_tokens", "ended_ns", "head_ns", "sent_ns", "attempts", "client", "guardrails",
    "route", "attempt_trail",
)  # fmt: skip


#: Lines formatted and written per synchronous stretch of the loop (~3 µs a line).  One
#: flush of everything at 1,000 req/s (200 lines every 0.2 s) measured 0.6-1 ms of the
#: loop's CPU each time: a stall five times a second, a p99 cost at concurrency 1
#: (issue 27, benchmarks/tail_probe.py --hooks --access-log).
LINES_PER_SLICE = 32


class AccessLog:
    """``target``: "stdout" or a file path (appended to)."""

    def __init__(self, target: str, flush_interval_s: float = 0.2) -> None:
        self.target = target
        self.flush_interval_s = flush_interval_s
        self._pending: list[tuple[Any, ...]] = []
        self._out: IO[bytes] | None = None
        self._task: asyncio.Task[None] | None = None

    def record(self, values: tuple[Any, ...]) -> None:
        """One request's values, in RECORD order (the hot path: an append)."""
        self._pending.append(values)

    def open(self) -> None:
        """The output, binary (orjson writes bytes): stdout's buffer or the file, appended."""
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
        """Format and write the oldest ``n`` pending records."""
        pending = self._pending
        if n >= len(pending):
            batch, self._pending = pending, []
        else:
            batch = pending[:n]
            del pending[:n]
        out = self._out
        if not batch or out is None:
            return
        try:
            out.write(b"".join([line(values) for values in batch]))
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


_stamp_second = -1
_stamp_text = ""


def line(values: tuple[Any, ...]) -> bytes:
    """One JSON line of a RECORD tuple (orjson: ~10x the stdlib's speed; a dict display,
    not ``dict(zip(...))``; durations to the µs from integer ns, no ``round()``)."""
    global _stamp_second, _stamp_text
    (started_ns, request_id, mode, project, key_hash, provider, model, endpoint, status, outcome,
     stream, input_tokens, output_tokens, cache_read_tokens, reasoning_tokens, ended_ns, head_ns,
     sent_ns, attempts, client, guardrails, route, attempt_trail) = values  # fmt: skip
    seconds, ns = divmod(started_ns, 1_000_000_000)
    if seconds != _stamp_second:  # strftime once a second, not once a line
        _stamp_second = seconds
        _stamp_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    duration_us = (ended_ns - started_ns) // 1000
    upstream_us = (ended_ns - sent_ns) // 1000 if sent_ns else None
    return orjson.dumps(
        {
            "time": f"{_stamp_text}.{ns // 1_000_000:03d}Z",
            "request_id": request_id,
            "mode": mode,
            "project": project,
            "key": key_hash[:12] if key_hash else None,
            "provider": provider,
            "model": model,
            "endpoint": endpoint,
            "status": status,
            "outcome": outcome,
            "stream": stream,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens,
            "reasoning_tokens": reasoning_tokens,
            "duration_ms": duration_us / 1000,
            "ttft_ms": (head_ns - started_ns) // 1000 / 1000 if head_ns else None,
            "upstream_ms": upstream_us / 1000 if upstream_us is not None else None,
            "overhead_us": duration_us - upstream_us if upstream_us is not None else None,
            "attempts": attempts,
            "client": client,
            "guardrails": guardrails,
            "route": route,
            "attempt_trail": attempt_trail,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )
