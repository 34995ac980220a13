"""Firewall mode: clients keep their own provider keys and change only the base URL.

Identify: the request's one credential (plano_fast.credentials: more than one is a 401) is
hashed with SHA-256 and looked up in the in-memory ``ApiKeyRegistry`` -- no database on the
hot path.  Admit: only the endpoints the gateway can meter are forwarded (``metered_endpoint``:
exact paths, anything else 404/405); unknown or inactive keys get 401; a project or key in
the budget checker's blocked set gets 429; before the registry and the budget state have
loaded once, every request gets 503 (fail closed: never forwarded unbilled).  Forward: the
client's request goes to the registered upstream with the verified key written back in the
header it came in (every other credential header and ``key=`` parameter removed); hop-by-hop
and ``x-xproxy-*`` headers (which only the gateway may set) are removed, and OpenAI-compatible
streams get ``stream_options.include_usage`` (stripped again from the response when the
client did not ask for it).  Observe and settle as in every exchange.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from plano_fast import wire as scan
from plano_fast.credentials import ClientHeaders, refuse_subscription_key, refuse_unary_sse
from plano_fast.errors import (
    BadRequestBody,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    SpendingLimitExceeded,
    Unauthorized,
)
from plano_fast.gateway.endpoints import GUARD_FORMATS
from plano_fast.gateway.phases import admitted_forward, client_headers, guard, key_hash, rate_limit, refuse_background
from plano_fast.gateway.relay import Exchange
from plano_fast.gateway.upstream_request import finish_head
from plano_fast.twins import install_compiled
from plano_fast.usage import STATUS_NOT_BILLABLE, STATUS_UNBILLED

if TYPE_CHECKING:
    from plano_fast.billing.budget import BudgetChecker
    from plano_fast.key_registry import ApiKeyRegistry, KeyRoute


class MeteredEndpoint:
    """A provider endpoint firewall mode forwards: how its response is metered.

    ``scan_api`` None: free (model listings, token counting), recorded as not billable.
    """

    __slots__ = ("name", "scan_api", "wire_format", "include_usage")

    def __init__(self, name: str, scan_api: int | None, wire_format: str, include_usage: bool = False) -> None:
        self.name = name
        self.scan_api = scan_api
        self.wire_format = wire_format
        #: an OpenAI-style stream the gateway asks for its usage chunk (stream_options)
        self.include_usage = include_usage


_CHAT = MeteredEndpoint("chat_completions", scan.API_OPENAI_CHAT, "openai", include_usage=True)
_COMPLETIONS = MeteredEndpoint("completions", scan.API_OPENAI_CHAT, "openai", include_usage=True)
_EMBEDDINGS = MeteredEndpoint("embeddings", scan.API_OPENAI_CHAT, "openai")
_RESPONSES = MeteredEndpoint("responses", scan.API_OPENAI_RESPONSES, "openai")
_MESSAGES = MeteredEndpoint("messages", scan.API_ANTHROPIC, "anthropic")
_COUNT_TOKENS = MeteredEndpoint("count_tokens", None, "anthropic")
_GEMINI = MeteredEndpoint("gemini", scan.API_GEMINI, "gemini")
_MODELS = MeteredEndpoint("models", None, "openai")

#: (method, exact path) -> endpoint.  Paths are compared byte for byte: no normalisation
#: happens, so a dot segment, an encoded character, a trailing slash, a case variant or a
#: ;param is simply not in the table (404) and never reaches a provider.
_EXACT: dict[tuple[bytes, bytes], MeteredEndpoint] = {}
for _prefix in (b"/v1", b""):
    _EXACT[b"POST", _prefix + b"/chat/completions"] = _CHAT
    _EXACT[b"POST", _prefix + b"/completions"] = _COMPLETIONS
    _EXACT[b"POST", _prefix + b"/embeddings"] = _EMBEDDINGS
    _EXACT[b"POST", _prefix + b"/responses"] = _RESPONSES
    _EXACT[b"GET", _prefix + b"/models"] = _MODELS
_EXACT[b"POST", b"/v1/messages"] = _MESSAGES
_EXACT[b"POST", b"/v1/messages/count_tokens"] = _COUNT_TOKENS
_EXACT[b"GET", b"/v1beta/models"] = _MODELS
# A model or deployment name: one path segment of unreserved characters that starts with a
# letter or digit (so never "." or "..").
_NAME = rb"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_GEMINI_COUNT = MeteredEndpoint("gemini_count_tokens", None, "gemini")
_PATTERNS: tuple[tuple[bytes, re.Pattern[bytes], MeteredEndpoint], ...] = (
    (b"POST", re.compile(rb"/v1(?:beta)?/models/" + _NAME + rb":(?:generateContent|streamGenerateContent)"), _GEMINI),
    (b"POST", re.compile(rb"/v1(?:beta)?/models/" + _NAME + rb":countTokens"), _GEMINI_COUNT),
    (b"GET", re.compile(rb"/v1(?:beta)?/models/" + _NAME), _MODELS),
    (b"POST", re.compile(rb"/openai/deployments/" + _NAME + rb"/chat/completions"), _CHAT),
    (b"POST", re.compile(rb"/openai/deployments/" + _NAME + rb"/completions"), _COMPLETIONS),
    (b"POST", re.compile(rb"/openai/deployments/" + _NAME + rb"/embeddings"), _EMBEDDINGS),
)


#: a path on the operator's firewall_unbilled_paths list
UNBILLED = MeteredEndpoint("unbilled", None, "openai")


def metered_endpoint(
    method: bytes, path: bytes, unbilled: frozenset[bytes] = frozenset()
) -> MeteredEndpoint:
    """The endpoint ``method path`` names, or a 404/405 (``GatewayError``): firewall mode
    forwards only what it can meter, and the exact paths an operator lists as unbilled."""
    endpoint = _EXACT.get((method, path))
    if endpoint is not None:
        return endpoint
    if path in unbilled:
        if method == b"HEAD":
            # Its answer has a Content-Length and no body: relayed as a body, it would be
            # waited for until the idle timeout cut it (the pool reads bodies by framing).
            raise MethodNotAllowed("HEAD is not allowed on this endpoint")
        return UNBILLED
    allowed = False
    for pattern_method, pattern, endpoint in _PATTERNS:
        if pattern.fullmatch(path) is not None:
            if pattern_method == method:
                return endpoint
            allowed = True
    if allowed or any(p == path for _, p in _EXACT):
        raise MethodNotAllowed(f"{method.decode('latin-1')} is not allowed on this endpoint")
    raise NotFound(
        "no such endpoint: the gateway forwards only the endpoints it meters (chat "
        "completions, completions, embeddings, responses, messages, Gemini generateContent, "
        "model listings)"
    )


class FirewallExchange(Exchange):
    __slots__ = ("unbilled",)

    MODE = "firewall"

    def _settle(self, outcome: str, http_status: int) -> None:
        if self.unbilled and not self.outcome:
            self.ctx.unbilled_requests += 1
            if outcome == STATUS_NOT_BILLABLE:
                outcome = STATUS_UNBILLED
        # (the base's method named, not super(): on 3.11 super() is an object per call)
        Exchange._settle(self, outcome, http_status)

    def start(self) -> Coroutine[Any, Any, None] | None:
        """Identify, admit, rewrite and forward (see the module docstring).  Compiled where
        built for a plain request (``plano_fast/gateway/_firewall.pyx``: no guardrails
        configured, an exact metered path; ``start_py`` is this twin)."""
        ctx = self.ctx
        registry, budget = ctx.registry, ctx.budget
        assert registry is not None and budget is not None
        if not registry.ready or not budget.ready:
            raise ServiceUnavailable("the gateway has not loaded its key registry and budgets yet")
        request = self.request
        endpoint = metered_endpoint(request.method, request.path, ctx.unbilled_paths)
        self.unbilled = endpoint is UNBILLED
        self.endpoint_name = endpoint.name
        client = client_headers(self)
        route, digest = identify(registry, budget, client)
        self.key_hash = digest
        self.project_id = route.key.project_id
        self.provider_id = route.key.provider
        self.wire_format = endpoint.wire_format
        guard_format = GUARD_FORMATS.get(endpoint.name) if ctx.guardrails is not None else None
        if guard_format is not None:
            guard(self, guard_format, route.key.provider)  # (which scans the body first)
        body = request.body
        path = request.path
        scan_api = endpoint.scan_api
        if scan_api is not None:
            self.scan_api = scan_api
            inject = False
            if scan_api == scan.API_GEMINI:
                # Gemini names the model in the path and streams by method name.
                self.model = path.rsplit(b"/", 1)[-1].split(b":", 1)[0].decode("ascii")
                self.streaming = path.endswith(b":streamGenerateContent")
                if not self.streaming and request.query:
                    refuse_unary_sse(request.query)
            else:
                if endpoint is _RESPONSES:
                    refuse_background(body)
                try:
                    fields = scan.scan_request(body)
                except scan.ScanError as exc:
                    raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
                self.model = fields.model
                self.streaming = fields.stream
                inject = fields.stream and endpoint.include_usage and fields.include_usage is not True
                if inject:
                    body = scan.rewrite_request(body, inject_include_usage=True)
            self.scanner = scan.UsageScanner(scan_api, self.streaming, inject)
        base = route.base_path
        if base and not path.startswith(base + b"/"):
            path = base + path
        query = client.query
        # The verified credential, written back once; every other one was dropped (or
        # refused: an Azure subscription key, only looked for when a provider-account
        # header was sent).
        if client.operator_block is not client.block:
            refuse_subscription_key(client)
        credential = client.credential
        assert credential is not None
        # (pieces, joined once by finish_head: a concatenation is ~0.45k instructions)
        if query:
            head = [request.method, b" ", path, b"?", query, b" HTTP/1.1\r\n", client.block, credential.line]
        else:
            head = [request.method, b" ", path, b" HTTP/1.1\r\n", client.block, credential.line]
        self.upstream_data = finish_head(head, route.host_line, body, client.request_id, self.request_id)
        self.origin = route.origin
        if ctx.ratelimits is not None and rate_limit(self, (self.model,)):
            return admitted_forward(self)
        return self.forward_now()


def identify(
    registry: ApiKeyRegistry, budget: BudgetChecker, client: ClientHeaders
) -> tuple[KeyRoute, str]:
    """Firewall identify + admit: the one credential -> registered key route, refused when
    missing (401), unknown (401) or over budget (429).  Returns the route and key hash."""
    credential = client.credential
    if credential is None:
        raise Unauthorized("no API key: send your provider key as you would to the provider")
    digest = key_hash(credential.secret)
    route = registry.lookup(digest)
    if route is None:
        raise Unauthorized("this API key is not registered with the gateway")
    blocked = budget.blocked
    if blocked and (("project", route.key.project_id) in blocked or ("key", digest) in blocked):
        raise SpendingLimitExceeded()
    return route, digest


start_py = FirewallExchange.start
install_compiled(FirewallExchange, "plano_fast.gateway._firewall", start="start")
