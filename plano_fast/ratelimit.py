"""Plano's ``ratelimits``: token and request budgets per model x request-header value.

Config (Plano's shape, plus request limits)::

    ratelimits:
      - model: gpt-4o-mini                  # the model a request names (or routes to)
        selector: {key: x-user-id, value: "*"}   # "*": one bucket per distinct value
        limit: {tokens: 100000, unit: minute}    # or {requests: 60, unit: minute}; unit minute|hour|day

plano_fast extensions (the same list, so one place holds every limit and ``plano-fast
validate`` explains them all)::

      - model: "*"                          # any model
        selector: {project: "*"}            # one bucket per firewall / managed project
        limit: {requests: 600, unit: minute}
      - model: gpt-4o-mini
        selector: {api_key: "*"}            # one bucket per client key (its SHA-256; or
        limit: {tokens: 50000, unit: hour}  #   the 64-hex SHA-256 of one key)
      - ... limit: {requests: 5, unit: second}   # unit second: short bursts (and tests)

A project selector matches firewall projects and managed projects (config mode has none);
an api_key selector matches the key hash firewall and config mode identify callers by, and
a managed token's hash.

Algorithm: a **sliding-window counter** per bucket -- the current fixed window's count plus
the previous window's count weighted by how much of it still overlaps the sliding window.
Chosen over GCRA because token limits can only be debited after the response (the usage is
read off it), and a window counter takes any late ``INCRBY``; it costs two integers per
bucket and one round trip.  Its error against an exact sliding log is bounded by the
previous window's uniformity assumption.

Admission: a request is refused (429) when a bucket it falls in is already at or over its
limit; a request limit is counted at admission (check and increment in one step); a token
limit is debited with the input + output tokens the response reported, after it.  Bound on
overshoot for token limits: at most the tokens of the requests admitted while the bucket
was still under its limit and not yet settled (the requests in flight when it emptied).

Where the buckets live: with ``plano_fast.redis_url``, in Redis, shared by every worker
and instance, each process admitting on a **lease** (a share of the bucket the check script
granted it and counted at once) with no round trip while the lease lasts; one Lua script
call grants, checks and carries this process's pending token debits (``RedisBackend``).
Bounds with leases: a lease is counted in Redis before it is used, so a request limit is
never exceeded.  A token request admitted on a lease takes its estimate (the mean tokens
per settled request of the bucket, at least 1) out of it, reconciled when it settles; a
token limit is exceeded by at most the bound above, plus the tokens debited in the 5 ms
before another process saw them, plus -- the leases' term -- the tokens beyond their
estimates of the requests a process admits on the lease it still holds after the bucket
emptied: each takes at least one of the units it held then (its lease, at most
``max(1, amount // 32)``, and its requests' estimates in flight), ``lease / estimate`` requests
in practice, until its next script call answers "no room" and the lease goes back.
Under-admission: at most the unused leases outstanding -- per process and bucket at most
``max(1, amount // 32)`` units, returned within 100 ms of the process's last use (dropped,
still counted, at a window change) -- plus, while requests are in flight, what their
estimates exceed their tokens by; a limit under 32 units is never leased ahead (every grant
is the one unit its request takes: the per-request check, for tokens too).  A Redis that
lost its state (restart without persistence, FLUSHDB, eviction) forgets the window's counts:
the limit then admits its full amount again in that window; leases held are dropped and
returns never take a count below 0.  Redis unreachable: a
lease still held keeps admitting in fail_open and fail_closed alike (granted and counted
before the outage); then the configured mode.  Without it, with one worker, in
this process; without it and ``--workers`` > 1, in a SQLite file in the instance's shared
run directory (the one the workers' metrics snapshots use): every worker of the instance
checks and debits the same counters in one ``BEGIN IMMEDIATE`` transaction, so the limit
holds for the instance, never per worker.  Redis unreachable: ``ratelimit_on_backend_error``
``fail_closed`` (default: 503) or ``fail_open`` (admit), logged once per outage and
counted in ``/metrics`` (``ratelimit_backend_errors``).

Headers: 429s carry Retry-After and the x-ratelimit-* (anthropic-ratelimit-* for
Anthropic clients) headers; with ``plano_fast.ratelimit_headers: always`` every admitted
response of a limited request does too, computed from the counts the check answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Literal, TypeAlias

from plano_fast.errors import ApiFormat, ClientError, ServiceUnavailable
from plano_fast.resp import RedisUnavailable, ReplyError, RespClient, pack_command

log = logging.getLogger("plano_fast.ratelimit")

UNITS_S: Final = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400}
_UNIT_NAMES: Final = {v: k for k, v in UNITS_S.items()}
_SHA256_HEX: Final = frozenset("0123456789abcdef")

#: what a limit's selector matches: a request header (Plano), the firewall / managed
#: project, the client key's hash (plano_fast extensions)
Scope = Literal["header", "project", "api_key"]


class RateLimitConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Limit:
    index: int
    model: str  # "*" = any model
    header: bytes  # lowercased; b"" unless scope == "header"
    value: str  # "*" = one bucket per value
    amount: int
    kind: Literal["tokens", "requests"]
    window_s: int
    scope: Scope = "header"

    def describe(self) -> str:
        if self.scope == "project":
            who = "each project" if self.value == "*" else f"project {self.value}"
        elif self.scope == "api_key":
            who = "each API key" if self.value == "*" else f"API key {self.value[:12]}..."
        elif self.value == "*":
            who = f"each distinct {self.header.decode()}"
        else:
            who = f"{self.header.decode()}: {self.value}"
        model = "any model" if self.model == "*" else f"model {self.model}"
        return f"{model}, {who}: at most {self.amount} {self.kind} per {_UNIT_NAMES[self.window_s]}"


def parse_limits(raw: object) -> tuple[Limit, ...]:
    """Plano's ``ratelimits`` list -> limits; ``RateLimitConfigError`` naming the field."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RateLimitConfigError("ratelimits: expected a list")
    out = []
    for i, item in enumerate(raw):
        where = f"ratelimits[{i}]"
        if not isinstance(item, dict):
            raise RateLimitConfigError(f"{where}: expected a mapping")
        model = item.get("model")
        selector = item.get("selector")
        limit = item.get("limit")
        if not isinstance(model, str) or not model:
            raise RateLimitConfigError(f"{where}.model: a model name is required")
        if not isinstance(selector, dict):
            raise RateLimitConfigError(f"{where}.selector: expected {{key: HEADER, value: V}}, {{project: V}} or {{api_key: V}}")
        scopes = [k for k in ("key", "project", "api_key") if k in selector]
        if not scopes:
            raise RateLimitConfigError(f"{where}.selector.key: a request header name is required (or project / api_key)")
        if len(scopes) > 1:
            raise RateLimitConfigError(f"{where}.selector: give one of key (a request header), project or api_key")
        scope: Scope
        if scopes[0] == "key":
            scope, header = "header", selector["key"]
            if not isinstance(header, str) or not header.strip():
                raise RateLimitConfigError(f"{where}.selector.key: a request header name is required")
            value = selector.get("value", "*")
            if not isinstance(value, str) or not value:
                raise RateLimitConfigError(f"{where}.selector.value: a string (\"*\" for each value)")
        else:
            scope, header = scopes[0], ""  # type: ignore[assignment]
            value = selector[scopes[0]]
            if not isinstance(value, str) or not value:
                raise RateLimitConfigError(f"{where}.selector.{scope}: a string (\"*\" for each {scope})")
            if scope == "api_key" and value != "*" and (len(value) != 64 or not set(value) <= _SHA256_HEX):
                raise RateLimitConfigError(
                    f"{where}.selector.api_key: \"*\" or the key's SHA-256 (64 lowercase hex digits), never the key"
                )
        if not isinstance(limit, dict):
            raise RateLimitConfigError(f"{where}.limit: expected {{tokens|requests: N, unit: minute|hour|day}}")
        kinds = [k for k in ("tokens", "requests") if k in limit]
        if len(kinds) != 1:
            raise RateLimitConfigError(f"{where}.limit: give exactly one of tokens or requests")
        amount = limit[kinds[0]]
        if type(amount) is not int or amount <= 0:
            raise RateLimitConfigError(f"{where}.limit.{kinds[0]}: a positive integer")
        unit = limit.get("unit")
        if unit not in UNITS_S:
            raise RateLimitConfigError(f"{where}.limit.unit: one of second, minute, hour, day (got {unit!r})")
        out.append(Limit(i, model, header.strip().lower().encode(), value, amount,
                         kinds[0], UNITS_S[unit], scope))  # type: ignore[arg-type]  # fmt: skip
    return tuple(out)


