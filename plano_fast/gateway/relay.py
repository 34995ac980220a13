"""The relay: one forwarded request from the upstream pool to the client and its settle.

A mode module (plano_fast.gateway.modes) identifies, admits, routes and rewrites a request
into the exchange's upstream request (``origin``, ``upstream_data``, scanner, body filter);
this module executes it: forward through the pool -> relay and observe the response ->
settle a usage event.  The protocol below it owns bytes; the pool owns connections.

Relaying happens in callbacks (``on_upstream_*``) invoked from the upstream connection's
``data_received``: a response chunk goes from one socket to the other in the same loop
iteration, passing through the usage scanner, which only looks unless it has to strip the
usage-only chunk the gateway itself asked for, and the body filter, when there is one
(format conversion; managed mode's held-back terminal event).

``start`` runs synchronously from the server's parser callback.  When the pool has an idle
connection (the steady state) the request is written at once and the exchange lives on in
those callbacks: no task, no coroutine, no future.  Only when it must wait -- open a
connection, retry on a fresh one, reserve budget (managed mode) -- does it return a
coroutine, which the server runs as a task.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from plano_fast import guardrails
from plano_fast import wire as scan
from plano_fast.errors import GatewayError, ProviderCredentialRejected, ServiceUnavailable, UpstreamError
from plano_fast.gateway import operator_key
from plano_fast.gateway.coded_answer import (
    CodingError,
    DecodedFilter,
    DecodedScanner,
    DecodingScanner,
    content_coding,
    decodable,
    without_content_encoding,
)
from plano_fast.credentials import ClientHeaders
from plano_fast.access_log import AccessLog
from plano_fast.ratelimit import Bucket, RateLimits, with_header_pairs, with_headers
from plano_fast import spans  # (its end_attempt / end_server: compiled where built)
from plano_fast.twins import install_compiled
from plano_fast.metrics import RequestMetrics, provider_error_type
from plano_fast.responses_state import ResponseStore
from plano_fast.failover import CircuitBreaker, RetryPlan, RetryPolicy, attempt_trail
from plano_fast.upstream import Header, Origin, UpstreamConnection, UpstreamHead, UpstreamPool
from plano_fast.usage_estimate import ContentMeter, capped, tokens_of_bytes
from plano_fast.usage import (
    STATUS_CLIENT_ABANDONED,
    STATUS_CLIENT_GONE,
    STATUS_CLIENT_GONE_ESTIMATED,
    STATUS_GATEWAY_STOPPED,
    STATUS_NOT_BILLABLE,
    STATUS_OK,
    STATUS_UPSTREAM_ERROR,
    STATUS_UPSTREAM_FAILED,
    STATUS_USAGE_MISSING,
    USAGE_API_NAMES,
    UsageEvent,
    UsageSink,
    new_usage_event,
)

if TYPE_CHECKING:
    from plano_fast.gateway.hedge import Hedge
    from collections.abc import Coroutine

    from plano_fast.spans import TraceSpan as Span
    from plano_fast.tracing import Tracing

    from plano_fast.billing.budget import BudgetChecker
    from plano_fast.filter_chain import FilterChains
    from plano_fast.guard_models import Guards
    from plano_fast.response_guard import ResponseChecks
    from plano_fast.key_registry import ApiKeyRegistry
    from plano_fast.http_server import Request, Responder
    from plano_fast.preference_routing import PreferenceRouter
    from plano_fast.routing import Router

#: A request id that cannot collide: 128 random bits drawn once per process (and per fork),
#: then a counter (``<32 hex digits>-<counter in hex>``).  Two ids can only meet if two
#: process starts draw the same 128 bits (probability about N^2 / 2^129 over N starts:
#: 10^-31 for a million), as strong as 128 random bits per request, without a getrandom()
#: call per request (measured 0.24 µs per id, against 0.68 µs for ``os.urandom(16).hex()``
#: and 4.5 µs for ``uuid4``).  Formatted in C (plano_fast.wire.RequestIds): ~0.7k
#: instructions an id, against ~2.6k for an f-string over an ``itertools.count``.
_REQUEST_IDS = scan.RequestIds(os.urandom(16).hex())
new_request_id = _REQUEST_IDS.next


def _new_request_prefix() -> None:
    """A forked child must not reuse its parent's prefix with a copy of its counter (reset
    in place: ``new_request_id``, imported by name elsewhere, stays bound to it)."""
    _REQUEST_IDS.reset(os.urandom(16).hex())


os.register_at_fork(after_in_child=_new_request_prefix)


#: outcomes counted in errors_total (plano_fast.metrics; Exchange.observe)
_FAILED_OUTCOMES = frozenset(
    (STATUS_UPSTREAM_FAILED, STATUS_UPSTREAM_ERROR, STATUS_CLIENT_GONE, STATUS_CLIENT_GONE_ESTIMATED)
)


_E = TypeVar("_E", bound="Exchange")


class BodyFilter(Protocol):
    """What stands between the upstream's body and the client's (None: pass-through).

    ``Conversion`` (cross-format: rebuilds the head, converts the body) and managed
    mode's ``HoldTerminal`` (relays, but holds the terminal event until billing is done).
    """

    #: the filter answers the head itself from the upstream's status and headers
    rebuilds_head: bool

    def head(self, responder: Responder, status: int, headers: list[Header]) -> None: ...

    def relay(self, data: bytes, responder: Responder) -> None: ...

    def read_done(self, responder: Responder) -> None: ...

    def finish(self, responder: Responder, tail: bytes) -> None: ...


#: circuit breakers kept per process (oldest forgotten first)
MAX_CIRCUITS = 4096


class ExchangeContext:
    """Shared, long-lived state every exchange needs (owned by the Gateway)."""

    __slots__ = (
        "router",
        "pool",
        "usage_sink",
        "timeouts",
        "registry",
        "budget",
        "gone_drain_s",
        "gone_drain_bytes",
        "draining",
        "waiting",
        "unbilled_paths",
        "unbilled_requests",
        "default_retry_policy",
        "circuits",
        "circuit_failure_threshold",
        "circuit_cooldown_s",
        "retries_total",
        "failovers_total",
        "requests_retried",
        "attempts_failed",
        "hedges_total",
        "hedges_won",
        "hedges_lost",
        "metrics",
        "request_metrics",
        "access_log",
        "tracing",
        "server_timing",
        "ratelimits",
        "guardrails",
        "responses_state",
        "preference",
        "guards",
        "filter_chains",
        "prechecks",
        "response_checks",
    )

    def __init__(
        self,
        router: Router,
        pool: UpstreamPool,
        usage_sink: UsageSink,
        timeouts: tuple[float, float, float],
        registry: ApiKeyRegistry | None = None,
        budget: BudgetChecker | None = None,
        gone_drain_s: float = 60.0,
        gone_drain_bytes: int = 16 * 1024 * 1024,
        unbilled_paths: frozenset[bytes] = frozenset(),
        default_retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.router = router
        self.pool = pool
        self.usage_sink = usage_sink
        #: (connect, first byte, idle between body chunks) in seconds, for exchanges whose
        #: target sets none of its own (a model provider's ``timeouts``): the config's
        #: ``upstream_timeouts``
        self.timeouts = timeouts
        self.registry = registry
        self.budget = budget
        #: after a client hangs up, its provider response is still read to the end (for the
        #: provider's own usage) for at most this long and this many bytes
        self.gone_drain_s = gone_drain_s
        self.gone_drain_bytes = gone_drain_bytes
        #: exchanges reading a response whose client left (ended at stop: ``give_up_drains``)
        self.draining: set[Exchange] = set()
        #: exchanges waiting in a task with nothing of theirs with a provider -- opening a
        #: connection, in a retry's backoff, at a guard model, an input filter, a router
        #: model, the Responses state store, (managed) the store's answer to a hard limit's
        #: reservation, a rate limit's Redis check -- and that task (None: a wait with no
        #: task of its own, the Redis check's reply callback of ``admitted_forward``):
        #: answered 503 at stop (``Exchange.stop_waiting``); entered around those waits
        #: only (``waits``), never on the path of a request sent on a pooled connection
        self.waiting: dict[Exchange, asyncio.Task[Any] | None] = {}
        #: firewall mode: exact paths forwarded unmetered (firewall_unbilled_paths)
        self.unbilled_paths = unbilled_paths
        self.unbilled_requests = 0
        #: listeners[].max_retries for providers without a retry_policy
        self.default_retry_policy = default_retry_policy
        #: health memory per target: (provider name, model, provider key id) -- the key id
        #: of a managed pipe's target, "" for the config's own keys (one per provider name)
        self.circuits: dict[tuple[str, str, str], CircuitBreaker] = {}
        #: plano_fast.circuit_failure_threshold / circuit_cooldown_s
        self.circuit_failure_threshold = 5
        self.circuit_cooldown_s = 30.0
        self.retries_total = 0
        self.failovers_total = 0
        #: client requests that needed more than one upstream attempt (every mode), and
        #: the attempts of theirs that failed and were followed by another
        self.requests_retried = 0
        self.attempts_failed = 0
        #: hedged attempts started (plano_fast.gateway.hedge) and those that won
        self.hedges_total = 0
        self.hedges_won = 0
        #: hedges sent and then cancelled, the request's own attempt having answered or
        #: failed first: the provider may bill them, and no usage row prices them
        self.hedges_lost = 0
        self.metrics = RequestMetrics()
        #: count each finished request in ``metrics`` (plano_fast.request_metrics)
        self.request_metrics = True
        #: one JSON line per request when plano_fast.access_log is set
        self.access_log: AccessLog | None = None
        #: plano_fast.tracing when the config has a tracing section
        self.tracing: Tracing | None = None
        #: add a Server-Timing header to relayed answers (plano_fast.server_timing)
        self.server_timing = False
        #: Plano's ratelimits (plano_fast.ratelimit), None when the config has none
        self.ratelimits: RateLimits | None = None
        #: the DLP floor (plano_fast.guardrails), None when not configured
        self.guardrails: guardrails.Policy | None = None
        #: Plano's state_storage: conversations of converted Responses requests
        self.responses_state: ResponseStore | None = None
        #: preference routing (plano_fast.preference_routing), None when not configured
        self.preference: PreferenceRouter | None = None
        #: guard models (plano_fast.guard_models), None when not configured
        self.guards: Guards | None = None
        #: Plano's input/output filters of the served listener (plano_fast.filter_chain)
        self.filter_chains: FilterChains | None = None
        #: guards or input filters: config-mode requests start with phases.checked_start
        self.prechecks = False
        #: response DLP and output filters (plano_fast.response_guard), None: nothing held
        self.response_checks: ResponseChecks | None = None

    def circuit_for(self, provider_name: str, model: str, key_id: str = "") -> CircuitBreaker:
        key = (provider_name, model, key_id)
        circuits = self.circuits
        circuit = circuits.get(key)
        if circuit is None:
            if len(circuits) >= MAX_CIRCUITS:
                del circuits[next(iter(circuits))]  # wildcard models are client-chosen: bounded
            circuit = circuits[key] = CircuitBreaker(self.circuit_failure_threshold, self.circuit_cooldown_s)
        return circuit

    def waits(self, exchange: Exchange) -> None:
        """``exchange`` waits, in the current task, with nothing of it upstream (see
        ``waiting``); the caller removes it when the wait is over (``waiting.pop``)."""
        task = asyncio.current_task()
        if task is not None:
            self.waiting[exchange] = task

    def give_up_drains(self) -> None:
        """At stop: every response still read for a departed client settles now."""
        for exchange in list(self.draining):
            exchange.give_up_drain()


class Exchange:
    """One forwarded request: the ResponseSink of its upstream connection.

    Subclasses implement ``run`` (identify, admit, route, rewrite) and then call
    ``forward``; relaying, retry and settling the usage event are shared.
    """

    __slots__ = (
        "ctx",
        "request",
        "responder",
        "origin",
        "provider_id",
        "wire_format",
        "model",
        "streaming",
        "scanner",
        "conn",
        "done",
        "status",
        "started_ns",
        "request_id",
        "attempts",
        "outcome",
        "upstream_data",
        "key_hash",
        "project_id",
        "scan_api",
        "client_left",
        "drain_left",
        "drain_timer",
        "content_meter",
        "client",
        "sent_ns",
        "head_ns",
        "endpoint_name",
        "span",
        "attempt_span",
        "rl_buckets",
        "rl_head",
        "guard_warning",
        "guard_names",
        "route_header",
        "route_name",
        "body_filter",
        "swallow",
        "requested_model",
        "timeouts",
        "failed_attempts",
        "error_kind",
        "plan",
        "next_attempt",
        "circuit",
        "hedge",
        "operator_auth",
    )
    drain_left: int
    drain_timer: asyncio.TimerHandle
    #: a departed client's streamed answer, metered for its output estimate (set only then)
    content_meter: ContentMeter | None

    #: the ``mode`` label of this exchange's metrics
    MODE = "config"

    def __init__(self, ctx: ExchangeContext, request: Request, responder: Responder) -> None:
        self.ctx = ctx
        self.request = request
        self.responder = responder
        self.started_ns = time.time_ns()
        # Always our own id: usage_log is unique on it, so a client-chosen id could make
        # two requests collapse into one billed row.
        self.request_id = new_request_id()
        self.status = 0
        self.attempts = 0
        self.outcome = ""
        self.conn: UpstreamConnection | None = None
        self.scanner: scan.UsageScanner | DecodedScanner | DecodingScanner | None = None
        self.model: str | None = None
        #: the model name the client asked for (an alias, say), where the gateway routes by
        #: it: on the usage row beside the model served (None: firewall mode routes nothing)
        self.requested_model: str | None = None
        self.streaming = False
        self.key_hash: str | None = None
        self.project_id: str | None = None
        self.provider_id = ""
        self.wire_format = "openai"
        self.upstream_data: list[bytes] = []
        self.origin: Origin = ("http", "", 0, None)
        self.scan_api = scan.API_OPENAI_CHAT
        #: the request's headers as read once (credential included); see phases.client_headers
        self.client: ClientHeaders | None = None
        #: wall-clock ns: the upstream request sent (last attempt), its response head
        self.sent_ns = 0
        self.head_ns = 0
        #: the ``endpoint`` label of this exchange's metrics
        self.endpoint_name = ""
        #: trace spans of a sampled request (plano_fast.tracing): server, current attempt
        self.span: Span | None = None
        self.attempt_span: Span | None = None
        #: the rate-limit buckets this request counts against (debited at settle)
        self.rl_buckets: Sequence[Bucket] | None = None
        #: the rate-limit header lines of an admitted response (``ratelimit_headers: always``)
        self.rl_head = b""
        #: guardrails: detectors whose action is warn (a response header), all that matched
        self.guard_warning = b""
        self.guard_names: list[str] | None = None
        #: preference routing: the x-model-router-selected-route line of the response head
        self.route_header = b""
        self.route_name: str | None = None
        #: resolved when the upstream response ends, on the awaiting path only
        self.done: asyncio.Future[bool] | None = None
        #: the client hung up and the response is read on for its usage (``_client_gone``)
        self.client_left = False
        #: between the upstream's body and the client's; None: relayed as it comes
        self.body_filter: BodyFilter | None = None
        #: the current attempt failed and its response is dropped (another one follows)
        self.swallow = False
        #: the gateway's own upstream credential (its header lines or pairs) when the key
        #: sent is the operator's, None when it is the client's (plano_fast.gateway.operator_key)
        self.operator_auth: operator_key.OperatorAuth | None = None
        #: (connect, first byte, idle) timeouts of the current target, in seconds
        self.timeouts = ctx.timeouts
        #: outcomes of the attempts that failed and were followed by another (None: no
        #: retry; the usage row's attempts and attempt_trail), and the error kind that
        #: ended the last one ("" when it got an answer)
        self.failed_attempts: list[str] | None = None
        self.error_kind = ""
        # The failover engine's (plano_fast.gateway.retrying; set here, not in a
        # constructor of its own, to spare every request a frame):
        #: retries and fallbacks (plano_fast.failover); None: none, or not built yet
        self.plan: RetryPlan[Any] | None = None
        #: (target index, seconds to wait, another target?) of the attempt that follows a
        #: failed one
        self.next_attempt: tuple[int, float, bool] | None = None
        #: the circuit breaker of the current attempt's target (None: none)
        self.circuit: CircuitBreaker | None = None
        #: a hedged request's second attempt (plano_fast.gateway.hedge)
        self.hedge: Hedge | None = None

    def start(self) -> Coroutine[Any, Any, None] | None:
        """Handle the request; a coroutine when it must wait (see the module docstring).

        Errors raised here (GatewayError) are answered by the server in the client's format.
        """
        return self.run()

    async def run(self) -> None:
        raise NotImplementedError

    def forward_now(self) -> Coroutine[Any, Any, None] | None:
        """Send on an idle pooled connection now; a coroutine when one must be opened.
        Compiled where built (``plano_fast/gateway/_forward.pyx``: ``take_idle``, ``_send``
        and ``send_request`` in one C call; ``forward_now_py`` is this twin)."""
        conn = self.ctx.pool.take_idle(self.origin)
        if conn is None:
            return self._forward()
        self.attempts = 1
        self.responder.on_client_gone = self._client_gone
        self._send(conn)
        return None

    async def forward(self) -> None:
        await self._forward()

    def _send(self, conn: UpstreamConnection) -> None:
        self.sent_ns = time.time_ns()
        if self.span is not None:
            self._trace_attempt()
        self.conn = conn
        self.responder.upstream = conn
        timeouts = self.timeouts
        conn.send_request(self.upstream_data, self, timeouts[1], timeouts[2])

    def _trace_attempt(self) -> None:
        """A sampled request's next upstream attempt: its span, and its traceparent sent
        upstream in place of the client's."""
        tracing = self.ctx.tracing
        assert tracing is not None and self.span is not None
        if self.attempt_span is not None:  # the previous attempt failed
            spans.end_attempt(self.attempt_span, self.status, "retried")
        span = self.attempt_span = tracing.start_attempt(self.span, self.provider_id, self.model)
        self.upstream_data[0] = tracing.upstream_head(self.upstream_data[0], span)

    def _client_gone(self, client_status: int = 0) -> None:
        """The client disconnected mid-exchange (``client_status``: the status the gateway
        answered it instead, the SIGTERM 503 of ``stop_unanswered``; 0: none, it left).

        Nothing forwarded yet: recorded as abandoned (not billed).  A billable response
        under way (2xx, an LLM endpoint): the relay stops but the response is read on to
        its end, bounded by ``gone_drain_s`` and ``gone_drain_bytes``, so the provider's
        own usage is recorded (``client_disconnected``); when it cannot be read to the end,
        an estimate is recorded instead, never zero (``_settle_left``).  Anything else (an
        error answer, a non-LLM path): dropped, as the provider bills nothing for it.
        """
        if self.client_left:
            return  # (told twice: the gateway's stop, then its cancelled task: stop_unanswered)
        conn = self.conn
        if conn is None:
            outcome = STATUS_CLIENT_ABANDONED if not self.status else STATUS_CLIENT_GONE
            self._settle(outcome, self.status or client_status)
            return
        if self.scanner is None or self.status >= 400 or self.outcome:
            conn.detach()
            self.conn = None
            self._settle(STATUS_CLIENT_GONE, self.status or client_status)
            return
        self.client_left = True
        self.drain_left = self.ctx.gone_drain_bytes
        self.content_meter = ContentMeter(self.scan_api, self.responder.bytes_sent > 0) if self.streaming else None
        self.drain_timer = self.ctx.pool.loop.call_later(self.ctx.gone_drain_s, self.give_up_drain)
        self.ctx.draining.add(self)
        conn.resume_reading()  # it may have been paused for the slow client

    def stop_unanswered(self) -> bool:
        """The gateway stops (SIGTERM) and ``drain_timeout_s`` is over while this request
        waits for its provider's first byte: settled as for a client gone at that moment
        (its row as before 2026-12-05: ``client_disconnected_estimated``, an estimate, the
        provider may be generating and billing the answer still), then the client gets a
        503 in its API's error shape with this exchange's id, and the connection closes
        after it (it was closed with no answer before).  The row's ``http_status`` is the
        503 the client got (it was 0 before 2026-12-06, the provider's none): what a hard
        limit charges is unchanged, as it reads a 2xx only.  False, nothing done, when the
        answer has begun (its head arrived, sent or held) or the exchange has ended."""
        responder = self.responder
        if self.status or self.outcome or self.client_left or responder.head_sent or responder.finished:
            return False
        # (on_client_gone, when set, is this exchange's _client_gone: called with the 503)
        responder.on_client_gone = None
        self._client_gone(ServiceUnavailable.status)
        self.give_up_drain(ServiceUnavailable.status)  # (the estimate now: the 503's bytes are no answer's)
        error = ServiceUnavailable(
            "the gateway is shutting down and the provider had not begun to answer; retry the request"
        )
        error.request_id = self.request_id
        error.close_connection = True
        responder.send_error(error, self.request.api_format)
        return True

    def stop_waiting(self, task: asyncio.Task[Any] | None) -> bool:
        """The gateway stops (SIGTERM) and ``drain_timeout_s`` is over while this request
        waits with nothing of it at a provider (``ExchangeContext.waiting``: opening a
        connection, in a retry's backoff, at a guard model, an input filter or a router
        model): its row
        ``gateway_stopped`` (nothing billed; the attempts that failed before on it, the
        one being opened not counted), then the client gets the 503 ``stop_unanswered``
        gives, with this exchange's id and ``Connection: close``, and ``task`` is
        cancelled (it forwards nothing after; with no task, the wait's callback finds the
        exchange settled and forwards nothing).  Before 2026-12-06 the connection was
        closed with no answer (``client_abandoned``, or no row at a guard model).  False,
        nothing done, when the exchange has ended or its answer begun."""
        responder = self.responder
        if self.outcome or self.client_left or responder.head_sent or responder.finished:
            return False
        hedge = self.hedge
        if hedge is not None:
            hedge.cancel()
        self.attempts = 0  # (the connection being opened carried nothing)
        self._settle(STATUS_GATEWAY_STOPPED, ServiceUnavailable.status)
        error = ServiceUnavailable(
            "the gateway is shutting down and the request is with no provider; retry the request"
        )
        error.request_id = self.request_id
        error.close_connection = True
        responder.on_client_gone = None
        responder.send_error(error, self.request.api_format)
        if task is not None:
            task.cancel()
        return True

    def _head_after_left(self, head: UpstreamHead) -> None:
        """The answer's head came after the client left: an error bills nothing (dropped);
        a success is read on for its usage."""
        self.status = head.status
        if head.status >= 400:
            self._end_drain()
            if self.conn is not None:
                self.conn.detach()
                self.conn = None
            self._settle(STATUS_CLIENT_GONE, head.status)

    def _end_drain(self) -> None:
        self.ctx.draining.discard(self)
        self.drain_timer.cancel()

    def give_up_drain(self, client_status: int = 0) -> None:
        """The drain ran out of time or bytes (or the gateway stops): settle an estimate
        (``client_status``: see ``_client_gone``)."""
        if not self.client_left or self.outcome:
            return
        if self.conn is not None:
            self.conn.detach()
            self.conn = None
        self._settle_left(client_status=client_status)

    def _settle_left(self, complete: bool = False, client_status: int = 0) -> None:
        """Settle a departed client's exchange (``complete``: its answer was read to the
        end): the provider's usage when it was read,
        otherwise an estimate (input from the request body at 4 bytes a token; output from
        the generated text of a stream, ``plano_fast.usage_estimate``, or from the bytes
        of a JSON answer), flagged by its status."""
        self._end_drain()
        event = self.make_event(STATUS_CLIENT_GONE, self.status or client_status)
        if not complete and event.has_usage and self.scan_api == scan.API_GEMINI:
            # Gemini repeats its running usage on every chunk: a stream cut (or given up)
            # before its end may have counts short of what the provider bills.  Flagged
            # an estimate (a hard limit charges its bound), priced at those counts as a
            # stream the provider cuts is (upstream_failed): they count every chunk read,
            # relayed or drained, reasoning included; a text estimate of the same bytes
            # only added its error (it took the larger of the two before 2026-12-05).
            event.status = STATUS_CLIENT_GONE_ESTIMATED
        elif not event.has_usage:
            event.status = STATUS_CLIENT_GONE_ESTIMATED
            event.input_tokens = tokens_of_bytes(len(self.request.body))
            meter = self.content_meter
            if meter is not None:
                event.output_tokens = meter.output_tokens(self.responder.bytes_sent)
            else:
                event.output_tokens = tokens_of_bytes(
                    self.responder.bytes_sent + self.ctx.gone_drain_bytes - self.drain_left)
            event.output_tokens = capped(event.output_tokens, self.request.body)  # (max_tokens, ...)
            event.has_usage = True
        self.outcome = event.status
        self._sink_left(event)
        self.observe(event)

    def _sink_left(self, event: UsageEvent) -> None:
        self.ctx.usage_sink(event)

    async def _forward(self) -> None:
        pool = self.ctx.pool
        loop = pool.loop
        while True:
            self.attempts += 1
            conn = pool.take_idle(self.origin) if self.attempts == 1 else None
            if conn is None:
                self.ctx.waits(self)
                try:
                    try:
                        conn = await pool.connect(self.origin, self.timeouts[0])
                    finally:
                        self.ctx.waiting.pop(self, None)
                except asyncio.CancelledError:
                    if self.attempts == 1:  # never forwarded: recorded as abandoned
                        self._settle(STATUS_CLIENT_ABANDONED, 0)
                    else:
                        self._client_gone()
                    raise
                except UpstreamError as exc:
                    if exc.retryable and self.attempts == 1:
                        self.note_failed(exc.kind)  # once more on the same origin
                        continue
                    if self._retry_after_connect_error(exc):
                        await self._advance()
                        continue
                    self.error_kind = exc.kind
                    self._settle(STATUS_UPSTREAM_FAILED, exc.status)
                    exc.request_id = self.request_id  # (x-plano-request-id, as its row's)
                    raise
            done = self.done = loop.create_future()
            self._send(conn)
            try:
                retry = await done
            except asyncio.CancelledError:
                # The client went away: read on for the usage, or settle (see _client_gone).
                self._client_gone()
                raise
            if not retry:
                if not self._retry_pending():
                    return
                await self._advance()

    # -- ResponseSink -----------------------------------------------------------------
    def client_headers(self, head: UpstreamHead) -> list[Header]:
        """The upstream response's headers fit for the client, as pairs (for the paths that
        rebuild an answer; the relay sends ``head.block`` as it is)."""
        out = head.headers()
        if self.operator_auth is not None:
            out = [pair for pair in out if pair[0] not in scan.ACCOUNT_HEADERS]
        out.append((b"x-plano-request-id", self.request_id.encode()))
        if self.route_header:  # "name: value\r\n", as the relayed head carries it
            name, _, value = self.route_header[:-2].partition(b": ")
            out.append((name, value))
        return out

    def on_upstream_head(self, head: UpstreamHead) -> None:
        if self.client_left:
            self._head_after_left(head)
            return
        self.head_ns = time.time_ns()
        self.status = status = head.status
        if (status == 401 or status == 403) and self.operator_auth is not None:
            self._operator_key_rejected(status)
            return
        scanner = self.scanner
        if scanner is not None and status >= 400:
            # Errors are relayed as they are; the scanner still notes the error body.
            scanner = self.scanner = scan.UsageScanner(self.scan_api, False, False)
        body_filter = self.body_filter
        decoded = False
        if scan.has_content_encoding(head.block):
            coding = content_coding(head.block)
            if coding is not None:
                # an answer in a coding the gateway did not ask for: read decoded, relayed
                # decoded when it can be (plano_fast.gateway.coded_answer)
                if not decodable(coding):
                    if status >= 400 and self.operator_auth is not None:
                        # An error body may echo the gateway's key, and its mask cannot
                        # find the key in bytes it cannot decode (the client may): the
                        # gateway's 502, never the body (operator_key.py)
                        self._operator_key_rejected(status, coded=True)
                        return
                    if scanner is not None and status < 400:
                        scanner = self.scanner = DecodedScanner(self.scan_api, self.streaming, coding)
                        if body_filter is not None and hasattr(body_filter, "undecodable_coding"):
                            body_filter.undecodable_coding()  # (managed mode's HoldTerminal)
                elif (status < 400 and isinstance(scanner, scan.UsageScanner)) or (
                        status >= 400 and self.operator_auth is not None):
                    # (the mode's own scanner, or an error's: an error's body is redacted of
                    # the gateway's key, which compressed bytes hide from the redaction --
                    # one mask, operator_key.redact, on the decoded bytes; an unscanned
                    # error is given a scanner so that it is decoded too)
                    if status >= 400 and scanner is None:
                        scanner = scan.UsageScanner(self.scan_api, False, False)
                    assert isinstance(scanner, scan.UsageScanner)
                    scanner = self.scanner = DecodingScanner(scanner, coding, self.streaming and status < 400)
                    decoded = True
                elif body_filter is not None and getattr(body_filter, "reads_decoded", False):
                    # (a conversion; not the response guardrails' hold, which relays a coded
                    # answer it does not read as it is: wrapped, its finish was never called
                    # and the client waited for an answer that never came)
                    body_filter = self.body_filter = DecodedFilter(body_filter, coding)
        if body_filter is not None and body_filter.rebuilds_head:
            headers = self.client_headers(head)
            if decoded:
                headers = [pair for pair in headers if pair[0] != b"content-encoding"]
            if self.guard_warning:
                headers.append((b"x-plano-guardrail-warning", self.guard_warning.split(b": ", 1)[1].strip()))
            if self.rl_head:
                headers = with_header_pairs(headers, self.rl_head)
            body_filter.head(self.responder, status, headers)
            return
        content_length = head.content_length
        if content_length is not None and scanner is not None and (decoded or self._may_rewrite_body()):
            content_length = None  # the stripped (or decoded) body's length differs: send it chunked
        block = head.block if self.operator_auth is None else scan.without_account_headers(head.block)
        if decoded:
            block = without_content_encoding(block)
        if self.rl_head:
            block = with_headers(block, self.rl_head)
        extra = scan.header_line(b"x-plano-request-id: ", self.request_id)
        if self.ctx.server_timing:
            extra += self._server_timing()
        if self.guard_warning:
            extra += self.guard_warning
        if self.route_header:
            extra += self.route_header
        self.responder.send_head_block(status, block, content_length, extra)

    def _operator_key_rejected(self, status: int, coded: bool = False) -> None:
        """The provider refused the gateway's own key (or ``coded``: answered an error in a
        coding whose bytes the key's mask cannot read): the client gets the gateway's 502,
        never the provider's body (it can echo part of the key); the connection is closed."""
        if coded:
            operator_key.log_coded(self.provider_id, status, self.request_id)
        else:
            operator_key.log_rejected(self.provider_id, status, self.request_id)
        if self.conn is not None:
            self.conn.detach()
            self.conn = None
        self._settle(STATUS_UPSTREAM_ERROR, status)
        error = UpstreamError(f"the provider answered {status} in a content coding the gateway cannot mask "
                              "its key in") if coded else ProviderCredentialRejected()
        error.request_id = self.request_id
        self.responder.send_error(error, self.request.api_format)
        done = self.done
        if done is not None and not done.done():
            done.set_result(False)

    def _server_timing(self) -> bytes:
        """``Server-Timing`` (plano_fast.server_timing): the gateway's own time before the
        request went upstream, and the upstream's time to its response head, in ms."""
        gateway_ms = (self.sent_ns - self.started_ns) / 1e6 if self.sent_ns else 0.0
        upstream_ms = (self.head_ns - self.sent_ns) / 1e6 if self.sent_ns else 0.0
        return b"server-timing: gateway;dur=%.3f, upstream;dur=%.3f\r\n" % (gateway_ms, upstream_ms)

    def _may_rewrite_body(self) -> bool:
        return self.streaming and self.status < 400

    def on_upstream_body(self, data: bytes) -> None:
        if self.swallow:
            return  # a failed attempt's answer: the next attempt serves the client
        if self.client_left:
            self._drain_body(data)
            return
        responder = self.responder
        if not responder.client_connected:
            return
        scanner = self.scanner
        if self.status >= 400 and self.operator_auth is not None:
            if type(scanner) is DecodingScanner:  # a coded error: decoded, then redacted
                data = scanner.feed(data)
                scanner = None
            data, self.operator_auth = operator_key.redact(data, self.operator_auth)
        if scanner is not None:
            data = scanner.feed(data)
        body_filter = self.body_filter
        if body_filter is None:
            responder.send_body(data)
        else:
            body_filter.relay(data, responder)

    def _drain_body(self, data: bytes) -> None:
        """A departed client's response: scanned for usage, relayed to nobody."""
        scanner = self.scanner
        if scanner is not None:
            fed = scanner.feed(data)
            if type(scanner) is DecodingScanner:
                data = fed  # (the meter reads the decoded events)
        meter = self.content_meter
        if meter is not None:
            try:
                meter.feed(data)
            except Exception:  # noqa: BLE001 - an estimate must never stop the usage read
                self.content_meter = None  # (bytes / 4 then, as for a JSON answer)
        self.drain_left -= len(data)
        if self.drain_left < 0:
            self.give_up_drain()

    def on_upstream_read_done(self) -> None:
        body_filter = self.body_filter
        if body_filter is None:
            self.responder.flush()
        else:
            body_filter.read_done(self.responder)

    def on_upstream_complete(self) -> None:
        if self.swallow:
            self._swallowed()
            return
        self.conn = None
        scanner = self.scanner
        tail = scanner.finish() if scanner is not None else b""
        if type(scanner) is DecodingScanner and scanner.failed:
            # the coding's end never came (or its last bytes spoiled it): an answer cut
            # short, cut for the client too -- never ended as if whole (usage_missing)
            self.on_upstream_error(UpstreamError(f"error relaying upstream response: {CodingError.__name__}: "
                                                 "the answer's content coding never ended"), False)
            return
        if tail and self.status >= 400 and self.operator_auth is not None:  # (a coded error's end)
            tail, self.operator_auth = operator_key.redact(tail, self.operator_auth)
        if self.client_left:
            if not self.outcome:
                self._settle_left(complete=True)
            return
        if self.status >= 400:
            outcome = STATUS_UPSTREAM_ERROR
        elif scanner is None:
            outcome = STATUS_NOT_BILLABLE
        elif scanner.result().has_usage:
            outcome = STATUS_OK
        else:
            outcome = STATUS_USAGE_MISSING
        self._finish(outcome, tail)
        done = self.done
        if done is not None and not done.done():
            done.set_result(False)

    def _finish(self, outcome: str, tail: bytes) -> None:
        """The upstream response is complete: send what is left, then the settle step."""
        body_filter = self.body_filter
        if body_filter is None:
            if tail:
                self.responder.send_body(tail)
        else:
            body_filter.finish(self.responder, tail)
        self._complete(outcome)

    def _complete(self, outcome: str) -> None:
        """The settle step of a complete response, queued: end the response, then settle
        (the client's last bytes leave before the bookkeeping, not after it).  Managed
        mode settles synchronously instead (its ``_complete``)."""
        self.responder.end()
        self._settle(outcome, self.status)

    def _swallowed(self) -> None:
        """A failed attempt's answer was read to its end (``swallow``): the failover
        engine goes on to the next attempt."""
        raise NotImplementedError

    def _retry_pending(self) -> bool:
        """Whether another attempt follows a failed one (plano_fast.gateway.retrying)."""
        return False

    def note_failed(self, kind: str) -> None:
        """An attempt failed and another one follows: its outcome (an HTTP status or an
        error kind) goes on the usage row's attempt trail."""
        failed = self.failed_attempts
        if failed is None:
            self.failed_attempts = [kind]
        else:
            failed.append(kind)

    def total_attempts(self) -> int:
        """Upstream attempts made for this request: the failed ones followed by another,
        and the last one if it started (``attempts`` is reset before a retry's wait)."""
        failed = self.failed_attempts
        last = 1 if self.attempts else 0
        return last if failed is None else len(failed) + last

    def _attempt_trail(self, outcome: str) -> str | None:
        failed = self.failed_attempts
        if failed is None:
            return None
        if not self.attempts:  # the retry never started (the client left during its wait)
            return attempt_trail(failed)
        last = self.error_kind or (str(self.status) if self.status else outcome)
        return attempt_trail([*failed, last])

    def _retry_after_connect_error(self, error: UpstreamError) -> bool:
        """A connection could not be opened: whether another attempt follows."""
        return False

    async def _advance(self) -> None:
        raise NotImplementedError

    def on_upstream_error(self, error: UpstreamError, retry_safe: bool) -> None:
        self.conn = None
        if self.client_left:
            if not self.outcome:
                self._settle_left()  # cut before its end: an estimate
            return
        done = self.done
        if done is None:
            if retry_safe and self.attempts == 1 and not self.responder.head_sent:
                # A reused connection died before answering: once more on a fresh one.
                self.note_failed(error.kind)
                self.responder.continue_in_task(self._forward(), self.request)
                return
        elif done.done():
            return
        elif retry_safe and self.attempts == 1 and not self.responder.head_sent:
            self.note_failed(error.kind)
            done.set_result(True)  # once more, on a fresh connection
            return
        self.error_kind = error.kind
        scanner = self.scanner
        # (an answer cut by its coding -- plano_fast.gateway.coded_answer.CodingError -- was
        # answered but not read whole: usage_missing, a hard limit's bound, as a coded
        # answer relayed as sent is)
        coding_failed = type(scanner) is DecodingScanner and scanner.failed and self.status < 400
        self._settle(STATUS_USAGE_MISSING if coding_failed else STATUS_UPSTREAM_FAILED, self.status or error.status)
        error.request_id = self.request_id  # (x-plano-request-id, as its row's)
        self.responder.send_error(error, self.request.api_format)
        if done is not None:
            done.set_result(False)

    def on_upstream_pause_writing(self) -> None:
        self.responder.pause_client_reading()

    def on_upstream_resume_writing(self) -> None:
        self.responder.resume_client_reading()

    # -- settle -----------------------------------------------------------------------
    def _settle(self, outcome: str, http_status: int) -> None:
        if self.outcome:
            return
        self.outcome = outcome
        event = self.make_event(outcome, http_status)
        self.ctx.usage_sink(event)
        self.observe(event)

    def observe(self, event: UsageEvent) -> None:
        """Add this finished request to the process's metrics (plano_fast.metrics) and its
        access log.  Compiled where built (``plano_fast/gateway/_settle.pyx``; ``observe_py``
        is this twin)."""
        if self.rl_buckets is not None:  # (with no usage too: a Redis token lease's estimate it held goes back)
            limits = self.ctx.ratelimits
            assert limits is not None
            limits.settle(self.rl_buckets, event.input_tokens + event.output_tokens if event.has_usage else 0)
        ctx = self.ctx
        now_ns = time.time_ns()
        started_ns = self.started_ns
        sent_ns = self.sent_ns
        head_ns = self.head_ns
        if ctx.request_metrics:
            metrics = ctx.metrics
            model = event.model
            if model not in metrics.known_models:  # a set lookup, not a call, once it is known
                model = metrics.model_label(model)
            # Clock readings as they are (ints): the accumulator derives the durations.
            metrics.observe_ns(
                (self.MODE, event.provider, model, self.endpoint_name), event.http_status,
                started_ns, now_ns, sent_ns, head_ns if self.streaming else 0,
                (event.input_tokens, event.output_tokens, event.cache_read_tokens,
                 event.cache_write_tokens, event.reasoning_tokens) if event.has_usage else None,
            )  # fmt: skip
            status = event.status
            if status in _FAILED_OUTCOMES:  # one set lookup for an answered request
                if status == STATUS_UPSTREAM_FAILED:
                    metrics.error("timeout" if event.http_status == 504 else "upstream")
                elif status == STATUS_UPSTREAM_ERROR:  # the provider's own error answer
                    metrics.error(provider_error_type(event.http_status))
                else:
                    metrics.error("client_gone")
        failed = self.failed_attempts
        if failed is not None:
            ctx.requests_retried += 1
            ctx.attempts_failed += len(failed)
        span = self.span
        if span is not None:
            if self.attempt_span is not None:
                spans.end_attempt(self.attempt_span, event.http_status)
                self.attempt_span = None
            spans.end_server(
                span, mode=self.MODE, endpoint=self.endpoint_name, request_id=self.request_id,
                provider=event.provider, request_model=self.model, response_model=event.model,
                outcome=event.status, status=event.http_status,
                tokens=(event.input_tokens, event.output_tokens) if event.has_usage else None,
            )  # fmt: skip
            self.span = None
        access_log = ctx.access_log
        if access_log is not None:
            responder = self.responder
            responder.logged = True  # a refusal answered after this settle adds no line
            # Raw values only: the writer derives the fields (plano_fast.access_log.RECORD).
            access_log.record((
                started_ns, self.request_id, self.MODE, self.project_id, self.key_hash,
                event.provider, event.model, self.endpoint_name, event.http_status, event.status,
                self.streaming, event.input_tokens, event.output_tokens, event.cache_read_tokens,
                event.reasoning_tokens, now_ns, head_ns, sent_ns, event.attempts,
                responder.peer(), self.guard_names, self.route_name, event.attempt_trail,
            ))  # fmt: skip

    def refused(self, error: GatewayError) -> None:
        """The gateway refused this request itself (a guardrail, a guard model, an input
        filter, a rate limit, ...; the server answers it and counts it in errors_total):
        its access-log line -- outcome ``refused``, the error's code and the guardrail or
        filter named by its ``x-plano-guardrail`` header in ``attempt_trail`` and
        ``guardrails``.  Nothing when the request was already settled (its line written).
        The refusal is answered with this exchange's id (``x-plano-request-id``), the id of
        its line and of its usage row where one is written."""
        error.request_id = self.request_id
        access_log = self.ctx.access_log
        if access_log is None or self.outcome:
            return
        responder = self.responder
        responder.logged = True  # the server's refusal handler adds no line of its own
        names = self.guard_names
        for name, value in error.headers(self.request.api_format):
            if name == b"x-plano-guardrail":
                names = sorted(set(names or ()) | set(value.decode("latin-1").split(",")))
        access_log.record((
            self.started_ns, self.request_id, self.MODE, self.project_id, self.key_hash,
            self.provider_id or None, self.model or self.requested_model, self.endpoint_name, error.status, "refused",
            self.streaming, None, None, None, None, time.time_ns(), 0, 0, self.attempts,
            responder.peer(), names, self.route_name, error.code,
        ))  # fmt: skip

    def make_event(self, outcome: str, http_status: int) -> UsageEvent:
        """The usage event of this exchange as it ends.  Compiled where built
        (``plano_fast/gateway/_settle.pyx``: the slots read in place, the scanner's
        counts as one tuple, the event built by a C call; ``make_event_py`` is this twin)."""
        started_ns = self.started_ns
        duration_ms = (time.time_ns() - started_ns) / 1e6
        scanner = self.scanner
        if self.failed_attempts is None:  # nothing retried (the usual case): no list, no text
            attempts = 1 if self.attempts else 0
            trail = None
        else:
            attempts = self.total_attempts()
            trail = self._attempt_trail(outcome)
        if scanner is None:
            return UsageEvent(
                self.request_id, started_ns, self.provider_id, self.model, self.streaming,
                outcome, http_status, project_id=self.project_id, key_hash=self.key_hash,
                duration_ms=duration_ms, wire_format=self.wire_format,
                requested_model=self.requested_model, attempts=attempts, attempt_trail=trail,
            )  # fmt: skip
        usage = scanner.result()
        raw = scanner.raw_usage()
        # Every field, positional in UsageEvent's field order: the compiled constructor
        # (plano_fast.usage.new_usage_event, ~1k instructions against ~5.6k).
        return new_usage_event(
            self.request_id, started_ns, self.provider_id, usage.model or self.model,
            self.streaming, outcome, http_status, usage.input_tokens, usage.output_tokens,
            usage.cache_read_tokens, usage.cache_write_tokens, usage.reasoning_tokens,
            usage.has_usage, self.project_id, self.key_hash, None, None, duration_ms,
            self.wire_format, usage.tool_use_prompt_tokens, usage.cache_write_1h_tokens,
            usage.audio_input_tokens, usage.audio_output_tokens,
            None if raw is None else raw.decode("utf-8", "replace"),
            USAGE_API_NAMES.get(self.scan_api), 0, self.requested_model, attempts, trail, None,
            usage.web_search_requests, usage.service_tier, usage.image_output_tokens,
            usage.audio_cache_read_tokens,
        )  # fmt: skip


