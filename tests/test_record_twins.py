"""The request path's compiled record constructors (plano_fast/_new_request.pyx,
plano_fast/_new_credentials.pyx) against the classes' own ``__init__``, on generated
values: the same class, every slot the same object; and the call sites use them."""

from __future__ import annotations

import os
from typing import Any

import pytest
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
    assert http_server.new_responder is _compiled_request.new_responder
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
@given(values=st.lists(VALUE, min_size=6, max_size=6), secret=st.binary(max_size=8), line=st.binary(max_size=8))
def test_client_headers_and_credential_slots_land_where_init_puts_them(
    values: list[Any], secret: bytes, line: bytes
) -> None:
    for make in CLIENTS:
        _same_slots(make(*values), ClientHeaders(*values))
    for make in CREDENTIALS:
        _same_slots(make(secret, line), Credential(secret, line))


class _Proto:
    """What a responder's constructor reads of its protocol."""

    def __init__(self) -> None:
        self.transport = object()


RESPONDERS: list[Any] = [http_server.new_responder] + (
    [_compiled_request.new_responder] if _compiled_request is not None else []
)


@pytest.mark.parametrize("cls", [http_server.Responder, http_server.HeadResponder])
@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("http11", [True, False, None])
def test_responder_slots_land_where_init_puts_them(cls: Any, keep_alive: bool, http11: Any) -> None:
    proto = _Proto()
    reference = cls(proto, keep_alive, http11)
    for make in RESPONDERS:
        made = make(cls, proto, keep_alive, http11)
        assert type(made) is cls
        for name in http_server.Responder.__slots__:
            if not hasattr(reference, name):  # logged: unset until an access-log line is written
                assert not hasattr(made, name), name
                continue
            got, want = getattr(made, name), getattr(reference, name)
            assert got == want and type(got) is type(want), name
        assert made._out is not reference._out and made._out == []  # a fresh list each
        assert made._proto is proto and made._transport is proto.transport
        assert type(make(cls, proto, keep_alive)._http11) is bool  # http11 defaults to True
    if _compiled_request is not None:
        with pytest.raises(TypeError):
            _compiled_request.new_responder(object, proto, True, True)


def test_the_request_path_builds_its_records_with_them() -> None:
    import inspect

    assert "new_request(method, target, headers, body, keep_alive, forward)" in inspect.getsource(
        http_server.ServerProtocol._take_plain_requests
    )
    assert "responder = new_responder(" in inspect.getsource(http_server.start_py)
    source = inspect.getsource(credentials)
    assert "return ClientHeaders(" not in source and "return Credential(" not in source


# -- the exchange (plano_fast/gateway/_new_exchange.pyx, twin relay.new_exchange) ----------

try:
    from plano_fast.gateway import _new_exchange as _compiled_exchange
except ImportError:  # the extension is not built: new_exchange is the twin
    _compiled_exchange = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    from plano_fast.gateway import relay as _relay

    assert _compiled_exchange is not None and _relay.new_exchange is _compiled_exchange.new_exchange


class _Ctx:
    timeouts = (1.0, 2.0, 3.0)


def test_new_exchange_sets_what_exchange_init_sets() -> None:
    from plano_fast.gateway import relay
    from plano_fast.gateway.endpoints import CHAT_COMPLETIONS
    from plano_fast.gateway.modes.config import ConfigExchange
    from plano_fast.gateway.modes.firewall import FirewallExchange

    makers: list[Any] = [relay.new_exchange] + (
        [_compiled_exchange.new_exchange] if _compiled_exchange is not None else []
    )
    ctx, request, responder = _Ctx(), object(), object()
    for cls in (relay.Exchange, FirewallExchange, ConfigExchange):
        reference = cls.__new__(cls)
        relay.Exchange.__init__(reference, ctx, request, responder)  # type: ignore[arg-type]
        for make in makers:
            first, second = make(cls, ctx, request, responder), make(cls, ctx, request, responder)
            assert type(first) is cls
            for name in relay.Exchange.__slots__:
                if not hasattr(reference, name):  # drain_left, drain_timer: unset until used
                    assert not hasattr(first, name), name
                    continue
                got, want = getattr(first, name), getattr(reference, name)
                assert type(got) is type(want), name
                if name == "request_id":
                    assert got != second.request_id and got.rsplit("-", 1)[0] == want.rsplit("-", 1)[0]
                elif name == "started_ns":
                    assert abs(got - want) < 60 * 10**9
                else:
                    assert got == want, name
            assert first.upstream_data is not second.upstream_data  # a fresh list each
            assert first.timeouts is ctx.timeouts
            if cls is ConfigExchange:
                first.aim(CHAT_COMPLETIONS)
                assert first.endpoint is CHAT_COMPLETIONS and first.endpoint_name == "chat_completions"
                assert first.prior is None and first.scan_api == CHAT_COMPLETIONS.scan_api
    with pytest.raises(TypeError):
        makers[-1](object, ctx, request, responder)
