"""The wire modules: the byte work on the hot path, each compiled (Cython) with a pure twin.

* the byte scanner -- model / stream / token usage read from raw JSON and SSE bytes, and
  the request rewrite (``_scan.pyx``, twin ``_scan_py.py``; the specification is the twin's
  docstring);
* the header relay -- the client's headers that go upstream, the upstream head's lines
  that go to the client, and the gateway's own lines (content-length, a chunk's size, the
  request id and its generator ``RequestIds``) (``_head.pyx``, twin ``_head_py.py``);
* the request fast path -- a whole plain HTTP/1.1 request parsed in one pass
  (``_request.pyx``; its "twin" is httptools, which parses every request it declines);
  and its mirror for answers, ``parse_response_head`` (``_head.pyx``: a whole plain upstream
  response in one read; httptools parses every response it declines);
* the DLP detectors -- PII and secrets in message text for plano_fast.guardrails
  (``_dlp.pyx``, twin ``_dlp_py.py``, shared patterns and validators ``_dlp_shared.py``);
  not counted in ``IMPLEMENTATIONS`` (``DLP_IMPLEMENTATION`` says which runs);
* the observability numbers -- the request metrics' per-route accumulator, the access log's
  JSON lines, the header lookup of tracing's sampling decision (``_obs.pyx``, twin
  ``_obs_py.py``, shared constants ``_obs_shared.py``); not counted in ``IMPLEMENTATIONS``
  either (``OBS_IMPLEMENTATION``).

``_shared.py`` holds what both twins need (constants, the error type and messages);
``_bytes.pxd`` the byte helpers the compiled modules share, ``_simd.h`` the SIMD C.

This module is the one place that chooses: the compiled module where it is built, else its
twin.  ``PLANO_FAST_PURE_SCANNER=1`` forces the pure build of all of them.  Import the API
from here (``from plano_fast import wire``), never from the underscored modules (tests and
benchmarks do, to run every implementation).

``IMPLEMENTATIONS`` says what each module runs (``"cython"`` or ``"python"``);
``IMPLEMENTATION`` sums it up in one word the gateway prints at start: ``"cython"`` or
``"python"`` when the three agree, else ``"mixed (scan=..., head=..., request=...)"``.
``parse_request`` is None when the request fast path is not in use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Final

# counts_as_usage / usage_counts: the twin is the specification
from plano_fast.wire._scan_py import _normalize, _usage_counts
from plano_fast.wire._shared import ScanError

#: The one switch: "1" runs the pure-Python build of every wire module.
PURE_ENV: Final = "PLANO_FAST_PURE_SCANNER"
_PURE = os.environ.get(PURE_ENV) == "1"


def _built(name: str) -> bool:
    """Whether the compiled ``plano_fast.wire.<name>`` can be imported (and is wanted)."""
    if _PURE:
        return False
    try:
        __import__(f"plano_fast.wire.{name}")
    except ImportError:
        return False
    return True


if _built("_scan"):
    from plano_fast.wire._scan import (
        API_ANTHROPIC,
        API_GEMINI,
        API_OPENAI_CHAT,
        API_OPENAI_RESPONSES,
        MAX_BODY_BYTES,
        MAX_DEPTH,
        MAX_EVENT_BYTES,
        MAX_HOLD_BYTES,
        MAX_MODEL_BYTES,
        MAX_RAW_USAGE_BYTES,
        MAX_TOKEN_COUNT,
        RequestFields,
        Usage,
        UsageScanner,
        rewrite_request,
        scan_request,
    )

    _SCAN = "cython"
else:
    from plano_fast.wire._scan_py import (  # type: ignore[assignment]
        API_ANTHROPIC,
        API_GEMINI,
        API_OPENAI_CHAT,
        API_OPENAI_RESPONSES,
        MAX_BODY_BYTES,
        MAX_DEPTH,
        MAX_EVENT_BYTES,
        MAX_HOLD_BYTES,
        MAX_MODEL_BYTES,
        MAX_RAW_USAGE_BYTES,
        MAX_TOKEN_COUNT,
        RequestFields,
        Usage,
        UsageScanner,
        rewrite_request,
        scan_request,
    )

    _SCAN = "python"

#: ``parse_response_head(buf, max_head_bytes)``: ``(ResponseHead(status, block,
#: content_length, False), keep_alive, head_len)`` for a plain upstream response complete in
#: ``buf`` (Content-Length framed), else None; None itself in the pure build (httptools
#: parses every response).
parse_response_head: Callable[[bytes, int], tuple[ResponseHead, bool, int] | None] | None
if _built("_head"):
    from plano_fast.wire._head import (
        RequestIds,
        ResponseHead,
        chunk_size_line,
        content_length_line,
        forward_request_headers,
        has_content_encoding,
        header_line,
        parse_response_head,
        response_head,
        without_account_headers,
    )

    _HEAD = "cython"
else:
    from plano_fast.wire._head_py import (  # type: ignore[assignment]
        RequestIds,
        ResponseHead,
        chunk_size_line,
        content_length_line,
        forward_request_headers,
        has_content_encoding,
        header_line,
        response_head,
        without_account_headers,
    )

    parse_response_head = None
    _HEAD = "python"

#: headers that select or reveal the provider account (cut where the key is the operator's)
from plano_fast.wire._head_py import ACCOUNT_HEADERS  # noqa: E402
#: headers whose value is a secret (never in a span; the gateway's own are masked in errors)
from plano_fast.wire._head_py import SECRET_HEADERS  # noqa: E402
#: Azure API Management's subscription-key header, both spellings (in both lists above)
from plano_fast.wire._head_py import SUBSCRIPTION_KEYS  # noqa: E402
#: the upstream head's Host and Accept-Encoding: identity lines, built once per target
from plano_fast.wire._head_py import upstream_host_lines  # noqa: E402

#: ``parse_request(buf, start, max_head_bytes, max_body_bytes)``: ``(method, target,
#: headers, body, keep_alive, end, forward)`` for a plain request complete in ``buf``, else None;
#: None itself when the fast path is not in use (httptools parses every request).
#: ``forward`` is what ``forward_request_headers(list(headers))`` returns, built in the same
#: pass; ``headers`` is a read-only sequence of the pairs, made on first use
#: (``_request.RequestHeaders``: the hot path reads ``forward``).
parse_request: Callable[[bytes, int, int, int], tuple[bytes, bytes, Sequence[tuple[bytes, bytes]], bytes, bool, int, tuple[bytes, bool, bytes | None, int, bytes | None, bytes | None, bytes]] | None] | None
#: ``parse_request_begun(...)``: the same, and for a plain head complete in ``buf`` whose
#: Content-Length body is not, the same tuple with ``body`` the int offset where the body
#: starts (``end``: where it will end): the server holds such a head until its body is in
#: (a client library writes a request's head and body in two sends).  None with parse_request.
parse_request_begun: Callable[[bytes, int, int, int], tuple[bytes, bytes, Sequence[tuple[bytes, bytes]], bytes | int, bool, int, tuple[bytes, bool, bytes | None, int, bytes | None, bytes | None, bytes]] | None] | None
if _built("_request"):
    from plano_fast.wire._request import parse_request, parse_request_begun

    _REQUEST = "cython"
else:
    parse_request = parse_request_begun = None
    _REQUEST = "python"

#: The DLP floor's detectors (plano_fast.guardrails): ``dlp_scan_text(text, mask)`` in both
#: builds; ``dlp_scan_body(body, fmt, mask, every)`` (message text read from the raw body) only
#: in the compiled one -- None otherwise, and the caller decodes the body (json.loads).
from plano_fast.wire._dlp_shared import NAMES as DLP_DETECTORS  # noqa: E402 - grouped with its switch
from plano_fast.wire._dlp_shared import TEXT_PATTERNS as DLP_PATTERNS  # noqa: E402
from plano_fast.wire._dlp_shared import VALIDATORS as DLP_VALIDATORS  # noqa: E402

dlp_scan_body: Callable[[bytes, str, int, bool], list[tuple[int, int, bool, list[tuple[int, int, int]]]] | None] | None
if _built("_dlp"):
    from plano_fast.wire._dlp import scan_body as dlp_scan_body
    from plano_fast.wire._dlp import scan_text as dlp_scan_text

    DLP_IMPLEMENTATION: Final = "cython"
else:
    from plano_fast.wire._dlp_py import scan_text as dlp_scan_text

    dlp_scan_body = None
    DLP_IMPLEMENTATION: Final = "python"  # type: ignore[misc]

#: The request metrics' accumulator (plano_fast.metrics.RequestMetrics' base), the access
#: log's line writer (``access_log_lines(records) -> bytes``), ``has_header(headers, name)`` and
#: ``header_value(headers, name)``.
from plano_fast.wire._obs_shared import FIELDS as ACCESS_LOG_FIELDS  # noqa: E402 - grouped with its switch
from plano_fast.wire._obs_shared import LATENCY_BUCKETS_S  # noqa: E402
from plano_fast.wire._obs_shared import RECORD as ACCESS_LOG_RECORD  # noqa: E402

if _built("_obs"):
    from plano_fast.wire._obs import RouteStats, RouteTable, has_header, header_value, record_appender
    from plano_fast.wire._obs import lines as access_log_lines

    OBS_IMPLEMENTATION: Final = "cython"
else:
    from plano_fast.wire._obs_py import (  # type: ignore[assignment]
        RouteStats, RouteTable, has_header, header_value, record_appender,
    )
    from plano_fast.wire._obs_py import lines as access_log_lines

    OBS_IMPLEMENTATION: Final = "python"  # type: ignore[misc]

IMPLEMENTATIONS: Final = {"scan": _SCAN, "head": _HEAD, "request": _REQUEST}
IMPLEMENTATION: Final = (
    _SCAN
    if _SCAN == _HEAD == _REQUEST
    else "mixed (" + ", ".join(f"{name}={impl}" for name, impl in IMPLEMENTATIONS.items()) + ")"
)

__all__ = [
    "ACCOUNT_HEADERS",
    "SECRET_HEADERS",
    "SUBSCRIPTION_KEYS",
    "upstream_host_lines",
    "without_account_headers",
    "RequestIds",
    "ResponseHead",
    "ACCESS_LOG_FIELDS",
    "ACCESS_LOG_RECORD",
    "DLP_DETECTORS",
    "DLP_IMPLEMENTATION",
    "DLP_PATTERNS",
    "DLP_VALIDATORS",
    "API_ANTHROPIC",
    "API_GEMINI",
    "API_OPENAI_CHAT",
    "API_OPENAI_RESPONSES",
    "IMPLEMENTATION",
    "IMPLEMENTATIONS",
    "LATENCY_BUCKETS_S",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_HOLD_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_RAW_USAGE_BYTES",
    "MAX_TOKEN_COUNT",
    "OBS_IMPLEMENTATION",
    "PURE_ENV",
    "RequestFields",
    "RouteStats",
    "RouteTable",
    "ScanError",
    "Usage",
    "UsageScanner",
    "access_log_lines",
    "record_appender",
    "chunk_size_line",
    "content_length_line",
    "counts_as_usage",
    "usage_counts",
    "dlp_scan_body",
    "dlp_scan_text",
    "forward_request_headers",
    "has_content_encoding",
    "has_header",
    "header_value",
    "header_line",
    "parse_request",
    "parse_request_begun",
    "parse_response_head",
    "response_head",
    "rewrite_request",
    "scan_request",
]


def counts_as_usage(api: int, usage: object) -> bool:
    """Whether a provider's usage object counts for billing, by the scanner's rule (the
    twin's docstring: an object, an input or output count present, every count present an
    int in [0, MAX_TOKEN_COUNT], every details member an object or null).  For code that
    reports a parsed usage (the converters), so what a client is told matches the row:
    an object that does not count is no usage, for the client as for the bill."""
    return _usage_counts(api, usage) is not None


def usage_counts(api: int, usage: object) -> tuple[int, int, int, int, int, int, int, int, int, int] | None:
    """``(input, output, cache_read, cache_write, reasoning, cache_write_1h,
    tool_use_prompt, audio_input, audio_output, web_search_requests)`` of one provider
    usage object in the row convention, exactly as the scanner bills it (the twin's
    "Normalized usage": Anthropic cache reads and writes -- at least the TTL split's sum --
    added to the input, Gemini thoughts and xAI's outside reasoning to the output, subsets
    capped), or None when it does not count (``counts_as_usage``).  For the converters:
    what a client of another format is told is what its row holds."""
    counts = _usage_counts(api, usage)
    if counts is None:
        return None
    u = _normalize(api, [0 if value is None else value for value in counts])
    return (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens,
            u.cache_write_1h_tokens, u.tool_use_prompt_tokens, u.audio_input_tokens, u.audio_output_tokens,
            u.web_search_requests)  # fmt: skip
