"""The exchange: the one place that holds policy for a forwarded request.

Phases (Pingora's habit): identify the body's model -> route -> rewrite headers and body ->
forward through the pool -> relay and observe the response -> settle a usage event.  The
protocol below it owns bytes; the pool owns connections; this module decides.

Relaying happens in callbacks (``on_upstream_*``) invoked from the upstream connection's
``data_received``: a response chunk goes from one socket to the other in the same loop
iteration, passing through the usage scanner, which only looks unless it has to strip the
usage-only chunk the gateway itself asked for.

``start`` runs synchronously from the server's parser callback.  When the pool has an idle
connection (the steady state) the request is written at once and the exchange lives on in
those callbacks: no task, no coroutine, no future.  Only when it must wait -- open a
connection, retry on a fresh one, reserve budget (managed mode) -- does it return a
coroutine, which the server runs as a task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
from urllib.parse import quote
import os
import re
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from plano_fast import guardrails
from plano_fast import wire as scan
from plano_fast.errors import (
    BadRequestBody,
    ClientError,
    GatewayError,
    NotFound,
    Unauthorized,
    UnknownModelError,
    UpstreamError,
)
from plano_fast.conversion import SCAN_API_FOR_WIRE, Conversion, json_dumps, json_loads, request_error
from plano_fast.convert import ConversionError, convert_request, count_tokens_estimate
from plano_fast.credentials import ClientHeaders, read_client_headers
from plano_fast.access_log import AccessLog
from plano_fast.preference_routing import OVERRIDE_MEMBER, Decision, strip_member
from plano_fast.ratelimit import Bucket, RateLimits
from plano_fast.tracing import Tracing, end_attempt, end_server, traceparent
from plano_fast.metrics import RequestMetrics
from plano_fast.responses_state import (
    ConversationNotFound,
    ResponseStore,
    StoredResponse,
    Turn,
    begin_turn,
    needs_prefetch,
    prefetch,
)
from plano_fast.failover import RETRYABLE_STATUSES, CircuitBreaker, RetryPlan, RetryPolicy, retry_after_s
from plano_fast.routing import Route, UnknownModel
from plano_fast.upstream import Header, Origin, UpstreamConnection, UpstreamHead, UpstreamPool
from plano_fast.usage import (
    STATUS_CLIENT_ABANDONED,
    STATUS_CLIENT_GONE,
    STATUS_CLIENT_GONE_ESTIMATED,
    STATUS_NOT_BILLABLE,
    STATUS_OK,
    STATUS_UPSTREAM_ERROR,
    STATUS_UPSTREAM_FAILED,
    STATUS_USAGE_MISSING,
    USAGE_API_NAMES,
    UsageEvent,
    UsageSink,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from opentelemetry.trace import Span

    from plano_fast.billing.budget import BudgetChecker
    from plano_fast.config import ModelProvider
    from plano_fast.firewall import ApiKeyRegistry
    from plano_fast.http_server import Request, Responder
    from plano_fast.preference_routing import PreferenceRouter
    from plano_fast.routing import Router

_REQUEST_PREFIX = os.urandom(16).hex()
_request_counter = itertools.count(1)


def _new_request_prefix() -> None:
    """A forked child must not reuse its parent's prefix with a copy of its counter."""
    global _REQUEST_PREFIX, _request_counter
    _REQUEST_PREFIX = os.urandom(16).hex()
    _request_counter = itertools.count(1)


os.register_at_fork(after_in_child=_new_request_prefix)


_KEY_HASHES: dict[int, tuple[int, str]] = {}
_KEY_HASHES_MAX = 4096
_KEY_SALT = os.urandom(16)


def key_hash(key: bytes) -> str:
    """SHA-256 hex of a client key: how keys are identified and stored, never in clear.

    Clients send the same few keys over and over, and SHA-256 was 2% of a firewall
    request's instructions (callgrind: +5.1k of 232k).  The memo holds no key: an entry is
    found by the key's SipHash (Python's ``hash``, keyed by a per-process secret) and
    confirmed by a second SipHash of the key with a per-process salt, so a different key
    is taken for a cached one only if both 64-bit keyed hashes collide (~2^-128); entries
    are a fixed size (two ints and a 64-character digest) and at most 4,096.
    """
    h = hash(key)
    entry = _KEY_HASHES.get(h)
    check = hash(key + _KEY_SALT)
    if entry is not None and entry[0] == check:
        return entry[1]
    digest = hashlib.sha256(key).hexdigest()
    if len(_KEY_HASHES) >= _KEY_HASHES_MAX:
        _KEY_HASHES.clear()
    _KEY_HASHES[h] = (check, digest)
    return digest


def client_headers(exchange: Exchange) -> ClientHeaders:
    """The request's forwardable headers and its one credential, read once per exchange
    (``Unauthorized`` when it carries more than one; see plano_fast.credentials)."""
    client = exchange.client
    if client is None:
        request = exchange.request
        client = exchange.client = read_client_headers(request.headers, request.query)
    return client


