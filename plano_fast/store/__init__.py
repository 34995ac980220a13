"""Persistence: one asynchronous ``Store`` interface, two implementations.

* ``SqliteStore`` (``plano_fast.store.sqlite``): the embedded default, one file, WAL mode;
  every sqlite3 call runs on one dedicated thread that owns the connection.
* ``PostgresStore`` (``plano_fast.store.postgres``): asyncpg pool, bulk writes; what many
  gateway processes share.

The request path never calls a store: background loops (usage flusher, price calculator,
budget checker, registry reload) and the admin API do.  The one exception by design is a
managed-mode hard budget, whose ``reserve`` / ``settle`` is the documented price of "no
overshoot".

Units, identical in both backends:

* money is ``int`` nano-USD (1e-9 USD); prices are ``int`` nano-USD per 1,000,000 tokens;
* instants are ``int`` nanoseconds since the Unix epoch (``*_ns``);
* spending-period starts are ``int`` seconds since the epoch: 0 for ``total``, the UTC
  month start for ``monthly``, the UTC day start for ``daily`` (see ``period_start``);
* ids are text UUIDs generated here; client keys and proxy tokens are only ever handled as
  lowercase hex SHA-256 (``key_hash``), never raw.

Invariant kept by construction: for every scope and period, ``spending_counters.spent``
equals the sum of ``cost_nano_usd`` of the priced ``usage_log`` rows in it, because the
only writes that price a row (``write_usage``, ``set_prices``, ``settle``) add to the
counters in the same transaction, for exactly the rows they inserted or priced.
"""

from __future__ import annotations

import abc
import datetime as _dt
import functools
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

if TYPE_CHECKING:
    from plano_fast.usage import UsageEvent

REQUIRED_SCHEMA_VERSION: Final = 4
"""The schema version this code needs; ``check_schema`` refuses anything older."""

SCOPE_KINDS: Final = ("project", "user", "key")
PERIODS: Final = ("total", "monthly", "daily")
ENFORCEMENTS: Final = ("soft", "hard")

PRICE_STATUS_PENDING: Final = "pending"
PRICE_STATUS_PRICED: Final = "priced"
PRICE_STATUS_UNKNOWN: Final = "unpriced_unknown"
PRICE_STATUS_PARTIAL: Final = "priced_partial"
"""Priced (and counted), but a dimension of the usage had no price of its own in the entry
used and was charged at its fallback (see plano_fast.pricing): visible, re-priceable."""

