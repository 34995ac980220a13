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


class AccessLog:
    """``target``: "stdout" or a file path (appended to)."""

    def __init__(self, target: str, flush_interval_s: float = 0.2) -> None:
        self.target = target
        self.flush_interval_s = flush_interval_s
        self._pending: list[tuple[Any, ...]] = []
        self._out: IO[str] | None = None
        self._task: asyncio.Task[None] | None = None

    def record(self, values: tuple[Any, ...]) -> None:
        """One request's values, in FIELDS order (the hot path: an append)."""
        self._pending.append(values)

    def start(self) -> None:
        self._out = sys.stdout if self.target == "stdout" else open(self.target, "a", encoding="utf-8")  # noqa: SIM115
        self._task = asyncio.get_running_loop().create_task(self._run(), name="access-log")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        out = self._out
        if not pending or out is None:
            return
        try:
            out.write("".join(line(values) for values in pending))
            out.flush()
        except OSError as exc:
            log.warning("access log not written (%d lines lost): %s", len(pending), exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.flush()
        if self._out is not None and self._out is not sys.stdout:
            self._out.close()
        self._out = None


_stamp_second = -1
_stamp_text = ""


def line(values: tuple[Any, ...]) -> str:
    """One JSON line (orjson: ~10x the stdlib's speed for a dict of this size)."""
    global _stamp_second, _stamp_text
    seconds, ns = divmod(values[0], 1_000_000_000)  # values[0]: the request's start, ns
    if seconds != _stamp_second:  # strftime once a second, not once a line
        _stamp_second = seconds
        _stamp_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    doc = dict(zip(FIELDS, values))
    doc["time"] = f"{_stamp_text}.{ns // 1_000_000:03d}Z"
    return orjson.dumps(doc).decode() + "\n"
