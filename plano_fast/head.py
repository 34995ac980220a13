"""Header relay front door: the compiled :mod:`plano_fast._head` when it is built,
else the pure-Python twin :mod:`plano_fast._head_py` (same results).  ``PLANO_FAST_PURE_SCANNER=1``
forces the twin here too, so one switch selects the pure-Python build of every helper.
"""

from __future__ import annotations

import os

if os.environ.get("PLANO_FAST_PURE_SCANNER") == "1":
    from plano_fast._head_py import forward_request_headers, response_head
else:
    try:
        from plano_fast._head import forward_request_headers, response_head
    except ImportError:
        from plano_fast._head_py import forward_request_headers, response_head

__all__ = ["forward_request_headers", "response_head"]