NS_PER_S: Final = 1_000_000_000
_NS_PER_DAY: Final = 86_400 * NS_PER_S
_HEX64 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base class of every error a store raises on purpose."""


class SchemaTooOld(StoreError):
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


class AlreadyExists(StoreError):
    """A unique key (id, key hash, token hash, name, email...) is already taken."""


class MissingReference(StoreError):
    """A row refers to something that does not exist (project, user, pipe, key...)."""


class InvalidValue(StoreError, ValueError):
    """A value the schema does not accept (unknown period, raw key instead of a hash...)."""


# --------------------------------------------------------------------------- time helpers


def now_ns() -> int:
    return time.time_ns()


def new_id() -> str:
    return str(uuid.uuid4())


def day_start(time_ns: int) -> int:
    """UTC day start, in epoch seconds, of an instant in epoch nanoseconds."""
    return (time_ns // _NS_PER_DAY) * 86_400


@functools.lru_cache(maxsize=4096)
def _month_start_of_day(day_start_s: int) -> int:
    d = _dt.datetime.fromtimestamp(day_start_s, _dt.UTC)
    return int(_dt.datetime(d.year, d.month, 1, tzinfo=_dt.UTC).timestamp())


def month_start(time_ns: int) -> int:
    """UTC month start, in epoch seconds, of an instant in epoch nanoseconds."""
    return _month_start_of_day(day_start(time_ns))


def period_start(period: str, time_ns: int) -> int:
    """Start (epoch seconds) of the ``period`` containing ``time_ns``; 0 for ``total``."""
    if period == "total":
        return 0
    if period == "monthly":
        return month_start(time_ns)
    if period == "daily":
        return day_start(time_ns)
    raise InvalidValue(f"unknown period {period!r} (expected one of {', '.join(PERIODS)})")


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


# --------------------------------------------------------------------------- rows


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


def usage_row_from_event(
    event: UsageEvent,
    *,
    user_id: str | None = None,
    token_id: str | None = None,
    cost_nano_usd: int | None = None,
    price_status: str = PRICE_STATUS_PENDING,
    price_entry: str | None = None,
) -> UsageRow:
    """The row for a request-path ``UsageEvent``; priced iff ``cost_nano_usd`` is given."""
    d = event.duration_ms * 1000
    return UsageRow(
        event.request_id,
        event.time_ns,
        event.project_id,
        event.user_id if user_id is None else user_id,
        event.key_hash,
        event.token_id if token_id is None else token_id,
        event.provider,
        event.model,
        event.input_tokens,
        event.output_tokens,
        event.cache_read_tokens,
        event.cache_write_tokens,
        event.reasoning_tokens,
        event.streaming,
        event.status,
        event.http_status,
        cost_nano_usd is not None,
        cost_nano_usd,
        # max(0, round(d)): round() is 0 up to 0.5 (half to even), and so is max() below 0.
        round(d) if d > 0.5 else 0,
        price_status,
        None,
        event.tool_use_prompt_tokens,
        event.cache_write_1h_tokens,
        event.audio_input_tokens,
        event.audio_output_tokens,
        event.usage_api,
        event.usage_raw,
        price_entry,
        event.reservation_overrun_nano_usd or None,
    )


@dataclass(frozen=True, slots=True, order=True)
class CounterKey:
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


# --------------------------------------------------------------------------- the interface


class Store(abc.ABC):
    """The persistence interface.  All methods are coroutines; none may be called from the
    request path except ``reserve`` / ``settle`` / ``release`` (managed-mode hard budgets).
    """

    kind: str  # "sqlite" | "postgres"

    # -- lifecycle / schema -------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def terminate(self) -> None:
        """Drop every connection at once, waiting for nothing: for a stop whose bound ran
        out while the database hangs.  The store is closed afterwards."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def applied_migrations(self) -> list[int]:
        """Versions recorded in ``schema_migrations`` (empty if the table is absent)."""

    @abc.abstractmethod
    async def apply_migration(self, version: int, name: str, sql: str) -> bool:
        """Run one migration and record it, in one transaction.  False if it was already
        applied (another process got there first)."""

    async def schema_version(self) -> int:
        return max(await self.applied_migrations(), default=0)

    async def check_schema(self) -> None:
        """Raise ``SchemaTooOld`` unless the schema is at least ``REQUIRED_SCHEMA_VERSION``."""
        current = await self.schema_version()
        if current < REQUIRED_SCHEMA_VERSION:
            raise SchemaTooOld(current, REQUIRED_SCHEMA_VERSION, self.kind)

    # -- usage and billing ----------------------------------------------------------------

    @abc.abstractmethod
    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        """Insert rows in ONE transaction, skipping request ids already stored (a replayed or
        retried batch never duplicates), and add the cost of the inserted priced rows to
        the spending counters of their project, user and key, for the periods 'total',
        'monthly' and 'daily' of the row's time.  Returns how many rows were inserted."""

    def rejects_data(self, exc: BaseException) -> bool:
        """Whether ``write_usage`` failed because of what the rows hold (a value out of
        range, a broken constraint) rather than because the store is unreachable: the
        flusher then sets the offending rows aside instead of retrying them forever."""
        return isinstance(exc, (ValueError, TypeError, OverflowError))

    @abc.abstractmethod
    async def fetch_unpriced(self, limit: int) -> list[UsageRow]:
        """Oldest rows not priced and not yet attempted (``row_id`` set)."""

    @abc.abstractmethod
    async def set_prices(self, results: Sequence[PriceResult]) -> int:
        """``(row_id, cost_nano_usd or None, price_status[, price_entry])`` per row, in ONE
        transaction (``price_entry``: the price used, see ``UsageRow``).

        A cost marks the row priced and adds it to the counters; ``None`` leaves it
        unpriced with the given status (e.g. ``'unpriced_unknown'``) and stamps
        ``price_attempted_at_ns`` so it is not fetched again (see ``requeue_unpriced``).
        Rows already priced are left alone, so repeating a call never double counts.
        Returns how many rows became priced."""

    @abc.abstractmethod
    async def requeue_unpriced(self, *, model: str | None = None, project_id: str | None = None) -> int:
        """Make attempted-but-unpriced rows fetchable again (e.g. after a price is added)."""

    @abc.abstractmethod
    async def load_counters(self, *, at_ns: int | None = None) -> list[CounterRow]:
        """All counters, or with ``at_ns`` only those of the periods containing it."""

    @abc.abstractmethod
    async def get_counter(self, key: CounterKey) -> CounterRow | None: ...

    @abc.abstractmethod
    async def sum_usage_cost(
        self,
        scope_id: str,
        *,
        scope_kind: str = "project",
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> int:
        """Sum of priced costs in ``usage_log`` for a scope, ``start_ns <= time < end_ns``."""

    @abc.abstractmethod
    async def usage_after(self, after_row_id: int, limit: int) -> list[UsageRow]:
        """Rows with ``row_id > after_row_id``, in id order (a full scan in pages)."""

    @abc.abstractmethod
    async def apply_reprice(self, rows: Sequence[UsageRow]) -> int:
        """Rewrite rows by ``row_id`` (token columns, priced, cost, price_status, price_entry)
        in ONE transaction, and move the spending counters by each row's change of counted
        cost (the cost of a priced row, else 0), read inside the transaction: counters stay
        equal to the log whatever else priced the rows meanwhile.  Returns the rows updated.
        """

    @abc.abstractmethod
    async def recent_usage(self, project_id: str | None, limit: int = 100) -> list[UsageRow]:
        """Newest first; ``project_id=None`` means every project."""

    @abc.abstractmethod
    async def usage_totals(
        self,
        project_id: str | None = None,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[UsageTotal]:
        """Totals per UTC day, provider and model, ordered by those."""

    # -- hard budgets (managed mode) ------------------------------------------------------

    @abc.abstractmethod
    async def reserve(
        self,
        targets: Sequence[BudgetTarget],
        amount_nano_usd: int,
        *,
        ttl_s: float = 600.0,
        owner: str | None = None,
    ) -> Reservation | None:
        """Atomically add ``amount`` to ``reserved`` of every target counter if, for each,
        ``spent + reserved + amount <= limit``; otherwise change nothing and return None.
        Safe under any concurrency, across processes and hosts.  ``owner`` is the holding
        gateway instance's id (see ``heartbeat`` and ``release_orphaned``)."""

    @abc.abstractmethod
    async def settle(self, reservation: Reservation, usage: UsageRow) -> bool:
        """Record the request's usage row (as ``write_usage``: its cost, if priced, goes to
        ``spent``) and release the reservation, in ONE transaction, so spend moves from
        ``reserved`` to ``spent`` with no window in between.  False if the reservation
        was already settled, released or expired (the row is still recorded)."""

    @abc.abstractmethod
    async def release(self, reservation: Reservation) -> bool:
        """Give the reserved amount back.  False if already settled or released."""

    @abc.abstractmethod
    async def release_expired(self, now_ns: int | None = None) -> int:
        """Release reservations past their expiry (a crashed process's); returns how many."""

    @abc.abstractmethod
    async def release_orphaned(self, stale_before_ns: int, now_ns: int | None = None) -> int:
        """Release reservations made before ``stale_before_ns`` whose owner has no
        heartbeat since then (a killed or stopped instance); forget such instances.
        Returns how many reservations were released."""

    @abc.abstractmethod
    async def heartbeat(self, instance_id: str, host: str, pid: int, started_at_ns: int) -> None:
        """Record that gateway instance ``instance_id`` is alive now."""

    @abc.abstractmethod
    async def forget_instance(self, instance_id: str) -> None:
        """A gateway instance stopped: its reservations left open become orphans at once."""

    # -- projects / users ----------------------------------------------------------------

    @abc.abstractmethod
    async def create_project(self, name: str, *, project_id: str | None = None) -> Project: ...

    @abc.abstractmethod
    async def get_project(self, project_id: str) -> Project | None: ...

    @abc.abstractmethod
    async def list_projects(self) -> list[Project]: ...

    @abc.abstractmethod
    async def delete_project(self, project_id: str) -> bool:
        """Deletes the project, its keys, tokens, pipes, provider keys, prices and limits.
        Usage and counters are kept."""

    @abc.abstractmethod
    async def create_user(
        self, name: str, *, email: str | None = None, user_id: str | None = None
    ) -> User: ...

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> User | None: ...

    @abc.abstractmethod
    async def list_users(self) -> list[User]: ...

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> bool: ...

    # -- registered API keys (firewall mode) ---------------------------------------------

    @abc.abstractmethod
    async def register_api_key(
        self,
        key_hash: str,
        project_id: str,
        provider: str,
        upstream_url: str,
        display_name: str | None = None,
        egress_ip: str | None = None,
    ) -> RegisteredApiKey:
        """``key_hash`` is the lowercase hex SHA-256 of the client's key; raw keys are refused."""

    @abc.abstractmethod
    async def get_api_key(self, key_hash: str) -> RegisteredApiKey | None: ...

    @abc.abstractmethod
    async def list_api_keys(self, project_id: str | None = None) -> list[RegisteredApiKey]: ...

    @abc.abstractmethod
    async def list_active_api_keys(self) -> list[RegisteredApiKey]: ...

    @abc.abstractmethod
    async def set_api_key_active(self, key_hash: str, active: bool) -> bool: ...

    async def deactivate_api_key(self, key_hash: str) -> bool:
        return await self.set_api_key_active(key_hash, False)

    @abc.abstractmethod
    async def delete_api_key(self, key_hash: str) -> bool: ...

    # -- spending limits ------------------------------------------------------------------

    @abc.abstractmethod
    async def set_spending_limit(
        self,
        scope_kind: str,
        scope_id: str,
        period: str,
        limit_nano_usd: int,
        enforcement: str = "soft",
        *,
        active: bool = True,
    ) -> SpendingLimit:
        """Create or replace the limit of (scope, period)."""

    @abc.abstractmethod
    async def list_spending_limits(
        self, scope_kind: str | None = None, scope_id: str | None = None
    ) -> list[SpendingLimit]: ...

    @abc.abstractmethod
    async def list_active_spending_limits(self) -> list[SpendingLimit]: ...

    @abc.abstractmethod
    async def delete_spending_limit(self, limit_id: str) -> bool: ...

    # -- custom pricing -------------------------------------------------------------------

    @abc.abstractmethod
    async def set_custom_price(
        self,
        model: str,
        *,
        project_id: str | None = None,
        input_per_mtok_nano_usd: int,
        output_per_mtok_nano_usd: int,
        cache_read_per_mtok_nano_usd: int = 0,
        cache_write_per_mtok_nano_usd: int = 0,
    ) -> CustomPrice:
        """Create or replace the price of ``model`` for a project (or globally if None)."""

    @abc.abstractmethod
    async def list_custom_prices(self) -> list[CustomPrice]:
        """Every override, global ones first."""

    @abc.abstractmethod
    async def delete_custom_price(self, price_id: str) -> bool: ...

    # -- proxy tokens / pipes / provider keys (managed mode) -------------------------------

    @abc.abstractmethod
    async def create_proxy_token(
        self,
        token_hash: str,
        project_id: str,
        *,
        user_id: str | None = None,
        pipe_id: str | None = None,
        name: str | None = None,
        expires_at_ns: int | None = None,
    ) -> ProxyToken: ...

    @abc.abstractmethod
    async def get_proxy_token(self, token_hash: str) -> ProxyToken | None: ...

    @abc.abstractmethod
    async def list_proxy_tokens(
        self, project_id: str | None = None, user_id: str | None = None
    ) -> list[ProxyToken]: ...

    @abc.abstractmethod
    async def list_active_proxy_tokens(self, now_ns: int | None = None) -> list[ProxyToken]:
        """Not revoked and not expired: what a token cache reload wants."""

    @abc.abstractmethod
    async def revoke_proxy_token(self, token_id: str) -> bool: ...

    @abc.abstractmethod
    async def touch_proxy_tokens(self, last_used: Mapping[str, int]) -> None:
        """Batched ``last_used_at_ns`` update: token id -> time (only ever moves forward)."""

    @abc.abstractmethod
    async def create_pipe(
        self, project_id: str, name: str, targets: Sequence[PipeTarget]
    ) -> Pipe: ...

    @abc.abstractmethod
    async def get_pipe(self, pipe_id: str) -> Pipe | None: ...

    @abc.abstractmethod
    async def list_pipes(self, project_id: str | None = None) -> list[Pipe]: ...

    @abc.abstractmethod
    async def delete_pipe(self, pipe_id: str) -> bool: ...

    @abc.abstractmethod
    async def create_provider_key(
        self,
        provider: str,
        ciphertext: bytes,
        nonce: bytes,
        key_id: str,
        *,
        project_id: str | None = None,
        display_name: str | None = None,
    ) -> ProviderKey: ...

    @abc.abstractmethod
    async def get_provider_key(self, provider_key_id: str) -> ProviderKey | None: ...

    @abc.abstractmethod
    async def list_provider_keys(self, project_id: str | None = None) -> list[ProviderKey]: ...

    @abc.abstractmethod
    async def revoke_provider_key(self, provider_key_id: str) -> bool: ...


# --------------------------------------------------------------------------- shared SQL

# Column lists, in dataclass field order.
_USAGE_COLS = (
    "request_id, time_ns, project_id, user_id, key_hash, token_id, provider, model, "
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, "
    "streaming, status, http_status, priced, cost_nano_usd, duration_us, price_status, id, "
    "tool_use_prompt_tokens, cache_write_1h_tokens, audio_input_tokens, audio_output_tokens, "
    "usage_api, usage_raw, price_entry, reservation_overrun_nano_usd"
)
_PROJECT_COLS = "id, name, created_at_ns"
_USER_COLS = "id, name, email, created_at_ns"
_KEY_COLS = (
    "key_hash, project_id, provider, upstream_url, display_name, is_active, egress_ip, "
    "created_at_ns, updated_at_ns"
)
_LIMIT_COLS = (
    "id, scope_kind, scope_id, period, limit_nano_usd, enforcement, is_active, "
    "created_at_ns, updated_at_ns"
)
_PRICE_COLS = (
    "id, project_id, model, input_per_mtok_nano_usd, output_per_mtok_nano_usd, "
    "cache_read_per_mtok_nano_usd, cache_write_per_mtok_nano_usd, created_at_ns, updated_at_ns"
)
_TOKEN_COLS = (
    "id, token_hash, user_id, project_id, pipe_id, name, expires_at_ns, revoked, "
    "revoked_at_ns, last_used_at_ns, created_at_ns"
)
_PKEY_COLS = (
    "id, project_id, provider, display_name, ciphertext, nonce, key_id, is_active, "
    "created_at_ns, revoked_at_ns"
)
_COUNTER_COLS = "scope_kind, scope_id, period, period_start, spent_nano_usd, reserved_nano_usd"
_SCOPE_COLUMN = {"project": "project_id", "user": "user_id", "key": "key_hash"}

Row = Sequence[Any]
Stmt = tuple[str, Sequence[object]]


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def usage_from_row(r: Row) -> UsageRow:
    return UsageRow(
        str(r[0]), int(r[1]), r[2], r[3], r[4], r[5], str(r[6]), r[7],
        int(r[8]), int(r[9]), int(r[10]), int(r[11]), int(r[12]),
        bool(r[13]), str(r[14]), int(r[15]), bool(r[16]), _opt_int(r[17]),
        int(r[18]), str(r[19]), int(r[20]),
        int(r[21]), int(r[22]), int(r[23]), int(r[24]), r[25], r[26], r[27], _opt_int(r[28]),
    )  # fmt: skip


def counter_from_row(r: Row) -> CounterRow:
    return CounterRow(str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]))


