"""The wire modules: the byte work on the hot path, each compiled (Cython) with a pure twin.

* the byte scanner -- model / stream / token usage read from raw JSON and SSE bytes, and
  the request rewrite (``_scan.pyx``, twin ``_scan_py.py``; the specification is the twin's
  docstring);
* the header relay -- the client's headers that go upstream, the upstream head's lines
  that go to the client (``_head.pyx``, twin ``_head_py.py``);
* the request fast path -- a whole plain HTTP/1.1 request parsed in one pass
  (``_request.pyx``; its "twin" is httptools, which parses every request it declines).

``_shared.py`` holds what both twins need (constants, the error type and messages);
``_bytes.pxd`` the byte helpers the compiled modules share, ``_simd.h`` the SIMD C.

This module is the one place that chooses: the compiled module where it is built, else its
twin.  ``PLANO_FAST_PURE_SCANNER=1`` forces the pure build of all three.  Import the API
from here (``from plano_fast import wire``), never from the underscored modules (tests and
benchmarks do, to run every implementation).

``IMPLEMENTATIONS`` says what each module runs (``"cython"`` or ``"python"``);
``IMPLEMENTATION`` sums it up in one word the gateway prints at start: ``"cython"`` or
``"python"`` when the three agree, else ``"mixed (scan=..., head=..., request=...)"``.
``parse_request`` is None when the request fast path is not in use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

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

if _built("_head"):
    from plano_fast.wire._head import forward_request_headers, response_head

    _HEAD = "cython"
else:
    from plano_fast.wire._head_py import forward_request_headers, response_head

    _HEAD = "python"

#: ``parse_request(buf, start, max_head_bytes, max_body_bytes)``: ``(method, target,
#: headers, body, keep_alive, end)`` for a plain request complete in ``buf``, else None;
#: None itself when the fast path is not in use (httptools parses every request).
parse_request: Callable[[bytes, int, int, int], tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool, int] | None] | None
if _built("_request"):
    from plano_fast.wire._request import parse_request

    _REQUEST = "cython"
else:
    parse_request = None
    _REQUEST = "python"

IMPLEMENTATIONS: Final = {"scan": _SCAN, "head": _HEAD, "request": _REQUEST}
IMPLEMENTATION: Final = (
    _SCAN
    if _SCAN == _HEAD == _REQUEST
    else "mixed (" + ", ".join(f"{name}={impl}" for name, impl in IMPLEMENTATIONS.items()) + ")"
)

__all__ = [
    "API_ANTHROPIC",
    "API_GEMINI",
    "API_OPENAI_CHAT",
    "API_OPENAI_RESPONSES",
    "IMPLEMENTATION",
    "IMPLEMENTATIONS",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_HOLD_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_RAW_USAGE_BYTES",
    "MAX_TOKEN_COUNT",
    "PURE_ENV",
    "RequestFields",
    "ScanError",
    "Usage",
    "UsageScanner",
    "forward_request_headers",
    "parse_request",
    "response_head",
    "rewrite_request",
    "scan_request",
]
