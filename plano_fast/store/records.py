"""The store's records and errors: what every ``Store`` method takes and returns.

Units (README "Usage rows", and ``plano_fast.store``): money is ``int`` nano-USD, instants
``int`` nanoseconds since the epoch, period starts ``int`` epoch seconds, ids text UUIDs;
keys and tokens only ever as lowercase hex SHA-256.  No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from plano_fast.usage import UsageEvent

SCOPE_KINDS: Final = ("project", "user", "key")
PERIODS: Final = ("total", "monthly", "daily")
ENFORCEMENTS: Final = ("soft", "hard")

PRICE_STATUS_PENDING: Final = "pending"
PRICE_STATUS_PRICED: Final = "priced"
PRICE_STATUS_UNKNOWN: Final = "unpriced_unknown"
PRICE_STATUS_PARTIAL: Final = "priced_partial"
"""Priced (and counted), but a dimension of the usage had no price of its own in the entry
used and was charged at its fallback (see plano_fast.pricing): visible, re-priceable."""

_HEX64 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base class of every error a store raises on purpose."""


class SchemaMismatch(StoreError):
    """The database schema is not one this code can serve: refused at start, never retried
    (an operator's matter, not a fault that passes)."""


class SchemaTooOld(SchemaMismatch):
    """The database schema is older than this code needs (or absent)."""

    def __init__(self, current: int, required: int, kind: str) -> None:
        self.current = current
        self.required = required
        self.kind = kind
        where = "has no plano_fast schema" if current == 0 else f"is at schema version {current}"
        super().__init__(
            f"the {kind} database {where}; this plano-fast needs version {required}. "
            "Run `plano-fast migrate` (with the same config) to bring it up to date, "
            "then start the server again."
        )


class SchemaTooNew(SchemaMismatch):
    """The database records a migration newer than any this code ships: a newer release
    migrated it.  This code must not write to it -- its statements may name what that
    migration changed (schema 11's counter primary key, say), and fail or write wrongly."""

    def __init__(self, current: int, known: int, kind: str) -> None:
        self.current = current
        self.known = known
        self.kind = kind
        super().__init__(
            f"the {kind} database is at schema version {current}, newer than this plano-fast knows "
            f"(its newest migration is {known}): a newer release migrated it. Run that release "
            "(or a newer one) against this database; nothing was written to it."
        )


class AlreadyExists(StoreError):
    """A unique key (id, key hash, token hash, name, email...) is already taken."""


class MissingReference(StoreError):
    """A row refers to something that does not exist (project, user, pipe, key...)."""


class InvalidValue(StoreError, ValueError):
    """A value the schema does not accept (unknown period, raw key instead of a hash...)."""


# --------------------------------------------------------------------------- value checks


def is_sha256_hex(value: str) -> bool:
    return len(value) == 64 and _HEX64.fullmatch(value) is not None


def _check_hash(value: str, what: str) -> None:
    if not isinstance(value, str) or not is_sha256_hex(value):
        raise InvalidValue(f"{what} must be a lowercase hex SHA-256 (64 characters), not a raw secret")


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise InvalidValue(f"unknown {what} {value!r} (expected one of {', '.join(choices)})")


def _check_money(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"{what} must be an integer number of nano-USD, got {type(value).__name__}")
    if value < 0:
        raise InvalidValue(f"{what} must not be negative")

# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class UsageRow:
    """One ``usage_log`` row, in the row convention (README "Usage rows").

    ``duration_us`` is optional.  ``row_id`` is filled in on reads.  On writes a priced row
    keeps ``price_status`` ``priced_partial``, any other priced row is ``priced`` and an
    unpriced one ``pending``.  ``usage_raw``: the provider's usage object(s) as received
    (``UsageScanner.raw_usage``), ``usage_api`` the scan API that read them (what
    ``plano-fast usage reprice`` re-derives the row from); ``price_entry`` the price used.
    ``reservation_overrun_nano_usd``: managed mode, how much the cost exceeded the
    reservation held for the request (None: within it, or no reservation).
    ``requested_model``: the model name the client asked for (an alias, say) where the
    gateway routes by it; ``model`` is the one the provider served.
    ``attempts``: upstream attempts made for the client request (1: none retried; None on
    rows written before schema 7); ``attempt_trail``: with more than one, each attempt's
    HTTP status or error kind in order ("503,connect_error,200"), bounded (``failover``).
    """

    request_id: str
    time_ns: int
    project_id: str | None
    user_id: str | None
    key_hash: str | None
    token_id: str | None
    provider: str
    model: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    streaming: bool
    status: str
    http_status: int
    priced: bool
    cost_nano_usd: int | None
    duration_us: int = 0
    price_status: str = PRICE_STATUS_PENDING
    row_id: int | None = None
    tool_use_prompt_tokens: int = 0
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    usage_api: str | None = None
    usage_raw: str | None = None
    price_entry: str | None = None
    reservation_overrun_nano_usd: int | None = None
    requested_model: str | None = None
    attempts: int | None = None
    attempt_trail: str | None = None

    @classmethod
    def from_event(
        cls,
        event: UsageEvent,
        *,
        cost_nano_usd: int | None = None,
        price_status: str = PRICE_STATUS_PENDING,
        price_entry: str | None = None,
        user_id: str | None = None,
        token_id: str | None = None,
    ) -> UsageRow:
        """The row of a request-path ``UsageEvent``: the one place an event becomes a row
        (pricing it is ``plano_fast.billing.rows``).  Priced iff ``cost_nano_usd`` is given;
        ``user_id`` / ``token_id`` override the event's when given.

        Runs per event on the flusher's drain, so it fills the slots itself instead of
        passing 28 arguments on to ``__init__`` (one frame less, ~100 ns an event); the
        dataclass has no ``__post_init__`` or conversions, so this is what ``__init__``
        does.  A new field must be set here: tests/test_billing_rows.py checks every one is.
        """
        row = _new_object(cls)
        row.request_id = event.request_id
        row.time_ns = event.time_ns
        row.project_id = event.project_id
        row.user_id = event.user_id if user_id is None else user_id
        row.key_hash = event.key_hash
        row.token_id = event.token_id if token_id is None else token_id
        row.provider = event.provider
        row.model = event.model
        row.input_tokens = event.input_tokens
        row.output_tokens = event.output_tokens
        row.cache_read_tokens = event.cache_read_tokens
        row.cache_write_tokens = event.cache_write_tokens
        row.reasoning_tokens = event.reasoning_tokens
        row.streaming = event.streaming
        row.status = event.status
        row.http_status = event.http_status
        row.priced = cost_nano_usd is not None
        row.cost_nano_usd = cost_nano_usd
        d = event.duration_ms * 1000
        # max(0, round(d)): round() is 0 up to 0.5 (half to even), and so is max() below 0.
        row.duration_us = round(d) if d > 0.5 else 0
        row.price_status = price_status
        row.row_id = None
        row.tool_use_prompt_tokens = event.tool_use_prompt_tokens
        row.cache_write_1h_tokens = event.cache_write_1h_tokens
        row.audio_input_tokens = event.audio_input_tokens
        row.audio_output_tokens = event.audio_output_tokens
        row.usage_api = event.usage_api
        row.usage_raw = event.usage_raw
        row.price_entry = price_entry
        row.reservation_overrun_nano_usd = event.reservation_overrun_nano_usd or None
        row.requested_model = event.requested_model
        row.attempts = event.attempts
        row.attempt_trail = event.attempt_trail
        return row


_new_object = object.__new__

usage_row_from_event = UsageRow.from_event
"""The name the store exported before ``UsageRow.from_event``; the same function."""