def _project(r: Row) -> Project:
    return Project(str(r[0]), str(r[1]), int(r[2]))


def _user(r: Row) -> User:
    return User(str(r[0]), str(r[1]), r[2], int(r[3]))


def _api_key(r: Row) -> RegisteredApiKey:
    return RegisteredApiKey(
        str(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], bool(r[5]), r[6], int(r[7]), int(r[8])
    )


def _limit(r: Row) -> SpendingLimit:
    return SpendingLimit(
        str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), str(r[5]), bool(r[6]),
        int(r[7]), int(r[8]),
    )  # fmt: skip


def _price(r: Row) -> CustomPrice:
    return CustomPrice(
        str(r[0]), r[1], str(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]), int(r[8])
    )


def _token(r: Row) -> ProxyToken:
    return ProxyToken(
        str(r[0]), str(r[1]), r[2], str(r[3]), r[4], r[5], _opt_int(r[6]), bool(r[7]),
        _opt_int(r[8]), _opt_int(r[9]), int(r[10]),
    )  # fmt: skip


def _provider_key(r: Row) -> ProviderKey:
    return ProviderKey(
        str(r[0]), r[1], str(r[2]), r[3], bytes(r[4]), bytes(r[5]), str(r[6]), bool(r[7]),
        int(r[8]), _opt_int(r[9]),
    )  # fmt: skip


