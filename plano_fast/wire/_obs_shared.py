"""What both observability twins (``_obs.pyx``, ``_obs_py.py``) need: the histogram
bounds, the table shapes, the access-log field order."""

from __future__ import annotations

from typing import Final

#: seconds; fine below a millisecond (gateway overhead), coarse up to minutes (streams)
LATENCY_BUCKETS_S: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
#: the same bounds in integer ns: the request path compares clock readings (ns) to these,
#: exactly (a duration of d ns falls in the first bucket whose bound is >= d, as
#: ``bisect_left`` on the seconds would put it: d / 1e9 <= bound_s exactly when d <= bound_ns)
LATENCY_BUCKETS_NS: Final = tuple(round(b * 1_000_000_000) for b in LATENCY_BUCKETS_S)
#: request_duration, upstream_duration, time_to_first_token, gateway_overhead
N_HISTOGRAMS: Final = 4
#: input, output, cache_read, cache_write, reasoning
N_TOKEN_KINDS: Final = 5
#: requests by status class: index status // 100 (0: none or out of range)
N_STATUS_CLASSES: Final = 6

#: The access log's line, in this order (plano_fast.access_log documents each field).
FIELDS: Final = (
    "time", "request_id", "mode", "project", "key", "provider", "model", "endpoint", "status",
    "outcome", "stream", "input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens",
    "duration_ms", "ttft_ms", "upstream_ms", "overhead_us", "attempts", "client", "guardrails",
    "route", "attempt_trail",
)  # fmt: skip

#: What the request path hands over (plano_fast.access_log.AccessLog.record): values it
#: holds, raw -- clock readings in ns, the whole key hash, the peer address as the transport
#: gives it -- so that every derived field is computed by the writer, off the request.
RECORD: Final = (
    "started_ns", "request_id", "mode", "project", "key_hash", "provider", "model", "endpoint",
    "status", "outcome", "stream", "input_tokens", "output_tokens", "cache_read_tokens",
    "reasoning_tokens", "ended_ns", "head_ns", "sent_ns", "attempts", "client", "guardrails",
    "route", "attempt_trail",
)  # fmt: skip

#: the key field: this many hex digits of the key's SHA-256
KEY_PREFIX_CHARS: Final = 12
#: durations below this many µs are written as exact decimals (``123.456``); beyond (11.5
#: days, or negative after a wall-clock jump) as Python's ``repr`` of the float, which
#: is what both give for every value below it (the µs grid is finer than a float's ulp)
FAST_MS_LIMIT_US: Final = 10**12