class CounterKey(NamedTuple):
    """A spending counter's primary key.  A named tuple, not a dataclass: the billing
    write hashes these as dict keys ~30 times per usage write (deltas per scope and
    period, then the counter updates), and a tuple's hash and equality run in C where a
    frozen dataclass's ``__hash__`` is a Python call (issue 27: ~1 µs each at
    concurrency 1, under cProfile the largest Python cost of the write)."""

    scope_kind: str  # 'project' | 'user' | 'key'
    scope_id: str
    period: str  # 'total' | 'monthly' | 'daily'
    period_start: int  # epoch seconds


@dataclass(slots=True)
class CounterRow:
    scope_kind: str
    scope_id: str
    period: str
    period_start: int
    spent_nano_usd: int
    reserved_nano_usd: int

    @property
    def key(self) -> CounterKey:
        return CounterKey(self.scope_kind, self.scope_id, self.period, self.period_start)


@dataclass(frozen=True, slots=True)
class BudgetTarget:
    """One counter a reservation must fit under: ``spent + reserved + amount <= limit``."""

    scope_kind: str
    scope_id: str
    period: str
    period_start: int
    limit_nano_usd: int

    @property
    def key(self) -> CounterKey:
        return CounterKey(self.scope_kind, self.scope_id, self.period, self.period_start)


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    amount_nano_usd: int
    counters: tuple[CounterKey, ...]
    expires_at_ns: int
    #: the gateway instance holding it (``Store.heartbeat``); None: released on expiry only
    owner: str | None = None


@dataclass(slots=True)
class Project:
    id: str
    name: str
    created_at_ns: int


@dataclass(slots=True)
class User:
    id: str
    name: str
    email: str | None
    created_at_ns: int


@dataclass(slots=True)
class RegisteredApiKey:
    key_hash: str
    project_id: str
    provider: str
    upstream_url: str
    display_name: str | None
    is_active: bool
    egress_ip: str | None
    created_at_ns: int
    updated_at_ns: int


@dataclass(slots=True)
class SpendingLimit:
    id: str
    scope_kind: str
    scope_id: str
    period: str
    limit_nano_usd: int
    enforcement: str  # 'soft' | 'hard'
    is_active: bool
    created_at_ns: int
    updated_at_ns: int


@dataclass(slots=True)
class CustomPrice:
    id: str
    project_id: str | None  # None = global override
    model: str
    input_per_mtok_nano_usd: int
    output_per_mtok_nano_usd: int
    cache_read_per_mtok_nano_usd: int
    cache_write_per_mtok_nano_usd: int
    created_at_ns: int
    updated_at_ns: int


@dataclass(slots=True)
class ProxyToken:
    id: str
    token_hash: str
    user_id: str | None
    project_id: str
    pipe_id: str | None
    name: str | None
    expires_at_ns: int | None
    revoked: bool
    revoked_at_ns: int | None
    last_used_at_ns: int | None
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class PipeTarget:
    provider: str
    model: str | None = None
    model_filter: str | None = None
    provider_key_id: str | None = None
    weight: int = 1


@dataclass(slots=True)
class Pipe:
    id: str
    project_id: str
    name: str
    targets: tuple[PipeTarget, ...]
    created_at_ns: int


@dataclass(slots=True)
class ProviderKey:
    id: str
    project_id: str | None  # None = shared by all projects
    provider: str
    display_name: str | None
    ciphertext: bytes
    nonce: bytes
    key_id: str  # which encryption key sealed it
    is_active: bool
    created_at_ns: int
    revoked_at_ns: int | None


@dataclass(slots=True)
class UsageTotal:
    """Usage aggregated per UTC day, provider and model."""

    day_start: int  # epoch seconds
    provider: str
    model: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_nano_usd: int  # priced rows only
    unpriced_requests: int


PriceResult = tuple[int, int | None, str] | tuple[int, int | None, str, str | None]
"""What ``Store.set_prices`` takes per row: id, cost or None, status, optionally the entry."""
