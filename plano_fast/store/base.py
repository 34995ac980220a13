"""The ``Store`` interface, in parts by consumer.

* ``BillingStore``: what the billing pipeline calls (flusher, price calculator, budget
  checker): usage rows in, prices and spending counters out.  Billing type-hints against
  it, so it depends on these eight methods and no others.
* ``UsageStore``: the rest of the usage log and the spending counters: reports, repricing,
  and managed mode's hard budgets (reservations, instance heartbeats).
* ``RegistryStore``: what the data plane's registries load and look up (firewall keys;
  managed tokens, pipes and provider keys).
* ``AdminStore``: what the admin API creates, lists, changes and deletes.
* ``Store``: all of them, plus the lifecycle and the schema check; what ``open_store``
  returns and what the backends implement.

All methods are coroutines; none may be called from the request path except ``reserve`` /
``settle`` / ``release`` (managed-mode hard budgets).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Final, Self

from plano_fast.store.records import (
    BudgetTarget,
    CounterKey,
    CounterRow,
    CustomPrice,
    Pipe,
    PipeTarget,
    PriceResult,
    Project,
    ProviderKey,
    ProxyToken,
    RegisteredApiKey,
    Reservation,
    SchemaTooOld,
    SpendingLimit,
    UsageRow,
    UsageTotal,
    User,
)

REQUIRED_SCHEMA_VERSION: Final = 11
"""The schema version this code needs; ``check_schema`` refuses anything older (and anything
newer than the newest migration shipped, ``migrate.newest_known_version``)."""


class BillingStore(abc.ABC):
    """What the billing pipeline calls: write usage rows, price the ones left unpriced,
    read the counters and limits (and the custom prices) it decides with."""

    #: ``write_usage`` calls one caller may have under way at once and gain from (the
    #: synchronous writer of managed mode, plano_fast.managed.context): 1 where batches
    #: would only queue on one another (SQLite: one writer)
    write_batches_in_flight: int = 1

    # -- usage and counters -------------------------------------------------------------

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

    # -- what prices and limits billing reads -------------------------------------------

    @abc.abstractmethod
    async def list_active_spending_limits(self) -> list[SpendingLimit]: ...

    @abc.abstractmethod
    async def list_custom_prices(self) -> list[CustomPrice]:
        """Every override, global ones first."""


class UsageStore(BillingStore):
    """The usage log and the spending counters: billing's part, reads for reports and
    repricing, and managed mode's hard budgets."""

    # -- usage and counters, beyond billing ---------------------------------------------

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

    # -- hard budgets (managed mode) ----------------------------------------------------

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

    def write_usage_now(self, rows: Sequence[UsageRow]) -> int | None:
        """``write_usage`` (managed mode's synchronous write) done before returning, when
        this store can write without waiting (SQLite's hot connection, idle: nothing to
        await); ``None`` when it cannot now (nothing was written: the caller awaits
        ``write_usage``).  The same transaction, result and errors.  By default it never
        can."""
        return None

    def settle_now(self, reservation: Reservation, usage: UsageRow) -> bool | None:
        """``settle`` done before returning, when this store can without waiting (as
        ``write_usage_now``); ``None`` when it cannot now (nothing done: await
        ``settle``).  By default it never can."""
        return None

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
    async def heartbeat(
        self, instance_id: str, host: str, pid: int, started_at_ns: int, alive_until_ns: int | None = None
    ) -> None:
        """Record that gateway instance ``instance_id`` is alive now (or, with
        ``alive_until_ns``, vouches for its reservations until then: no sweeper takes them
        for orphans before, see ``Gateway._vouch``)."""

    @abc.abstractmethod
    async def forget_instance(self, instance_id: str) -> None:
        """A gateway instance stopped: its reservations left open become orphans at once."""


class RegistryStore(abc.ABC):
    """What the data plane's registries load and look up by key: firewall mode's
    registered keys, managed mode's proxy tokens, pipes and provider keys."""

    # -- registered API keys (firewall mode) --------------------------------------------

    @abc.abstractmethod
    async def get_api_key(self, key_hash: str) -> RegisteredApiKey | None: ...

    @abc.abstractmethod
    async def list_active_api_keys(self) -> list[RegisteredApiKey]: ...

    # -- proxy tokens / pipes / provider keys (managed mode) ----------------------------

    @abc.abstractmethod
    async def get_proxy_token(self, token_hash: str) -> ProxyToken | None: ...

    @abc.abstractmethod
    async def list_active_proxy_tokens(self, now_ns: int | None = None) -> list[ProxyToken]:
        """Not revoked and not expired: what a token cache reload wants."""

    @abc.abstractmethod
    async def touch_proxy_tokens(self, last_used: Mapping[str, int]) -> None:
        """Batched ``last_used_at_ns`` update: token id -> time (only ever moves forward)."""

    @abc.abstractmethod
    async def get_pipe(self, pipe_id: str) -> Pipe | None: ...

    @abc.abstractmethod
    async def list_pipes(self, project_id: str | None = None) -> list[Pipe]: ...

    @abc.abstractmethod
    async def get_provider_key(self, provider_key_id: str) -> ProviderKey | None: ...

    @abc.abstractmethod
    async def list_provider_keys(self, project_id: str | None = None) -> list[ProviderKey]: ...


class AdminStore(abc.ABC):
    """What the admin API creates, lists, changes and deletes."""

    # -- projects / users ---------------------------------------------------------------

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

    # -- registered API keys ------------------------------------------------------------

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
    async def list_api_keys(self, project_id: str | None = None) -> list[RegisteredApiKey]: ...

    @abc.abstractmethod
    async def set_api_key_active(self, key_hash: str, active: bool) -> bool: ...

    async def deactivate_api_key(self, key_hash: str) -> bool:
        return await self.set_api_key_active(key_hash, False)

    @abc.abstractmethod
    async def delete_api_key(self, key_hash: str) -> bool: ...

    # -- spending limits ----------------------------------------------------------------

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
    async def delete_spending_limit(self, limit_id: str) -> bool: ...

    # -- custom pricing -----------------------------------------------------------------

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
    async def delete_custom_price(self, price_id: str) -> bool: ...

    # -- proxy tokens / pipes / provider keys (managed mode) ----------------------------

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
    async def list_proxy_tokens(
        self, project_id: str | None = None, user_id: str | None = None
    ) -> list[ProxyToken]: ...

    @abc.abstractmethod
    async def revoke_proxy_token(self, token_id: str) -> bool: ...

    @abc.abstractmethod
    async def create_pipe(
        self, project_id: str, name: str, targets: Sequence[PipeTarget]
    ) -> Pipe: ...

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
    async def revoke_provider_key(self, provider_key_id: str) -> bool: ...


class Store(UsageStore, RegistryStore, AdminStore):
    """The persistence interface: every part above, the lifecycle and the schema check."""

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
        """Raise ``SchemaTooOld`` unless the schema is at least ``REQUIRED_SCHEMA_VERSION``,
        and ``SchemaTooNew`` when it records a migration newer than this code ships."""
        from plano_fast.store.migrate import refuse_newer  # migrate imports this module

        recorded = await self.applied_migrations()
        current = max(recorded, default=0)
        if current < REQUIRED_SCHEMA_VERSION:
            raise SchemaTooOld(current, REQUIRED_SCHEMA_VERSION, self.kind)
        refuse_newer(recorded, self.kind)
