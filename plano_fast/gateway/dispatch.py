"""The endpoint table: which request goes to which mode, and what the gateway answers itself.

One function per question the server asks of a request: ``dispatch`` (a complete request:
an exchange of one mode, the routing decision API, a stored Responses answer, health, the
model list, or a refusal) and ``precheck`` (a head that expects 100-continue: what
identification alone refuses, before the body is invited).  The Gateway owns the state
they read; this module owns the order of the questions.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from plano_fast import wire as scan
from plano_fast.credentials import read_client_headers, refuse_unary_sse
from plano_fast.errors import (
    BadRequestBody,
    ClientError,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    SpendingLimitExceeded,
    Unauthorized,
    UnknownModelError,
)
from plano_fast.gateway.cross_site import refuse_cross_site
from plano_fast.gateway.endpoints import (
    CHAT_COMPLETIONS,
    COUNT_TOKENS,
    GUARD_FORMATS,
    MESSAGES,
    RESPONSES,
    Endpoint,
)
from plano_fast.gateway.modes.config import ConfigExchange
from plano_fast.gateway.modes.firewall import FirewallExchange, identify, metered_endpoint
from plano_fast.gateway.modes.gemini import GEMINI, GeminiExchange, is_gemini_path
from plano_fast.gateway.modes.managed import ManagedExchange
from plano_fast.gateway.phases import checked_start, key_hash
from plano_fast.gateway.relay import Exchange, new_exchange, new_request_id
from plano_fast.gateway.routed import RoutedExchange
from plano_fast.managed.state import TOKEN_PREFIX
from plano_fast.preference_routing import Decision, decision_body
from plano_fast.responses_managed import owner_of
from plano_fast.responses_state import stored_response_answer
from plano_fast.routing import UnknownModel
from plano_fast.twins import install_compiled

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from plano_fast.app import Gateway
    from plano_fast.http_server import Request, Responder

#: config and managed mode: client path -> endpoint (POST only)
ENDPOINTS: dict[bytes, Endpoint] = {
    b"/v1/chat/completions": CHAT_COMPLETIONS,
    b"/chat/completions": CHAT_COMPLETIONS,
    b"/v1/messages": MESSAGES,
    b"/v1/messages/count_tokens": COUNT_TOKENS,
    b"/v1/responses": RESPONSES,
}

#: answered before the store has opened (everything else is a 503 until then)
ALWAYS_SERVED = frozenset((b"/healthz", b"/health", b"/v1/models", b"/models"))

_HEALTH = (b"/healthz", b"/health")

#: the routing decision API (Plano's /routing/v1): path -> the client API it reads
DECISION_APIS: dict[bytes, str] = {
    b"/routing/v1/chat/completions": "chat_completions",
    b"/routing/v1/messages": "messages",
    b"/routing/v1/responses": "responses",
}


def refuse_fragment(target: bytes) -> None:
    """A fragment is never part of a request-target (RFC 9112 §3.2): 400, not forwarded."""
    if target.find(b"#") >= 0:
        raise ClientError("the request target must not contain '#'")


def trace_id_of(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The trace id of the client's W3C traceparent, else a new one."""
    for name, value in headers:
        if name == b"traceparent":
            parts = value.decode("latin-1").strip().split("-")
            if len(parts) == 4 and len(parts[1]) == 32:
                return parts[1]
    return os.urandom(16).hex()


