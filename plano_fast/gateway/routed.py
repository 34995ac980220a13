"""Requests routed by the config's model table: targets, conversion, retries and fallbacks.

Shared by the config-mode modules (``modes/config.py``: the body names the model;
``modes/gemini.py``: the path does).  ``_prepare(route)`` turns one target into the
upstream request (path, credentials, body rewrite or conversion, scanner); the failover
engine walks the retry plan's targets before the first byte reaches the client.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from plano_fast import wire as scan
from plano_fast.conversion import SCAN_API_FOR_WIRE, Conversion, json_dumps, json_loads, request_error
from plano_fast.convert import ConversionError, convert_request
from plano_fast.errors import BadRequestBody, ClientError, GatewayError, NotFound
from plano_fast.failover import CircuitBreaker, RetryPlan, RetryPolicy, alias_policy
from plano_fast.filter_chain import run_chain
from plano_fast.gateway.endpoints import (
    CHAT_COMPLETIONS,
    COUNT_TOKENS,
    MESSAGES,
    RESPONSES,
    Endpoint,
    RequestFieldsLike,
    auth_headers_for,
    auth_lines_for,
    converts,
    upstream_path,
)
from plano_fast.gateway.phases import client_headers
from plano_fast.gateway.relay import ExchangeContext
from plano_fast.gateway.retrying import JITTER_RNG, RetryingExchange
from plano_fast.gateway.upstream_request import provider_request, upstream_request
from plano_fast.response_guard import (
    ResponseHold,
    StreamScan,
    count,
    may_match,
    response_texts,
    scan_texts,
)
from plano_fast.responses_state import ConversationNotFound, StoredResponse, Turn, begin_turn
from plano_fast.routing import Route

if TYPE_CHECKING:
    from plano_fast.config import ModelProvider
    from plano_fast.response_guard import ResponseChecks
    from plano_fast.http_server import Request, Responder
    from plano_fast.upstream import Header, UpstreamHead


#: characters of a model name sent as they are in x-plano-requested-model (others %-escaped)
_MODEL_SAFE = " !#$&'()*+,/:;=?@[]~"


def target_of(route: Route, endpoint: Endpoint) -> tuple[bool, bytes | None, tuple[bytes, bytes] | None]:
    """What ``_prepare`` needs of ``route`` for ``endpoint`` that no request changes --
    whether it is reached through conversion, the provider path (None: not served), the
    provider's credential and extra lines (None: the client's credential passes through)
    -- computed once and kept on the route (``Route.per_endpoint``): three calls fewer per
    request (~2.7k instructions under callgrind)."""
    provider = route.provider
    target = (
        converts(endpoint, provider),
        upstream_path(provider, endpoint, route.upstream_model),
        None if provider.passthrough_auth else auth_lines_for(provider, endpoint),
    )
    route.per_endpoint[endpoint] = target
    return target


def plans_retries(route: Route, default_retry_policy: RetryPolicy | None) -> bool:
    """Whether a request routed to ``route`` has a retry plan (``RoutedExchange._first_target``
    makes one): its provider has a retry policy, the listener a default one, or the route
    is an alias with a target list.  The one rule: config mode asks it before calling
    ``_first_target`` (no call for the usual route)."""
    return bool(route.fallbacks) or route.provider.retry_policy is not None or default_retry_policy is not None


class RoutedExchange(RetryingExchange):
    """A request routed by the config's model table (config mode, Gemini-format clients):
    the upstream request for a route (``_prepare``; converted when the client's format is
    not the provider's), and the failover engine over the route and its retry policy's
    fallbacks (plano_fast.failover: retries, backoff, circuit breakers)."""

    __slots__ = ("endpoint", "provider", "fields", "prior", "plan_later")
    #: the request's scanned fields (set in ``start``: the body's, or a Gemini path's)
    fields: RequestFieldsLike

    def __init__(
        self, ctx: ExchangeContext, request: Request, responder: Responder, endpoint: Endpoint
    ) -> None:
        # (the base's method named, not super(): on 3.11 super() is an object per call)
        RetryingExchange.__init__(self, ctx, request, responder)
        self.aim(endpoint)

    def aim(self, endpoint: Endpoint) -> None:
        """This exchange's own slots (after ``relay.new_exchange``, the request path's
        constructor, or ``Exchange.__init__``)."""
        self.endpoint = endpoint
        self.endpoint_name = endpoint.name
        self.wire_format = endpoint.wire_api
        self.scan_api = endpoint.scan_api
        #: the conversation previous_response_id names, read from a shared state store
        self.prior: StoredResponse | None = None
        #: a retry plan not made yet: its route, policy and clock (``_first_target``), made
        #: at the first failure (``_late_plan``)
        self.plan_later: tuple[Route, RetryPolicy, float] | None = None

    def _first_target(self, route: Route, fallbacks: tuple[str, ...] = ()) -> Route:
        """The retry plan of a request routed to ``route`` (``fallbacks``: preference
        routing's other ranked models), when its provider has a retry policy, the
        listener a ``max_retries`` or the route an alias's target list; the target to
        try first (``route`` itself unless its circuit is open)."""
        if not plans_retries(route, self.ctx.default_retry_policy):
            return route
        provider = route.provider
        policy = provider.retry_policy or self.ctx.default_retry_policy
        if route.fallbacks:  # an alias with a target list: its models, in order, first
            fallbacks = route.fallbacks + fallbacks
            if provider.retry_policy is None:
                policy, fallbacks = alias_policy(fallbacks), ()
        if policy is None or self.endpoint is COUNT_TOKENS:
            return route
        ctx = self.ctx
        now = ctx.pool.loop.time()
        if fallbacks:
            policy = dataclasses.replace(policy, fallback_models=fallbacks + policy.fallback_models)
        elif not route.fallbacks and policy.hedge_after_ms is None:
            # The usual request: the route's circuit is closed, the route goes first and
            # nothing more is needed until an attempt fails -- the plan (its fallbacks
            # resolved, a RetryPlan, their circuits) is made then, from the same route,
            # policy and clock (``_late_plan``): ~10k instructions a request that
            # succeeds, issue 27's retries row.  (The policy's fallback models are
            # configured ones, checked at load: resolving them later cannot fail; a
            # preference router's ranked models or an alias's list are resolved now.)
            circuit = ctx.circuit_for(route.provider.name, route.upstream_model or "")
            if circuit.opened_at is None:  # closed: available, allowed, nothing taken
                self.circuit = circuit
                self.plan_later = (route, policy, now)
                return route
        self.plan = plan = self._plan(route, policy, now)
        return plan.targets[plan.index]

    def _late_plan(self) -> RetryPlan[Route] | None:
        """The plan ``_first_target`` left for a failure (None: no retries): the one it
        would have made then (its targets, its clock; the route first: its circuit was
        closed)."""
        later = self.plan_later
        if later is None:
            return None
        self.plan_later = None
        return self._targets(*later)

    def _retry_policy(self) -> RetryPolicy | None:
        """The plan's policy, or the one of the plan not made yet."""
        later = self.plan_later
        if self.plan is None and later is not None:
            return later[1]
        return RetryingExchange._retry_policy(self)

    def _targets(self, route: Route, policy: RetryPolicy, now: float) -> RetryPlan[Route]:
        """The request's targets: its route, then the policy's fallbacks, resolved."""
        router = self.ctx.router
        targets = [route] + [router.resolve(m) for m in policy.fallback_models]
        return RetryPlan(targets, [t.provider.provider for t in targets], policy, now, JITTER_RNG)

    def _plan(self, route: Route, policy: RetryPolicy, now: float) -> RetryPlan[Route]:
        """The request's plan (``_targets``).  The first target tried is the first whose
        circuit is not open (the route itself when all are)."""
        plan = self._targets(route, policy, now)
        targets = plan.targets
        circuits = [self.ctx.circuit_for(t.provider.name, t.upstream_model or "") for t in targets]
        first = next((i for i, c in enumerate(circuits) if c.available(now)), 0)
        if first:
            plan.index = first
            self.ctx.failovers_total += 1
        circuit = self.circuit = circuits[first]
        circuit.allow(now)
        return plan

    def _prepare(self, route: Route) -> None:
        """Build the upstream request for ``route`` (the first target or a fallback)."""
        fields = self.fields
        provider = route.provider
        model = route.upstream_model or fields.model
        target = route.per_endpoint.get(self.endpoint)
        if target is None:
            target = target_of(route, self.endpoint)
        converted, path, auth_lines = target
        if converted:
            self._prepare_converted(fields, model, provider)
            return
        if path is None:
            raise ClientError(
                f"model '{fields.model}' is served by provider '{provider.name}', which does "
                f"not support the {self.endpoint.name} API"
            )
        request = self.request
        self.provider = provider
        self.provider_id = provider.provider
        self.timeouts = provider.timeouts
        self.model = model
        self.streaming = fields.stream
        self.wire_format = self.endpoint.wire_api
        self.scan_api = self.endpoint.scan_api
        self.body_filter = None
        # Ask OpenAI-compatible providers for the usage chunk, and hide it again from a
        # client that did not ask for it, so every stream can be billed.
        inject = (
            fields.stream and self.endpoint is CHAT_COMPLETIONS and fields.include_usage is not True
        )
        new_model = route.upstream_model if route.rewrite or model != fields.model else None
        body = request.body
        if new_model is not None or inject:
            # (with nothing to change, rewrite_request would walk the body -- ~3.3k
            # instructions, scan_request has already checked it -- to return it as is)
            body = scan.rewrite_request(body, model=new_model, inject_include_usage=inject)
        if self.endpoint is not COUNT_TOKENS:
            self.scanner = scan.UsageScanner(self.endpoint.scan_api, fields.stream, inject)
            checks = self.ctx.response_checks
            if checks is not None:
                self._check_response(checks, fields.stream)
        client = self.client  # (read once already by identify_caller, in config mode)
        if client is None:
            client = client_headers(self)
        query = client.query
        self.operator_auth = None if auth_lines is None else auth_lines[0]
        self.upstream_data = provider_request(
            client,
            self.request_id,
            [request.method, b" ", path, b"?", query] if query else [request.method, b" ", path],
            provider,
            auth_lines,
            body,
        )
        self.origin = provider.origin

    # -- the response side of the guardrails (plano_fast.response_guard) ------------
    def _check_response(self, checks: ResponseChecks, stream: bool) -> None:
        """Hold a non-streamed answer for the output filters and detectors; scan a
        streamed one as it passes (when configured)."""
        if not stream:
            self.body_filter = ResponseHold()
        elif checks.policy is not None and checks.policy.streams:
            self.body_filter = StreamScan(checks.policy, self.ctx.metrics)

    def _finish(self, outcome: str, tail: bytes) -> None:
        body_filter = self.body_filter
        kind = type(body_filter)
        if kind is ResponseHold:
            assert isinstance(body_filter, ResponseHold)
            body_filter.finish(self.responder, tail)
            self._finish_held(body_filter, outcome)
            return
        if kind is StreamScan:
            assert isinstance(body_filter, StreamScan)
            body_filter.finish(self.responder, tail)
            self._name_detections(body_filter.found)
            self._complete(outcome)
            return
        RetryingExchange._finish(self, outcome, tail)

    def _name_detections(self, names: list[str]) -> None:
        """Response detections, beside the request's, in the access log's list."""
        if names:
            self.guard_names = sorted(set(self.guard_names or ()) | {f"response:{n}" for n in names})

    def _finish_held(self, hold: ResponseHold, outcome: str) -> None:
        checks = self.ctx.response_checks
        assert checks is not None
        body = b"".join(hold.parts)
        if not hold.checkable():
            hold.send(self.responder, body, [])
            self._complete(outcome)
        elif checks.chains is not None and checks.chains.output:
            # The exchange still owns the answer while the filters run (a task awaiting
            # the relay must not take the response for abandoned when the relay returns).
            self.responder.on_client_gone = self._client_gone
            self.responder.continue_in_task(self._filter_held(hold, body, outcome, checks), self.request)
        else:
            self._send_checked(hold, body, outcome, checks)

    async def _filter_held(self, hold: ResponseHold, body: bytes, outcome: str, checks: ResponseChecks) -> None:
        """The output filters, then the detectors; a refusal or a failed filter answers an
        error in the client's format (the provider's usage is recorded all the same)."""
        chains = checks.chains
        assert chains is not None
        ctx = self.ctx
        try:
            body = await run_chain(chains.output, chains, ctx.pool, body, self.request.path, ctx.metrics)
        except GatewayError as exc:
            exc.request_id = self.request_id  # (x-plano-request-id, as its row's)
            self.responder.send_error(exc, self.request.api_format)
            self._settle(outcome, self.status)
            return
        self._send_checked(hold, body, outcome, checks)

    def _send_checked(self, hold: ResponseHold, body: bytes, outcome: str, checks: ResponseChecks) -> None:
        policy = checks.policy
        warn: list[str] = []
        if policy is not None and may_match(policy, body):
            try:
                doc = json_loads(body)
            except ValueError:
                doc = None
            names = scan_texts(policy, response_texts(doc)) if doc is not None else []
            if names:
                count(self.ctx.metrics, policy, names, streamed=False)
                self._name_detections(names)
                warn = [f"response:{n}" for n in names if policy.actions[n] == "warn"]
        hold.send(self.responder, body, warn)
        self._complete(outcome)

    # -- retries and fallbacks (plano_fast.failover, plano_fast.gateway.retrying) -------
    def _target_circuit(self, index: int) -> CircuitBreaker:
        assert self.plan is not None
        route = self.plan.targets[index]
        return self.ctx.circuit_for(route.provider.name, route.upstream_model or "")

    def _prepare_target(self, index: int) -> None:
        assert self.plan is not None
        self._prepare(self.plan.targets[index])

    def _prepare_converted(
        self, fields: RequestFieldsLike, model: str | None, provider: ModelProvider
    ) -> None:
        request = self.request
        target = provider.wire_api
        source = "responses" if self.endpoint is RESPONSES else self.endpoint.wire_api
        if target not in SCAN_API_FOR_WIRE:
            raise ClientError(f"provider '{provider.name}' speaks {target}, which cannot be converted to")
        try:
            doc = json_loads(request.body)
        except ValueError as exc:
            raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
        turn = None
        if source == "responses" and type(doc) is dict:
            doc, turn = self._responses_turn(doc)
        try:
            upstream_doc = convert_request(
                doc, source, target, target_model=model or "", stream=fields.stream,
                openai_max_tokens_field=(
                    "max_completion_tokens" if provider.provider == "openai" else "max_tokens"
                ),
            )
        except ConversionError as exc:
            raise request_error(exc) from None
        body = json_dumps(upstream_doc)
        upstream_endpoint = MESSAGES if target == "anthropic" else CHAT_COMPLETIONS
        if target == "gemini":
            # The model is in the path; streaming is a method (SSE asked for explicitly).
            method = ":streamGenerateContent?alt=sse" if fields.stream else ":generateContent"
            path: bytes | None = (
                f"{provider.gemini_base_path}/models/{quote(model or '', safe='')}{method}".encode()
            )
        else:
            path = upstream_path(provider, upstream_endpoint, model)
        if path is None:
            raise ClientError(f"provider '{provider.name}' has no {upstream_endpoint.name} endpoint")
        self.provider = provider
        self.provider_id = provider.provider
        self.timeouts = provider.timeouts
        self.model = model
        self.streaming = fields.stream
        self.wire_format = target
        self.scan_api = SCAN_API_FOR_WIRE[target]
        self.scanner = scan.UsageScanner(self.scan_api, fields.stream, False)
        self.body_filter = Conversion(
            target, source, model or fields.model or "", fields.stream,
            include_usage=fields.include_usage is True,
            request=doc if source == "responses" else None,
            on_response=turn.record if turn is not None else None,
        )
        if turn is not None:
            turn.model, turn.provider = model or "", provider.name
        auth = None
        if not provider.passthrough_auth:
            auth = provider.auth_headers if target == "gemini" else auth_headers_for(
                provider, upstream_endpoint
            )
        self.operator_auth = auth
        self.upstream_data = upstream_request(
            client_headers(self), self.request_id, [b"POST ", path], provider, auth, body,
            anthropic_version=target == "anthropic",
        )
        self.origin = provider.origin

    def _responses_turn(self, doc: dict[str, Any]) -> tuple[dict[str, Any], Turn | None]:
        """With state_storage: ``previous_response_id`` expanded (404 when this caller has
        no such conversation) and the answer to be stored; without: nothing is stored."""
        state = self.ctx.responses_state
        if state is None:
            return {**doc, "store": False}, None
        try:
            return begin_turn(doc, state, self.key_hash or "", self.prior)
        except ConversationNotFound:
            raise NotFound(
                f"previous_response_id '{doc.get('previous_response_id')}' not found"
            ) from None

    def client_headers(self, head: UpstreamHead) -> list[Header]:
        out = super().client_headers(head)
        # Converted answers (the only ones built from pairs): the answer names the model the
        # provider served; the name asked for stays here.
        out.append((b"x-plano-requested-model", quote(self.requested_model or "", safe=_MODEL_SAFE).encode()))
        return out
