"""Preference routing's session key, read from a fast-path request's header lines (issue 27).

``PreferenceRouter.session_key`` looped in Python over the request's ``(name, value)``
pairs, lowercasing each name; on a fast-path request that also made the pairs
(``RequestHeaders``: ~17 pairs made on first use).  It now asks ``wire.header_value``,
which looks in the lines themselves in C (``RequestHeaders.last``) or, for a list of
pairs, loops in C.  The loop it replaced is the specification below: over requests with
the session header absent, repeated, empty, blank, padded, in capitals, with and without
the tenant header (also as the session header itself), both ways give the same key; and
``header_value`` compiled (on lines, on pairs, on pairs with capitalised names) and pure
give the same value.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from plano_fast import preference_routing as PR
from plano_fast.wire import _obs_py

_obs = pytest.importorskip("plano_fast.wire._obs", reason="the Cython extension is not built")
_request = pytest.importorskip("plano_fast.wire._request", reason="the Cython extension is not built")


def loop_session_key(headers: Sequence[tuple[bytes, bytes]], th: bytes | None) -> str | None:
    """The Python loop ``session_key`` was (the specification)."""
    session = tenant = None
    for name, value in headers:
        lname = name.lower()
        if lname == PR.AFFINITY_HEADER:
            session = value.decode("latin-1").strip()
        elif th is not None and lname == th:
            tenant = value.decode("latin-1").strip()
    if not session:
        return None
    return f"{tenant}:{session}" if tenant else session


LINES = [
    b"",
    b"x-model-affinity: s-1\r\n",
    b"X-Model-Affinity: S-Caps\r\n",
    b"x-model-affinity:\ts-tab  \x85\r\n",
    b"x-model-affinity: first\r\nx-model-affinity: last\r\n",
    b"x-model-affinity: first\r\nx-model-affinity: \xa0\r\n",  # (the last, blank once stripped, wins)
    b"x-model-affinity: s-1\r\nx-tenant: acme\r\n",
    b"x-tenant: acme\r\nx-model-affinity: s-1\r\nx-tenant: other\r\n",
    b"x-tenant: acme\r\n",
    b"x-tenant: \xa0\r\nx-model-affinity: s-1\r\n",
    b"x-model-affinit: no\r\nx-model-affinityy: no\r\nx-tenan: no\r\n",
    b"authorization: Bearer sk-1\r\nx-model-affinity: caf\xc3\xa9\r\nx-request-id: r\r\n",
]


def _headers(lines: bytes) -> Sequence[tuple[bytes, bytes]]:
    data = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            + lines + b"content-length: 2\r\n\r\n{}")
    parsed = _request.parse_request(data, 0, 65536, 1 << 20)
    assert parsed is not None, lines  # (a fast-path request)
    headers: Sequence[tuple[bytes, bytes]] = parsed[2]
    return headers


@pytest.mark.parametrize("lines", LINES)
@pytest.mark.parametrize("tenant_header", [None, b"x-tenant", PR.AFFINITY_HEADER])
def test_the_session_key_of_the_lines_is_the_loop_s(lines: bytes, tenant_header: bytes | None) -> None:
    router = PR.PreferenceRouter.__new__(PR.PreferenceRouter)
    router.config = SimpleNamespace(tenant_header=tenant_header)  # type: ignore[assignment]
    pairs = list(_headers(lines))
    expected = loop_session_key(pairs, tenant_header)
    assert router.session_key(_headers(lines)) == expected
    assert router.session_key(pairs) == expected
    assert router.session_key([(n.upper(), v) for n, v in pairs]) == expected


@pytest.mark.parametrize("lines", LINES)
def test_header_value_compiled_is_the_twin(lines: bytes) -> None:
    pairs = list(_headers(lines))
    capitals = [(n.upper(), v) for n, v in pairs]
    for name in (PR.AFFINITY_HEADER, b"x-tenant", b"host", b"content-length", b"absent", b""):
        want = _obs_py.header_value(pairs, name)
        assert _obs.header_value(_headers(lines), name) == want, name
        assert _obs.header_value(pairs, name) == want == _obs.header_value(capitals, name), name
        assert _obs.header_value(tuple(pairs), name) == want, name
