"""Request metrics accumulator and access-log line writer: the specification, in Python.

The compiled twin (``_obs.pyx``) does the same in C -- per-route numbers in C arrays, the
bucket search over integer ns, the JSON line written byte by byte -- because this code runs
once per request and Python's own cost of it (boxed floats, a bisect per histogram, a dict
per log line and its encoder) was 16% of a firewall request's instructions
(benchmarks/results/observability-cost-20261205.md).  tests/test_obs_twins.py checks that
both give identical results.

Metrics (:class:`RouteTable`, :class:`RouteStats`): per route (a labels tuple), requests by
status class, four latency histograms (duration, upstream, time to first token, overhead;
counts per bucket of ``LATENCY_BUCKETS_NS``, the +Inf count, the sum in seconds) and five
token counters.  ``RouteStats``' properties give them in the snapshot's shape
(plano_fast.metrics.RequestMetrics.snapshot): ``statuses`` (ints), ``hists`` (per
histogram None until observed, else ``[count, ..., +Inf count, sum]`` as floats), ``tokens``.

Access log (:func:`lines`): one JSON object per RECORD tuple, FIELDS in order, each line
ended by ``\\n``; strings escaped as JSON requires (``"``, ``\\``, controls below 0x20 --
``\\b \\t \\n \\f \\r`` short, others ``\\u00XX``), non-ASCII written as UTF-8 and a lone
surrogate (which UTF-8 cannot carry; a client can put one in a model name as ``\\ud800``)
and the line breaks NEL, LS and PS (``str.splitlines`` ends a line there) as their
``\\uXXXX`` escapes, so every line parses (``json.loads``) back to the values given.
Values: None, bool, int, float, str and lists/tuples of them; any other type: TypeError.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from json.encoder import encode_basestring
from typing import Any

from plano_fast.wire._obs_shared import (
    FAST_MS_LIMIT_US,
    KEY_PREFIX_CHARS,
    LATENCY_BUCKETS_NS,
    N_HISTOGRAMS,
    N_STATUS_CLASSES,
    N_TOKEN_KINDS,
)

_ROW = len(LATENCY_BUCKETS_NS) + 1  # buckets and +Inf


class RouteStats:
    """Everything counted for one route."""

    __slots__ = ("_statuses", "_counts", "_sums", "_tokens")

    def __init__(self) -> None:
        self._statuses = [0] * N_STATUS_CLASSES
        #: per histogram: None until observed, else per-bucket counts (+Inf last)
        self._counts: list[list[int] | None] = [None] * N_HISTOGRAMS
        self._sums = [0.0] * N_HISTOGRAMS
        self._tokens = [0] * N_TOKEN_KINDS

    def _add(self, index: int, value_ns: int) -> None:
        counts = self._counts[index]
        if counts is None:
            counts = self._counts[index] = [0] * _ROW
        counts[bisect_left(LATENCY_BUCKETS_NS, value_ns)] += 1
        self._sums[index] += value_ns / 1e9

    @property
    def statuses(self) -> list[int]:
        return list(self._statuses)

    @property
    def hists(self) -> list[list[float] | None]:
        return [
            None if counts is None else [float(c) for c in counts] + [self._sums[i]]
            for i, counts in enumerate(self._counts)
        ]

    @property
    def tokens(self) -> list[int]:
        return list(self._tokens)


class RouteTable:
    """The per-route numbers of one process."""

    __slots__ = ("routes",)

    def __init__(self) -> None:
        self.routes: dict[tuple[str, ...], RouteStats] = {}

    def observe_ns(
        self,
        labels: tuple[str, ...],
        status: int,
        started_ns: int,
        ended_ns: int,
        sent_ns: int,
        head_ns: int,
        tokens: Sequence[int] | None,
    ) -> None:
        """One finished request: clock readings in ns (``sent_ns``: the upstream request
        sent, 0 when none was; ``head_ns``: the time to first token's end, 0 when not
        counted); ``tokens``: the five kinds, or None."""
        stats = self.routes.get(labels)
        if stats is None:
            stats = self.routes[labels] = RouteStats()
        stats._statuses[status // 100 if 0 < status < 600 else 0] += 1
        duration_ns = ended_ns - started_ns
        stats._add(0, duration_ns)
        if sent_ns:
            stats._add(1, ended_ns - sent_ns)
            overhead_ns = sent_ns - started_ns
            stats._add(3, overhead_ns if overhead_ns > 0 else 0)
        if head_ns:
            stats._add(2, head_ns - started_ns)
        if tokens is not None:
            counts = stats._tokens
            for i in range(N_TOKEN_KINDS):
                counts[i] += tokens[i]


# -- the access log's lines -----------------------------------------------------------------

#: escaped as \uXXXX: lone surrogates (UTF-8 cannot carry them), and NEL, LS and PS, which
#: end a line for str.splitlines() and other readers (a model name could forge a log line)
_SURROGATE = re.compile("[\x85\u2028\u2029\ud800-\udfff]")
_stamp_second = -1
_stamp_text = ""


def _string(text: str) -> str:
    quoted: str = encode_basestring(text)  # quotes, backslashes and controls escaped
    return quoted if not _SURROGATE.search(quoted) else _SURROGATE.sub(_surrogate_escape, quoted)


def _surrogate_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _ms(us: int) -> str:
    """``us / 1000`` as JSON, as orjson writes the float: an exact decimal on this side
    of FAST_MS_LIMIT_US."""
    if 0 <= us < FAST_MS_LIMIT_US:
        whole, frac = divmod(us, 1000)
        if not frac:
            return f"{whole}.0"
        return f"{whole}.{frac:03d}".rstrip("0")
    return repr(us / 1000)


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    raise TypeError(f"access log: cannot write a {type(value).__name__}")


def _line(values: Sequence[Any]) -> str:
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
    v = _value
    return (
        f'{{"time":"{_stamp_text}.{ns // 1_000_000:03d}Z","request_id":{v(request_id)},"mode":{v(mode)},'
        f'"project":{v(project)},"key":{v(key_hash[:KEY_PREFIX_CHARS] if key_hash else None)},'
        f'"provider":{v(provider)},"model":{v(model)},"endpoint":{v(endpoint)},"status":{v(status)},'
        f'"outcome":{v(outcome)},"stream":{v(stream)},"input_tokens":{v(input_tokens)},'
        f'"output_tokens":{v(output_tokens)},"cache_read_tokens":{v(cache_read_tokens)},'
        f'"reasoning_tokens":{v(reasoning_tokens)},"duration_ms":{_ms(duration_us)},'
        f'"ttft_ms":{_ms((head_ns - started_ns) // 1000) if head_ns else "null"},'
        f'"upstream_ms":{"null" if upstream_us is None else _ms(upstream_us)},'
        f'"overhead_us":{"null" if upstream_us is None else duration_us - upstream_us},'
        f'"attempts":{v(attempts)},"client":{v(client)},"guardrails":{v(guardrails)},'
        f'"route":{v(route)},"attempt_trail":{v(attempt_trail)}}}\n'
    )


def lines(records: Iterable[Sequence[Any]]) -> bytes:
    """The JSON lines of RECORD tuples, one after the other, as UTF-8."""
    return "".join([_line(values) for values in records]).encode()


def record_appender(pending: list[tuple[Any, ...]]) -> Callable[[tuple[Any, ...]], None]:
    """``pending.append`` (the compiled twin also takes a record of scalars out of the
    cyclic GC, which the interpreter cannot)."""
    return pending.append


def has_header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bool:
    """Whether a header called ``name`` (lowercased, as the server hands names over) is in
    ``headers``: tracing's question about ``traceparent`` on every request when
    ``random_sampling`` is 0."""
    for key, _ in headers:
        if key == name:
            return True
    return False


def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the last header called ``name`` (lowercase; the names in ``headers``
    compared lowercased), or None: preference routing's session headers."""
    found = None
    for key, value in headers:
        if key.lower() == name:
            found = value
    return found
