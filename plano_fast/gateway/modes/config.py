"""Config mode (Plano semantics): the body's model picks a configured provider.

identify (the body's model; the caller's key hash for per-key usage, refused when its
soft spending limit is reached) -> route (the model
table, or preference routing's ranked models) -> admit (guardrails, rate limits) ->
the retry plan -> ``_prepare`` the first target -> the relay.  ``count_tokens`` for a
provider that cannot count is answered here (an estimate).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from plano_fast import wire as scan
from plano_fast.conversion import request_error
from plano_fast.convert import ConversionError, count_tokens_estimate
from plano_fast.errors import BadRequestBody, UnknownModelError
from plano_fast.gateway.endpoints import CHAT_COMPLETIONS, COUNT_TOKENS, GUARD_FORMATS, MESSAGES, RESPONSES, converts
from plano_fast.gateway.phases import admitted_forward, guard, identify_caller, rate_limit, refuse_background
from plano_fast.gateway.routed import RoutedExchange, plans_retries
from plano_fast.preference_routing import OVERRIDE_MEMBER, Decision, strip_member
from plano_fast.responses_state import ResponseStore, needs_prefetch, prefetch
from plano_fast.routing import Route, UnknownModel
from plano_fast.twins import install_compiled

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from plano_fast.preference_routing import PreferenceRouter


#: the endpoints a hedge may double (retry_policy.hedge_after_ms): their answers' usage
#: comes after the head, and preparing a second target has no side effect (a Responses
#: request may record a conversation turn)
HEDGED = (CHAT_COMPLETIONS, MESSAGES)
#: route name -> its answer header line (``quote`` is ~1.5k instructions a call)
_ROUTE_HEADERS: dict[str, bytes] = {}
ROUTE_HEADERS_MAX = 256

class ConfigExchange(RoutedExchange):
    """Config mode: the body's model picks a configured provider (Plano semantics)."""

    __slots__ = ()

    def start(self) -> Coroutine[Any, Any, None] | None:
        """Identify, route, admit and forward (see the module docstring).  Compiled where
        built for a plain request (``plano_fast/gateway/_config.pyx``: a configured model
        name, no alias target list, guardrails, limits or response checks, a live session's
        pinned decision under preference routing; ``start_py`` is this twin)."""
        request = self.request
        try:
            fields = scan.scan_request(request.body)
        except scan.ScanError as exc:
            raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
        if self.endpoint is RESPONSES:
            refuse_background(request.body)  # its usage could never be read, as in every mode
        router = self.ctx.router
        route = router.routes.get(fields.model or "")  # (a configured name: resolve's lookup, inline)
        if route is None:
            try:
                route = router.resolve(fields.model)
            except UnknownModel as exc:
                self.requested_model = fields.model  # for the refusal's access-log line
                raise UnknownModelError(str(exc)) from None
        provider = route.provider
        if self.endpoint is COUNT_TOKENS and provider.wire_api != "anthropic":
            self._count_tokens_locally()
            return None
        # Config mode identifies callers by their key's hash (per-key usage and limits),
        # before anything that costs: the state read, the router call.
        self.key_hash = identify_caller(self)
        self.fields = fields
        self.requested_model = fields.model
        ctx = self.ctx
        state = ctx.responses_state
        if (state is not None and self.endpoint is RESPONSES and needs_prefetch(state, request.body)
                and (ctx.preference is not None or converts(RESPONSES, provider))):
            return self._with_history(state, route)
        if ctx.preference is None:  # (``_route``'s usual case, inline: a call fewer)
            return self._admit_and_forward(route, fields.model, ())
        return self._route(route)

    async def _with_history(self, state: ResponseStore, route: Route) -> None:
        """Read the conversation ``previous_response_id`` names (shared state store) first."""
        waiting = self.ctx.waiting
        self.ctx.waits(self)  # (a stop while the state store answers is a 503: stop_waiting)
        try:
            self.prior = await prefetch(state, self.request.body, self.key_hash or "")
        finally:
            waiting.pop(self, None)
        pending = self._route(route)
        if pending is not None:
            await pending

    def _route(self, route: Route) -> Coroutine[Any, Any, None] | None:
        request, fields = self.request, self.fields
        preference = self.ctx.preference
        if preference is not None and self.endpoint is not COUNT_TOKENS:
            pinned = preference.pinned_decision(request)
            if pinned is not None:
                return self._routed(pinned)  # no router call: no task either
            return self._route_by_preference(preference)
        return self._admit_and_forward(route, fields.model, ())

    def _admit_and_forward(
        self, route: Route, model: str | None, fallbacks: tuple[str, ...]
    ) -> Coroutine[Any, Any, None] | None:
        """Guard, rate-limit, plan and forward ``route`` (``model``: the name it was
        chosen by; ``fallbacks``: preference routing's other ranked models)."""
        provider = route.provider
        ctx = self.ctx
        if ctx.guardrails is not None:
            guard(self, GUARD_FORMATS[self.endpoint.name], provider.provider, scanned=True)
        # (the names a limit may use, built only when limits are configured)
        shared_check = ctx.ratelimits is not None and rate_limit(
            self, (model, route.upstream_model, f"{provider.prefix}/{route.upstream_model}")
        )
        if plans_retries(route, ctx.default_retry_policy):  # (else the route itself, no call)
            route = self._plan_first(route, fallbacks)
        self._prepare(route)
        if shared_check:
            return admitted_forward(self)
        return self.forward_now()

    def _plan_first(self, route: Route, fallbacks: tuple[str, ...]) -> Route:
        """The retry plan of a request routed to ``route`` and its first target; a hedge
        armed when the policy hedges this request.  (The compiled start calls it too, for a
        route whose provider or listener has a retry policy.)"""
        route = self._first_target(route, fallbacks)
        plan = self.plan
        if (plan is not None and plan.policy.hedge_after_ms is not None and not self.fields.stream
                and self.endpoint in HEDGED):
            self.arm_hedge(plan.policy.hedge_after_ms / 1000.0)  # (plano_fast.gateway.hedge)
        return route

    async def _route_by_preference(self, preference: PreferenceRouter) -> None:
        """Preference routing (plano_fast.preference_routing): ask the router model once,
        before the retry plan, then go on as any request."""
        waiting = self.ctx.waiting
        self.ctx.waits(self)  # (a stop while the router model is out answers 503: stop_waiting)
        try:
            decision = await preference.decide_request(
                self.request, self.endpoint.name, self.fields.model, (self.request_id, self.key_hash)
            )
        finally:
            waiting.pop(self, None)
        pending = self._routed(decision)
        if pending is not None:
            await pending

    def _routed(self, decision: Decision) -> Coroutine[Any, Any, None] | None:
        """Forward as ``decision`` says: its first model, the rest as fallbacks."""
        request = self.request
        if request.body.find(b'"routing_preferences"') >= 0:
            # The request's own routes are for the gateway: they never reach the provider.
            request.body = strip_member(request.body, OVERRIDE_MEMBER)
        chosen = decision.models[0] if decision.models else self.fields.model
        try:
            route = self.ctx.router.resolve(chosen)
        except UnknownModel as exc:
            raise UnknownModelError(str(exc)) from None
        pending = self._admit_and_forward(route, chosen, decision.models[1:])
        self._note_decision(decision)
        return pending

    def _note_decision(self, decision: Decision) -> None:
        """The decision on the request's span, access-log line and answer (after the
        forward; the compiled start calls it too, for a pinned decision)."""
        span = self.span
        if span is not None and (decision.pinned or decision.router_ms > 0 or decision.route):
            # Plano's span attributes (brightstaff tracing/constants.rs)
            span.set_attribute("routing.determination_ms", round(decision.router_ms, 3))
            if decision.route is not None:
                span.set_attribute("plano.route.name", decision.route)
        if decision.route is not None:
            self.route_name = decision.route
            # Plano records the route as a response header; route names are config text
            # (or a request's own routing_preferences: the memo is bounded).
            header = _ROUTE_HEADERS.get(decision.route)
            if header is None:
                name = quote(decision.route, safe=" !#$&'()*+,/:;=?@[]~")
                header = b"x-model-router-selected-route: " + name.encode() + b"\r\n"
                if len(_ROUTE_HEADERS) >= ROUTE_HEADERS_MAX:
                    _ROUTE_HEADERS.clear()
                _ROUTE_HEADERS[decision.route] = header
            self.route_header = header

    def _count_tokens_locally(self) -> None:
        """``/v1/messages/count_tokens`` for a provider that cannot count: an estimate."""
        try:
            doc = json.loads(self.request.body)
        except ValueError as exc:
            raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
        try:
            count = count_tokens_estimate(doc, "anthropic")
        except ConversionError as exc:
            raise request_error(exc) from None
        self.responder.send_simple(200, b'{"input_tokens":%d}' % count)


start_py = ConfigExchange.start
install_compiled(ConfigExchange, "plano_fast.gateway._config", start="start")
