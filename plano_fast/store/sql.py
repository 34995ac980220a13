"""What both SQL backends share: column lists, row mappers, counter maths, usage
normalization, and ``SqlStore``, the portable-SQL half of every ``Store`` method.

SQL here uses ``?`` placeholders; the PostgreSQL backend rewrites them to ``$n``.  The
backends (``plano_fast.store.sqlite``, ``plano_fast.store.postgres``) add the connection
handling and the billing writes (``write_usage``, ``set_prices``, ``reserve`` ...).
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, Final

from plano_fast.store.base import Store
from plano_fast.store.records import (
    ENFORCEMENTS,
    PERIODS,
    PRICE_STATUS_PARTIAL,
    PRICE_STATUS_PENDING,
    PRICE_STATUS_PRICED,
    SCOPE_KINDS,
    BudgetTarget,
    CounterKey,
    CounterRow,
    CustomPrice,
    InvalidValue,
    Pipe,
    PipeTarget,
    PriceResult,
    Project,
    ProviderKey,
    ProxyToken,
    RegisteredApiKey,
    SpendingLimit,
    UsageRow,
    UsageTotal,
    User,
    _check_choice,
    _check_hash,
    _check_money,
)
from plano_fast.store.times import _NS_PER_DAY, _month_start_of_day, day_start, month_start, new_id, now_ns

USAGE_COLUMN_TYPES: Final[dict[str, str]] = {
    "request_id": "text", "time_ns": "bigint", "project_id": "text", "user_id": "text",
    "key_hash": "text", "token_id": "text", "provider": "text", "model": "text",
    "input_tokens": "bigint", "output_tokens": "bigint", "cache_read_tokens": "bigint",
    "cache_write_tokens": "bigint", "reasoning_tokens": "bigint", "streaming": "boolean",
    "status": "text", "http_status": "integer", "priced": "boolean", "cost_nano_usd": "bigint",
    "duration_us": "bigint", "price_status": "text", "tool_use_prompt_tokens": "bigint",
    "cache_write_1h_tokens": "bigint", "audio_input_tokens": "bigint",
    "audio_output_tokens": "bigint", "usage_api": "text", "usage_raw": "text",
    "price_entry": "text", "reservation_overrun_nano_usd": "bigint", "requested_model": "text",
    "attempts": "integer", "attempt_trail": "text",
}  # fmt: skip
"""``usage_log``'s written columns with their PostgreSQL types, in ``UsageRow`` field order
(``row_id``, the table's ``id``, is read, never written): both backends' INSERT column
lists and PostgreSQL's array and staging-table types are built from it."""
USAGE_WRITE_COLUMNS: Final = tuple(USAGE_COLUMN_TYPES)
if [f.name for f in fields(UsageRow) if f.name != "row_id"] != list(USAGE_WRITE_COLUMNS):
    raise AssertionError("USAGE_COLUMN_TYPES must list UsageRow's fields (but row_id), in order")

# Column lists, in dataclass field order.
_USAGE_COLS = ", ".join("id" if f.name == "row_id" else f.name for f in fields(UsageRow))
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
#: A counter is the sum of its rows: PostgreSQL keeps one per shard (migration 11: concurrent
#: usage batches add to different rows), SQLite one.
_COUNTER_SUMS = (
    "SELECT scope_kind, scope_id, period, period_start, SUM(spent_nano_usd), SUM(reserved_nano_usd) "
    "FROM spending_counters"
)
_COUNTER_GROUP = " GROUP BY scope_kind, scope_id, period, period_start"
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
        int(r[21]), int(r[22]), int(r[23]), int(r[24]), r[25], r[26], r[27], _opt_int(r[28]), r[29],
        _opt_int(r[30]), r[31],
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


#: (scope kind, scope id, UTC day number) -> that day's three counter keys (total, monthly,
#: daily), and (project_id, user_id, key_hash, UTC day number) -> the counter keys of all
#: three scopes (``_sum_keys``), at most ``_DAY_KEYS_MAX`` (then cleared).  A usage write's
#: counters are those of the same few scopes and days write after write: their keys (three
#: named tuples and the month start, a datetime computation) were rebuilt for every commit,
#: ~35k instructions of a managed request's one-row commit under callgrind (issue 27).  Keys
#: are immutable, so a cached one is the key a fresh computation would give.
_DAY_KEYS: dict[tuple[object, ...], tuple[CounterKey, ...]] = {}
_DAY_KEYS_MAX: Final = 4096


def _day_keys(kind: str, scope_id: str, day: int) -> tuple[CounterKey, ...]:
    cached = (kind, scope_id, day)
    keys = _DAY_KEYS.get(cached)
    if keys is None:
        start = day * 86_400
        keys = (
            CounterKey(kind, scope_id, "total", 0),
            CounterKey(kind, scope_id, "monthly", _month_start_of_day(start)),
            CounterKey(kind, scope_id, "daily", start),
        )
        if len(_DAY_KEYS) >= _DAY_KEYS_MAX:
            _DAY_KEYS.clear()
        _DAY_KEYS[cached] = keys
    return keys


def _sum_keys(k: tuple[str | None, str | None, str | None, int]) -> tuple[CounterKey, ...]:
    """The counter keys a ``DaySums`` entry adds to: its project's, user's and key's, each
    scope's total, monthly and daily, in that order (all distinct: the kinds differ)."""
    keys = _DAY_KEYS.get(k)
    if keys is None:
        project_id, user_id, key_hash, day = k
        keys = ()
        if project_id is not None:
            keys += _day_keys("project", project_id, day)
        if user_id is not None:
            keys += _day_keys("user", user_id, day)
        if key_hash is not None:
            keys += _day_keys("key", key_hash, day)
        if len(_DAY_KEYS) >= _DAY_KEYS_MAX:
            _DAY_KEYS.clear()
        _DAY_KEYS[k] = keys
    return keys


def deltas_of_day_sums(sums: DaySums) -> dict[CounterKey, int]:
    """The counter deltas of ``add_day_sums`` results: per scope and period (in the order
    each scope and day first appears)."""
    if len(sums) == 1:
        # One scope triple and day (a group commit of one token's rows, a lone request's
        # row): its keys, all distinct, each gets the sum.  The general loop below was
        # ~15k instructions for this, a fixed cost of every commit (issue 27).
        for k, cost in sums.items():
            return dict.fromkeys(_sum_keys(k), 0 + cost)
    deltas: dict[CounterKey, int] = {}
    get = deltas.get
    for k, cost in sums.items():
        for key in _sum_keys(k):
            deltas[key] = get(key, 0) + cost
    return deltas


def counter_deltas(rows: Sequence[UsageRow]) -> dict[CounterKey, int]:
    """What priced rows add to the counters: per scope (project, user, key) and period."""
    sums: DaySums = {}
    add_day_sums(rows, sums)
    return deltas_of_day_sums(sums)


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


def normalize_usage(rows: Sequence[UsageRow], seen: set[str] | None = None) -> list[UsageRow]:
    """Validate rows for writing and drop repeated request ids within the batch (first wins).

    ``seen``: the request ids of the batch's earlier slices (updated), for a batch
    normalized a slice at a time."""
    if seen is None:
        seen = set()
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
        model = row.model
        if model and "\x00" in model:
            row.model = model.replace("\x00", NUL_STAND_IN)
        model = row.requested_model
        if model and "\x00" in model:
            row.requested_model = model.replace("\x00", NUL_STAND_IN)
        raw = row.usage_raw
        if raw and "\x00" in raw:
            row.usage_raw = raw.replace("\x00", NUL_STAND_IN)
        keep(row)
    return out


#: What a NUL in a row's text (a client's model "a\u0000b", a provider's) is written as, in
#: both stores: PostgreSQL's text cannot hold U+0000, and refused the whole row -- a served
#: request with no usage row (kept only in the journal's rejected file).
NUL_STAND_IN = "\ufffd"


#: Rows validated per synchronous stretch of the loop before a usage write: a flush of
#: 1,000 rows validated at once was ~0.25 ms of one stretch, with the transaction's first
#: INSERT after it (benchmarks/tail_probe.py --hooks, issue 27).
NORMALIZE_SLICE: Final = 256


async def normalize_usage_sliced(
    rows: Sequence[UsageRow],
    normalize: Callable[[Sequence[UsageRow], set[str] | None], list[UsageRow]] | None = None,
) -> list[UsageRow]:
    """``normalize_usage`` a slice at a time, the loop running in between (both stores'
    ``write_usage``: a flusher's batch of up to 1,000 rows is not one long stretch).
    ``normalize``: ``normalize_usage`` or a twin of it (SQLite's compiled one)."""
    if normalize is None:
        normalize = normalize_usage
    if len(rows) <= NORMALIZE_SLICE:
        return normalize(rows, None)
    seen: set[str] = set()
    out: list[UsageRow] = []
    for start in range(0, len(rows), NORMALIZE_SLICE):
        if start:
            await asyncio.sleep(0)
        out += normalize(rows[start : start + NORMALIZE_SLICE], seen)
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

    async def heartbeat(
        self, instance_id: str, host: str, pid: int, started_at_ns: int, alive_until_ns: int | None = None
    ) -> None:
        await self._execute(
            self._HEARTBEAT,
            (instance_id, host, pid, started_at_ns, now_ns() if alive_until_ns is None else alive_until_ns),
        )

    async def forget_instance(self, instance_id: str) -> None:
        await self._execute(self._FORGET_INSTANCE, (instance_id,))

    # Writes that leave the same state however often they run, and whose callers read no
    # count from them: a store may run one again when its connection was lost
    # (``IDEMPOTENT_WRITES``; PostgreSQL: a pooled connection whose backend ended while idle).
    _HEARTBEAT = (
        "INSERT INTO gateway_instances (id, host, pid, started_at_ns, heartbeat_at_ns) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET heartbeat_at_ns = excluded.heartbeat_at_ns"
    )
    _FORGET_INSTANCE = "DELETE FROM gateway_instances WHERE id = ?"

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
    IDEMPOTENT_WRITES = frozenset((_HEARTBEAT, _FORGET_INSTANCE, _FORGET_STALE))

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
        sql = _COUNTER_SUMS
        args: list[object] = []
        if at_ns is not None:
            sql += (
                " WHERE period = 'total' OR (period = 'monthly' AND period_start = ?)"
                " OR (period = 'daily' AND period_start = ?)"
            )
            args = [month_start(at_ns), day_start(at_ns)]
        rows = await self._fetch(sql + _COUNTER_GROUP, args)
        return sorted((counter_from_row(r) for r in rows), key=lambda c: c.key)

    async def get_counter(self, key: CounterKey) -> CounterRow | None:
        r = await self._one(
            f"{_COUNTER_SUMS} WHERE scope_kind = ? AND scope_id = ? AND period = ? AND period_start = ?"
            f"{_COUNTER_GROUP}",
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
