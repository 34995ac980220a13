"""ManagedExchange: an ``xproxy_`` token, a pipe, a server-side key, a hard budget.

Phases:
  identify  token SHA-256 -> in-memory token cache (revoked/expired -> 401)
  route     the token's pipe -> targets serving the body's model (none -> 400 naming them)
  admit     reserve the request's maximum possible cost in the shared store, for every
            hard limit of its project and user (one atomic conditional UPDATE on
            PostgreSQL), or 402; the database being away means 503, never an unbilled pass
  forward   the first target whose circuit is not open; on a connect error, a timeout
            before the first byte, 429 or 5xx (529) before any byte went to the client,
            another attempt as the retry plan says (plano_fast.gateway.retrying: the
            engine config mode uses; plano_fast.managed_retry_policy, by default each
            target once, in order); the one reservation covers every attempt
  settle    synchronous: the usage row is written and the reservation settled to the
            actual cost BEFORE the final bytes are relayed — for streams the terminal
            event ([DONE], message_stop, response.completed) is held back until then.

The maximum cost is conservative by construction: a token is never shorter than one byte
of UTF-8 text, so the body's byte length bounds the input tokens; output is bounded by
``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` or, when absent, by the
configured ceiling, which is also sent upstream so the bound holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

from plano_fast import wire as scan
from plano_fast.billing.rows import incomplete_answer, row_of_event, row_within_reservation
from plano_fast.errors import BadRequestBody, ClientError, GatewayError, ServiceUnavailable, Unauthorized
from plano_fast.gateway.endpoints import (
    CHAT_COMPLETIONS,
    COUNT_TOKENS,
    GUARD_FORMATS,
    MESSAGES,
    RESPONSES,
    Endpoint,
    upstream_path,
)
from plano_fast.gateway.phases import admit_awaited, client_headers, guard, key_hash, refuse_background
from plano_fast.gateway.coded_answer import DecodingScanner
from plano_fast.failover import CircuitBreaker, RetryPlan, pipe_policy
from plano_fast.gateway.relay import ExchangeContext
from plano_fast.gateway.retrying import JITTER_RNG, RetryingExchange
from plano_fast.gateway.upstream_request import upstream_request
from plano_fast.http_server import Request, Responder
from plano_fast.managed.bounds import (
    UnboundedContent,
    request_bound,
    searches_on_every_call,
    tiers_it_may_be_billed_at,
    token_bound,
)
from plano_fast.managed.context import ManagedContext
from plano_fast.managed.state import TOKEN_PREFIX, ResolvedPipe, Target
from plano_fast.pricing import output_parts, price_tokens
from plano_fast.responses_managed import (
    ManagedTurn, expand_managed, managed_owner, refuse_container_reuse, refuse_stored_files, refuse_unowned_state,
)
from plano_fast.store import BudgetTarget, Reservation, UsageRow, period_start
from plano_fast.twins import install_compiled
from plano_fast.usage import STATUS_UPSTREAM_FAILED, UsageEvent

log = logging.getLogger("plano_fast.managed")

# Lines that start the last event of a stream, per format: held until billing is done.
TERMINAL_MARKERS = (b"data: [DONE]", b"event: message_stop", b"event: response.completed")
#: a gateway token's prefix as the credential's bytes start with it (encoded once, not per request)
_TOKEN_PREFIX_BYTES = TOKEN_PREFIX.encode()


class BudgetExceeded(ClientError):
    status = 402
    code = "budget_exceeded"
    openai_type = "insufficient_quota"


class BudgetHeld(BudgetExceeded):
    """The limit is not reached, but what is left is held by requests in flight: their
    reservations are settled within moments, so a retry shortly may fit (Retry-After)."""

    code = "budget_held_by_in_flight"
    retry_after_s = 1


class ManagedExchange(RetryingExchange):
    MODE = "managed"
    __slots__ = (
        "mctx",
        "endpoint",
        "targets",
        "fields",
        "base_body",
        "reservation",
        "billing",
        "finish_in_callback",
        "token_digest",
        "user_id",
        "token_id",
        "state_turn",
    )

    def __init__(
        self,
        ctx: ExchangeContext,
        mctx: ManagedContext,
        request: Request,
        responder: Responder,
        endpoint: Endpoint,
    ) -> None:
        # (the base's method named, not super(): on 3.11 super() is an object per call)
        RetryingExchange.__init__(self, ctx, request, responder)
        self.aim(mctx, endpoint)

    def aim(self, mctx: ManagedContext, endpoint: Endpoint) -> None:
        """This exchange's own slots, after ``relay.new_exchange`` (the request path's
        constructor: compiled where built, no class call and no ``__init__`` frame, ~5k
        instructions a request fewer than the Python constructor) or ``Exchange.__init__``.
        Compiled where built (``plano_fast/gateway/_managed.pyx``; ``aim_py`` is this twin):
        a slot it sets here must be set there too."""
        self.mctx = mctx
        self.endpoint = endpoint
        self.endpoint_name = endpoint.name
        self.wire_format = endpoint.wire_api
        self.scan_api = endpoint.scan_api
        self.targets: tuple[Target, ...] = ()
        #: the request's scanned fields and its body as every target gets it (before the
        #: model rewrite): set once the request is admitted
        self.fields: scan.RequestFields | None = None
        self.base_body = b""
        self.reservation: Reservation | None = None
        #: the synchronous settle of the complete response, under way from its completion
        #: (``_complete``) on: awaited before the held-back end is sent
        self.billing: asyncio.Future[Any] | None = None
        #: started without a task (``start``): the write's callback ends the response
        self.finish_in_callback = False
        self.token_digest = ""
        self.user_id: str | None = None
        self.token_id: str | None = None
        #: state_storage: records the Responses answer (plano_fast.responses_managed)
        self.state_turn: ManagedTurn | None = None

    # -- phases -----------------------------------------------------------------------
    def start(self) -> Coroutine[Any, Any, None] | None:
        """Identify, route and forward now when nothing has to be awaited first (no hard
        limit to reserve against, no rate limit backend, no stored Responses state):
        then no task carries the request (``forward_now``, as firewall mode does) and the
        held-back end is released by the write's callback (``_billed``).  Otherwise the
        coroutine ``_run_awaited`` does it all, awaiting what it must.  Compiled where
        built for a plain request (``plano_fast/gateway/_managed.pyx``: a known token with
        a pipe, no hard limit, no guardrails or rate limits, chat completions or messages,
        the first target's circuit closed; ``start_py`` is this twin)."""
        try:
            fields = self._identify()
            if (self.ctx.ratelimits is not None or self.mctx.state.hard_limited(self.project_id, self.user_id)
                    or (self.endpoint is RESPONSES and self.ctx.responses_state is not None)):
                return self._run_awaited(fields)
            body, _ = self._with_ceiling(fields, self.request.body)
        except GatewayError as exc:  # a refusal of this request: its access-log line
            self.refused(exc)
            raise
        self._first_attempt(fields, body)
        self.finish_in_callback = True
        opening = self.forward_now()
        if opening is None:
            return None
        # A connection must be opened first: a task after all, which ends the response
        # itself (nothing can have completed before it starts).
        self.finish_in_callback = False
        return self._finish_after(opening)

    async def _finish_after(self, forwarding: Coroutine[Any, Any, None]) -> None:
        await forwarding
        if self.billing is not None:
            await self._bill_and_finish()

    def _identify(self) -> scan.RequestFields:
        """The token, its pipe, the request's fields and the targets serving its model
        (a GatewayError refuses the request)."""
        state = self.mctx.state
        if not state.ready:
            raise ServiceUnavailable("the gateway has not loaded its tokens yet")
        request = self.request
        client = self.client  # (read by dispatch, which tells a token from a provider key)
        if client is None:
            client = client_headers(self)
        credential = client.credential
        key = credential.secret if credential is not None else None
        if key is None or not key.startswith(_TOKEN_PREFIX_BYTES):
            raise Unauthorized("an xproxy_ token is required")
        # key_hash: SHA-256 hex, memoized without holding the token (firewall mode's; ~5k
        # instructions a request saved).  The memo only maps a token to its digest: the
        # token itself is looked up in the state's current tokens on every request, so a
        # revocation or expiry applies exactly as before.
        digest = self.token_digest = key_hash(key)
        token = state.lookup(digest, time.time_ns())
        if token is None:
            raise Unauthorized("this token is invalid, revoked or expired")
        pipe = state.pipe_for(token)
        if pipe is None:
            raise ClientError("this token's project has no pipe to route it")
        if self.endpoint is RESPONSES:
            refuse_background(request.body)  # its cost could not be settled
            # the provider's stored state is one pool for every project (the operator's key)
            refuse_unowned_state(request.body, self.ctx.responses_state is not None)
        else:
            if self.endpoint is MESSAGES:
                refuse_container_reuse(request.body)  # another request's container: the same pool
            refuse_stored_files(request.body)  # the operator's account's files: the same pool
        try:
            fields = scan.scan_request(request.body)
        except scan.ScanError as exc:
            raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
        self.requested_model = fields.model
        if self.ctx.guardrails is not None:
            self.project_id = token.project_id  # (its project's guardrail overrides apply)
            guard(self, GUARD_FORMATS[self.endpoint.name], None, scanned=True)
        targets = _route(pipe, fields.model, self.endpoint)
        if not targets:
            allowed = ", ".join(pipe.allowed_models()) or "none"
            raise ClientError(
                f"model '{fields.model}' is not served by pipe '{pipe.pipe.name}'; "
                f"allowed models: {allowed}"
            )
        self.targets = targets
        self.project_id = token.project_id
        self.user_id = token.user_id
        self.token_id = token.id
        self.streaming = fields.stream
        self.body_filter = HoldTerminal(fields.stream)
        return fields

    def _with_ceiling(self, fields: scan.RequestFields, body: bytes) -> tuple[bytes, int]:
        """``body`` with the configured output ceiling inserted when the client set no
        bound, and the bound the reservation counts."""
        if self.endpoint is COUNT_TOKENS:
            # Counting tokens is free: no ceiling is sent (the endpoint takes no max_tokens)
            # and nothing is reserved (``_reserve``); 1 is no output ceiling of 0.
            return body, 1
        max_out = fields.max_output_tokens
        if max_out is None:
            max_out = self.mctx.max_output_tokens
            body = _with_max_tokens(body, self.endpoint, max_out, self.targets[0].provider.provider)
        return body, max_out

    def _first_attempt(self, fields: scan.RequestFields, body: bytes) -> None:
        self.fields = fields
        self.base_body = body
        circuit = self.circuit = self._target_circuit(0)
        self._prepare_target(0 if circuit.opened_at is None else self._first_target())

    async def _run_awaited(self, fields: scan.RequestFields) -> None:
        """The request when something must be awaited before it is forwarded: the rate
        limit backend, the stored Responses state, the reservation of a hard limit."""
        request = self.request
        try:
            if self.ctx.ratelimits is not None:  # plano_fast's per-project / per-token limits
                await admit_awaited(self, (fields.model,), self.token_digest)
            body = request.body
            if self.endpoint is RESPONSES and self.ctx.responses_state is not None:
                # previous_response_id expanded before the reservation: it counts the history
                waiting = self.ctx.waiting
                self.ctx.waits(self)  # (a stop while the state store answers is a 503: stop_waiting)
                try:
                    body, self.state_turn = await expand_managed(
                        self.ctx.responses_state, body, managed_owner(self.project_id, self.user_id), fields.stream
                    )
                finally:
                    waiting.pop(self, None)
            body, max_out = self._with_ceiling(fields, body)
            if max_out < 1 and self.mctx.state.hard_limited(self.project_id, self.user_id):
                # Gemini reads maxOutputTokens 0 as unset (proto3's default): the provider's
                # own ceiling then applies, and a reservation of 0 output bounds nothing.
                raise ClientError(
                    "an output token ceiling of 0 (max_tokens, max_completion_tokens, max_output_tokens "
                    "or maxOutputTokens) is refused under a hard budget: set it to at least 1"
                )
            try:
                self.reservation = await self._reserve(body, max_out, fields.model)
            except BudgetHeld as exc:
                self.ctx.metrics.error("budget")  # answered here, not by the server: count it too
                self.refused(exc)
                payload = exc.body(request.api_format)
                self.responder.send_head(exc.status, (
                    (b"content-type", b"application/json"),
                    (b"retry-after", str(exc.retry_after_s).encode()),
                    (b"x-plano-request-id", self.request_id.encode()),
                ), len(payload))
                self.responder.send_body(payload)
                self.responder.end()
                return
        except GatewayError as exc:  # a refusal of this request: its access-log line
            self.refused(exc)
            raise
        self._first_attempt(fields, body)
        try:
            await self.forward()  # retries and failover within (plano_fast.gateway.retrying)
            if self.billing is not None:
                await self._bill_and_finish()
        finally:
            if self.reservation is not None and not self.client_left:
                # Errors, failover exhaustion: give the reservation back.  A client gone
                # mid-response keeps it until its response is read (``_sink_left``).
                self.mctx.release_soon(self.reservation)
                self.reservation = None

    async def _reserve(
        self, body: bytes, max_out: int, client_model: str | None
    ) -> Reservation | None:
        if self.endpoint is COUNT_TOKENS:
            return None  # free: no usage to settle (recorded not_billable, as in config mode)
        state = self.mctx.state
        now = time.time_ns()
        budget_targets = []
        for scope in (("project", self.project_id), ("user", self.user_id)):
            if scope[1] is None:
                continue
            for limit in state.hard_limits.get((scope[0], scope[1]), ()):
                budget_targets.append(BudgetTarget(
                    limit.scope_kind, limit.scope_id, limit.period,
                    period_start(limit.period, now), limit.limit_nano_usd,
                ))
        if not budget_targets:
            return None
        try:
            input_bound, output_bound, pinned_tier = request_bound(body, max_out)
        except UnboundedContent as exc:
            raise ClientError(
                f"this request's cost cannot be bounded, so its hard budget cannot be enforced: "
                f"{exc}; send it without that, or use a key without a hard limit"
            ) from None
        worst = 0
        worst_tier: str | None = None  # the service tier that priced ``worst`` (None: standard)
        # The input priced as plain input and, where the provider bills prompt-cache
        # writes above it (Anthropic: 1.25x for 5 minutes, 2x for 1 hour), as all cache
        # writes of either kind: the dearest of the three (row convention: writes are a
        # part of the input); each at every service tier the answer may name (the row is
        # billed at it: an OpenAI project set to priority serves ``auto`` at priority),
        # plano_fast.managed.bounds.  Priced by ``price_tokens`` on the entry the row will be
        # priced with (``price_for``: custom, else the table's), as billing does, without a
        # TokenCounts and a Quote per variant (benchmarks/bench_reserve_bound.py).  The output
        # at each rate the entry has for it (``output_parts``): a model that draws or speaks
        # (gemini-2.5-flash-image: $30 per 1M image tokens against $2.50 for text) may spend
        # the whole output bound on images or audio without the body asking for them.
        variants = ((0, 0), (input_bound, 0), (input_bound, input_bound))  # (cache writes, of which 1h)
        pricing = self.mctx.pricing
        for target in self.targets:
            model = target.model or client_model
            provider = target.provider.provider
            if model and searches_on_every_call(model):
                raise ClientError(
                    f"model '{model}' searches the web on every call, billed per call beside its "
                    "tokens, so its hard budget cannot be enforced; use a key without a hard limit"
                )
            price = pricing.price_for(provider, model or "", self.project_id)
            if price is None:
                raise BudgetExceeded(
                    f"no price is known for model '{model}', so its hard budget cannot be "
                    "enforced; set a custom price for it"
                )
            outputs = output_parts(price, output_bound)
            for tier in tiers_it_may_be_billed_at(pinned_tier, price.service_tiers):
                for cache_write, cache_write_1h in variants:
                    for audio_out, image_out in outputs:
                        cost = price_tokens(price, input_bound, output_bound, 0, cache_write, cache_write_1h,
                                            aout=audio_out, service_tier=tier, iout=image_out)[0]  # fmt: skip
                        if cost > worst:
                            worst = cost
                            worst_tier = tier
        mctx = self.mctx
        # The store's answer is awaited under a shield, in a task of the context's: a stop
        # (or the client leaving) cancels this wait, never the reservation half-taken --
        # one granted after it is given back (``give_back_if_granted``), and the stop
        # waits for that (``Gateway._stop_managed``).
        call = mctx.spawn(mctx.store.reserve(budget_targets, worst, ttl_s=mctx.reservation_ttl_s, owner=mctx.owner))
        waiting = self.ctx.waiting
        self.ctx.waits(self)  # (a stop while the store decides answers 503: stop_waiting)
        try:
            reservation = await asyncio.shield(call)
        except asyncio.CancelledError:
            mctx.spawn(mctx.give_back_if_granted(call))
            raise
        except Exception as exc:  # noqa: BLE001 - fail closed
            log.warning("budget reservation failed: %s", type(exc).__name__)
            raise ServiceUnavailable("budget state is unavailable; try again") from None
        finally:
            waiting.pop(self, None)
        if reservation is None:
            # the bound was priced at a tier the provider may pick: say so, and how to pin
            at_tier = "" if worst_tier is None else (
                f" (at the '{worst_tier}' service tier, which the provider may serve a request at "
                "when its body does not pin one; 'service_tier': 'default' is reserved at the "
                "standard prices)"
            )
            if await self._held_by_in_flight(budget_targets, worst):
                raise BudgetHeld(
                    f"spending limit held by requests in flight: this request may cost up to "
                    f"${worst / 1e9:.6f}{at_tier}, which fits the limit but not what in-flight "
                    "requests have reserved; retry shortly"
                )
            raise BudgetExceeded(
                f"spending limit reached: this request may cost up to ${worst / 1e9:.6f}{at_tier}, "
                "more than the remaining budget"
            )
        return reservation

    async def _held_by_in_flight(self, targets: list[BudgetTarget], amount: int) -> bool:
        """Whether the refusal is only the in-flight reservations' doing: every limit
        would fit ``amount`` on its spend alone (one read per limit, on refusals only)."""
        try:
            for t in targets:
                counter = await self.mctx.store.get_counter(t.key)
                spent = counter.spent_nano_usd if counter is not None else 0
                if spent + amount > t.limit_nano_usd:
                    return False
        except Exception:  # noqa: BLE001 - cannot tell: the plain refusal
            return False
        return True

    # -- the pipe's targets on the failover engine (plano_fast.gateway.retrying) ---------
    def _first_target(self) -> int:
        """The first target's circuit has opened: the target of the first attempt is the
        first one if it may be probed, else the plan is built now and its first available
        target goes first (the first one when all are open)."""
        now = self.ctx.pool.loop.time()
        if self._target_circuit(0).allow(now):
            return 0
        plan = self.plan = self._late_plan()
        circuits = [self._target_circuit(i) for i in range(len(self.targets))]
        first = next((i for i, c in enumerate(circuits) if c.available(now)), 0)
        if first:
            plan.index = first
            circuit = self.circuit = circuits[first]
            circuit.allow(now)
            self.ctx.failovers_total += 1
        return first

    def _late_plan(self) -> RetryPlan[Target]:
        """Built at the first failure (or an open first circuit), never on a request the
        first target serves.  Its clock starts when the request arrived."""
        targets = self.targets
        loop_now = self.ctx.pool.loop.time()
        started_s = loop_now - (time.time_ns() - self.started_ns) / 1e9
        policy = self.mctx.retry_policy or pipe_policy(len(targets))
        return RetryPlan(targets, [t.provider.provider for t in targets], policy, started_s, JITTER_RNG)

    def _target_circuit(self, index: int) -> CircuitBreaker:
        target = self.targets[index]
        key = (target.provider.name, target.model or self.requested_model or "", target.key_id)
        circuit = self.ctx.circuits.get(key)  # (inline: once per request)
        return circuit if circuit is not None else self.ctx.circuit_for(*key)

    def _prepare_target(self, index: int) -> None:
        target = self.targets[index]
        fields = self.fields
        assert fields is not None
        provider = target.provider
        upstream_model = target.model or fields.model
        self.model = upstream_model
        self.provider_id = provider.provider
        path = upstream_path(provider, self.endpoint, upstream_model)
        assert path is not None
        inject = (fields.stream and self.endpoint is CHAT_COMPLETIONS
                  and fields.include_usage is not True)
        rewritten = self.base_body
        if inject or upstream_model != fields.model:
            # (with nothing to change, rewrite_request would walk the body -- ~3.3k
            # instructions -- to return it as is: scan_request has checked the client's
            # body, and the ceiling's insertion keeps it valid JSON; as config mode does)
            rewritten = scan.rewrite_request(
                rewritten,
                model=upstream_model if upstream_model != fields.model else None,
                inject_include_usage=inject,
            )
        # (count_tokens answers a count, not a usage: no scanner, the row not_billable)
        self.scanner = None if self.endpoint is COUNT_TOKENS else scan.UsageScanner(self.scan_api, fields.stream, inject)
        # (count_tokens is Anthropic's native API too: its x-api-key, not the chat bearer)
        native = self.endpoint is MESSAGES or self.endpoint is COUNT_TOKENS
        auth = self.operator_auth = target.messages_auth if native else target.chat_auth
        client = self.client
        if client is None:
            client = client_headers(self)
        self.upstream_data = upstream_request(
            client, self.request_id, [self.request.method, b" ", path], provider, auth,
            rewritten,
        )
        self.origin = provider.origin  # (origin_of without an egress address, inline)

    # -- sink overrides ---------------------------------------------------------------
    def on_upstream_body(self, data: bytes) -> None:
        if self.state_turn is not None and not self.swallow:
            scanner = self.scanner
            if type(scanner) is DecodingScanner:  # a coded answer: the state reads it decoded
                scanner.tap = self.state_turn.feed
            else:
                self.state_turn.feed(data)  # state_storage: the raw answer, before the relay
        super().on_upstream_body(data)

    def _complete(self, outcome: str) -> None:
        """The synchronous settle step: the row goes to the store as soon as the upstream
        response is complete, from the upstream connection's callback; the held-back end
        of the response is sent once it is written: by ``_billed`` (the write's done
        callback) when no task carries the request, else by the task's
        ``_bill_and_finish``.

        Started here rather than when a task resumes: the write of a lone request
        (SQLite) then runs in the loop turn that wakes the task, which finds it done
        instead of waiting a turn for the writer and another for its answer (issue 27,
        concurrency 1); and the task-free path has no task to start it.  With no other
        answer under way the store writes it before ``write`` returns (SQLite), and the
        task-free path sends the end here, in this callback, after the commit.  The row
        is the writer's (or the settle task's) from here: a client leaving cancels only
        a wait.  Compiled where built for an answer without a reservation
        (``plano_fast/gateway/_managed.pyx``; ``complete_py`` is this twin)."""
        self.outcome = outcome
        event = self._event(outcome, self.status)
        self.observe(event)
        reservation, self.reservation = self.reservation, None
        row = row_of_event(self.mctx.pricing, event)
        billing: asyncio.Future[Any]
        if reservation is None:
            # The writer owns the row now: a client leaving cancels only the wait.  With
            # no other answer under way (no upstream connection busy: concurrency 1) the
            # row is written at once when the store can (the future comes back done).
            # The task-free path's end goes in the writer's step once it is written.
            writer = self.mctx.writer
            # (the writer's own test first: it is busy for most answers under load, and the
            # pool's busy_count is a property that walks its idle lists)
            alone = writer.idle and writer.writes_now and self.ctx.pool.busy_count == 0
            then = self._billed if self.finish_in_callback else None
            billing = self.billing = writer.write(row, event, alone, then)
            if then is not None and billing.done():
                self._billed(billing)  # written already: the end goes now, not a turn later
            return
        billing = self.billing = self._settle_now_or_soon(row, event, reservation)
        if self.finish_in_callback:
            if billing.done():
                self._billed(billing)  # written already: the end goes now, not a turn later
            else:
                billing.add_done_callback(self._billed)

    def _billed(self, billing: asyncio.Future[Any]) -> None:
        """A request started without a task: its row is written (or handed to the
        journaled path), so the held-back end goes out -- unless the client has left.
        Compiled where built (``plano_fast/gateway/_managed.pyx``; ``billed_py``)."""
        if self.client_left or not self.responder.client_connected:
            return
        self._release_end()

    def _settle(self, outcome: str, http_status: int) -> None:
        # Failures (no response, client gone): asynchronous billing, reservation released.
        if self.outcome:
            return
        self.outcome = outcome
        event = self._event(outcome, http_status)
        reservation = self.reservation
        # The provider received the request and sent nothing within the first-byte timeout:
        # it may be generating the answer still (a provider bills a request its client
        # left), so it is charged like a 2xx answer without usage, not as nothing.
        unanswered = outcome == STATUS_UPSTREAM_FAILED and self.error_kind == "timeout"
        if reservation is not None and (unanswered or incomplete_answer(outcome, http_status)):
            # A 2xx answer cut short: settled at its bound (row_within_reservation).
            self.reservation = None
            self.mctx.spawn(self._settle_reservation(
                row_of_event(self.mctx.pricing, event), event, reservation, unanswered))
        else:
            self.ctx.usage_sink(event)
        self.observe(event)
        if self.client_left and self.reservation is not None:
            self.mctx.release_soon(self.reservation)
            self.reservation = None

    def _sink_left(self, event: UsageEvent) -> None:
        """A departed client's response was read (or given up on): its usage, or the
        estimate, settles the reservation like a completed request's."""
        event.user_id = self.user_id
        event.token_id = self.token_id
        row = row_of_event(self.mctx.pricing, event)
        reservation, self.reservation = self.reservation, None
        if reservation is None:
            self.mctx.writer.write(row, event)  # the writer owns the row from here
        else:
            self.mctx.spawn(self._settle_reservation(row, event, reservation))

    def _event(self, outcome: str, http_status: int) -> UsageEvent:
        event = self.make_event(outcome, http_status)
        event.user_id = self.user_id
        event.token_id = self.token_id
        return event

    async def _bill_and_finish(self) -> None:
        billing = self.billing
        assert billing is not None
        if isinstance(billing, asyncio.Task):
            await asyncio.shield(billing)  # cancelling the wait must not cancel the settle
        else:
            await billing
        self._release_end()

    def _release_end(self) -> None:
        if self.state_turn is not None:
            self.state_turn.complete(self.status, self.model, self.provider_id)
        body_filter = self.body_filter
        assert isinstance(body_filter, HoldTerminal)
        body_filter.release(self.responder)
        self.responder.end()

    def _failed(
        self, status: int | None, retry_after: float | None, kind: str, target_fault: bool = True
    ) -> bool:
        """As the retry engine decides, but an attempt the provider never answered within
        the first-byte timeout is not followed by another under a hard limit: the provider
        may be generating (and billing) it still, and the reservation bounds one attempt,
        not two.  The request then ends in the 504, charged at its reservation (``_settle``),
        and the timeout counts against the target's circuit as any failure does (it did not
        before 2026-12-06: a target that timed out every request under a hard limit was
        never skipped)."""
        if kind == "timeout" and self.reservation is not None:
            circuit = self.circuit
            if circuit is not None and not (self.responder.head_sent or self.outcome or self.client_left):
                circuit.record_failure(self.ctx.pool.loop.time())
            return False
        return RetryingExchange._failed(self, status, retry_after, kind, target_fault)

    def _output_bound(self) -> int:
        """The output tokens the reservation counted (re-derived from the forwarded body:
        asked only to bound an answer whose usage was missing or cut short)."""
        fields = self.fields
        if fields is None:
            return 0
        max_out = fields.max_output_tokens
        return token_bound(self.base_body, self.mctx.max_output_tokens if max_out is None else max_out)[1]

    def _settle_now_or_soon(self, row: UsageRow, event: UsageEvent, reservation: Reservation) -> asyncio.Future[Any]:
        """The settlement of a complete answer: done before this returns when the store
        can without waiting (``Store.settle_now``: SQLite's hot connection, idle), the
        future then done; else a task of the context's, which a client leaving must not
        cancel.  The same transaction either way (the row, the spend, the release)."""
        mctx = self.mctx
        row = self._bounded_row(row, event, reservation)
        try:
            settled = mctx.store.settle_now(reservation, row)
        except Exception as exc:  # noqa: BLE001 - never lose the row: the journaled path
            self._settle_failed(exc, row, event, reservation)
            settled = False
        if settled is None:
            return mctx.spawn(self._settle_in_store(row, event, reservation))
        done: asyncio.Future[Any] = self.ctx.pool.loop.create_future()
        done.set_result(None)
        return done

    async def _settle_reservation(
        self, row: UsageRow, event: UsageEvent, reservation: Reservation, unanswered: bool = False
    ) -> None:
        await self._settle_in_store(self._bounded_row(row, event, reservation, unanswered), event, reservation)

    def _bounded_row(
        self, row: UsageRow, event: UsageEvent, reservation: Reservation, unanswered: bool = False
    ) -> UsageRow:
        """The row as it settles ``reservation``: an answer cut short (or ``unanswered``:
        row_within_reservation) at its bound, an overrun (the bound did not hold) on the
        row, counted and logged."""
        row = row_within_reservation(self.mctx.pricing, row, event, reservation.amount_nano_usd,
                                     self._output_bound, self.mctx.writer.metrics, unanswered)
        overrun = (row.cost_nano_usd or 0) - reservation.amount_nano_usd
        if overrun > 0:
            # The bound did not hold (a provider billed what the request could not show):
            # on the row, counted and logged, so an operator sees the hole.
            row.reservation_overrun_nano_usd = event.reservation_overrun_nano_usd = overrun
            self.mctx.writer.metrics.reservation_overruns += 1
            self.mctx.writer.metrics.reservation_overrun_nano_usd += overrun
            log.warning("request %s cost %d nano-USD, more than the %d reserved (%s %s)",
                        row.request_id, row.cost_nano_usd, reservation.amount_nano_usd, row.provider, row.model)
        return row

    async def _settle_in_store(self, row: UsageRow, event: UsageEvent, reservation: Reservation) -> None:
        try:
            await self.mctx.store.settle(reservation, row)
        except asyncio.CancelledError:
            # Stopped past its bound while the store hangs: the row is queued (journaled at
            # stop) and the settle kept for the stop to finish or keep on disk
            # (``Gateway._finish_settles``): the reservation stays held until its row's cost
            # is on the counters, never released to the sweepers before.
            self.mctx.unsettled[reservation.id] = (reservation, row)
            self.ctx.usage_sink(event)
            raise
        except Exception as exc:  # noqa: BLE001 - never lose the row: the journaled path
            self._settle_failed(exc, row, event, reservation)

    def _settle_failed(self, exc: Exception, row: UsageRow, event: UsageEvent, reservation: Reservation) -> None:
        """The row journaled, and the settle retried in the background: the reservation is
        held until the row's cost is on the counters (``ManagedContext.settle_soon``)."""
        log.error("synchronous billing failed (%s); usage queued", type(exc).__name__)
        self.ctx.usage_sink(event)
        self.mctx.settle_soon(reservation, row)


#: routes kept per pipe (``ResolvedPipe.routes``): model names are the client's to choose
ROUTES_PER_PIPE = 256
#: longer model names are routed without the cache (never held in it)
ROUTE_MODEL_MAX_CHARS = 256


def _route(pipe: ResolvedPipe, model: str | None, endpoint: Endpoint) -> tuple[Target, ...]:
    """The pipe's targets that serve ``model`` at ``endpoint``, in order.  Computed once
    per (model, endpoint) of a pipe and kept on it: a client sends the same few models,
    and each request walked every target (its model filter, its upstream path) to find
    the same answer (issue 27).  Bounded: at most ``ROUTES_PER_PIPE`` entries (then
    cleared), none for a model name over ``ROUTE_MODEL_MAX_CHARS``."""
    key = (model, endpoint.name)
    routes = pipe.routes
    found = routes.get(key)
    if found is None:
        found = tuple(t for t in pipe.candidates(model) if upstream_path(t.provider, endpoint, t.model or model))
        if model is None or len(model) <= ROUTE_MODEL_MAX_CHARS:
            if len(routes) >= ROUTES_PER_PIPE:
                routes.clear()
            routes[key] = found
    return found


class HoldTerminal:
    """Managed mode's body filter: relays as it comes, but holds back the terminal event
    of a stream (the last piece of a JSON body) until billing is done (``release``)."""

    __slots__ = ("streaming", "held", "terminal")

    rebuilds_head = False

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming
        self.held = b""
        self.terminal = False

    def head(self, responder: Responder, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        raise AssertionError("HoldTerminal relays the upstream's head as it is")

    def read_done(self, responder: Responder) -> None:
        # A JSON answer's first piece is held until billing is done: the head alone would
        # cost a send() of its own, so it waits to leave with the body (later pieces of
        # a large body still flush as they come: memory stays bounded).
        if self.streaming or responder.bytes_sent:
            responder.flush()

    def relay(self, data: bytes, responder: Responder) -> None:
        """Send as it comes, but hold back the terminal event until billing is done."""
        if not data:
            return
        if self.terminal:
            self.held += data
            return
        if not self.streaming:
            # A JSON body: hold the latest piece (the client needs the whole body anyway).
            if self.held:
                responder.send_body(self.held)
            self.held = data
            return
        data = self.held + data if self.held else data
        self.held = b""
        for marker in TERMINAL_MARKERS:
            at = data.find(marker)
            if at >= 0:
                responder.send_body(data[:at])
                self.held = data[at:]
                self.terminal = True
                return
        # A marker split across reads: keep a trailing partial line that could start one.
        cut = data.rfind(b"\n") + 1
        partial = data[cut:]
        if partial and any(m.startswith(partial) for m in TERMINAL_MARKERS):
            responder.send_body(data[:cut])
            self.held = partial
        else:
            responder.send_body(data)

    def finish(self, responder: Responder, tail: bytes) -> None:
        self.held += tail

    def undecodable_coding(self) -> None:
        """The answer comes in a coding the gateway cannot decode (``br``, ``zstd``; gzip and
        deflate are decoded before this filter: plano_fast.gateway.coded_answer): a
        stream's terminal event cannot be found in its bytes, so the latest piece is held
        until billing is done, as a JSON body's is (the body's end waits for the row)."""
        self.streaming = False

    def release(self, responder: Responder) -> None:
        """Billing is done: what was held goes to the client (the caller ends)."""
        if self.held:
            responder.send_body(self.held)
            self.held = b""


#: (endpoint name, provider is openai, ceiling) -> _ceiling's answer: a few entries (the
#: ceiling is the configured one), computed once instead of formatted per request
_CEILINGS: dict[tuple[str, bool, int], tuple[str, bytes, bytes]] = {}


def _ceiling(endpoint: Endpoint, provider: str, max_tokens: int) -> tuple[str, bytes, bytes]:
    """The bound's member name, its JSON-quoted bytes and the member ``"name":N``."""
    name = "max_output_tokens" if endpoint.name == "responses" else "max_tokens"
    if endpoint is CHAT_COMPLETIONS and provider == "openai":
        name = "max_completion_tokens"  # OpenAI's reasoning models refuse max_tokens
    quoted = b'"%s"' % name.encode()
    return name, quoted, b"%s:%d" % (quoted, max_tokens)


def _with_max_tokens(body: bytes, endpoint: Endpoint, max_tokens: int, provider: str) -> bytes:
    """Insert the output ceiling so the reserved bound is one the provider enforces.

    Managed mode only, and only when the client set no bound.  When the field's name is
    nowhere in the body and no key can be spelled with a ``\\u`` escape, the member is
    inserted as bytes after the opening brace (no duplicate key can result); otherwise
    (a ``null`` bound, an escaped key) the body is parsed and re-encoded, so the value
    the provider reads is certainly this one.
    """
    key = (endpoint.name, provider == "openai", max_tokens)
    ceiling = _CEILINGS.get(key)
    if ceiling is None:
        ceiling = _CEILINGS[key] = _ceiling(endpoint, provider, max_tokens)
    name, quoted, member = ceiling
    # (bytes.find, not ``in``: ``in`` takes the buffer protocol's path, ~2x the time on a
    # small body; this runs on every managed request that sets no bound, issue 27)
    start = len(body) - len(body.lstrip())
    if body.find(quoted) < 0 and body.find(b"\\u") < 0 and body[start : start + 1] == b"{":
        rest = body[start + 1 :]
        sep = b"" if rest.lstrip().startswith(b"}") else b","
        return b"".join((body[: start + 1], member, sep, rest))
    doc = json.loads(body)
    doc[name] = max_tokens
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


start_py = ManagedExchange.start
aim_py = ManagedExchange.aim
complete_py = ManagedExchange._complete
billed_py = ManagedExchange._billed
install_compiled(
    ManagedExchange, "plano_fast.gateway._managed", start="start", aim="aim", _complete="complete", _billed="billed"
)
