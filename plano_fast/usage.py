"""The usage record every forwarded request ends as.

The request path builds one ``UsageEvent`` per exchange and hands it to a ``UsageSink``
without awaiting anything; the billing pipeline (queue, flusher, pricing) consumes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from plano_fast.wire import PURE_ENV

# Outcome of an exchange, as stored in usage_log.status.
STATUS_OK = "ok"  # provider answered 2xx and usage was read
STATUS_USAGE_MISSING = "usage_missing"  # 2xx but the response carried no usage block
STATUS_UPSTREAM_ERROR = "upstream_error"  # provider answered >= 400
STATUS_UPSTREAM_FAILED = "upstream_failed"  # connection failed / reset / timed out
STATUS_CLIENT_GONE = "client_disconnected"  # the client left; the provider's usage was read
#: the client left and the provider's usage could not be read: an estimate (request body
#: bytes / 4 in, the generated text seen / 4 out: plano_fast.usage_estimate), never zero
STATUS_CLIENT_GONE_ESTIMATED = "client_disconnected_estimated"
STATUS_CLIENT_ABANDONED = "client_abandoned"  # the client left before anything was forwarded
#: the gateway stopped (SIGTERM, ``drain_timeout_s`` over) while nothing of the request was
#: with a provider (still connecting, in a retry's backoff, at a guard model, an input
#: filter or a router model): answered 503, nothing billed; its attempts so far on the row
#: (0: never sent)
STATUS_GATEWAY_STOPPED = "gateway_stopped"
STATUS_NOT_BILLABLE = "not_billable"  # forwarded, but not an LLM call (e.g. GET /v1/models)
# forwarded on an operator's explicit list (firewall_unbilled_paths): not metered, so left
# unpriced (visible), never priced at zero
STATUS_UNBILLED = "unbilled"


#: usage_log.usage_api: which scan API read (and can re-derive) the row, by scan API number
USAGE_API_NAMES: dict[int, str] = {1: "openai_chat", 2: "openai_responses", 3: "anthropic", 4: "gemini"}
USAGE_API_NUMBERS: dict[str, int] = {name: number for number, name in USAGE_API_NAMES.items()}


@dataclass(slots=True)
class UsageEvent:
    """One exchange's usage, as read off the wire, in the row convention (README "Usage rows";
    plano_fast.wire._scan_py "Normalized usage"): ``input_tokens`` is every prompt token (cache
    reads and writes, tool-use prompt included), ``output_tokens`` every billed output token
    (reasoning included); the other counts are parts of those two.
    """

    request_id: str
    time_ns: int
    provider: str
    model: str | None
    streaming: bool
    status: str
    http_status: int
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    has_usage: bool = False
    project_id: str | None = None
    key_hash: str | None = None
    user_id: str | None = None
    token_id: str | None = None
    duration_ms: float = 0.0
    #: the response shape usage was read from: "openai", "anthropic" or "gemini"
    wire_format: str = "openai"
    tool_use_prompt_tokens: int = 0
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    #: the provider's usage object(s) as received (``UsageScanner.raw_usage``), UTF-8 text
    usage_raw: str | None = None
    #: the scan API that read it (a ``USAGE_API_NAMES`` value)
    usage_api: str | None = None
    #: managed mode: how much the cost exceeded the reservation held for it (0: within it)
    reservation_overrun_nano_usd: int = 0
    #: the model name the client asked for (an alias, say; ``model`` is the one served);
    #: None where the gateway does not route by model (firewall mode)
    requested_model: str | None = None
    #: upstream attempts made for the client request (1: nothing retried; 0: never sent)
    attempts: int = 1
    #: with more than one attempt, each one's HTTP status or error kind, in order
    #: ("503,connect_error,200"); None for one attempt (plano_fast.failover.attempt_trail)
    attempt_trail: str | None = None
    #: managed hard limit: what a 2xx answer whose usage was missing or cut short was charged
    #: (the bound, ``plano_fast.billing.rows.charge_of_incomplete``), set before its settle is
    #: written, so a row that falls back to the journaled path (the settle's write failed)
    #: is still charged it; None: priced from its usage
    bound_cost_nano_usd: int | None = None
    #: Anthropic server-side web searches (``server_tool_use.web_search_requests``): priced
    #: per request, not per token; part of the cost, kept in ``usage_raw`` (no column)
    web_search_requests: int = 0
    #: the service tier the provider says served the request (``Usage.service_tier``:
    #: ``"flex"``, ``"priority"``, ``"unknown"``; None: the standard tier): priced at its
    #: rates (plano_fast.pricing, "Service tiers"); kept in ``usage_raw`` (no column)
    service_tier: str | None = None
    #: Gemini's generated image tokens (the IMAGE entry of ``candidatesTokensDetails``), a
    #: part of ``output_tokens`` priced at the image output rate ($30 per 1M for
    #: gemini-2.5-flash-image, its text $2.50); kept in ``usage_raw`` (no column)
    image_output_tokens: int = 0
    #: Gemini's cached audio tokens (the AUDIO entry of ``cacheTokensDetails``), a part of
    #: ``cache_read_tokens`` priced at the cached audio rate; kept in ``usage_raw`` (no column)
    audio_cache_read_tokens: int = 0


UsageSink = Callable[[UsageEvent], None]


new_usage_event: Callable[..., UsageEvent] = UsageEvent
"""``UsageEvent(...)`` with every field positional, in field order: the request path's
constructor (``gateway.relay``).  Compiled where built (``plano_fast/_usage_event.pyx``:
the slots written in one C call, ~1k instructions against ~5.6k for the dataclass's
``__init__``), else the class itself."""
if os.environ.get(PURE_ENV) != "1":  # the switch every compiled module obeys
    try:
        from plano_fast._usage_event import new_usage_event  # noqa: E402 - needs UsageEvent defined
    except ImportError:
        pass