def new_exchange(cls: type[_E], ctx: ExchangeContext, request: Request, responder: Responder) -> _E:
    """A ``cls`` (Exchange or a subclass) whose Exchange slots are what ``Exchange.__init__``
    sets; a subclass's own slots are the caller's (``RoutedExchange.aim``).  The request
    path's constructor: compiled where built (``plano_fast/gateway/_new_exchange.pyx``: the
    slots written in place, no class call and no ``__init__`` frame), else this twin."""
    exchange = cls.__new__(cls)
    Exchange.__init__(exchange, ctx, request, responder)
    return exchange


make_event_py = Exchange.make_event
observe_py = Exchange.observe
forward_now_py = Exchange.forward_now
if os.environ.get(scan.PURE_ENV) != "1":  # the switch every compiled module obeys
    try:
        from plano_fast.gateway._new_exchange import new_exchange  # noqa: E402 - needs Exchange defined
    except ImportError:
        pass
install_compiled(Exchange, "plano_fast.gateway._settle", make_event="make_event", observe="observe")
install_compiled(Exchange, "plano_fast.gateway._forward", forward_now="forward_now")
# (after make_event / observe: the pass calls the compiled ones directly)
install_compiled(UpstreamConnection, "plano_fast.gateway._answer", data_received="data_received")
