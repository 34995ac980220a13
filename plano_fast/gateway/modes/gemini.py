"""Gemini-format clients: ``POST /v1beta/models/{model}:generateContent`` and
``:streamGenerateContent`` in config mode.

The model comes from the path and streaming from the method.  A Gemini-native provider
(``base_url`` ending in ``/v1beta``) is forwarded to as is, the model rewritten in the
path; any other provider is reached through conversion.  Streams are answered as SSE
(``alt=sse``, what Google's SDKs ask for).
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
from typing import Any
from urllib.parse import quote, unquote

from plano_fast import wire as scan
from plano_fast.credentials import refuse_unary_sse
from plano_fast.errors import BadRequestBody, ClientError, UnknownModelError
from plano_fast.gateway.endpoints import Endpoint
from plano_fast.gateway.phases import admitted_forward, client_headers, guard, identify_caller, rate_limit
from plano_fast.gateway.routed import RoutedExchange
from plano_fast.gateway.upstream_request import origin_of, upstream_request
from plano_fast.routing import Route, UnknownModel

GEMINI = Endpoint("gemini", scan.API_GEMINI, "gemini")
# A model id, optionally provider-qualified ("openai/gpt-4o-mini", sent as openai%2F...):
# segments that start with a letter or digit, so never "." or "..".
_MODEL_NAME = re.compile(r"(?=.{1,256}$)[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")
METHODS = (b"generateContent", b"streamGenerateContent")


def is_gemini_path(path: bytes) -> bool:
    """Whether ``path`` is ``/v1beta/models/{model}:{method}``, ``method`` one of
    :data:`METHODS` and the only ``:`` of the last segment: ``m:generateContent:stream...``
    would be forwarded as it is with a method the exchange does not meter (read as unary
    while a Gemini-native server streams it, or as a countTokens), its row unpriced."""
    if not path.startswith(b"/v1beta/models/"):
        return False
    return path.rpartition(b"/")[2].partition(b":")[2] in METHODS


class PathFields:
    __slots__ = ("model", "stream", "include_usage")

    def __init__(self, model: str, stream: bool) -> None:
        self.model: str | None = model
        self.stream = stream
        self.include_usage: bool | None = True


class GeminiExchange(RoutedExchange):
    """A Gemini-format client in config mode: the route and its retry plan as in config
    mode (retries, fallbacks, circuit breakers); each target is reached natively when it
    speaks Gemini's API and through conversion otherwise, so a fallback of another format
    is converted for on its own attempt."""

    __slots__ = ("method",)

    def start(self) -> Coroutine[Any, Any, None] | None:
        request = self.request
        name, _, method = request.path.rpartition(b"/")[2].partition(b":")
        model = unquote(name.decode("latin-1"))
        if not model:
            raise BadRequestBody("the request path names no model")
        if _MODEL_NAME.fullmatch(model) is None:
            # A path segment that decodes to "/", ".." or other oddities would be sent on
            # (percent-encoded) to a wildcard provider: refused instead.
            raise ClientError(
                "the model in the request path must be letters, digits and '._-' (segments "
                "separated by an encoded '/')"
            )
        self.fields = PathFields(model, method == b"streamGenerateContent")
        if method == b"generateContent" and request.query:
            refuse_unary_sse(request.query)
        self.method = method
        self.requested_model = model
        try:
            route = self.ctx.router.resolve(model)
        except UnknownModel as exc:
            raise UnknownModelError(str(exc)) from None
        if self.ctx.guardrails is not None:
            guard(self, "gemini", route.provider.provider)  # (which scans the body first)
        self.key_hash = identify_caller(self)
        provider = route.provider
        upstream_model = route.upstream_model or model
        # (the names a limit may use, as config mode; built only when limits are configured)
        shared_check = self.ctx.ratelimits is not None and rate_limit(
            self, (model, upstream_model, f"{provider.prefix}/{upstream_model}")
        )
        self._prepare(self._first_target(route))
        if shared_check:
            return admitted_forward(self)
        return self.forward_now()

    def _prepare(self, route: Route) -> None:
        """The upstream request for ``route``: as it is to a Gemini-native provider (the
        model rewritten in the path), converted for any other."""
        provider = route.provider
        fields = self.fields
        upstream_model = route.upstream_model or fields.model or ""
        if provider.wire_api != "gemini":
            self._prepare_converted(fields, upstream_model, provider)
            return
        self.provider = provider
        self.provider_id = provider.provider
        self.timeouts = provider.timeouts
        self.model = upstream_model
        self.streaming = fields.stream
        self.wire_format = "gemini"
        self.scan_api = scan.API_GEMINI
        self.body_filter = None
        self.scanner = scan.UsageScanner(scan.API_GEMINI, fields.stream, False)
        # The client's query (alt=sse) without its ?key= (a passed-through key goes in
        # x-goog-api-key; see plano_fast.credentials).
        client = client_headers(self)
        query = client.query
        self.operator_auth = None if provider.passthrough_auth else provider.auth_headers
        path = f"{provider.gemini_base_path}/models/{quote(upstream_model, safe='')}:".encode()
        self.upstream_data = upstream_request(
            client,
            self.request_id,
            [b"POST ", path, self.method, b"?", query] if query else [b"POST ", path, self.method],
            provider,
            self.operator_auth,
            self.request.body,
        )
        self.origin = origin_of(provider)