def _where_equal(sql: str, **filters: object) -> tuple[str, list[object]]:
    """``sql`` with ``WHERE col = ? AND ...`` for the filters that are not None."""
    given = [(column, value) for column, value in filters.items() if value is not None]
    if not given:
        return sql, []
    clause = " AND ".join(f"{column} = ?" for column, _ in given)
    return f"{sql} WHERE {clause}", [value for _, value in given]


DaySums = dict[tuple[str | None, str | None, str | None, int], int]
"""Priced cost summed per (project_id, user_id, key_hash, UTC day number)."""


def add_day_sums(rows: Sequence[UsageRow], sums: DaySums) -> None:
    """Add what priced ``rows`` cost to ``sums`` (the first half of ``counter_deltas``)."""
    get = sums.get
    for row in rows:
        cost = row.cost_nano_usd
        if not row.priced or not cost:
            continue
        k = (row.project_id, row.user_id, row.key_hash, row.time_ns // _NS_PER_DAY)
        sums[k] = get(k, 0) + cost


def deltas_of_day_sums(sums: DaySums) -> dict[CounterKey, int]:
    """The counter deltas of ``add_day_sums`` results: per scope and period."""
    per_day: dict[tuple[str, str, int], int] = {}  # per scope and UTC day
    for (project_id, user_id, key_hash, day), cost in sums.items():
        if project_id is not None:
            k = ("project", project_id, day)
            per_day[k] = per_day.get(k, 0) + cost
        if user_id is not None:
            k = ("user", user_id, day)
            per_day[k] = per_day.get(k, 0) + cost
        if key_hash is not None:
            k = ("key", key_hash, day)
            per_day[k] = per_day.get(k, 0) + cost
    deltas: dict[CounterKey, int] = {}
    for (kind, scope_id, day), cost in per_day.items():
        start = day * 86_400
        for key in (
            CounterKey(kind, scope_id, "total", 0),
            CounterKey(kind, scope_id, "monthly", _month_start_of_day(start)),
            CounterKey(kind, scope_id, "daily", start),
        ):
            deltas[key] = deltas.get(key, 0) + cost
    return deltas


def counter_deltas(rows: Sequence[UsageRow]) -> dict[CounterKey, int]:
    """What priced rows add to the counters: per scope (project, user, key) and period."""
    sums: DaySums = {}
    add_day_sums(rows, sums)
    return deltas_of_day_sums(sums)


PriceResult = tuple[int, int | None, str] | tuple[int, int | None, str, str | None]
"""What ``Store.set_prices`` takes per row: id, cost or None, status, optionally the entry."""


def price_result_entry(result: PriceResult) -> str | None:
    return result[3] if len(result) > 3 else None


REPRICE_COLUMNS: Final = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "tool_use_prompt_tokens", "cache_write_1h_tokens", "audio_input_tokens", "audio_output_tokens",
    "priced", "cost_nano_usd", "price_status", "price_entry",
)  # fmt: skip
"""What ``apply_reprice`` rewrites, in this order (``reprice_values``)."""


def reprice_values(row: UsageRow) -> tuple[object, ...]:
    """``REPRICE_COLUMNS`` of a row to rewrite (cost only when priced)."""
    priced = bool(row.priced)
    return (
        row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_write_tokens,
        row.reasoning_tokens, row.tool_use_prompt_tokens, row.cache_write_1h_tokens,
        row.audio_input_tokens, row.audio_output_tokens, priced,
        row.cost_nano_usd if priced else None, written_price_status(row), row.price_entry,
    )  # fmt: skip


def reprice_deltas(rows: Sequence[UsageRow], counted_before: dict[int, int]) -> dict[CounterKey, int]:
    """Counter deltas of rewriting ``rows``: new counted cost minus ``counted_before[row_id]``."""
    moved: list[UsageRow] = []
    for row in rows:
        assert row.row_id is not None
        after = row.cost_nano_usd if row.priced and row.cost_nano_usd else 0
        delta = after - counted_before.get(row.row_id, 0)
        if delta:
            moved.append(replace(row, priced=True, cost_nano_usd=delta))
    return counter_deltas(moved)


def written_price_status(row: UsageRow) -> str:
    """``price_status`` as a row is written: ``pending`` unless priced, then ``priced`` or
    ``priced_partial``."""
    if not row.priced:
        return PRICE_STATUS_PENDING
    return PRICE_STATUS_PARTIAL if row.price_status == PRICE_STATUS_PARTIAL else PRICE_STATUS_PRICED


def normalize_usage(rows: Sequence[UsageRow]) -> list[UsageRow]:
    """Validate rows for writing and drop repeated request ids within the batch (first wins)."""
    seen: set[str] = set()
    remember = seen.add
    out: list[UsageRow] = []
    keep = out.append
    for row in rows:
        request_id = row.request_id
        if request_id in seen:
            continue
        remember(request_id)
        if row.priced:
            cost = row.cost_nano_usd
            if type(cost) is not int or cost < 0:  # the common case checked cheaply first
                if cost is None:
                    raise InvalidValue(f"usage row {request_id!r} is priced but has no cost")
                _check_money(cost, "cost_nano_usd")
        keep(row)
    return out


