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
(summed over the counter's rows: one per shard on PostgreSQL, migration 11, so that usage
batches in flight at once update different rows; one on SQLite)
equals the sum of ``cost_nano_usd`` of the priced ``usage_log`` rows in it, because the
only writes that price a row (``write_usage``, ``set_prices``, ``settle``) add to the
counters in the same transaction, for exactly the rows they inserted or priced.

The package, by concern: ``records`` (errors and record types), ``times`` (instants,
periods, ids), ``base`` (the interface, in parts by consumer), ``sql`` (what both SQL
backends share), the backends ``sqlite`` and ``postgres``, and ``migrate``.  This module
keeps the factory and re-exports the public names.
"""

from __future__ import annotations

from typing import Any

from plano_fast.store.base import (
    REQUIRED_SCHEMA_VERSION,
    AdminStore,
    BillingStore,
    RegistryStore,
    Store,
    UsageStore,
)
from plano_fast.store.records import (
    ENFORCEMENTS,
    PERIODS,
    PRICE_STATUS_PARTIAL,
    PRICE_STATUS_PENDING,
    PRICE_STATUS_PRICED,
    PRICE_STATUS_UNKNOWN,
    SCOPE_KINDS,
    AlreadyExists,
    BudgetTarget,
    CounterKey,
    CounterRow,
    CustomPrice,
    InvalidValue,
    MissingReference,
    Pipe,
    PipeTarget,
    PriceResult,
    Project,
    ProviderKey,
    ProxyToken,
    RegisteredApiKey,
    Reservation,
    SchemaMismatch,
    SchemaTooNew,
    SchemaTooOld,
    SpendingLimit,
    StoreError,
    UsageRow,
    UsageTotal,
    User,
    is_sha256_hex,
    usage_row_from_event,
)
from plano_fast.store.sql import (
    REPRICE_COLUMNS,
    DaySums,
    Row,
    SqlStore,
    Stmt,
    add_day_sums,
    check_targets,
    counter_deltas,
    counter_from_row,
    deltas_of_day_sums,
    normalize_usage,
    price_result_entry,
    reprice_deltas,
    reprice_values,
    usage_from_row,
    written_price_status,
)
from plano_fast.store.times import NS_PER_S, day_start, month_start, new_id, now_ns, period_start

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
    "NS_PER_S",
    "PERIODS",
    "PRICE_STATUS_PARTIAL",
    "PRICE_STATUS_PENDING",
    "PRICE_STATUS_PRICED",
    "PRICE_STATUS_UNKNOWN",
    "REPRICE_COLUMNS",
    "REQUIRED_SCHEMA_VERSION",
    "SCOPE_KINDS",
    "AdminStore",
    "AlreadyExists",
    "BillingStore",
    "BudgetTarget",
    "CounterKey",
    "CounterRow",
    "CustomPrice",
    "DaySums",
    "InvalidValue",
    "MissingReference",
    "Pipe",
    "PipeTarget",
    "PriceResult",
    "Project",
    "ProviderKey",
    "ProxyToken",
    "RegisteredApiKey",
    "RegistryStore",
    "Reservation",
    "Row",
    "SchemaMismatch",
    "SchemaTooNew",
    "SchemaTooOld",
    "SpendingLimit",
    "SqlStore",
    "Stmt",
    "Store",
    "StoreError",
    "UsageRow",
    "UsageStore",
    "UsageTotal",
    "User",
    "add_day_sums",
    "check_targets",
    "counter_deltas",
    "counter_from_row",
    "day_start",
    "deltas_of_day_sums",
    "is_sha256_hex",
    "month_start",
    "new_id",
    "normalize_usage",
    "now_ns",
    "open_store",
    "period_start",
    "price_result_entry",
    "reprice_deltas",
    "reprice_values",
    "usage_from_row",
    "usage_row_from_event",
    "written_price_status",
]