#: the Redis keys' prefix: ``plano_fast:rl:<limit index>:<selector value>:<window number>``
REDIS_PREFIX: Final = b"plano_fast:rl:"


@dataclass(frozen=True, slots=True)
class Bucket:
    limit: Limit
    key: str  # the bucket's name (limit index and selector value)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A refusal: which limit, what is left, when it resets (seconds)."""

    limit: Limit
    remaining: int
    retry_after_s: float


#: An admission's state, as the Redis script answers it: ``[-1, prev_1, cur_1, prev_2,
#: cur_2, ...]``, the previous and current window counts of each bucket (in the order
#: given) after this request was counted -- what the rate-limit headers of an admitted
#: response are computed from, with no second round trip.
Counts = list[int]

#: an admission's Counts when no header is built from them (``ratelimit_headers: refused``)
ADMITTED: Final[Counts] = [-1]


def estimate(prev: int, cur: int, window_s: int, now_s: float) -> float:
    """The sliding window's count: the current window's plus the overlapping share of the
    previous one's."""
    elapsed = (now_s % window_s) / window_s
    return prev * (1.0 - elapsed) + cur


def retry_after(prev: int, cur: int, amount: int, window_s: int, now_s: float) -> float:
    """Seconds until the estimate falls below ``amount`` (the current window's own count
    only leaves at the window's end)."""
    into = now_s % window_s
    to_end = window_s - into
    if cur >= amount or prev <= 0:
        return to_end
    # prev * (1 - (into + t) / W) + cur < amount  =>  t > W * (1 - (amount - cur) / prev) - into
    t = window_s * (1.0 - (amount - cur) / prev) - into
    return max(0.001, min(to_end, t))


