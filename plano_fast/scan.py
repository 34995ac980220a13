"""Byte scanner front door: the compiled :mod:`plano_fast._scan` when it is built, else the
pure-Python twin :mod:`plano_fast._scan_py` (same API, same results; see its docstring for the
exact rules).  Set ``PLANO_FAST_PURE_SCANNER=1`` to force the twin.

``IMPLEMENTATION`` says which one is active: ``"cython"`` or ``"python"``.
"""

from __future__ import annotations

import os

from plano_fast._scan_py import ScanError

if os.environ.get("PLANO_FAST_PURE_SCANNER") == "1":
    _compiled = False
else:
    try:
        import plano_fast._scan  # noqa: F401  (probe only)
    except ImportError:
        _compiled = False
    else:
        _compiled = True

if _compiled:
    from plano_fast._scan import (
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

    IMPLEMENTATION: str = "cython"
else:
    from plano_fast._scan_py import (  # type: ignore[assignment]
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

    IMPLEMENTATION = "python"

__all__ = [
    "API_ANTHROPIC",
    "API_GEMINI",
    "API_OPENAI_CHAT",
    "API_OPENAI_RESPONSES",
    "IMPLEMENTATION",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_HOLD_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_RAW_USAGE_BYTES",
    "MAX_TOKEN_COUNT",
    "RequestFields",
    "ScanError",
    "Usage",
    "UsageScanner",
    "rewrite_request",
    "scan_request",
]