def caller_key_hash(exchange: Exchange) -> str | None:
    """Config mode identifies callers by their credential's hash (per-key usage)."""
    credential = client_headers(exchange).credential
    return key_hash(credential.secret) if credential is not None else None


def refuse_background(body: bytes) -> None:
    """A Responses request with ``background`` set runs on after its HTTP answer, and its
    usage is only readable later from an endpoint that is not metered: such a request
    could never be billed, so it is refused (400).  The member is looked for in every
    spelling a JSON parser accepts (escapes, duplicates)."""
    if body.find(b"ackground") < 0 and body.find(b"\\u") < 0:
        return  # neither the name nor an escape that could spell it
    try:
        members = json.loads(body, object_pairs_hook=lambda pairs: pairs)
    except ValueError:
        return  # the scanner refuses it with a precise message
    if isinstance(members, list) and any(
        name == "background" and value not in (False, None) for name, value in members
    ):
        raise ClientError(
            "background responses are not supported through this gateway: their usage "
            "cannot be metered; send the request without 'background'"
        )


def new_request_id() -> str:
    """A request id that cannot collide: 128 random bits drawn once per process (and per
    fork), then a counter.  Two ids can only meet if two process starts draw the same 128
    bits (probability about N^2 / 2^129 over N starts: 10^-31 for a million), as strong as
    128 random bits per request, without a getrandom() call per request (measured 0.24 µs
    per id, against 0.68 µs for ``os.urandom(16).hex()`` and 4.5 µs for ``uuid4``).
    """
    return f"{_REQUEST_PREFIX}-{next(_request_counter):x}"


class Endpoint:
    """What a client endpoint means for routing and scanning."""

    __slots__ = ("name", "scan_api", "wire_api")

    def __init__(self, name: str, scan_api: int, wire_api: str) -> None:
        self.name = name
        self.scan_api = scan_api
        self.wire_api = wire_api


CHAT_COMPLETIONS = Endpoint("chat_completions", scan.API_OPENAI_CHAT, "openai")
RESPONSES = Endpoint("responses", scan.API_OPENAI_RESPONSES, "openai")
MESSAGES = Endpoint("messages", scan.API_ANTHROPIC, "anthropic")
# Claude Code calls it before requests; counted, not billed.
COUNT_TOKENS = Endpoint("count_tokens", scan.API_ANTHROPIC, "anthropic")


def upstream_path(provider: ModelProvider, endpoint: Endpoint, model: str | None) -> bytes | None:
    """The provider path serving ``endpoint``, or None when it cannot be served."""
    if endpoint is MESSAGES:
        path = provider.messages_path
    elif endpoint is COUNT_TOKENS:
        path = provider.messages_path + "/count_tokens" if provider.messages_path else None
    elif endpoint is CHAT_COMPLETIONS:
        path = provider.chat_path_for(model) if model else provider.chat_completions_path
    else:
        path = provider.responses_path
    return path.encode() if path else None


def converts(endpoint: Endpoint, provider: ModelProvider) -> bool:
    """Whether ``endpoint`` reaches ``provider`` through format conversion.  A Responses
    request passes through to an OpenAI-family provider with a responses path, and is
    converted (to chat completions, Messages or Gemini) for every other provider."""
    if endpoint is RESPONSES:
        return provider.wire_api != "openai" or provider.responses_path is None
    return provider.wire_api != endpoint.wire_api


def auth_headers_for(provider: ModelProvider, endpoint: Endpoint) -> tuple[Header, ...]:
    # Anthropic's OpenAI-compatible chat endpoint takes a bearer token, its Messages API
    # an x-api-key; the config precomputes both.
    if endpoint is CHAT_COMPLETIONS and provider.chat_auth_headers:
        return provider.chat_auth_headers
    return provider.auth_headers


class RequestFieldsLike(Protocol):
    """What the exchange reads of a request (scan.RequestFields, or a Gemini path's)."""

    @property
    def model(self) -> str | None: ...

    @property
    def stream(self) -> bool: ...

    @property
    def include_usage(self) -> bool | None: ...


#: client endpoint -> the request shape guardrails read message text from
GUARD_FORMATS: Final = {
    "chat_completions": "openai",
    "completions": "openai",
    "messages": "anthropic",
    "count_tokens": "anthropic",
    "responses": "responses",
    "gemini": "gemini",
    "embeddings": "embeddings",
}

_TRACEPARENT_LINE = re.compile(rb"\r\ntraceparent:[^\r\n]*")

#: circuit breakers kept per process (oldest forgotten first)
MAX_CIRCUITS = 4096


