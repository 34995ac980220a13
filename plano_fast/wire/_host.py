"""The Host field value a request may carry (RFC 9112 §3.2, RFC 3986 §3.2.2-3.2.3), read by
both request paths: httptools' callbacks refuse any other value with a 400
(``http_server.ServerProtocol``), and the compiled fast path (``_request.pyx``) takes only
the plain subset -- ``PLAIN_HOST_CHARS`` then an optional ``:`` and digits -- and leaves
everything else (an IP literal, a percent-escape, anything invalid) to them.

Why a 400 and not "ignore it, the gateway never routes on Host": a front proxy or cache that
reads ``g w`` or ``a@b`` or ``a/b`` its own way routes or caches the request elsewhere than
we answer it (RFC 9112 §3.2 makes the 400 a MUST).  An empty value is refused too: an
``http`` URI with an empty host is invalid (RFC 9110 §4.2.1), and nginx refuses it as well.
An empty port (``host:``) is the grammar's ``*DIGIT`` and is served.
"""

from __future__ import annotations

import re
from typing import Final

#: reg-name bytes without the percent-escape: RFC 3986 unreserved and sub-delims
PLAIN_HOST_CHARS: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;="

_REG_NAME = rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+"
# IPv6address / IPvFuture between brackets: their bytes are hex digits, ':', '.', 'v' and
# IPvFuture's unreserved / sub-delims; the exact IPv6 grammar is not ours to police (no
# proxy reads "[...]" two ways)
_IP_LITERAL = rb"\[[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"
#: a valid Host field value: uri-host [ ":" port ], the host not empty
HOST_VALUE: Final = re.compile(rb"(?:" + _IP_LITERAL + rb"|" + _REG_NAME + rb")(?::[0-9]*)?")


def valid_host(value: bytes) -> bool:
    """True for a Host field value a request may carry (see the module's docstring)."""
    return HOST_VALUE.fullmatch(value) is not None