def dispatch_py(gw: Gateway, request: Request, responder: Responder) -> Coroutine[Any, Any, None] | None:
    """Route one complete request (see Exchange.start for the coroutine it may return).
    The twin of the compiled ``dispatch`` (``gateway/_dispatch.pyx``), installed below as
    ``dispatch`` where built."""
    if not gw.store_ready and request.path not in ALWAYS_SERVED:
        raise ServiceUnavailable("the gateway has not opened its store yet; try again shortly")
    if request.forward is None:
        # (a request the compiled fast path parsed -- ``forward`` set -- has no '#': its
        # target grammar leaves it out, tests/test_request_fast_path.py; ~1.5k instructions;
        # nor an Origin or Sec-Fetch-Site: it declines those heads)
        refuse_fragment(request.target)
        refuse_cross_site(request.method, request.headers)  # a web page's POST sent without consent
    ctx = gw.ctx
    client = None
    if gw.managed is not None:
        client = read_client_headers(request.headers, request.query, request.forward)
        credential = client.credential
        if (credential is not None and credential.secret.startswith(b"xproxy_")) or request.path not in ALWAYS_SERVED:
            # Managed mode forwards its exact endpoints only; a token never goes on to
            # config-mode routing (where a passthrough provider would see it), and neither
            # does a request without one: config-mode routing would serve it with the
            # config's own keys, outside every token and hard budget (fail closed: the
            # managed exchange answers it 401, with its access-log line).
            endpoint = ENDPOINTS.get(request.path)
            if endpoint is None and stored_response_path(gw, request):
                return stored_response(gw, request, responder)
            if endpoint is None:
                raise NotFound(f"no managed endpoint at {request.path.decode('latin-1')}")
            if request.method != b"POST":
                raise MethodNotAllowed(f"{request.path.decode()} accepts POST only")
            exchange = new_exchange(ManagedExchange, ctx, request, responder)
            exchange.aim(gw.managed, endpoint)
            exchange.client = client
            tracing = ctx.tracing
            if tracing is not None and tracing.may_sample(request.headers):
                trace(gw, exchange)
            return exchange.start()
    forwarded: Exchange | None = None
    path = request.path
    if gw.firewall and path not in _HEALTH:
        forwarded = new_exchange(FirewallExchange, ctx, request, responder)
    elif (endpoint := ENDPOINTS.get(path)) is not None:  # (config mode's usual request first)
        if request.method != b"POST":
            raise MethodNotAllowed(f"{path.decode()} accepts POST only")
        # (new_exchange, then aim: no class call, see plano_fast.gateway.relay.new_exchange)
        routed = new_exchange(ConfigExchange, ctx, request, responder)
        routed.aim(endpoint)
        forwarded = routed
    elif is_gemini_path(path) and request.method == b"POST":
        gemini = new_exchange(GeminiExchange, ctx, request, responder)
        gemini.aim(GEMINI)
        forwarded = gemini
    elif path in DECISION_APIS:
        if request.method != b"POST":
            raise MethodNotAllowed(f"{path.decode()} accepts POST only")
        return routing_decision(gw, request, responder, DECISION_APIS[path])
    if forwarded is not None:
        forwarded.client = client  # read above in managed mode, else on first use
        tracing = ctx.tracing
        if tracing is not None and tracing.may_sample(request.headers):
            trace(gw, forwarded)
        if ctx.prechecks and isinstance(forwarded, RoutedExchange) and forwarded.endpoint is not COUNT_TOKENS:
            # guard models / input filters (config mode: Plano's listener semantics)
            return checked_start(forwarded, GUARD_FORMATS[forwarded.endpoint.name])
        try:
            return forwarded.start()
        except GatewayError as exc:  # refused (auth, budget, guardrails, rate limit): logged
            forwarded.refused(exc)
            raise
    if stored_response_path(gw, request):
        return stored_response(gw, request, responder)
    if path in _HEALTH:
        responder.send_simple(200, b'{"status":"ok"}')
        return None
    if path in (b"/v1/models", b"/models"):
        if request.method != b"GET":
            raise MethodNotAllowed("/v1/models accepts GET only")
        responder.send_simple(200, gw.models_body)
        return None
    raise NotFound(f"no route for {request.method.decode()} {path.decode('latin-1')}")


#: ``dispatch_py``; where built, compiled for the firewall, config or managed-mode request an
#: exchange forwards (``plano_fast/gateway/_dispatch.pyx``: no Python frame between the
#: server's read and the exchange's start, ~2k instructions a request), the twin otherwise
dispatch: Callable[[Gateway, Request, Responder], Coroutine[Any, Any, None] | None] = dispatch_py


def stored_response_path(gw: Gateway, request: Request) -> bool:
    return (gw.ctx.responses_state is not None and request.path.startswith(b"/v1/responses/")
            and request.method in (b"GET", b"DELETE"))