def check_targets(targets: Sequence[BudgetTarget], amount_nano_usd: int) -> list[BudgetTarget]:
    """Validate reservation targets; one per counter (the tightest limit), in lock order."""
    _check_money(amount_nano_usd, "amount_nano_usd")
    best: dict[CounterKey, BudgetTarget] = {}
    for t in targets:
        _check_choice(t.scope_kind, SCOPE_KINDS, "scope kind")
        _check_choice(t.period, PERIODS, "period")
        prev = best.get(t.key)
        if prev is None or t.limit_nano_usd < prev.limit_nano_usd:
            best[t.key] = t
    return [best[k] for k in sorted(best)]


class SqlStore(Store):
    """The parts both backends share: single-statement CRUD in portable SQL.

    SQL here uses ``?`` placeholders; the PostgreSQL backend rewrites them to ``$n``.
    Subclasses supply three primitives and the billing methods.
    """

    @abc.abstractmethod
    async def _fetch(self, sql: str, args: Sequence[object] = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def _execute(self, sql: str, args: Sequence[object] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""

    @abc.abstractmethod
    async def _transaction(self, statements: Sequence[Stmt]) -> list[int]:
        """Run statements in one transaction; returns each one's changed-row count."""

    async def _one(self, sql: str, args: Sequence[object] = ()) -> Row | None:
        rows = await self._fetch(sql, args)
        return rows[0] if rows else None

    # -- usage reads ------------------------------------------------------------------------

    async def heartbeat(self, instance_id: str, host: str, pid: int, started_at_ns: int) -> None:
        await self._execute(
            "INSERT INTO gateway_instances (id, host, pid, started_at_ns, heartbeat_at_ns) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET heartbeat_at_ns = excluded.heartbeat_at_ns",
            (instance_id, host, pid, started_at_ns, now_ns()),
        )

    async def forget_instance(self, instance_id: str) -> None:
        await self._execute("DELETE FROM gateway_instances WHERE id = ?", (instance_id,))

    _ORPHANED = (
        "SELECT DISTINCT r.id FROM spending_reservations r "
        "LEFT JOIN gateway_instances g ON g.id = r.owner "
        "WHERE r.owner IS NOT NULL AND r.created_at_ns < ? "
        "AND (g.id IS NULL OR g.heartbeat_at_ns < ?)"
    )
    _FORGET_STALE = (
        "DELETE FROM gateway_instances WHERE heartbeat_at_ns < ? AND id NOT IN "
        "(SELECT owner FROM spending_reservations WHERE owner IS NOT NULL)"
    )

    async def fetch_unpriced(self, limit: int) -> list[UsageRow]:
        rows = await self._fetch(
            f"SELECT {_USAGE_COLS} FROM usage_log "
            "WHERE NOT priced AND price_attempted_at_ns IS NULL ORDER BY id LIMIT ?",
            (int(limit),),
        )
        return [usage_from_row(r) for r in rows]

    async def usage_after(self, after_row_id: int, limit: int) -> list[UsageRow]:
        rows = await self._fetch(
            f"SELECT {_USAGE_COLS} FROM usage_log WHERE id > ? ORDER BY id LIMIT ?",
            (int(after_row_id), int(limit)),
        )
        return [usage_from_row(r) for r in rows]

    async def requeue_unpriced(self, *, model: str | None = None, project_id: str | None = None) -> int:
        sql = (
            "UPDATE usage_log SET price_attempted_at_ns = NULL, price_status = 'pending' "
            "WHERE NOT priced AND price_attempted_at_ns IS NOT NULL"
        )
        args: list[object] = []
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        if project_id is not None:
            sql += " AND project_id = ?"
            args.append(project_id)
        return await self._execute(sql, args)

    async def load_counters(self, *, at_ns: int | None = None) -> list[CounterRow]:
        sql = f"SELECT {_COUNTER_COLS} FROM spending_counters"
        args: list[object] = []
        if at_ns is not None:
            sql += (
                " WHERE period = 'total' OR (period = 'monthly' AND period_start = ?)"
                " OR (period = 'daily' AND period_start = ?)"
            )
            args = [month_start(at_ns), day_start(at_ns)]
        rows = await self._fetch(sql, args)
        return sorted((counter_from_row(r) for r in rows), key=lambda c: c.key)

    async def get_counter(self, key: CounterKey) -> CounterRow | None:
        r = await self._one(
            f"SELECT {_COUNTER_COLS} FROM spending_counters "
            "WHERE scope_kind = ? AND scope_id = ? AND period = ? AND period_start = ?",
            (key.scope_kind, key.scope_id, key.period, key.period_start),
        )
        return None if r is None else counter_from_row(r)

    async def sum_usage_cost(
        self,
        scope_id: str,
        *,
        scope_kind: str = "project",
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> int:
        _check_choice(scope_kind, SCOPE_KINDS, "scope kind")
        sql = (
            "SELECT COALESCE(SUM(cost_nano_usd), 0) FROM usage_log "
            f"WHERE {_SCOPE_COLUMN[scope_kind]} = ? AND priced"
        )
        args: list[object] = [scope_id]
        if start_ns is not None:
            sql += " AND time_ns >= ?"
            args.append(start_ns)
        if end_ns is not None:
            sql += " AND time_ns < ?"
            args.append(end_ns)
        r = await self._one(sql, args)
        return 0 if r is None else int(r[0])

    async def recent_usage(self, project_id: str | None, limit: int = 100) -> list[UsageRow]:
        if project_id is None:
            rows = await self._fetch(
                f"SELECT {_USAGE_COLS} FROM usage_log ORDER BY time_ns DESC, id DESC LIMIT ?",
                (int(limit),),
            )
        else:
            rows = await self._fetch(
                f"SELECT {_USAGE_COLS} FROM usage_log WHERE project_id = ? "
                "ORDER BY time_ns DESC, id DESC LIMIT ?",
                (project_id, int(limit)),
            )
        return [usage_from_row(r) for r in rows]

    async def usage_totals(
        self,
        project_id: str | None = None,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[UsageTotal]:
        where: list[str] = []
        args: list[object] = []
        if project_id is not None:
            where.append("project_id = ?")
            args.append(project_id)
        if start_ns is not None:
            where.append("time_ns >= ?")
            args.append(start_ns)
        if end_ns is not None:
            where.append("time_ns < ?")
            args.append(end_ns)
        sql = (
            f"SELECT (time_ns / {_NS_PER_DAY}) * 86400 AS day, provider, model, COUNT(*), "
            "SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
            "SUM(cache_write_tokens), SUM(reasoning_tokens), "
            "SUM(CASE WHEN priced THEN cost_nano_usd ELSE 0 END), "
            "SUM(CASE WHEN priced THEN 0 ELSE 1 END) FROM usage_log"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " GROUP BY 1, 2, 3"
        rows = await self._fetch(sql, args)
        totals = [UsageTotal(int(r[0]), str(r[1]), r[2], *(int(v) for v in r[3:11])) for r in rows]
        totals.sort(key=lambda t: (t.day_start, t.provider, t.model or ""))
        return totals

    # -- projects / users -----------------------------------------------------------------

    async def create_project(self, name: str, *, project_id: str | None = None) -> Project:
        p = Project(project_id or new_id(), name, now_ns())
        await self._execute(
            "INSERT INTO projects (id, name, created_at_ns) VALUES (?, ?, ?)",
            (p.id, p.name, p.created_at_ns),
        )
        return p

    async def get_project(self, project_id: str) -> Project | None:
        r = await self._one(f"SELECT {_PROJECT_COLS} FROM projects WHERE id = ?", (project_id,))
        return None if r is None else _project(r)

    async def list_projects(self) -> list[Project]:
        rows = await self._fetch(f"SELECT {_PROJECT_COLS} FROM projects ORDER BY created_at_ns, id")
        return [_project(r) for r in rows]

    async def delete_project(self, project_id: str) -> bool:
        counts = await self._transaction(
            [
                ("DELETE FROM spending_limits WHERE scope_kind = 'project' AND scope_id = ?", (project_id,)),
                (
                    "DELETE FROM spending_limits WHERE scope_kind = 'key' AND scope_id IN "
                    "(SELECT key_hash FROM registered_api_keys WHERE project_id = ?)",
                    (project_id,),
                ),
                # Pipes first: their targets RESTRICT the deletion of provider keys, and
                # PostgreSQL checks that before the project's cascade reaches the targets.
                ("DELETE FROM pipes WHERE project_id = ?", (project_id,)),
                ("DELETE FROM projects WHERE id = ?", (project_id,)),
            ]
        )
        return counts[-1] > 0

    async def create_user(
        self, name: str, *, email: str | None = None, user_id: str | None = None
    ) -> User:
        u = User(user_id or new_id(), name, email, now_ns())
        await self._execute(
            "INSERT INTO users (id, name, email, created_at_ns) VALUES (?, ?, ?, ?)",
            (u.id, u.name, u.email, u.created_at_ns),
        )
        return u

    async def get_user(self, user_id: str) -> User | None:
        r = await self._one(f"SELECT {_USER_COLS} FROM users WHERE id = ?", (user_id,))
        return None if r is None else _user(r)

    async def list_users(self) -> list[User]:
        rows = await self._fetch(f"SELECT {_USER_COLS} FROM users ORDER BY created_at_ns, id")
        return [_user(r) for r in rows]

    async def delete_user(self, user_id: str) -> bool:
        counts = await self._transaction(
            [
                ("DELETE FROM spending_limits WHERE scope_kind = 'user' AND scope_id = ?", (user_id,)),
                ("DELETE FROM users WHERE id = ?", (user_id,)),
            ]
        )
        return counts[-1] > 0

    # -- registered API keys ----------------------------------------------------------------

    async def register_api_key(
        self,
        key_hash: str,
        project_id: str,
        provider: str,
        upstream_url: str,
        display_name: str | None = None,
        egress_ip: str | None = None,
    ) -> RegisteredApiKey:
        _check_hash(key_hash, "key_hash")
        t = now_ns()
        k = RegisteredApiKey(key_hash, project_id, provider, upstream_url, display_name, True, egress_ip, t, t)
        await self._execute(
            f"INSERT INTO registered_api_keys ({_KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (k.key_hash, k.project_id, k.provider, k.upstream_url, k.display_name, k.is_active,
             k.egress_ip, k.created_at_ns, k.updated_at_ns),
        )  # fmt: skip
        return k

    async def get_api_key(self, key_hash: str) -> RegisteredApiKey | None:
        r = await self._one(f"SELECT {_KEY_COLS} FROM registered_api_keys WHERE key_hash = ?", (key_hash,))
        return None if r is None else _api_key(r)

    async def list_api_keys(self, project_id: str | None = None) -> list[RegisteredApiKey]:
        if project_id is None:
            rows = await self._fetch(f"SELECT {_KEY_COLS} FROM registered_api_keys ORDER BY created_at_ns, key_hash")
        else:
            rows = await self._fetch(
                f"SELECT {_KEY_COLS} FROM registered_api_keys WHERE project_id = ? "
                "ORDER BY created_at_ns, key_hash",
                (project_id,),
            )
        return [_api_key(r) for r in rows]

    async def list_active_api_keys(self) -> list[RegisteredApiKey]:
        rows = await self._fetch(f"SELECT {_KEY_COLS} FROM registered_api_keys WHERE is_active")
        return [_api_key(r) for r in rows]

    async def set_api_key_active(self, key_hash: str, active: bool) -> bool:
        n = await self._execute(
            "UPDATE registered_api_keys SET is_active = ?, updated_at_ns = ? WHERE key_hash = ?",
            (bool(active), now_ns(), key_hash),
        )
        return n > 0

    async def delete_api_key(self, key_hash: str) -> bool:
        counts = await self._transaction(
            [
                ("DELETE FROM spending_limits WHERE scope_kind = 'key' AND scope_id = ?", (key_hash,)),
                ("DELETE FROM registered_api_keys WHERE key_hash = ?", (key_hash,)),
            ]
        )
        return counts[-1] > 0

    # -- spending limits --------------------------------------------------------------------

    async def set_spending_limit(
        self,
        scope_kind: str,
        scope_id: str,
        period: str,
        limit_nano_usd: int,
        enforcement: str = "soft",
        *,
        active: bool = True,
    ) -> SpendingLimit:
        _check_choice(scope_kind, SCOPE_KINDS, "scope kind")
        _check_choice(period, PERIODS, "period")
        _check_choice(enforcement, ENFORCEMENTS, "enforcement")
        _check_money(limit_nano_usd, "limit_nano_usd")
        t = now_ns()
        await self._execute(
            f"INSERT INTO spending_limits ({_LIMIT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (scope_kind, scope_id, period) DO UPDATE SET "
            "limit_nano_usd = excluded.limit_nano_usd, enforcement = excluded.enforcement, "
            "is_active = excluded.is_active, updated_at_ns = excluded.updated_at_ns",
            (new_id(), scope_kind, scope_id, period, limit_nano_usd, enforcement, bool(active), t, t),
        )
        r = await self._one(
            f"SELECT {_LIMIT_COLS} FROM spending_limits WHERE scope_kind = ? AND scope_id = ? AND period = ?",
            (scope_kind, scope_id, period),
        )
        assert r is not None
        return _limit(r)

    async def list_spending_limits(
        self, scope_kind: str | None = None, scope_id: str | None = None
    ) -> list[SpendingLimit]:
        sql, args = _where_equal(
            f"SELECT {_LIMIT_COLS} FROM spending_limits", scope_kind=scope_kind, scope_id=scope_id
        )
        rows = await self._fetch(sql + " ORDER BY created_at_ns, id", args)
        return [_limit(r) for r in rows]

    async def list_active_spending_limits(self) -> list[SpendingLimit]:
        rows = await self._fetch(f"SELECT {_LIMIT_COLS} FROM spending_limits WHERE is_active")
        return [_limit(r) for r in rows]

    async def delete_spending_limit(self, limit_id: str) -> bool:
        return await self._execute("DELETE FROM spending_limits WHERE id = ?", (limit_id,)) > 0

    # -- custom pricing ---------------------------------------------------------------------

    async def set_custom_price(
        self,
        model: str,
        *,
        project_id: str | None = None,
        input_per_mtok_nano_usd: int,
        output_per_mtok_nano_usd: int,
        cache_read_per_mtok_nano_usd: int = 0,
        cache_write_per_mtok_nano_usd: int = 0,
    ) -> CustomPrice:
        prices = (
            input_per_mtok_nano_usd,
            output_per_mtok_nano_usd,
            cache_read_per_mtok_nano_usd,
            cache_write_per_mtok_nano_usd,
        )
        for p in prices:
            _check_money(p, "price")
        t = now_ns()
        if project_id is None:
            target = "(model) WHERE project_id IS NULL"
        else:
            target = "(project_id, model) WHERE project_id IS NOT NULL"
        await self._execute(
            f"INSERT INTO custom_pricing ({_PRICE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT {target} DO UPDATE SET "
            "input_per_mtok_nano_usd = excluded.input_per_mtok_nano_usd, "
            "output_per_mtok_nano_usd = excluded.output_per_mtok_nano_usd, "
            "cache_read_per_mtok_nano_usd = excluded.cache_read_per_mtok_nano_usd, "
            "cache_write_per_mtok_nano_usd = excluded.cache_write_per_mtok_nano_usd, "
            "updated_at_ns = excluded.updated_at_ns",
            (new_id(), project_id, model, *prices, t, t),
        )
        if project_id is None:
            r = await self._one(
                f"SELECT {_PRICE_COLS} FROM custom_pricing WHERE project_id IS NULL AND model = ?", (model,)
            )
        else:
            r = await self._one(
                f"SELECT {_PRICE_COLS} FROM custom_pricing WHERE project_id = ? AND model = ?",
                (project_id, model),
            )
        assert r is not None
        return _price(r)

    async def list_custom_prices(self) -> list[CustomPrice]:
        rows = await self._fetch(f"SELECT {_PRICE_COLS} FROM custom_pricing")
        prices = [_price(r) for r in rows]
        prices.sort(key=lambda p: (p.project_id is not None, p.project_id or "", p.model))
        return prices

    async def delete_custom_price(self, price_id: str) -> bool:
        return await self._execute("DELETE FROM custom_pricing WHERE id = ?", (price_id,)) > 0

    # -- proxy tokens -------------------------------------------------------------------------

    async def create_proxy_token(
        self,
        token_hash: str,
        project_id: str,
        *,
        user_id: str | None = None,
        pipe_id: str | None = None,
        name: str | None = None,
        expires_at_ns: int | None = None,
    ) -> ProxyToken:
        _check_hash(token_hash, "token_hash")
        tok = ProxyToken(
            new_id(), token_hash, user_id, project_id, pipe_id, name, expires_at_ns,
            False, None, None, now_ns(),
        )  # fmt: skip
        await self._execute(
            f"INSERT INTO proxy_tokens ({_TOKEN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (tok.id, tok.token_hash, tok.user_id, tok.project_id, tok.pipe_id, tok.name,
             tok.expires_at_ns, tok.revoked, tok.revoked_at_ns, tok.last_used_at_ns,
             tok.created_at_ns),
        )  # fmt: skip
        return tok

    async def get_proxy_token(self, token_hash: str) -> ProxyToken | None:
        r = await self._one(f"SELECT {_TOKEN_COLS} FROM proxy_tokens WHERE token_hash = ?", (token_hash,))
        return None if r is None else _token(r)

    async def list_proxy_tokens(
        self, project_id: str | None = None, user_id: str | None = None
    ) -> list[ProxyToken]:
        sql, args = _where_equal(
            f"SELECT {_TOKEN_COLS} FROM proxy_tokens", project_id=project_id, user_id=user_id
        )
        rows = await self._fetch(sql + " ORDER BY created_at_ns, id", args)
        return [_token(r) for r in rows]

    async def list_active_proxy_tokens(self, now_ns: int | None = None) -> list[ProxyToken]:
        t = time.time_ns() if now_ns is None else now_ns
        rows = await self._fetch(
            f"SELECT {_TOKEN_COLS} FROM proxy_tokens "
            "WHERE NOT revoked AND (expires_at_ns IS NULL OR expires_at_ns > ?)",
            (t,),
        )
        return [_token(r) for r in rows]

    async def revoke_proxy_token(self, token_id: str) -> bool:
        n = await self._execute(
            "UPDATE proxy_tokens SET revoked = ?, revoked_at_ns = ? WHERE id = ? AND NOT revoked",
            (True, now_ns(), token_id),
        )
        return n > 0

    async def touch_proxy_tokens(self, last_used: Mapping[str, int]) -> None:
        if not last_used:
            return
        await self._transaction(
            [
                (
                    "UPDATE proxy_tokens SET last_used_at_ns = ? WHERE id = ? "
                    "AND (last_used_at_ns IS NULL OR last_used_at_ns < ?)",
                    (int(t), token_id, int(t)),
                )
                for token_id, t in sorted(last_used.items())
            ]
        )

    # -- pipes ------------------------------------------------------------------------------

    async def create_pipe(self, project_id: str, name: str, targets: Sequence[PipeTarget]) -> Pipe:
        if not targets:
            raise InvalidValue("a pipe needs at least one target")
        for t in targets:
            if t.model is None and t.model_filter is None:
                raise InvalidValue("a pipe target needs a model or a model filter")
            if t.weight < 0:
                raise InvalidValue("a pipe target's weight must not be negative")
        pipe = Pipe(new_id(), project_id, name, tuple(targets), now_ns())
        stmts: list[Stmt] = [
            (
                "INSERT INTO pipes (id, project_id, name, created_at_ns) VALUES (?, ?, ?, ?)",
                (pipe.id, project_id, name, pipe.created_at_ns),
            )
        ]
        for pos, t in enumerate(targets):
            stmts.append(
                (
                    "INSERT INTO pipe_targets (pipe_id, position, provider, model, model_filter, "
                    "provider_key_id, weight) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (pipe.id, pos, t.provider, t.model, t.model_filter, t.provider_key_id, t.weight),
                )
            )
        await self._transaction(stmts)
        return pipe

    async def _pipes(self, where: str, args: Sequence[object]) -> list[Pipe]:
        heads = await self._fetch(
            f"SELECT id, project_id, name, created_at_ns FROM pipes {where} ORDER BY created_at_ns, id", args
        )
        if not heads:
            return []
        rows = await self._fetch(
            "SELECT t.pipe_id, t.provider, t.model, t.model_filter, t.provider_key_id, t.weight "
            f"FROM pipe_targets t JOIN pipes ON pipes.id = t.pipe_id {where} ORDER BY t.pipe_id, t.position",
            args,
        )
        targets: dict[str, list[PipeTarget]] = {}
        for r in rows:
            targets.setdefault(str(r[0]), []).append(PipeTarget(str(r[1]), r[2], r[3], r[4], int(r[5])))
        return [Pipe(str(h[0]), str(h[1]), str(h[2]), tuple(targets.get(str(h[0]), ())), int(h[3])) for h in heads]

    async def get_pipe(self, pipe_id: str) -> Pipe | None:
        pipes = await self._pipes("WHERE pipes.id = ?", (pipe_id,))
        return pipes[0] if pipes else None

    async def list_pipes(self, project_id: str | None = None) -> list[Pipe]:
        if project_id is None:
            return await self._pipes("", ())
        return await self._pipes("WHERE pipes.project_id = ?", (project_id,))

    async def delete_pipe(self, pipe_id: str) -> bool:
        return await self._execute("DELETE FROM pipes WHERE id = ?", (pipe_id,)) > 0

    # -- provider keys ----------------------------------------------------------------------

    async def create_provider_key(
        self,
        provider: str,
        ciphertext: bytes,
        nonce: bytes,
        key_id: str,
        *,
        project_id: str | None = None,
        display_name: str | None = None,
    ) -> ProviderKey:
        if not isinstance(ciphertext, bytes | bytearray) or not isinstance(nonce, bytes | bytearray):
            raise InvalidValue("provider keys are stored encrypted: ciphertext and nonce must be bytes")
        k = ProviderKey(
            new_id(), project_id, provider, display_name, bytes(ciphertext), bytes(nonce), key_id,
            True, now_ns(), None,
        )  # fmt: skip
        await self._execute(
            f"INSERT INTO provider_keys ({_PKEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (k.id, k.project_id, k.provider, k.display_name, k.ciphertext, k.nonce, k.key_id,
             k.is_active, k.created_at_ns, k.revoked_at_ns),
        )  # fmt: skip
        return k

    async def get_provider_key(self, provider_key_id: str) -> ProviderKey | None:
        r = await self._one(f"SELECT {_PKEY_COLS} FROM provider_keys WHERE id = ?", (provider_key_id,))
        return None if r is None else _provider_key(r)

    async def list_provider_keys(self, project_id: str | None = None) -> list[ProviderKey]:
        if project_id is None:
            rows = await self._fetch(f"SELECT {_PKEY_COLS} FROM provider_keys ORDER BY created_at_ns, id")
        else:
            rows = await self._fetch(
                f"SELECT {_PKEY_COLS} FROM provider_keys WHERE project_id = ? ORDER BY created_at_ns, id",
                (project_id,),
            )
        return [_provider_key(r) for r in rows]

    async def revoke_provider_key(self, provider_key_id: str) -> bool:
        n = await self._execute(
            "UPDATE provider_keys SET is_active = ?, revoked_at_ns = ? WHERE id = ? AND is_active",
            (False, now_ns(), provider_key_id),
        )
        return n > 0


# --------------------------------------------------------------------------- factory


def open_store(database_url: str | None, sqlite_path: str, **options: Any) -> Store:
    """The configured store (not yet opened: ``await store.open()`` or ``async with``).

    PostgreSQL when ``database_url`` is set (``postgres://`` or ``postgresql://``),
    otherwise SQLite at ``sqlite_path``.  ``options`` go to the backend's constructor
    (PostgreSQL: ``min_size``, ``max_size``; SQLite: ``busy_timeout_ms``).
    """
    if database_url:
        scheme = database_url.split(":", 1)[0].lower()
        if scheme in ("postgres", "postgresql"):
            from plano_fast.store.postgres import PostgresStore

            return PostgresStore(database_url, **options)
        if scheme == "sqlite":
            from plano_fast.store.sqlite import SqliteStore

            path = database_url.split(":", 1)[1].removeprefix("//")
            return SqliteStore(path or sqlite_path, **options)
        raise InvalidValue(f"unsupported database_url scheme {scheme!r} (expected postgresql:// )")
    from plano_fast.store.sqlite import SqliteStore

    return SqliteStore(sqlite_path, **options)


__all__ = [
    "ENFORCEMENTS",
    "PERIODS",
    "PRICE_STATUS_PENDING",
    "PRICE_STATUS_PARTIAL",
    "written_price_status",
    "REPRICE_COLUMNS",
    "PriceResult",
    "price_result_entry",
    "reprice_deltas",
    "reprice_values",
    "PRICE_STATUS_PRICED",
    "PRICE_STATUS_UNKNOWN",
    "REQUIRED_SCHEMA_VERSION",
    "SCOPE_KINDS",
    "AlreadyExists",
    "BudgetTarget",
    "CounterKey",
    "CounterRow",
    "CustomPrice",
    "InvalidValue",
    "MissingReference",
    "Pipe",
    "PipeTarget",
    "Project",
    "ProviderKey",
    "ProxyToken",
    "RegisteredApiKey",
    "Reservation",
    "SchemaTooOld",
    "SpendingLimit",
    "SqlStore",
    "Store",
    "StoreError",
    "UsageRow",
    "UsageTotal",
    "User",
    "day_start",
    "is_sha256_hex",
    "month_start",
    "open_store",
    "period_start",
    "usage_row_from_event",
]