class MemoryBackend:
    """Buckets in this process (one worker)."""

    def __init__(self) -> None:
        #: (bucket key, window length s, window number) -> count
        self.counts: dict[tuple[str, int, int], int] = {}
        #: build the Counts of an admission (``ratelimit_headers: always``; RateLimits sets it)
        self.want_counts = True

    def check_now(self, buckets: Sequence[Bucket], now_s: float) -> Verdict | Counts:
        counts = self.counts
        want = self.want_counts
        state = [-1] if want else ADMITTED
        for b in buckets:
            w = b.limit.window_s
            n = int(now_s // w)
            prev = counts.get((b.key, w, n - 1), 0)
            cur = counts.get((b.key, w, n), 0)
            if estimate(prev, cur, w, now_s) >= b.limit.amount:
                return Verdict(b.limit, 0, retry_after(prev, cur, b.limit.amount, w, now_s))
            if want:
                state += (prev, cur)
        for i, b in enumerate(buckets):
            if b.limit.kind == "requests":
                key = (b.key, b.limit.window_s, int(now_s // b.limit.window_s))
                counts[key] = added = counts.get(key, 0) + 1
                if want:
                    state[2 * i + 2] = added
        if len(counts) > 100_000:
            self._sweep(now_s)
        return state

    def debit(self, buckets: Sequence[Bucket], tokens: int, now_s: float | None = None) -> None:
        if now_s is None:
            now_s = time.time()
        for b in buckets:
            if b.limit.kind == "tokens" and tokens:
                key = (b.key, b.limit.window_s, int(now_s // b.limit.window_s))
                self.counts[key] = self.counts.get(key, 0) + tokens

    def _sweep(self, now_s: float) -> None:
        """Forget windows older than the previous one (a selector "*" makes many buckets)."""
        self.counts = {k: v for k, v in self.counts.items() if k[2] >= int(now_s // k[1]) - 1}

    async def close(self) -> None:
        return None


class SqliteBackend:
    """Buckets in a SQLite file shared by the workers of one instance (no Redis).

    Each check is one ``BEGIN IMMEDIATE`` transaction (read both windows of every bucket,
    increment the request buckets when admitted), so two workers never both take the
    last unit; a debit is one more.  The file lives in the instance's run directory (a
    temporary directory the supervisor removes), written with ``synchronous=OFF``: the
    counters are worth nothing after the instance stops.  A locked file waits (busy
    timeout 1 s) on the event loop: the transactions are microseconds long.
    """

    _SWEEP_EVERY: Final = 4096

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors = 0
        self.db = sqlite3.connect(path, isolation_level=None, timeout=1.0, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS rl_counts (bucket TEXT NOT NULL, window INTEGER NOT NULL,"
            " n INTEGER NOT NULL, expires_s INTEGER NOT NULL, PRIMARY KEY (bucket, window)) WITHOUT ROWID"
        )
        self._ops = 0
        #: build the Counts of an admission (``ratelimit_headers: always``; RateLimits sets it)
        self.want_counts = True

    def _count(self, key: str, window: int) -> int:
        row = self.db.execute("SELECT n FROM rl_counts WHERE bucket = ? AND window = ?", (key, window)).fetchone()
        return int(row[0]) if row is not None else 0

    def _add(self, key: str, window: int, amount: int, window_s: int) -> None:
        self.db.execute(
            "INSERT INTO rl_counts (bucket, window, n, expires_s) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (bucket, window) DO UPDATE SET n = n + excluded.n",
            (key, window, amount, (window + 2) * window_s),
        )

    def check_now(self, buckets: Sequence[Bucket], now_s: float) -> Verdict | Counts:
        try:
            return self._check(buckets, now_s)
        except sqlite3.Error as exc:  # locked past the busy timeout, disk full: 503, never unmetered
            self.errors += 1
            log.warning("rate-limit store %s: %s", self.path, exc)
            raise BackendUnavailable() from None

    def _check(self, buckets: Sequence[Bucket], now_s: float) -> Verdict | Counts:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            want = self.want_counts
            state = [-1] if want else ADMITTED
            for b in buckets:
                w = b.limit.window_s
                n = int(now_s // w)
                prev, cur = self._count(b.key, n - 1), self._count(b.key, n)
                if estimate(prev, cur, w, now_s) >= b.limit.amount:
                    return Verdict(b.limit, 0, retry_after(prev, cur, b.limit.amount, w, now_s))
                if want:
                    state += (prev, cur)
            for i, b in enumerate(buckets):
                if b.limit.kind == "requests":
                    self._add(b.key, int(now_s // b.limit.window_s), 1, b.limit.window_s)
                    if want:
                        state[2 * i + 2] += 1
            self._maybe_sweep(now_s)
            return state
        finally:
            db.execute("COMMIT")

    def debit(self, buckets: Sequence[Bucket], tokens: int, now_s: float | None = None) -> None:
        targets = [b for b in buckets if b.limit.kind == "tokens"]
        if not targets or not tokens:
            return
        if now_s is None:
            now_s = time.time()
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for b in targets:
                    self._add(b.key, int(now_s // b.limit.window_s), tokens, b.limit.window_s)
            finally:
                db.execute("COMMIT")
        except sqlite3.Error as exc:  # a lost debit undercounts: logged, counted
            self.errors += 1
            log.warning("rate-limit store %s: debit lost: %s", self.path, exc)

    def _maybe_sweep(self, now_s: float) -> None:
        """Forget windows that no longer count (a selector "*" makes many buckets)."""
        self._ops += 1
        if self._ops >= self._SWEEP_EVERY:
            self._ops = 0
            self.db.execute("DELETE FROM rl_counts WHERE expires_s < ?", (int(now_s),))

    async def close(self) -> None:
        self.db.close()


# The check with lease grants and this process's pending token debits, in one script call.
# KEYS: per bucket its current and previous window keys, then the debited keys.  ARGV[1]:
# the number n of buckets; ARGV[2]: the gateway's clock in ms (no TIME: the window numbers
# in the keys are the gateway's too); per bucket i: ARGV[3i] its amount, ARGV[3i+1] its
# window in ms, ARGV[3i+2] the lease wanted: S > 0 "this request needs a unit of this
# bucket: refuse when it is empty, else grant min(S, what is left), at least 1"; -S "the
# process still holds lease for this request: grant up to S of what is left, never
# refuse"; 0 "held, nothing more wanted"; then per debited key its tokens (negative: an
# unused lease returned) and TTL.  The debits go first (they are older than this check).
# A return (negative) never takes a key below 0 and is skipped when the key does not exist:
# a Redis that lost its state (restart without persistence, FLUSHDB, eviction) must not be
# left with a negative count, which would admit the limit plus the return.
# A grant is counted at once (INCRBY of the current window: consumption).  A key's TTL is
# set only by the write that created it: one EXPIRE per key and window, not per call.
# Returns {i, prev, cur} for the first bucket that refuses (nothing granted), else
# {-1, grant_1, prev_1, cur_1, ...}: every bucket's grant and counts after it.
_CHECK_LUA: Final = """
local n = tonumber(ARGV[1])
local a = 3 + 3 * n
for j = 2 * n + 1, #KEYS do
  local by = tonumber(ARGV[a])
  if by >= 0 then
    if redis.call('INCRBY', KEYS[j], by) == by then
      redis.call('EXPIRE', KEYS[j], ARGV[a + 1])
    end
  elseif redis.call('EXISTS', KEYS[j]) == 1 then
    local left = redis.call('INCRBY', KEYS[j], by)
    if left < 0 then
      redis.call('INCRBY', KEYS[j], -left)
    end
  end
  a = a + 2
end
if n == 0 then
  return {-1}
end
local counts = redis.call('MGET', unpack(KEYS, 1, 2 * n))
local now = tonumber(ARGV[2])
local out = {-1}
for i = 1, n do
  local cur = tonumber(counts[2 * i - 1]) or 0
  local prev = tonumber(counts[2 * i]) or 0
  local window = tonumber(ARGV[3 * i + 1])
  local want = tonumber(ARGV[3 * i + 2])
  local room = math.ceil(tonumber(ARGV[3 * i]) - (prev * (1 - (now % window) / window) + cur))
  local grant = 0
  if want > 0 then
    if room <= 0 then
      return {i, prev, cur}
    end
    grant = math.min(want, room)
  elseif want < 0 and room > 0 then
    grant = math.min(-want, room)
  end
  out[3 * i - 1] = grant
  out[3 * i] = prev
  out[3 * i + 1] = cur
end
for i = 1, n do
  local grant = out[3 * i - 1]
  if grant > 0 then
    local cur = redis.call('INCRBY', KEYS[2 * i - 1], grant)
    if cur == grant then
      redis.call('EXPIRE', KEYS[2 * i - 1], 2 * tonumber(ARGV[3 * i + 1]) / 1000 + 1)
    end
    out[3 * i + 1] = cur
  end
end
return out
"""

_CHECK_LUA_BYTES: Final = _CHECK_LUA.encode()
#: b"0" .. b"15", the usual key and bucket counts, formatted once
_SMALL: Final = tuple(b"%d" % i for i in range(16))
_CHECK_SHA: Final = hashlib.sha1(_CHECK_LUA_BYTES).hexdigest().encode()


class Lease:
    """This process's share of one Redis bucket in one window: units granted by the script
    (already counted in Redis) and not yet used here."""

    __slots__ = ("limit", "base", "ends_s", "cur_key", "prev_key", "left", "cap", "size",
                 "used", "since_s", "last_use_s", "prev", "cur", "asked", "held", "inflight",
                 "settled", "settled_tokens", "estimate")  # fmt: skip

    def __init__(self, limit: Limit, base: bytes, cap: int) -> None:
        self.limit = limit
        self.base = base  # the Redis keys without the window number
        self.ends_s = 0.0  # end of the window the keys and ``left`` belong to
        self.cur_key = self.prev_key = b""
        self.left = 0  # units held (requests, or tokens), already counted in Redis
        self.cap = cap  # the most held at once: max(1, amount // LEASE_FRACTION)
        self.size = 1  # the last grant asked for
        self.used = 0  # units used since ``since_s`` (the rate a lease is sized by)
        self.since_s = 0.0
        self.last_use_s = 0.0
        self.prev = self.cur = 0  # the bucket's counts as Redis last answered (grants included)
        #: units asked in script calls not answered yet: with ``left``, never above ``cap``
        #: (concurrent requests that find no lease each ask only what is missing, at least
        #: their own unit), so the lease held stays within the under-admission bound
        self.asked = 0
        #: a token bucket: the units taken out of ``left`` by the admitted requests not
        #: settled yet (each took its estimate, ``estimate``), and how many they are
        self.held = 0
        self.inflight = 0
        #: a token bucket: requests settled with usage and their tokens, and the tokens a
        #: request is expected to take: their running mean, at least 1 (1 before any)
        self.settled = 0
        self.settled_tokens = 0
        self.estimate = 1

    def hold(self) -> None:
        """An admitted request of this token bucket takes its estimate out of the lease
        (what is left of it, when less), held until it settles (``RedisBackend.debit``)."""
        take = self.estimate if self.estimate < self.left else max(0, self.left)
        self.left -= take
        self.held += take
        self.inflight += 1

    def roll(self, now_s: float) -> None:
        """Into the window of ``now_s``: the lease left is dropped (it counted in the old
        window, whose count carries into the sliding estimate as consumption)."""
        w = self.limit.window_s
        n = int(now_s // w)
        self.ends_s = (n + 1) * w
        self.cur_key = self.base + b"%d" % n
        self.prev_key = self.base + b"%d" % (n - 1)
        self.left = 0
        self.held = self.inflight = 0  # (their requests' tokens are debited in full)
        self.prev = self.cur = 0


class RedisBackend:
    """Buckets in Redis, shared by every worker and instance, with per-process leases.

    **Leases.**  The check script grants this process a share of each bucket (up to
    ``cap = max(1, amount // LEASE_FRACTION)`` units), counted in Redis at once as
    consumption; while the process holds lease for every bucket of a request it admits it
    locally, with no round trip (a request takes one unit of a request bucket; of a token
    bucket its estimate -- ``Lease.estimate``, the mean tokens per settled request, at
    least 1 -- held until it settles: then the tokens beyond it are taken from the lease,
    the rest debited in Redis as below, or what it held beyond its tokens goes back to the
    lease).  A request admitted by the script holds its estimate the same way.  When an
    answer shows a token bucket with no room (a grant of 0, a refusal), its lease goes back
    at once: the next request asks Redis.  When a lease falls to half the last
    grant, the next one is fetched off the request path (``call_soon``, after the request
    was forwarded), so a steady stream never waits; a request waits on Redis only when
    the process holds none (first use, a new window, a nearly empty bucket).  A grant's
    size follows this process's rate: ``min(cap, rate x LEASE_HORIZON_S)``, at least 1 --
    the first use of a bucket asks 1, and a limit below ``LEASE_FRACTION`` units always
    asks 1: a lease of one unit, taken by the request that asked it, is exactly the
    per-request check.  Unused lease goes back (a negative debit) once the process has not
    used the bucket for ``LEASE_IDLE_S``; at a window change it is dropped (it counted in
    the old window).

    Bounds (docs/ratelimits.md).  Overshoot: grants are counted before they are used, so a
    request limit never exceeds its amount; a token limit exceeds it by at most the tokens
    of the requests in flight when it emptied plus those debited in the ``DEBIT_DELAY_S``
    before another process saw them (as without leases), plus the tokens beyond their
    estimates of the requests admitted on a lease still held after it emptied: each takes
    at least one of the units the process held then (its lease, at most ``cap``, and the
    estimates its requests in flight hold), ``lease / estimate`` requests in practice, until
    the process's next script call (the prefetch at half the lease) answers "no room".
    Under-admission: at most the unused leases outstanding, ``cap`` per process and
    bucket, returned within ``LEASE_IDLE_S`` of the process's last use (or left to expire
    with the window's count when the window changes), plus the estimates held by requests
    in flight beyond their tokens.

    **Redis lost its state** (a NOSCRIPT: restarted empty, or its scripts flushed): every
    lease held is dropped with no return, and the pending returns too (``_lost_state``);
    the script never takes a count below 0 and skips a return to a missing key (a FLUSHDB
    or an eviction keeps the scripts).  The window's counts are forgotten: the limit admits
    its full amount again in that window.

    **Round trips.**  The check script (EVALSHA; EVAL once after a Redis restart answers
    NOSCRIPT) is answered by a callback run from the reply's read (no task, no future).
    Token debits beyond the lease are not sent on their own: they wait, merged per key,
    for this process's next script call (a check or a lease fetch), applied before its own
    reads, or at most ``DEBIT_DELAY_S`` when none comes.

    **Redis unreachable.**  A lease still held (this window, not yet used up) keeps
    admitting in both ``fail_open`` and ``fail_closed``: it was granted, and counted,
    before the outage.  Once it is used up, a request that needs Redis follows the
    configured mode; a failed fetch or debit is counted and logged like a failed check.
    """

    DEBIT_DELAY_S: Final = 0.005
    #: a process holds at most this share of a bucket (1/32: four processes hold <= 12.5%)
    LEASE_FRACTION: Final = 32
    #: a grant covers about this long of the process's observed rate
    LEASE_HORIZON_S: Final = 0.05
    #: unused lease is returned after this long without use of its bucket
    LEASE_IDLE_S: Final = 0.1
    #: leases kept (a selector "*" makes many buckets); beyond, the map starts over
    _LEASES_MAX: Final = 4096

    def __init__(self, url: str, fail_open: bool, prefix: bytes = REDIS_PREFIX) -> None:
        self.client = RespClient(url)
        self.fail_open = fail_open
        self.prefix = prefix
        self.errors = 0
        #: build the Counts of an admission (``ratelimit_headers: always``; RateLimits sets it)
        self.want_counts = True
        #: True from the first failure until the next success (logged once per outage)
        self.down = False
        #: debits not sent yet: Redis key -> [tokens, TTL s]
        self._debits: dict[bytes, list[int]] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        #: per limit index: (amount, window in ms) as sent, formatted once
        self._static: dict[int, tuple[bytes, bytes]] = {}
        #: per bucket key: this process's lease (and the bucket's Redis keys for its window)
        self._leases: dict[str, Lease] = {}
        #: leases whose next grant is to be fetched (one script call, after this loop turn)
        self._to_fetch: list[tuple[Lease, int]] = []
        #: the lease map is full of leases with a script call out (Redis slow): until this
        #: time a new bucket gets no lease (the per-request check), with no rescan of the map
        self._full_until_s = 0.0

    # -- leases ---------------------------------------------------------------------------
    def lease(self, b: Bucket, now_s: float) -> Lease:
        """The bucket's lease, rolled into the window of ``now_s``."""
        lease = self._leases.get(b.key)
        if lease is None:
            base = self.prefix + b.key.encode() + b":"
            if len(self._leases) >= self._LEASES_MAX and (now_s < self._full_until_s or self._evict(now_s)):
                lease = Lease(b.limit, base, 1)  # kept nowhere: a grant of 1, the per-request check
            else:
                lease = self._leases[b.key] = Lease(b.limit, base, max(1, b.limit.amount // self.LEASE_FRACTION))
            lease.since_s = now_s
        if now_s >= lease.ends_s:
            lease.roll(now_s)
        return lease

    def _evict(self, now_s: float) -> bool:
        """The lease map starts over (a selector "*" makes many buckets): the lease held
        goes back first, as when idle; a lease with a grant still out, or units held by
        requests in flight, is kept (its grant must land where it can be used or returned).
        True when the map is still at least half full of those (Redis slow): then no new
        bucket gets a lease for LEASE_IDLE_S, so the map is not rescanned per new bucket
        (that was quadratic while Redis stalled)."""
        kept = {}
        for key, lease in self._leases.items():
            if lease.asked or lease.inflight:
                kept[key] = lease
            elif lease.left > 0 and now_s < lease.ends_s:
                self._add_debit(lease.cur_key, -lease.left, lease.limit.window_s)
        self._leases = kept
        if len(kept) * 2 >= self._LEASES_MAX:
            self._full_until_s = now_s + self.LEASE_IDLE_S
            return len(kept) >= self._LEASES_MAX
        return False

    def admit_leased(
        self, buckets: Sequence[Bucket], anthropic: bool = False, now_s: float | None = None
    ) -> bytes | None:
        """Admit on the leases held, with no round trip, when every bucket has lease left in
        this window (its units taken): the admitted response's header lines (b"" unless
        ``ratelimit_headers: always``); None when the request must wait on Redis.  (One
        frame: ``RateLimits.admit_leased`` is this method.)"""
        if now_s is None:
            now_s = time.time()
        leases = self._leases
        for b in buckets:
            lease = leases.get(b.key)
            if lease is None or lease.left <= 0 or now_s >= lease.ends_s:
                return None
        for b in buckets:
            lease = leases[b.key]
            left = lease.left
            if b.limit.kind == "requests":
                lease.left = left = left - 1
                lease.used += 1
            else:  # its estimate (Lease.hold, inline; left > 0 here): a lease of n tokens admits at most n requests
                take = lease.estimate
                if take > left:
                    take = left
                lease.left = left = left - take
                lease.held += take
                lease.inflight += 1
            lease.last_use_s = now_s
            size = lease.size
            if left * 2 <= size and size > 1 and not lease.asked:
                self._want_fetch(lease, now_s)
        if self._idle_timer is None:
            self._idle_timer = asyncio.get_running_loop().call_later(self.LEASE_IDLE_S, self._return_idle)
        if not self.want_counts:
            return b""
        return admitted_headers(buckets, self.local_counts(buckets), now_s, anthropic)

    def local_counts(self, buckets: Sequence[Bucket]) -> Counts:
        """An admission's Counts from the leases: Redis's last answer minus the lease not
        used yet (what the headers' ``remaining`` is computed from)."""
        out = [-1]
        leases = self._leases
        for b in buckets:
            lease = leases[b.key]
            out += (lease.prev, lease.cur - lease.left)
        return out

    def _size(self, lease: Lease, now_s: float) -> int:
        """The next grant: this process's rate since the last one over LEASE_HORIZON_S,
        at least 1 and at most the cap less what is held and asked (may be <= 0: none)."""
        if lease.cap <= 1:
            return 1
        elapsed_s = now_s - lease.since_s
        rate = lease.used / elapsed_s if elapsed_s > 0 else 0.0
        lease.used = 0
        lease.since_s = now_s
        # (comparisons, not min()/max(): a builtin call is ~1k instructions)
        size = math.ceil(rate * self.LEASE_HORIZON_S)
        if size > lease.cap:
            size = lease.cap
        if size < 1:
            size = 1
        lease.size = size
        room = lease.cap - lease.left - lease.asked
        return size if size < room else room

    def _want_fetch(self, lease: Lease, now_s: float) -> None:
        want = self._size(lease, now_s)
        if want <= 0:
            return
        lease.asked += want
        if not self._to_fetch:
            asyncio.get_running_loop().call_soon(self._fetch)
        self._to_fetch.append((lease, -want))

    def _fetch(self) -> None:
        """The next grants of the leases running low, in one script call (with the pending
        debits); never refused: the process still holds some of each."""
        queued, self._to_fetch = self._to_fetch, []
        now_s = time.time()
        items = []
        for lease, want in queued:
            if now_s >= lease.ends_s:  # a new window since: its next request asks
                lease.asked -= -want
            else:
                items.append((lease, want))
        if items:
            self._send(items, now_s, partial(self._granted, items, [lease.cur_key for lease, _ in items], None))

    def _granted(self, items: Sequence[tuple[Lease, int]], keys: list[bytes], counts: Counts | None,
                 result: Any) -> None:  # fmt: skip
        """A script call's grants into the leases (a grant for a window that has ended
        since is dropped: it counted there); ``counts`` (when a list) gets every bucket's
        counts for the headers.  A request's own unit was taken before (``start_check``)."""
        for i, (lease, want) in enumerate(items):
            lease.asked -= abs(want)
            if not isinstance(result, list) or result[0] > 0:
                continue
            grant, prev, cur = result[3 * i + 1], result[3 * i + 2], result[3 * i + 3]
            if lease.cur_key == keys[i]:
                lease.left += grant
                lease.prev, lease.cur = prev, cur
                if grant == 0 and lease.left > 0 and lease.limit.kind == "tokens" and self._empty(lease):
                    self._give_back(lease)  # others emptied the bucket: the next request asks Redis
                if lease.left > 0 and self._idle_timer is None:  # (returned if not used)
                    self._idle_timer = asyncio.get_running_loop().call_later(self.LEASE_IDLE_S, self._return_idle)
            if counts is not None:
                counts += (prev, cur - max(0, lease.left) if lease.cur_key == keys[i] else cur)

    def _return_idle(self) -> None:
        """Unused lease of buckets not used for LEASE_IDLE_S goes back (a negative debit on
        its window's key); the timer runs while some lease is held."""
        self._idle_timer = None
        now_s = time.time()
        held = False
        for lease in self._leases.values():
            if lease.left <= 0:
                continue
            if now_s >= lease.ends_s:
                lease.roll(now_s)  # counted in the old window: dropped
            elif now_s - lease.last_use_s >= self.LEASE_IDLE_S and not lease.asked:
                self._give_back(lease)
            else:
                held = True
        if held:
            self._idle_timer = asyncio.get_running_loop().call_later(self.LEASE_IDLE_S, self._return_idle)

    def _give_back(self, lease: Lease) -> None:
        """The lease's unused units go back to Redis (a negative debit)."""
        self._add_debit(lease.cur_key, -lease.left, lease.limit.window_s)
        lease.cur -= lease.left
        lease.left = 0

    @staticmethod
    def _empty(lease: Lease) -> bool:
        """Redis's last answer for the bucket leaves no room (the script's own test)."""
        limit = lease.limit
        return math.ceil(limit.amount - estimate(lease.prev, lease.cur, limit.window_s, time.time())) <= 0

    def _lost_state(self, parts: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """Redis answered NOSCRIPT: it restarted empty (or its scripts were flushed), so
        the counts our leases were granted from are gone.  Every lease held is dropped
        with no return (the units requests took awaiting this very call stay taken), and
        the returns pending -- in ``parts`` (the call to resend) and
        in the debits not sent yet -- are dropped too: a return to a count that no longer
        holds it would take the new count below what was really used.  A wanted grant
        that assumed a lease held (negative: never refused) asks to be checked instead."""
        for lease in self._leases.values():
            lease.left = min(lease.left, 0)  # (below 0: units taken by requests whose check is out)
            lease.held = lease.inflight = 0
            lease.prev = lease.cur = 0
        self._debits = {key: entry for key, entry in self._debits.items() if entry[0] >= 0}
        numkeys = int(parts[2])
        keys, args = list(parts[3:3 + numkeys]), list(parts[3 + numkeys:])
        n = int(args[0])
        kept_keys, kept_args = keys[:2 * n], args[:2 + 3 * n]
        for i in range(n):
            if kept_args[3 * i + 4].startswith(b"-"):
                kept_args[3 * i + 4] = kept_args[3 * i + 4][1:]
        for j, key in enumerate(keys[2 * n:]):
            tokens, ttl_s = args[2 + 3 * n + 2 * j], args[3 + 3 * n + 2 * j]
            if not tokens.startswith(b"-"):
                kept_keys.append(key)
                kept_args += (tokens, ttl_s)
        return (b"EVAL", _CHECK_LUA_BYTES, b"%d" % len(kept_keys), *kept_keys, *kept_args)

    # -- the script call ------------------------------------------------------------------
    def _send(self, items: Sequence[tuple[Lease, int]], now_s: float, done: Callable[[Any], None]) -> None:
        """One script call: grants for ``items`` ((lease, wanted: see _CHECK_LUA)) and the
        pending debits; ``done`` gets the reply (a list) or a BackendUnavailable / None."""
        keys: list[bytes] = []
        args: list[bytes] = [_SMALL[len(items)] if len(items) < 16 else b"%d" % len(items),
                             b"%d" % int(now_s * 1000)]  # fmt: skip
        for lease, want in items:
            keys += (lease.cur_key, lease.prev_key)
            args += (*self._limit_args(lease.limit), _SMALL[want] if 0 <= want < 16 else b"%d" % want)
        debits = self._debits
        if debits:
            self._debits = {}
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            for key, (tokens, ttl_s) in debits.items():
                keys.append(key)
                args += (b"%d" % tokens, b"%d" % ttl_s)
        numkeys = len(keys)
        parts = (b"EVALSHA", _CHECK_SHA, _SMALL[numkeys] if numkeys < 16 else b"%d" % numkeys, *keys, *args)
        # (hiredis's C packer: a third of plano_fast.resp.command's cost for these ~10 parts)
        self.client.call_back(pack_command(parts), partial(self._replied, parts, done))

    def _limit_args(self, limit: Limit) -> tuple[bytes, bytes]:
        static = self._static.get(limit.index)
        if static is None:
            static = self._static[limit.index] = (b"%d" % limit.amount, b"%d" % (limit.window_s * 1000))
        return static

    def _replied(self, parts: tuple[bytes, ...], done: Callable[[Any], None], result: Any,
                 exc: BaseException | None) -> None:  # fmt: skip
        if exc is not None:
            if isinstance(exc, ReplyError) and parts[0] == b"EVALSHA" and str(exc).startswith("NOSCRIPT"):
                # a restarted (empty) Redis: its counts are gone with our leases; send the
                # script itself (EVAL caches it)
                parts = self._lost_state(parts)
                self.client.call_back(pack_command(parts), partial(self._replied, parts, done))
                return
            done(self._failed(exc))
            return
        self._recovered()
        done(result)

    # -- a request that waits on Redis ----------------------------------------------------
    def start_check(self, buckets: Sequence[Bucket], now_s: float, done: Callable[[Outcome], None]) -> None:
        """Send the check (grants for every bucket of the request); ``done(outcome)`` runs
        when Redis answered (or failed).  A request bucket's unit for this request is
        taken at once: from the lease still held, or (want > 0) from the grant, which the
        script makes at least 1 or refuses."""
        items = []
        taken = []  # request buckets whose unit this request took (back if not admitted)
        for b in buckets:
            lease = self.lease(b, now_s)
            size = self._size(lease, now_s)
            want = (-size if size > 0 else 0) if lease.left > 0 else max(1, size)
            items.append((lease, want))
            lease.asked += abs(want)
            if b.limit.kind == "requests":
                lease.left -= 1
                lease.used += 1
                taken.append(lease)
            lease.last_use_s = now_s
        keys = [lease.cur_key for lease, _ in items]
        self._send(items, now_s, partial(self._checked, buckets, items, keys, taken, now_s, done))

    def _checked(
        self, buckets: Sequence[Bucket], items: Sequence[tuple[Lease, int]], keys: list[bytes], taken: list[Lease],
        now_s: float, done: Callable[[Outcome], None], result: Any,
    ) -> None:  # fmt: skip
        if not isinstance(result, list) or result[0] > 0:  # failed or refused: nothing granted
            for lease, want in items:
                lease.asked -= abs(want)
            for lease in taken:
                if lease.cur_key in keys:
                    lease.left += 1
            if isinstance(result, list):
                b = buckets[result[0] - 1]
                prev, cur = result[1], result[2]
                lease = items[result[0] - 1][0]
                if b.limit.kind == "tokens" and lease.cur_key == keys[result[0] - 1] and lease.left > 0:
                    self._give_back(lease)  # the bucket is empty: the next request asks Redis
                result = Verdict(b.limit, 0, retry_after(prev, cur, b.limit.amount, b.limit.window_s, now_s))
            done(result)
            return
        counts = [-1] if self.want_counts else None
        self._granted(items, keys, counts, result)
        for (lease, _), key in zip(items, keys):
            if lease.limit.kind == "tokens" and lease.cur_key == key:
                lease.hold()  # this request's estimate, as a local admission takes it
        done(counts if counts is not None else ADMITTED)

    async def check(self, buckets: Sequence[Bucket], now_s: float) -> Outcome:
        """``start_check`` for a caller that awaits anyway (managed mode)."""
        waiter: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.start_check(buckets, now_s, partial(_resolve, waiter))
        return await waiter

    # -- debits -----------------------------------------------------------------------------
    def debit(self, buckets: Sequence[Bucket], tokens: int, now_s: float | None = None) -> None:
        """A settled request's tokens (0: it has no usage) against the estimate it held
        (``Lease.hold``): what it held beyond them goes back to the lease; its tokens
        beyond it are taken from the lease, the rest debited in Redis with the next script
        call (or after DEBIT_DELAY_S).  (One frame: ``RateLimits.settle`` is this method.)"""
        if now_s is None:
            now_s = time.time()
        for b in buckets:
            if b.limit.kind != "tokens":
                continue
            lease = self._leases.get(b.key)
            if lease is None or now_s >= lease.ends_s:
                if not tokens:
                    continue
                lease = self.lease(b, now_s)
            # The estimate it held: the requests in flight share what they hold equally
            # (the last takes the rest), so the held units are reconciled exactly in sum.
            # ``rest``: its tokens beyond that share (negative: it held more than it took).
            rest = tokens
            inflight = lease.inflight
            if inflight == 1:  # (the one in flight: all that is held)
                rest -= lease.held
                lease.held = lease.inflight = 0
            elif inflight > 1:
                share = lease.held // inflight
                lease.held -= share
                lease.inflight = inflight - 1
                rest -= share
            if tokens > 0:  # the estimate: the mean tokens per settled request (>= 1)
                settled = lease.settled = lease.settled + 1
                total = lease.settled_tokens = lease.settled_tokens + tokens
                lease.estimate = -(-total // settled)
                lease.used += tokens
            lease.last_use_s = now_s
            if rest < 0:
                lease.left -= rest
                if self._idle_timer is None:  # (returned if not used)
                    self._idle_timer = asyncio.get_running_loop().call_later(self.LEASE_IDLE_S, self._return_idle)
                continue
            left = lease.left
            if left > 0:
                if rest > 0:  # (taken from the lease; no min(): ~1k instructions)
                    taken = rest if rest < left else left
                    lease.left = left = left - taken
                    rest -= taken
                size = lease.size
                if left * 2 <= size and size > 1 and not lease.asked:
                    self._want_fetch(lease, now_s)
            if rest:
                self._add_debit(lease.cur_key, rest, b.limit.window_s)

    def _add_debit(self, key: bytes, tokens: int, window_s: int) -> None:
        entry = self._debits.get(key)
        if entry is None:
            self._debits[key] = [tokens, window_s * 2 + 1]
        else:
            entry[0] += tokens
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(self.DEBIT_DELAY_S, self._flush)

    def _flush(self) -> None:
        """The debits no script call carried within ``DEBIT_DELAY_S``: sent on their own."""
        self._flush_timer = None
        if self._debits:
            self._send((), time.time(), self._debited)

    def _debited(self, outcome: Outcome) -> None:
        return None  # a failure was counted and logged by _failed; the debits are lost

    def _note_failure(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.down:
            self.down = True
            log.warning("rate-limit backend unreachable (%s): %s", type(exc).__name__,
                        "admitting (fail_open)" if self.fail_open else "refusing (fail_closed)")  # fmt: skip

    def _failed(self, exc: BaseException) -> BackendUnavailable | None:
        self._note_failure(exc)
        return None if self.fail_open else BackendUnavailable()

    def _recovered(self) -> None:
        if self.down:
            self.down = False
            log.warning("rate-limit backend reachable again")

    async def close(self) -> None:
        """Shutdown: the leases held go back and the pending debits are sent before the
        connection closes."""
        for timer in (self._flush_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._flush_timer = self._idle_timer = None
        now_s = time.time()
        for lease in self._leases.values():
            if lease.left > 0 and now_s < lease.ends_s:
                self._add_debit(lease.cur_key, -lease.left, lease.limit.window_s)
                lease.left = 0
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._debits:
            flushed: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            self._send((), now_s, partial(_resolve, flushed))
            try:
                await asyncio.wait_for(flushed, self.client.timeout_s)
            except asyncio.TimeoutError:
                pass  # counted as lost by the client's timeout
        await self.client.aclose()


def _resolve(waiter: asyncio.Future[Outcome], outcome: Outcome) -> None:
    """A check's outcome for an awaiting caller (gone if it was cancelled meanwhile)."""
    if not waiter.done():
        waiter.set_result(outcome)


class BackendUnavailable(ServiceUnavailable):
    """Redis unreachable with fail_closed: 503, never forwarded unmetered."""

    def __init__(self) -> None:
        super().__init__("rate-limit state is unavailable; retry shortly")

    def headers(self, fmt: ApiFormat) -> tuple[tuple[bytes, bytes], ...]:
        return ((b"retry-after", b"1"),)


class RateLimited(ClientError):
    """429 in the client's format, with Retry-After and the rate-limit headers its SDK
    reads (the openai and anthropic SDKs retry after the advertised delay)."""

    status = 429
    code = "rate_limit_exceeded"
    openai_type = "requests"

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        self.openai_type = verdict.limit.kind
        super().__init__(
            f"rate limit reached ({verdict.limit.describe()}); retry in "
            f"{max(1, math.ceil(verdict.retry_after_s))} s"
        )

    def headers(self, fmt: ApiFormat) -> tuple[tuple[bytes, bytes], ...]:
        return refusal_headers(self.verdict, fmt is ApiFormat.ANTHROPIC)


#: A check's outcome: refused (Verdict), admitted (Counts; None: admitted with no state,
#: as fail_open does), or the backend's error when fail_closed (BackendUnavailable).
Outcome: TypeAlias = "Verdict | Counts | BackendUnavailable | None"

#: ``plano_fast.ratelimit_headers``: the x-ratelimit-* / anthropic-ratelimit-* headers on
#: refusals only (429), or also on every admitted response of a request that falls in a
#: bucket (computed from the state the check returns: no second round trip)
HeadersMode = Literal["refused", "always"]


class _Plan:
    """The limits of one configured model name (or of a model with none of its own), and,
    when none is header-scoped, the buckets they made per caller: ``memo`` maps the
    project (``subject`` 1), the key hash (2) or both (3) to the request's buckets.  Keys
    are server-side project ids and fixed-length digests, never a client's header value
    or model name; at ``MEMO_MAX`` answers kept in all the plans together, every memo
    starts over.  Nothing else changes the answer: the limits are read once, when the
    gateway starts."""

    __slots__ = ("limits", "subject", "memo")

    MEMO_MAX: Final = 4096

    def __init__(self, limits: tuple[Limit, ...]) -> None:
        self.limits = limits
        scopes = {limit.scope for limit in limits}
        self.subject: int | None = None
        if limits and "header" not in scopes:
            self.subject = ("project" in scopes) + 2 * ("api_key" in scopes)
        self.memo: dict[Any, tuple[Bucket, ...]] = {}


class RateLimits:
    """The configured limits and their backend."""

    #: buckets kept for reuse (a selector "*" makes one per distinct value): beyond this
    #: many the memo starts over
    _BUCKETS_MAX: Final = 4096

    def __init__(
        self, limits: Sequence[Limit], backend: MemoryBackend | SqliteBackend | RedisBackend,
        headers: HeadersMode = "refused",
    ) -> None:  # fmt: skip
        self.limits = tuple(limits)
        self.backend = backend
        self.headers_always = headers == "always"
        backend.want_counts = self.headers_always  # (Counts are only ever made into headers)
        #: the Redis backend: admission on this process's leases, else a check awaited or
        #: called back (``check``); the others answer at once (``admit_now``)
        self.asynchronous = isinstance(backend, RedisBackend)
        #: admission on this process's Redis leases, with no round trip (only when
        #: ``asynchronous``): the admitted response's header lines (see ``decide``), or None
        #: when the request must wait on Redis (``check`` / ``admit_remote``)
        self.admit_leased: Callable[..., bytes | None] = (
            backend.admit_leased if isinstance(backend, RedisBackend) else _no_leases
        )
        #: a settled request's tokens (0: no usage) into its buckets: the backend's debit
        #: at the current time, bound once (one frame per request)
        self.settle: Callable[[Sequence[Bucket], int], None] = backend.debit
        self.by_model: dict[str, tuple[Limit, ...]] = {}
        for limit in self.limits:
            if limit.model != "*":
                self.by_model[limit.model] = self.by_model.get(limit.model, ()) + (limit,)
        #: the limits on every model (``model: "*"``), matched once per request
        self.any_model = tuple(limit for limit in self.limits if limit.model == "*")
        self.refused = 0
        #: (limit index, selector value) -> its Bucket, built once (key strings, Redis keys)
        self._buckets: dict[tuple[int, str], Bucket] = {}
        #: per configured model name, the limits a request naming it falls under (its own,
        #: then the ``"*"`` ones) and the buckets they made per caller; ``_any``: a model
        #: with no limits of its own
        self._plans = {model: _Plan(own + self.any_model) for model, own in self.by_model.items()}
        self._any = _Plan(self.any_model)
        #: answers kept in all the plans' memos together (at _Plan.MEMO_MAX they start over)
        self._memoized = 0

    def buckets(
        self,
        models: Sequence[str | None],
        headers: Sequence[tuple[bytes, bytes]],
        project: str | None = None,
        key_hash: str | None = None,
    ) -> Sequence[Bucket]:
        """The buckets a request falls in (its model by any of the names given; its
        project and client key hash when the mode knows them).

        Without header-scoped limits the answer depends only on the configured model name
        the request names (at most one distinct: else the full match below), the project
        and the key hash, so it is kept per plan (``_Plan``) and caller: the same tuple for
        every request of that caller, no matching."""
        plan = self._any
        plans = self._plans
        if plans:
            name: str | None = None
            for model in models:
                if model in plans:
                    if name is None:
                        name = model
                    elif model != name:  # two configured names: their limits merged, not kept
                        return self._collect(models, headers, project, key_hash)
            if name is not None:
                plan = plans[name]
        subject = plan.subject
        if subject is None:  # header-scoped limits (per header value), or none at all
            return self._collect(models, headers, project, key_hash) if plan.limits else ()
        caller = project if subject == 1 else key_hash if subject == 2 else (project, key_hash)
        memo = plan.memo
        found = memo.get(caller)
        if found is None:
            found_list: list[Bucket] = []
            self._match(plan.limits, headers, project, key_hash, found_list, set())
            if self._memoized >= _Plan.MEMO_MAX:  # (every plan's: the bound is for them all)
                for other in (self._any, *plans.values()):
                    other.memo.clear()
                self._memoized = 0
            self._memoized += 1
            found = memo[caller] = tuple(found_list)
        return found

    def _collect(
        self, models: Sequence[str | None], headers: Sequence[tuple[bytes, bytes]], project: str | None,
        key_hash: str | None,
    ) -> list[Bucket]:  # fmt: skip
        """``buckets`` by matching every limit of every name given, then the ``"*"`` ones."""
        found: list[Bucket] = []
        seen: set[int] = set()
        for model in models:
            self._match(self.by_model.get(model or "", ()), headers, project, key_hash, found, seen)
        if self.any_model:
            self._match(self.any_model, headers, project, key_hash, found, seen)
        return found

    def _match(
        self, limits: Sequence[Limit], headers: Sequence[tuple[bytes, bytes]], project: str | None,
        key_hash: str | None, found: list[Bucket], seen: set[int],
    ) -> None:  # fmt: skip
        for limit in limits:
            if limit.index in seen:
                continue
            scope = limit.scope
            if scope == "header":
                value = _header(headers, limit.header)
            elif scope == "project":
                value = project
            else:
                value = key_hash
            if value is None or (limit.value != "*" and value != limit.value):
                continue
            seen.add(limit.index)
            bucket = self._buckets.get((limit.index, value))
            if bucket is None:
                if len(self._buckets) >= self._BUCKETS_MAX:
                    self._buckets.clear()
                key = f"{limit.index}:{value}"
                bucket = self._buckets[(limit.index, value)] = Bucket(limit, key)
            found.append(bucket)

    def decide(self, buckets: Sequence[Bucket], outcome: Outcome, now_s: float, anthropic: bool) -> bytes:
        """A check's outcome -> the header lines for the admitted response (b"" unless
        ``ratelimit_headers: always``); raises RateLimited or BackendUnavailable."""
        if outcome is None:
            return b""  # fail_open while the backend is down: no state to report
        if isinstance(outcome, Verdict):
            self.refused += 1
            raise RateLimited(outcome)
        if isinstance(outcome, BackendUnavailable):
            raise outcome
        if not self.headers_always:
            return b""
        return admitted_headers(buckets, outcome, now_s, anthropic)

    def admit_now(self, buckets: Sequence[Bucket], anthropic: bool = False) -> bytes:
        """The synchronous check (raises RateLimited); only when not ``asynchronous``.
        Returns the admitted response's header lines (see ``decide``)."""
        backend = self.backend
        assert not isinstance(backend, RedisBackend)
        now_s = time.time()
        return self.decide(buckets, backend.check_now(buckets, now_s), now_s, anthropic)

    def check(self, buckets: Sequence[Bucket], now_s: float, done: Callable[[Outcome], None]) -> None:
        """The Redis check without a task (only when ``asynchronous``: the in-process and
        SQLite backends answer at once, ``admit_now``): ``done(outcome)`` runs from the
        read that parsed the reply; pass the outcome to ``decide``."""
        backend = self.backend
        assert isinstance(backend, RedisBackend)
        backend.start_check(buckets, now_s, done)

    async def admit(self, buckets: Sequence[Bucket], anthropic: bool = False) -> bytes:
        """Admission on this process's leases, else the Redis check, awaited (only when
        ``asynchronous``; raises RateLimited, or BackendUnavailable when fail_closed);
        returns the admitted response's header lines (see ``decide``)."""
        head = self.admit_leased(buckets, anthropic)
        if head is not None:
            return head
        return await self.admit_remote(buckets, anthropic)

    async def admit_remote(self, buckets: Sequence[Bucket], anthropic: bool = False) -> bytes:
        """``admit`` after ``admit_leased`` said None (the leases cannot admit): only the
        Redis check, awaited -- no second look at the leases, which nothing changed since."""
        backend = self.backend
        assert isinstance(backend, RedisBackend)
        now_s = time.time()
        outcome = await backend.check(buckets, now_s)
        return self.decide(buckets, outcome, now_s, anthropic)


def _no_leases(buckets: Sequence[Bucket], anthropic: bool = False) -> bytes | None:
    raise AssertionError("admit_leased: only with Redis (RateLimits.asynchronous)")


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for n, v in headers:
        if n == name:
            return v.decode("latin-1").strip()
    return None


def reset_text(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: "1s", "6m0s", "1h2m3s", "250ms"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"


def rfc3339(epoch_s: float) -> str:
    """Anthropic's anthropic-ratelimit-*-reset format (RFC 3339, UTC, whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def full_reset_s(prev: int, cur: int, window_s: int, now_s: float) -> float:
    """Seconds until a bucket is back to its full amount: this window's count leaves the
    sliding window at the end of the next window, the previous one's at this one's end."""
    to_end = window_s - now_s % window_s
    if cur > 0:
        return to_end + window_s
    return to_end if prev > 0 else 0.0


def _header_lines(kind: bytes, limit: int, remaining: int, reset_s: float, anthropic: bool, now_s: float) -> bytes:
    if anthropic:
        return b"anthropic-ratelimit-%s-limit: %d\r\nanthropic-ratelimit-%s-remaining: %d\r\n" \
               b"anthropic-ratelimit-%s-reset: %s\r\n" % (
                   kind, limit, kind, remaining, kind, rfc3339(now_s + reset_s).encode())  # fmt: skip
    return b"x-ratelimit-limit-%s: %d\r\nx-ratelimit-remaining-%s: %d\r\nx-ratelimit-reset-%s: %s\r\n" % (
        kind, limit, kind, remaining, kind, reset_text(reset_s).encode())  # fmt: skip


def admitted_headers(buckets: Sequence[Bucket], counts: Counts, now_s: float, anthropic: bool) -> bytes:
    """The rate-limit header lines of an admitted response: per kind (requests, tokens)
    the bucket with the least left.  Remaining: the limit minus the sliding window's
    count, this request included for a request limit; for a token limit before this
    request's own tokens (debited after the response).  Reset: when the bucket is full
    again (OpenAI's "1m30s" format; Anthropic's RFC 3339 time)."""
    best: dict[str, tuple[int, Bucket, int, int]] = {}
    for i, b in enumerate(buckets):
        prev, cur = counts[2 * i + 1], counts[2 * i + 2]
        limit = b.limit
        left = max(0, math.floor(limit.amount - estimate(prev, cur, limit.window_s, now_s)))
        known = best.get(limit.kind)
        if known is None or left < known[0]:
            best[limit.kind] = (left, b, prev, cur)
    out = b""
    for kind in ("requests", "tokens"):
        chosen = best.get(kind)
        if chosen is not None:
            left, b, prev, cur = chosen
            reset_s = full_reset_s(prev, cur, b.limit.window_s, now_s)
            out += _header_lines(kind.encode(), b.limit.amount, left, reset_s, anthropic, now_s)
    return out


def with_headers(block: bytes, lines: bytes) -> bytes:
    """An upstream head's header ``block`` plus the gateway's rate-limit header ``lines``;
    the provider's own headers of the same names (OpenAI and Anthropic send theirs: the
    limits of the gateway's upstream key) are dropped, so the client sees one value."""
    if block.lower().find(b"ratelimit-") >= 0:  # (not ``in``: see credentials._normal_name)
        names = {line.partition(b":")[0] for line in lines.split(b"\r\n") if line}
        block = b"".join(
            line + b"\r\n" for line in block.split(b"\r\n") if line and line.partition(b":")[0].lower() not in names
        )
    return block + lines


def with_header_pairs(headers: list[tuple[bytes, bytes]], lines: bytes) -> list[tuple[bytes, bytes]]:
    """``with_headers`` for a head rebuilt from (name, value) pairs (a converted answer)."""
    ours = [(name, value) for name, _, value in (line.partition(b": ") for line in lines.split(b"\r\n") if line)]
    names = {name for name, _ in ours}
    return [h for h in headers if h[0].lower() not in names] + ours


def refusal_headers(verdict: Verdict, anthropic: bool, now_s: float | None = None) -> tuple[tuple[bytes, bytes], ...]:
    """Retry-After and the rate-limit headers the client's SDK knows."""
    limit = verdict.limit
    retry = max(1, math.ceil(verdict.retry_after_s))
    # retry-after-ms: the openai and anthropic SDKs read it first, so a sub-second wait
    # (unit: second) is not rounded up to a whole second
    retry_ms = max(1, math.ceil(verdict.retry_after_s * 1000))
    headers = [(b"retry-after", str(retry).encode()), (b"retry-after-ms", str(retry_ms).encode())]
    if anthropic:
        stamp = rfc3339((now_s or time.time()) + verdict.retry_after_s)
        kind = b"tokens" if limit.kind == "tokens" else b"requests"
        headers += [
            (b"anthropic-ratelimit-" + kind + b"-limit", str(limit.amount).encode()),
            (b"anthropic-ratelimit-" + kind + b"-remaining", str(verdict.remaining).encode()),
            (b"anthropic-ratelimit-" + kind + b"-reset", stamp.encode()),
        ]
    else:
        kind = b"tokens" if limit.kind == "tokens" else b"requests"
        headers += [
            (b"x-ratelimit-limit-" + kind, str(limit.amount).encode()),
            (b"x-ratelimit-remaining-" + kind, str(verdict.remaining).encode()),
            (b"x-ratelimit-reset-" + kind, reset_text(verdict.retry_after_s).encode()),
        ]
    return tuple(headers)


SHARED_FILE: Final = "ratelimits.sqlite3"


def prepare_shared(raw: object, redis_url: str | None, shared_dir: str) -> None:
    """Create the workers' shared SQLite file (WAL mode, its table) once, in the parent,
    before the workers start: switching a file to WAL takes an exclusive lock that the busy
    timeout does not wait for, so workers racing to set it up failed ("database is
    locked") and exited.  On a prepared file each worker's setup only reads."""
    if raw and not redis_url and parse_limits(raw):
        SqliteBackend(os.path.join(shared_dir, SHARED_FILE)).db.close()


def build(
    raw: object, redis_url: str | None, fail_open: bool, shared_dir: str | None, headers: HeadersMode = "refused"
) -> RateLimits | None:
    """The limits and their backend: Redis with ``redis_url``; else, when the instance
    runs several workers (``shared_dir``: their common run directory), a SQLite file
    there; else this process's memory."""
    limits = parse_limits(raw)
    if not limits:
        return None
    if redis_url:
        return RateLimits(limits, RedisBackend(redis_url, fail_open), headers)
    if shared_dir is not None:
        return RateLimits(limits, SqliteBackend(os.path.join(shared_dir, SHARED_FILE)), headers)
    return RateLimits(limits, MemoryBackend(), headers)


def headers_policy(mode: HeadersMode) -> str:
    """``plano_fast.ratelimit_headers`` in one line (``plano-fast validate``)."""
    if mode == "always":
        return ("always: x-ratelimit-* (anthropic-ratelimit-* for Anthropic clients) on every response "
                "of a limited request, the provider's own of the same names replaced; Retry-After on 429")  # fmt: skip
    return ("refused: x-ratelimit-* (anthropic-ratelimit-* for Anthropic clients) and Retry-After on 429 "
            "refusals only (ratelimit_headers: always adds them to admitted responses)")  # fmt: skip


def describe(raw: object) -> list[str]:
    """One line per limit (``plano-fast validate``)."""
    return [limit.describe() for limit in parse_limits(raw)]


__all__ = ["BackendUnavailable", "Limit", "RateLimits", "Verdict", "build", "describe"]