def stored_response(gw: Gateway, request: Request, responder: Responder) -> Coroutine[Any, Any, None]:
    """A stored conversation's answer (state_storage): read or delete it."""
    state = gw.ctx.responses_state
    assert state is not None
    owner = read_client_headers(request.headers, request.query).credential
    return stored_response_answer(
        state, request.method, request.path[14:].decode("latin-1"),
        "" if owner is None else owner_of(
            gw.managed.state if gw.managed is not None else None, owner.secret
        ), responder,
    )


async def routing_decision(gw: Gateway, request: Request, responder: Responder, api: str) -> None:
    """``POST /routing/v1/{chat/completions,messages,responses}``: the ranked models
    for the request, without calling them (Plano's docs/routing-api.md)."""
    try:
        fields = scan.scan_request(request.body)
    except scan.ScanError as exc:
        raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
    try:
        gw.router.resolve(fields.model)
    except UnknownModel as exc:
        raise UnknownModelError(str(exc)) from None
    preference = gw.ctx.preference
    if preference is None:
        decision = Decision((fields.model,) if fields.model else (), None)
    else:
        credential = read_client_headers(request.headers, request.query).credential
        caller = key_hash(credential.secret) if credential is not None else None
        budget = gw.ctx.budget
        if caller is not None and budget is not None and ("key", caller) in budget.blocked:
            # the router call is billed to this key: refused like its requests (identify_caller)
            raise SpendingLimitExceeded("this API key has exceeded its spending limit")
        decision = await preference.decide_request(request, api, fields.model, (new_request_id(), caller))
    responder.send_simple(200, decision_body(decision, trace_id_of(request.headers)))


def trace(gw: Gateway, exchange: Exchange) -> None:
    """Sampled (the client's traceparent, else random_sampling): a server span.  Called
    only when sampling is possible (``Tracing.may_sample``)."""
    tracing = gw.ctx.tracing
    assert tracing is not None
    request = exchange.request
    decision = tracing.sample(request.headers)
    if decision is not False:
        exchange.span = tracing.start_server(decision, request.headers, request.path)


def precheck(gw: Gateway, request: Request) -> None:
    """A head whose body is not read yet (it expects 100-continue, or its body passed
    ``http_server._IDENTIFY_AFTER_BYTES``): refuse (GatewayError) what identification
    alone refuses -- a fragment, an ambiguous or malformed credential, in firewall mode an
    endpoint it does not meter or a key it does not know, in managed mode a request
    without a current ``xproxy_`` token -- before the body is invited or read on.
    ``request`` has no body; the full checks run again when it is complete."""
    refuse_fragment(request.target)
    client = read_client_headers(request.headers, request.query)
    if gw.firewall and request.path not in _HEALTH:
        if not gw.registry.ready or not gw.billing.budget.ready:
            raise ServiceUnavailable("the gateway has not loaded its key registry and budgets yet")
        metered_endpoint(request.method, request.path, gw.ctx.unbilled_paths)
        identify(gw.registry, gw.billing.budget, client)
    elif gw.managed is not None and request.path not in ALWAYS_SERVED:
        # (as dispatch: every path but the always-served ones needs a token)
        state = gw.managed.state
        if not state.ready:
            raise ServiceUnavailable("the gateway has not loaded its tokens yet")
        credential = client.credential
        if credential is None or not credential.secret.startswith(TOKEN_PREFIX.encode()):
            raise Unauthorized("an xproxy_ token is required")
        if state.lookup(key_hash(credential.secret), time.time_ns()) is None:
            raise Unauthorized("this token is invalid, revoked or expired")


def admit_path(gw: Gateway, method: bytes, target: bytes) -> None:
    """``/auth/check``: the data plane's path refusals for ``method target``."""
    refuse_fragment(target)
    path, _, query = target.partition(b"?")
    if gw.firewall:
        metered_endpoint(method, path, gw.ctx.unbilled_paths)
    if query and path.endswith(b":generateContent"):
        refuse_unary_sse(query)


# (last: the compiled dispatch reads this module's functions, ``trace`` among them)
install_compiled(sys.modules[__name__], "plano_fast.gateway._dispatch", dispatch="dispatch")
