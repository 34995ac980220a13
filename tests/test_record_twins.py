"""The request path's compiled record constructors (plano_fast/_new_request.pyx,
plano_fast/_new_credentials.pyx) against the classes' own ``__init__``, on generated
values: the same class, every slot the same object; and the call sites use them."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plano_fast import credentials, http_server
from plano_fast.credentials import ClientHeaders, Credential
from plano_fast.http_server import Request

try:
    from plano_fast import _new_credentials as _compiled_credentials
    from plano_fast import _new_request as _compiled_request
except ImportError:  # the extensions are not built: the constructors are the classes
    _compiled_request = _compiled_credentials = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    assert _compiled_request is not None and _compiled_credentials is not None
    assert http_server.new_request is _compiled_request.new_request
    assert credentials.new_client_headers is _compiled_credentials.new_client_headers
    assert credentials.new_credential is _compiled_credentials.new_credential

REQUESTS: list[Any] = [Request] + ([_compiled_request.new_request] if _compiled_request is not None else [])
CLIENTS: list[Any] = [ClientHeaders] + (
    [_compiled_credentials.new_client_headers] if _compiled_credentials is not None else []
)
CREDENTIALS: list[Any] = [Credential] + (
    [_compiled_credentials.new_credential] if _compiled_credentials is not None else []
)
VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.binary(max_size=8), st.text(max_size=4))
TARGET = st.lists(st.sampled_from([b"/", b"v1", b"?", b"a=1", b"&", b"", b"??"]), max_size=6).map(b"".join)


def _same_slots(a: object, b: object) -> None:
    assert type(a) is type(b)
    for name in type(a).__slots__:  # type: ignore[attr-defined]
        assert getattr(a, name) == getattr(b, name), name
        assert type(getattr(a, name)) is type(getattr(b, name)), name


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=TARGET, headers=VALUE, body=VALUE, keep_alive=st.booleans(), forward=VALUE, http11=st.booleans())
def test_request_slots_land_where_init_puts_them(
    target: bytes, headers: Any, body: Any, keep_alive: bool, forward: Any, http11: bool
) -> None:
    reference = Request(b"POST", target, headers, body, keep_alive, forward, http11)
    for make in REQUESTS:
        _same_slots(make(b"POST", target, headers, body, keep_alive, forward, http11), reference)
        short = make(b"GET", target, headers, body, keep_alive)  # forward and http11 defaulted
        _same_slots(short, Request(b"GET", target, headers, body, keep_alive))
        assert short.path + (b"?" + short.query if b"?" in target else b"") == target


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(VALUE, min_size=5, max_size=5), secret=st.binary(max_size=8), line=st.binary(max_size=8))
def test_client_headers_and_credential_slots_land_where_init_puts_them(
    values: list[Any], secret: bytes, line: bytes
) -> None:
    for make in CLIENTS:
        _same_slots(make(*values), ClientHeaders(*values))
    for make in CREDENTIALS:
        _same_slots(make(secret, line), Credential(secret, line))


def test_the_request_path_builds_its_records_with_them() -> None:
    import inspect

    assert "new_request(method, target, headers, body, keep_alive, forward)" in inspect.getsource(
        http_server.ServerProtocol._take_plain_requests
    )
    source = inspect.getsource(credentials)
    assert "return ClientHeaders(" not in source and "return Credential(" not in source