class ExchangeContext:
    """Shared, long-lived state every exchange needs (owned by the Gateway)."""

    __slots__ = (
        "router",
        "pool",
        "usage_sink",
        "first_byte_timeout_s",
        "idle_timeout_s",
        "registry",
        "budget",
        "gone_drain_s",
        "gone_drain_bytes",
        "draining",
        "unbilled_paths",
        "unbilled_requests",
        "default_retry_policy",
        "circuits",
        "retries_total",
        "failovers_total",
        "metrics",
        "access_log",
        "tracing",
        "server_timing",
        "ratelimits",
        "guardrails",
        "responses_state",
        "preference",
    )

    def __init__(
        self,
        router: Router,
        pool: UpstreamPool,
        usage_sink: UsageSink,
        first_byte_timeout_s: float,
        idle_timeout_s: float,
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
        self.first_byte_timeout_s = first_byte_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.registry = registry
        self.budget = budget
        #: after a client hangs up, its provider response is still read to the end (for the
        #: provider's own usage) for at most this long and this many bytes
        self.gone_drain_s = gone_drain_s
        self.gone_drain_bytes = gone_drain_bytes
        #: exchanges reading a response whose client left (ended at stop: ``give_up_drains``)
        self.draining: set[Exchange] = set()
        #: firewall mode: exact paths forwarded unmetered (firewall_unbilled_paths)
        self.unbilled_paths = unbilled_paths
        self.unbilled_requests = 0
        #: listeners[].max_retries for providers without a retry_policy
        self.default_retry_policy = default_retry_policy
        #: health memory per (provider name, model) of providers with retries
        self.circuits: dict[tuple[str, str], CircuitBreaker] = {}
        self.retries_total = 0
        self.failovers_total = 0
        self.metrics = RequestMetrics()
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

    def circuit_for(self, provider_name: str, model: str) -> CircuitBreaker:
        key = (provider_name, model)
        circuits = self.circuits
        circuit = circuits.get(key)
        if circuit is None:
            if len(circuits) >= MAX_CIRCUITS:
                del circuits[next(iter(circuits))]  # wildcard models are client-chosen: bounded
            circuit = circuits[key] = CircuitBreaker()
        return circuit

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
        "failover_error",
        "client_left",
        "drain_left",
        "drain_timer",
        "client",
        "sent_ns",
        "head_ns",
        "endpoint_name",
        "span",
        "attempt_span",
        "rl_buckets",
        "guard_warning",
        "guard_names",
        "route_header",
        "route_name",
    )
    drain_left: int
    drain_timer: asyncio.TimerHandle

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
        self.scanner: scan.UsageScanner | None = None
        self.model: str | None = None
        self.streaming = False
        self.key_hash: str | None = None
        self.project_id: str | None = None
        self.provider_id = ""
        self.wire_format = "openai"
        self.upstream_data: list[bytes] = []
        self.origin: Origin = ("http", "", 0, None)
        self.scan_api = scan.API_OPENAI_CHAT
        self.failover_error: UpstreamError | None = None
        #: the request's headers as read once (credential included); see client_headers()
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
        self.rl_buckets: list[Bucket] | None = None
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

    def start(self) -> Coroutine[Any, Any, None] | None:
        """Handle the request; a coroutine when it must wait (see the module docstring).

        Errors raised here (GatewayError) are answered by the server in the client's format.
        """
        return self.run()

    async def run(self) -> None:
        raise NotImplementedError

    def forward_now(self) -> Coroutine[Any, Any, None] | None:
        """Send on an idle pooled connection now; a coroutine when one must be opened."""
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
        conn.send_request(
            self.upstream_data, self, self.ctx.first_byte_timeout_s, self.ctx.idle_timeout_s
        )

    def _trace_attempt(self) -> None:
        """A sampled request's next upstream attempt: its span, and its traceparent sent
        upstream in place of the client's."""
        tracing = self.ctx.tracing
        assert tracing is not None and self.span is not None
        if self.attempt_span is not None:  # the previous attempt failed
            end_attempt(self.attempt_span, self.status, "retried")
        span = self.attempt_span = tracing.start_attempt(self.span, self.provider_id, self.model)
        head = _TRACEPARENT_LINE.sub(b"", self.upstream_data[0])
        self.upstream_data[0] = head[:-2] + b"traceparent: " + traceparent(span) + b"\r\n\r\n"

    def _client_gone(self) -> None:
        """The client disconnected mid-exchange.

        Nothing forwarded yet: recorded as abandoned (not billed).  A billable response
        under way (2xx, an LLM endpoint): the relay stops but the response is read on to
        its end, bounded by ``gone_drain_s`` and ``gone_drain_bytes``, so the provider's
        own usage is recorded (``client_disconnected``); when it cannot be read to the end,
        an estimate is recorded instead, never zero (``_settle_left``).  Anything else (an
        error answer, a non-LLM path): dropped, as the provider bills nothing for it.
        """
        conn = self.conn
        if conn is None:
            self._settle(STATUS_CLIENT_ABANDONED if not self.status else STATUS_CLIENT_GONE, self.status)
            return
        if self.scanner is None or self.status >= 400 or self.outcome:
            conn.detach()
            self.conn = None
            self._settle(STATUS_CLIENT_GONE, self.status)
            return
        self.client_left = True
        self.drain_left = self.ctx.gone_drain_bytes
        self.drain_timer = self.ctx.pool.loop.call_later(self.ctx.gone_drain_s, self.give_up_drain)
        self.ctx.draining.add(self)
        conn.resume_reading()  # it may have been paused for the slow client

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

    def give_up_drain(self) -> None:
        """The drain ran out of time or bytes (or the gateway stops): settle an estimate."""
        if not self.client_left or self.outcome:
            return
        if self.conn is not None:
            self.conn.detach()
            self.conn = None
        self._settle_left()

    def _settle_left(self) -> None:
        """Settle a departed client's exchange: the provider's usage when it was read,
        otherwise an estimate (input from the request body, output from the response
        bytes seen, both at 4 bytes a token), flagged by its status."""
        self._end_drain()
        event = self.make_event(STATUS_CLIENT_GONE, self.status)
        if not event.has_usage:
            event.status = STATUS_CLIENT_GONE_ESTIMATED
            event.input_tokens = max(1, (len(self.request.body) + 3) // 4)
            seen = self.responder.bytes_sent + self.ctx.gone_drain_bytes - self.drain_left
            event.output_tokens = max(1, (seen + 3) // 4)
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
                try:
                    conn = await pool.connect(self.origin)
                except asyncio.CancelledError:
                    if self.attempts == 1:  # never forwarded: recorded as abandoned
                        self._settle(STATUS_CLIENT_ABANDONED, 0)
                    else:
                        self._client_gone()
                    raise
                except UpstreamError as exc:
                    if exc.retryable and self.attempts == 1:
                        continue
                    if self._retry_after_connect_error():
                        await self._advance()
                        continue
                    if self._has_fallback():
                        self.failover_error = exc
                        return
                    self._settle(STATUS_UPSTREAM_FAILED, exc.status)
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
        out.append((b"x-plano-request-id", self.request_id.encode()))
        return out

    def on_upstream_head(self, head: UpstreamHead) -> None:
        if self.client_left:
            self._head_after_left(head)
            return
        self.head_ns = time.time_ns()
        self.status = status = head.status
        content_length = head.content_length
        scanner = self.scanner
        if scanner is not None and status >= 400:
            # Errors are relayed as they are; the scanner still notes the error body.
            scanner = self.scanner = scan.UsageScanner(self.scan_api, False, False)
        if content_length is not None and scanner is not None and self._may_rewrite_body():
            content_length = None  # the stripped body is shorter: send it chunked
        block = head.block + b"x-plano-request-id: " + self.request_id.encode() + b"\r\n"
        if self.ctx.server_timing:
            block += self._server_timing()
        if self.guard_warning:
            block += self.guard_warning
        if self.route_header:
            block += self.route_header
        self.responder.send_head_block(status, block, content_length)

    def _server_timing(self) -> bytes:
        """``Server-Timing`` (plano_fast.server_timing): the gateway's own time before the
        request went upstream, and the upstream's time to its response head, in ms."""
        gateway_ms = (self.sent_ns - self.started_ns) / 1e6 if self.sent_ns else 0.0
        upstream_ms = (self.head_ns - self.sent_ns) / 1e6 if self.sent_ns else 0.0
        return b"server-timing: gateway;dur=%.3f, upstream;dur=%.3f\r\n" % (gateway_ms, upstream_ms)

    def _may_rewrite_body(self) -> bool:
        return self.streaming and self.status < 400

    def on_upstream_body(self, data: bytes) -> None:
        if self.client_left:
            self._drain_body(data)
            return
        responder = self.responder
        if not responder.client_connected:
            return
        scanner = self.scanner
        if scanner is not None:
            data = scanner.feed(data)
        self._relay(data)

    def _drain_body(self, data: bytes) -> None:
        """A departed client's response: scanned for usage, relayed to nobody."""
        scanner = self.scanner
        if scanner is not None:
            scanner.feed(data)
        self.drain_left -= len(data)
        if self.drain_left < 0:
            self.give_up_drain()

    def _relay(self, data: bytes) -> None:
        self.responder.send_body(data)

    def on_upstream_read_done(self) -> None:
        self.responder.flush()

    def on_upstream_complete(self) -> None:
        self.conn = None
        scanner = self.scanner
        tail = scanner.finish() if scanner is not None else b""
        if self.client_left:
            if not self.outcome:
                self._settle_left()
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
        """The upstream response is complete: send what is left and end, then settle
        (the client's last bytes leave before the bookkeeping, not after it)."""
        if tail:
            self.responder.send_body(tail)
        self.responder.end()
        self._settle(outcome, self.status)

    def _has_fallback(self) -> bool:
        """Whether another upstream may still serve this request (managed failover)."""
        return False

    def _retry_pending(self) -> bool:
        """Whether another attempt follows a failed one (config-mode retries)."""
        return False

    def total_attempts(self) -> int:
        """Upstream attempts made for this request (the access log's ``attempts``)."""
        return self.attempts

    def _retry_after_connect_error(self) -> bool:
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
                self.responder.continue_in_task(self._forward(), self.request)
                return
        elif done.done():
            return
        elif retry_safe and self.attempts == 1 and not self.responder.head_sent:
            done.set_result(True)  # once more, on a fresh connection
            return
        elif not self.responder.head_sent and self._has_fallback():
            self.failover_error = error
            done.set_result(False)
            return
        self._settle(STATUS_UPSTREAM_FAILED, self.status or error.status)
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

    def guard(self, fmt: str, provider: str | None) -> None:
        """The DLP floor (plano_fast.guardrails) over the request's message text: raises
        GuardrailBlocked (403); redaction replaces ``request.body``.  Call it after the
        body passed the scanner (valid JSON) and before the upstream request is built."""
        policy = self.ctx.guardrails
        if policy is None:
            return
        try:
            doc = json.loads(self.request.body)
        except ValueError:
            return  # refused by the scanner with a precise message
        metrics = self.ctx.metrics
        try:
            outcome = guardrails.apply(policy, doc, fmt, provider)
        except guardrails.GuardrailBlocked as exc:
            metrics.detected(exc.detections)
            raise
        if outcome.detections:
            metrics.detected(outcome.detections)
            self.guard_names = sorted({d for d, _ in outcome.detections})
        if outcome.body is not None:
            self.request.body = outcome.body
        if outcome.warn:
            self.guard_warning = b"x-plano-guardrail-warning: " + ",".join(outcome.warn).encode() + b"\r\n"

    def rate_limit(self, models: tuple[str | None, ...]) -> bool:
        """Admission against plano_fast.ratelimit: raises RateLimited when a bucket is
        full (in-process limits); True when the check must be awaited (Redis) -- the
        caller then forwards through ``admitted_forward``."""
        limits = self.ctx.ratelimits
        if limits is None:
            return False
        buckets = limits.buckets(models, self.request.headers)
        if not buckets:
            return False
        self.rl_buckets = buckets
        if limits.asynchronous:
            return True
        limits.admit_now(buckets)
        return False

    async def admitted_forward(self) -> None:
        limits = self.ctx.ratelimits
        assert limits is not None and self.rl_buckets is not None
        await limits.admit(self.rl_buckets)
        pending = self.forward_now()
        if pending is not None:
            await pending

    def observe(self, event: UsageEvent) -> None:
        """Add this finished request to the process's metrics (plano_fast.metrics)."""
        if self.rl_buckets is not None and event.has_usage:
            limits = self.ctx.ratelimits
            assert limits is not None
            limits.settle(self.rl_buckets, event.input_tokens + event.output_tokens)
        metrics = self.ctx.metrics
        now_ns = time.time_ns()
        started_ns = self.started_ns
        sent_ns = self.sent_ns
        head_ns = self.head_ns
        metrics.observe(
            (self.MODE, event.provider, metrics.model_label(event.model), self.endpoint_name),
            event.http_status,
            (now_ns - started_ns) / 1e9,
            (now_ns - sent_ns) / 1e9 if sent_ns else None,
            (head_ns - started_ns) / 1e9 if head_ns and self.streaming else None,
            (event.input_tokens, event.output_tokens, event.cache_read_tokens,
             event.cache_write_tokens, event.reasoning_tokens) if event.has_usage else None,
        )  # fmt: skip
        if event.status == STATUS_UPSTREAM_FAILED:
            metrics.error("timeout" if event.http_status == 504 else "upstream")
        elif event.status == STATUS_CLIENT_GONE or event.status == STATUS_CLIENT_GONE_ESTIMATED:
            metrics.error("client_gone")
        span = self.span
        if span is not None:
            if self.attempt_span is not None:
                end_attempt(self.attempt_span, event.http_status)
                self.attempt_span = None
            end_server(
                span, mode=self.MODE, endpoint=self.endpoint_name, request_id=self.request_id,
                provider=event.provider, request_model=self.model, response_model=event.model,
                outcome=event.status, status=event.http_status,
                tokens=(event.input_tokens, event.output_tokens) if event.has_usage else None,
            )  # fmt: skip
            self.span = None
        access_log = self.ctx.access_log
        if access_log is not None:
            duration_ns = now_ns - started_ns
            upstream_ns = now_ns - sent_ns if sent_ns else 0
            access_log.record((
                started_ns, self.request_id, self.MODE, self.project_id,
                self.key_hash[:12] if self.key_hash else None, event.provider, event.model,
                self.endpoint_name, event.http_status, event.status, self.streaming,
                event.input_tokens, event.output_tokens, event.cache_read_tokens,
                event.reasoning_tokens, round(duration_ns / 1e6, 3),
                round((head_ns - started_ns) / 1e6, 3) if head_ns else None,
                round(upstream_ns / 1e6, 3) if sent_ns else None,
                (duration_ns - upstream_ns) // 1000 if sent_ns else None,
                self.total_attempts(), self.responder.peer(), self.guard_names, self.route_name,
            ))  # fmt: skip

    def make_event(self, outcome: str, http_status: int) -> UsageEvent:
        started_ns = self.started_ns
        duration_ms = (time.time_ns() - started_ns) / 1e6
        scanner = self.scanner
        if scanner is None:
            return UsageEvent(
                self.request_id, started_ns, self.provider_id, self.model, self.streaming,
                outcome, http_status, project_id=self.project_id, key_hash=self.key_hash,
                duration_ms=duration_ms, wire_format=self.wire_format,
            )  # fmt: skip
        usage = scanner.result()
        raw = scanner.raw_usage()
        # Positional in UsageEvent's field order (one call, no per-field assignments).
        return UsageEvent(
            self.request_id, started_ns, self.provider_id, usage.model or self.model,
            self.streaming, outcome, http_status, usage.input_tokens, usage.output_tokens,
            usage.cache_read_tokens, usage.cache_write_tokens, usage.reasoning_tokens,
            usage.has_usage, self.project_id, self.key_hash, None, None, duration_ms,
            self.wire_format, usage.tool_use_prompt_tokens, usage.cache_write_1h_tokens,
            usage.audio_input_tokens, usage.audio_output_tokens,
            None if raw is None else raw.decode("utf-8", "replace"),
            USAGE_API_NAMES.get(self.scan_api),
        )  # fmt: skip


#: characters of a model name sent as they are in x-plano-requested-model (others %-escaped)
_MODEL_SAFE = " !#$&'()*+,/:;=?@[]~"


class ConfigExchange(Exchange):
    """Config mode: the body's model picks a configured provider (Plano semantics)."""

    __slots__ = ("endpoint", "provider", "conversion", "fields", "plan", "swallow", "next_attempt", "prior",
                 "requested_model")

    def __init__(
        self, ctx: ExchangeContext, request: Request, responder: Responder, endpoint: Endpoint
    ) -> None:
        super().__init__(ctx, request, responder)
        self.endpoint = endpoint
        self.endpoint_name = endpoint.name
        self.wire_format = endpoint.wire_api
        self.scan_api = endpoint.scan_api
        self.conversion: Conversion | None = None
        #: retries and fallbacks (plano_fast.failover); None when the provider has none
        self.plan: RetryPlan[Route] | None = None
        #: the current attempt failed and its response is dropped (another one follows)
        self.swallow = False
        #: (target index, seconds to wait) of the attempt that follows a swallowed one
        self.next_attempt: tuple[int, float] | None = None
        #: the conversation previous_response_id names, read from a shared state store
        self.prior: StoredResponse | None = None
        #: converted exchanges: the model name the client asked for (x-plano-requested-model)
        self.requested_model = ""

    def start(self) -> Coroutine[Any, Any, None] | None:
        request = self.request
        try:
            fields = scan.scan_request(request.body)
        except scan.ScanError as exc:
            raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
        try:
            route = self.ctx.router.resolve(fields.model)
        except UnknownModel as exc:
            raise UnknownModelError(str(exc)) from None
        provider = route.provider
        if self.endpoint is COUNT_TOKENS and provider.wire_api != "anthropic":
            self._count_tokens_locally()
            return None
        self.fields = fields
        state = self.ctx.responses_state
        if (state is not None and self.endpoint is RESPONSES and needs_prefetch(state, request.body)
                and (self.ctx.preference is not None or converts(RESPONSES, provider))):
            return self._with_history(state, route)
        return self._route(route)

    async def _with_history(self, state: ResponseStore, route: Route) -> None:
        """Read the conversation ``previous_response_id`` names (shared state store) first."""
        self.prior = await prefetch(state, self.request.body, caller_key_hash(self) or "")
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
        # Config mode identifies callers by their key's hash (per-key usage and limits).
        self.key_hash = caller_key_hash(self)
        if self.ctx.guardrails is not None:
            self.guard(GUARD_FORMATS[self.endpoint.name], provider.provider)
        # (the names a limit may use, built only when limits are configured)
        shared_check = self.ctx.ratelimits is not None and self.rate_limit(
            (model, route.upstream_model, f"{provider.prefix}/{route.upstream_model}")
        )
        policy = provider.retry_policy or self.ctx.default_retry_policy
        if policy is not None and self.endpoint is not COUNT_TOKENS:
            if fallbacks:
                policy = dataclasses.replace(
                    policy, fallback_models=fallbacks + policy.fallback_models
                )
            self.plan = plan = self._plan(route, policy)
            route = plan.targets[plan.index]
        self._prepare(route)
        if shared_check:
            return self.admitted_forward()
        return self.forward_now()

    async def _route_by_preference(self, preference: PreferenceRouter) -> None:
        """Preference routing (plano_fast.preference_routing): ask the router model once,
        before the retry plan, then go on as any request."""
        decision = await preference.decide_request(
            self.request, self.endpoint.name, self.fields.model, (self.request_id, caller_key_hash(self))
        )
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
        span = self.span
        if span is not None and (decision.pinned or decision.router_ms > 0 or decision.route):
            # Plano's span attributes (brightstaff tracing/constants.rs)
            span.set_attribute("routing.determination_ms", round(decision.router_ms, 3))
            if decision.route is not None:
                span.set_attribute("plano.route.name", decision.route)
        if decision.route is not None:
            self.route_name = decision.route
            # Plano records the route as a response header; route names are config text.
            name = quote(decision.route, safe=" !#$&'()*+,/:;=?@[]~")
            self.route_header = b"x-model-router-selected-route: " + name.encode() + b"\r\n"
        return pending

    def _plan(self, route: Route, policy: RetryPolicy) -> RetryPlan[Route]:
        """The request's targets: its route, then the policy's fallbacks.  The first one
        tried is the first whose circuit is not open (the route itself when all are)."""
        router = self.ctx.router
        targets = [route] + [router.resolve(m) for m in policy.fallback_models]
        now = self.ctx.pool.loop.time()
        plan = RetryPlan(targets, [t.provider.provider for t in targets], policy, now)
        circuits = [self.ctx.circuit_for(t.provider.name, t.upstream_model or "") for t in targets]
        first = next((i for i, c in enumerate(circuits) if c.available(now)), 0)
        if first:
            plan.index = first
            self.ctx.failovers_total += 1
        circuits[first].allow(now)
        return plan

    def _prepare(self, route: Route) -> None:
        """Build the upstream request for ``route`` (the first target or a fallback)."""
        fields = self.fields
        provider = route.provider
        model = route.upstream_model or fields.model
        if converts(self.endpoint, provider):
            self._prepare_converted(fields, model, provider)
            return
        path = upstream_path(provider, self.endpoint, route.upstream_model)
        if path is None:
            raise ClientError(
                f"model '{fields.model}' is served by provider '{provider.name}', which does "
                f"not support the {self.endpoint.name} API"
            )
        request = self.request
        self.provider = provider
        self.provider_id = provider.provider
        self.model = model
        self.streaming = fields.stream
        self.wire_format = self.endpoint.wire_api
        self.scan_api = self.endpoint.scan_api
        self.conversion = None
        # Ask OpenAI-compatible providers for the usage chunk, and hide it again from a
        # client that did not ask for it, so every stream can be billed.
        inject = (
            fields.stream and self.endpoint is CHAT_COMPLETIONS and fields.include_usage is not True
        )
        body = scan.rewrite_request(
            request.body,
            model=route.upstream_model if route.rewrite or model != fields.model else None,
            inject_include_usage=inject,
        )
        if self.endpoint is not COUNT_TOKENS:
            self.scanner = scan.UsageScanner(self.endpoint.scan_api, fields.stream, inject)
        query = client_headers(self).query
        self.upstream_data = upstream_request(
            self,
            request.method + b" " + path + (b"?" + query if query else b""),
            provider,
            None if provider.passthrough_auth else auth_headers_for(provider, self.endpoint),
            body,
        )
        self.origin = origin_of(provider)

    # -- retries and fallbacks (plano_fast.failover) ----------------------------------
    def _circuit(self, index: int) -> CircuitBreaker:
        assert self.plan is not None
        route = self.plan.targets[index]
        return self.ctx.circuit_for(route.provider.name, route.upstream_model or "")

    def _failed(self, status: int | None, retry_after: float | None) -> bool:
        """The current attempt failed before the client saw anything: note it, and decide
        whether another attempt follows (then True, with ``next_attempt`` set)."""
        plan = self.plan
        if plan is None or self.responder.head_sent or self.outcome or self.client_left:
            return False
        now = self.ctx.pool.loop.time()
        self._circuit(plan.index).record_failure(now)
        healthy = frozenset(
            i for i in range(len(plan.targets)) if self._circuit(i).available(now)
        )
        nxt = plan.next_attempt(status, now, retry_after, healthy)
        self.next_attempt = nxt
        return nxt is not None

    def _succeeded(self) -> None:
        if self.plan is not None:
            self._circuit(self.plan.index).record_success()

    async def _advance(self) -> None:
        """Wait as the plan says, then aim this exchange at the next target."""
        nxt, self.next_attempt = self.next_attempt, None
        assert nxt is not None and self.plan is not None
        index, wait_s = nxt
        if wait_s > 0:
            try:
                await asyncio.sleep(wait_s)
            except asyncio.CancelledError:
                self._settle(STATUS_CLIENT_GONE, self.status)
                raise
        target = self.plan.targets[index]
        ctx = self.ctx
        ctx.retries_total += 1
        if target.provider is not self.provider or (target.upstream_model or self.fields.model) != self.model:
            ctx.failovers_total += 1
        self._circuit(index).allow(ctx.pool.loop.time())
        self.status = 0
        self.scanner = None
        self.attempts = 0
        self._prepare(target)

    def _retry_pending(self) -> bool:
        return self.next_attempt is not None

    def total_attempts(self) -> int:
        return self.plan.attempts if self.plan is not None else self.attempts

    def _retry_after_connect_error(self) -> bool:
        return self._failed(None, None)

    async def _retry(self) -> None:
        await self._advance()
        await self._forward()

    def _schedule_retry(self) -> None:
        done = self.done
        if done is None:
            self.responder.continue_in_task(self._retry(), self.request)
        elif not done.done():
            done.set_result(False)  # _forward sees the pending retry and carries on

    def on_upstream_error(self, error: UpstreamError, retry_safe: bool) -> None:
        if not (retry_safe and self.attempts == 1) and self._failed(None, None):
            self.conn = None
            self._schedule_retry()
            return
        super().on_upstream_error(error, retry_safe)

    def on_upstream_body(self, data: bytes) -> None:
        if not self.swallow:
            super().on_upstream_body(data)

    def on_upstream_complete(self) -> None:
        if self.swallow:
            self.swallow = False
            self.conn = None
            self._schedule_retry()
            return
        super().on_upstream_complete()

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

    def _start_converted(
        self, fields: RequestFieldsLike, model: str | None, provider: ModelProvider
    ) -> Coroutine[Any, Any, None] | None:
        """The client's format differs from the provider's: convert both ways."""
        self.key_hash = caller_key_hash(self)
        self._prepare_converted(fields, model, provider)
        return self.forward_now()

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
        self.model = model
        self.streaming = fields.stream
        self.wire_format = target
        self.scan_api = SCAN_API_FOR_WIRE[target]
        self.scanner = scan.UsageScanner(self.scan_api, fields.stream, False)
        self.conversion = Conversion(
            target, source, model or fields.model or "", fields.stream,
            include_usage=fields.include_usage is True,
            request=doc if source == "responses" else None,
            on_response=turn.record if turn is not None else None,
        )
        self.requested_model = fields.model or ""
        if turn is not None:
            turn.model, turn.provider = model or "", provider.name
        auth = None
        if not provider.passthrough_auth:
            auth = provider.auth_headers if target == "gemini" else auth_headers_for(
                provider, upstream_endpoint
            )
        self.upstream_data = upstream_request(
            self, b"POST " + path, provider, auth, body, anthropic_version=target == "anthropic"
        )
        self.origin = origin_of(provider)

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

    # -- response side of a converted exchange --------------------------------------
    def on_upstream_head(self, head: UpstreamHead) -> None:
        if self.client_left:  # read on for the usage (Exchange._client_gone): no retry
            super().on_upstream_head(head)
            return
        if self.plan is not None:
            status = head.status
            if status in RETRYABLE_STATUSES or (status >= 400 and self.plan.policy.rule_for(status)):
                if self._failed(status, retry_after_s(head.headers())):
                    self.status = status
                    self.swallow = True  # nothing reaches the client; the next attempt serves
                    return
            else:
                self._succeeded()
        conversion = self.conversion
        if conversion is None or self.client_left:
            super().on_upstream_head(head)
            return
        self.head_ns = time.time_ns()
        self.status = status = head.status
        if status >= 400 and self.scanner is not None:
            self.scanner = scan.UsageScanner(self.scan_api, False, False)
        headers = self.client_headers(head)
        # The answer names the model the provider served; the name asked for stays here.
        headers.append((b"x-plano-requested-model", quote(self.requested_model, safe=_MODEL_SAFE).encode()))
        if self.guard_warning:
            headers.append((b"x-plano-guardrail-warning", self.guard_warning.split(b": ", 1)[1].strip()))
        conversion.head(self.responder, status, headers)

    def _relay(self, data: bytes) -> None:
        conversion = self.conversion
        if conversion is None:
            self.responder.send_body(data)
        else:
            conversion.relay(data, self.responder)

    def _finish(self, outcome: str, tail: bytes) -> None:
        conversion = self.conversion
        if conversion is None:
            super()._finish(outcome, tail)
            return
        conversion.finish(self.responder, tail)
        self.responder.end()
        self._settle(outcome, self.status)


def upstream_request(
    exchange: Exchange,
    request_line: bytes,
    provider: ModelProvider,
    auth: tuple[Header, ...] | None,
    body: bytes,
    *,
    anthropic_version: bool = False,
) -> list[bytes]:
    """The bytes to send upstream: request line, the client's forwardable headers, the
    credentials (``auth``: the gateway's own; None = the client's one verified credential,
    passed through), the provider's configured headers, host and length.  A client's own
    anthropic-version wins."""
    client = client_headers(exchange)
    head = [request_line + b" HTTP/1.1\r\n", client.block]
    seen_version = client.seen_version
    if auth is None:
        credential = client.credential
        if credential is not None:
            if credential.secret.startswith(b"xproxy_"):
                # A gateway token is never a provider's key: it must not leave the gateway.
                raise Unauthorized("an xproxy_ token is only accepted on the managed endpoints")
            head.append(credential.line)
    for name, value in auth or ():
        if name == b"anthropic-version":
            if seen_version:
                continue
            seen_version = True
        head.append(name + b": " + value + b"\r\n")
    if anthropic_version and not seen_version:
        head.append(b"anthropic-version: 2023-06-01\r\n")
    for name, value in provider.extra_headers:
        head.append(name + b": " + value + b"\r\n")
    return finish_head(exchange, head, provider.host_header, body, client.seen_request_id)


def finish_head(
    exchange: Exchange, head: list[bytes], host: str, body: bytes, has_request_id: bool
) -> list[bytes]:
    """Close the upstream head: our request id unless the client sent one, host, length."""
    if not has_request_id:
        head.append(b"x-request-id: " + exchange.request_id.encode() + b"\r\n")
    head.append(b"host: " + host.encode() + b"\r\n")
    head.append(b"content-length: %d\r\n\r\n" % len(body))
    return [b"".join(head), body]


def origin_of(provider: ModelProvider, egress: str | None = None) -> Origin:
    return ("https" if provider.tls else "http", provider.host, provider.port, egress)
