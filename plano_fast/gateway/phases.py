"""The admission phases every mode composes: identify (the one credential, its hash),
admit (guardrails, rate limits, refusals of what cannot be billed).

Functions of an exchange, called by the mode modules between identify and rewrite; each
costs nothing when its feature is not configured (the caller checks ``ctx.<feature> is
not None`` first).  A new phase is one function here and one call in each mode that
takes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from plano_fast import guardrails, wire
from plano_fast.filter_chain import run_chain
from plano_fast.guard_models import latest_user_text
from plano_fast.credentials import ClientHeaders, read_client_headers
from plano_fast.errors import ApiFormat, BadRequestBody, ClientError, GatewayError, SpendingLimitExceeded
from plano_fast.ratelimit import Outcome

if TYPE_CHECKING:
    from plano_fast.gateway.relay import Exchange


_KEY_HASHES: dict[int, tuple[int, str]] = {}
_KEY_HASHES_MAX = 4096
_KEY_SALT = os.urandom(16)


def _key_hash(key: bytes) -> str:
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


#: ``_key_hash``; where built, its memo is read in C (``plano_fast/_new_credentials.pyx``:
#: the same entries, a miss handed to ``_key_hash``), without the twin's frame and the
#: salted copy of the key (~1k instructions a request)
key_hash: Callable[[bytes], str] = _key_hash
if os.environ.get(wire.PURE_ENV) != "1":  # the switch every compiled module obeys
    try:
        from plano_fast._new_credentials import install_key_hash
        from plano_fast._new_credentials import key_hash as _compiled_key_hash
    except ImportError:
        pass
    else:
        install_key_hash(_KEY_HASHES, _KEY_SALT, _key_hash)
        key_hash = _compiled_key_hash


def client_headers(exchange: Exchange) -> ClientHeaders:
    """The request's forwardable headers and its one credential, read once per exchange
    (``Unauthorized`` when it carries more than one; see plano_fast.credentials)."""
    client = exchange.client
    if client is None:
        request = exchange.request
        client = exchange.client = read_client_headers(request.headers, request.query, request.forward)
    return client


def identify_caller(exchange: Exchange) -> str | None:
    """Config mode's identify phase: the caller's key hash (per-key usage), refused with
    429 ``spending_limit_exceeded`` when a soft limit on that key is reached (the budget
    checker's blocked set: README "The three modes").  A caller without a key has no
    per-key limit.  One set test when some scope is blocked, nothing otherwise."""
    # (a plain request takes the compiled start, gateway/_config.pyx, which reads the
    # headers in place: only the others reach here, one call more for them)
    credential = client_headers(exchange).credential
    digest = key_hash(credential.secret) if credential is not None else None
    budget = exchange.ctx.budget
    if digest is not None and budget is not None:
        blocked = budget.blocked
        if blocked and ("key", digest) in blocked:
            raise SpendingLimitExceeded("this API key has exceeded its spending limit")
    return digest


def refuse_background(body: bytes) -> None:
    """A Responses request with ``background`` set runs on after its HTTP answer, and its
    usage is only readable later from an endpoint that is not metered: such a request
    could never be billed, so it is refused (400).  The member is looked for in every
    spelling a JSON parser accepts (escapes, duplicates)."""
    if body.find(b"ackground") < 0 and body.find(b"\\u") < 0:
        return  # neither the name nor an escape that could spell it
    try:
        members = json.loads(body, object_pairs_hook=lambda pairs: pairs)
    except (ValueError, RecursionError):  # (nested too deep for json: a RecursionError)
        return  # the scanner refuses it with a precise message
    if isinstance(members, list) and any(
        name == "background" and value not in (False, None) for name, value in members
    ):
        raise ClientError(
            "background responses are not supported through this gateway: their usage "
            "cannot be metered; send the request without 'background'"
        )


def guard(exchange: Exchange, fmt: str, provider: str | None, *, scanned: bool = False) -> None:
    """The DLP floor (plano_fast.guardrails) over the request's message text: raises
    GuardrailBlocked (403); redaction replaces ``request.body``.  Call it before the
    upstream request is built.

    The guardrails read only a body that passed the scanner (``scanned``: the mode has
    scanned it already; otherwise it is scanned here): one they cannot read -- gzip-encoded
    (``Content-Encoding: gzip``, which Google's front end decodes), not JSON -- would pass
    them unread (``apply_body`` finds nothing in it) and go upstream as it is, and a
    repeated member would be lost when a redaction re-encodes the body, while the provider
    might read it.  So such a body is the scanner's 400 here, in every mode and endpoint
    (Gemini's, whose model is in the path, and firewall mode's free ``count_tokens`` are
    not scanned otherwise)."""
    policy = exchange.ctx.guardrails
    if policy is None:
        return
    if not scanned:
        try:
            wire.scan_request(exchange.request.body)
        except wire.ScanError as exc:
            raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
    metrics = exchange.ctx.metrics
    try:
        outcome = guardrails.apply_body(policy, exchange.request.body, fmt, provider, exchange.project_id)
    except guardrails.GuardrailBlocked as exc:
        metrics.detected(exc.detections)
        raise
    if outcome.detections:
        metrics.detected(outcome.detections)
        exchange.guard_names = sorted({d for d, _ in outcome.detections})
    if outcome.body is not None:
        exchange.request.body = outcome.body
    if outcome.warn:
        exchange.guard_warning = b"x-plano-guardrail-warning: " + ",".join(outcome.warn).encode() + b"\r\n"


async def checked_start(exchange: Exchange, fmt: str) -> None:
    """Config mode with guard models or input filters (``ctx.prechecks``): before the
    request is routed, its caller is identified (a caller over its spending limit costs no
    guard call), Plano's input filters run in order (each may rewrite or refuse the body),
    then the guard models are asked, concurrently, about the latest user turn; then the
    exchange starts as any other (the DLP floor, routing, rate limits)."""
    ctx = exchange.ctx
    request = exchange.request
    try:
        key = exchange.key_hash = identify_caller(exchange)  # (a refusal's line names it)
        # (a stop while the filters or guards are out answers 503: Exchange.stop_waiting)
        ctx.waits(exchange)
        try:
            chains = ctx.filter_chains
            if chains is not None and chains.input:
                request.body = await run_chain(chains.input, chains, ctx.pool, request.body, request.path, ctx.metrics)
            guards = ctx.guards
            if guards is not None:
                try:
                    doc = json.loads(request.body)
                except ValueError:
                    doc = None  # refused by the scanner with a precise message
                if doc is not None:
                    await guards.check(latest_user_text(doc, fmt), (exchange.request_id, key))
        finally:
            ctx.waiting.pop(exchange, None)
        pending = exchange.start()
        if pending is not None:
            await pending
    except GatewayError as exc:  # a filter, a guard model, auth, ...: its access-log line
        exchange.refused(exc)
        raise


def rate_limit(exchange: Exchange, models: tuple[str | None, ...], key_hash: str | None = None) -> bool:
    """Admission against plano_fast.ratelimit: raises RateLimited when a bucket is
    full (in-process or instance-shared limits); True when the check must wait for Redis
    -- the caller then forwards through ``admitted_forward``.  ``key_hash``: the client
    key's hash when it is not ``exchange.key_hash`` (managed tokens)."""
    limits = exchange.ctx.ratelimits
    if limits is None:
        return False
    request = exchange.request
    buckets = limits.buckets(models, request.headers, exchange.project_id, key_hash or exchange.key_hash)
    if not buckets:
        return False
    exchange.rl_buckets = buckets
    # (the format, a property worked out from the path, only for the headers of an admitted
    # response: ratelimit_headers: always)
    anthropic = limits.headers_always and request.api_format is ApiFormat.ANTHROPIC
    if limits.asynchronous:  # Redis: admitted on this process's leases, or wait for the script
        head = limits.admit_leased(buckets, anthropic)
        if head is None:
            return True
        exchange.rl_head = head
        return False
    exchange.rl_head = limits.admit_now(buckets, anthropic)
    return False


async def admit_awaited(exchange: Exchange, models: tuple[str | None, ...], key_hash: str | None) -> None:
    """``rate_limit`` for a mode that awaits anyway (managed): check, in either backend.
    True from ``rate_limit``: the leases could not admit (it asked them), so only the Redis
    check is left."""
    if rate_limit(exchange, models, key_hash):
        ctx = exchange.ctx
        limits = ctx.ratelimits
        assert limits is not None and exchange.rl_buckets is not None
        ctx.waits(exchange)  # (a stop while Redis answers is a 503: Exchange.stop_waiting)
        try:
            exchange.rl_head = await limits.admit_remote(
                exchange.rl_buckets, exchange.request.api_format is ApiFormat.ANTHROPIC
            )
        finally:
            ctx.waiting.pop(exchange, None)


def admitted_forward(exchange: Exchange) -> Coroutine[Any, Any, None] | None:
    """Forward once the Redis check (``rate_limit`` returned True) admits; returns None
    (the modes return it as their pending work: there is none left for a task).

    No task: the check's reply runs a callback that forwards (or answers the refusal);
    a task per limited request cost ~10 µs and a loop turn.  Meanwhile the exchange is
    handed to the server as waiting on upstream callbacks (``on_client_gone`` set): a
    client that leaves is recorded as abandoned, and the reply then forwards nothing."""
    ctx = exchange.ctx
    limits = ctx.ratelimits
    buckets = exchange.rl_buckets
    assert limits is not None and buckets is not None
    responder = exchange.responder
    responder.on_client_gone = exchange._client_gone
    now_s = time.time()
    # A stop while the check is out answers 503 (Exchange.stop_waiting; no task to cancel:
    # the reply below then finds the exchange settled).
    waiting = ctx.waiting
    waiting[exchange] = None

    def checked(outcome: Outcome) -> None:
        waiting.pop(exchange, None)
        if exchange.outcome or not responder.client_connected:
            return  # the client left while the check was out (settled as abandoned)
        try:
            exchange.rl_head = limits.decide(buckets, outcome, now_s, exchange.request.api_format is ApiFormat.ANTHROPIC)
            pending = exchange.forward_now()
        except Exception as exc:  # noqa: BLE001 - answered by the server, as a raising handler's
            if isinstance(exc, GatewayError):
                exchange.refused(exc)  # over a limit: the refusal's access-log line
            responder.continue_in_task(_raise(exc), exchange.request)
            return
        if pending is not None:
            responder.continue_in_task(pending, exchange.request)

    try:
        limits.check(buckets, now_s, checked)
    except BaseException:
        waiting.pop(exchange, None)
        raise
    return None


async def _raise(exc: BaseException) -> None:
    """A refusal (or a bug) found in a callback, answered in the client's format by the
    server's task runner (the error counters and the access log see it as any other)."""
    raise exc
