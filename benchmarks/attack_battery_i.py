"""The attack battery's round i (2026-12-06 "i", managed mode under attack): ``xproxy_`` tokens
mangled every way a client or an attacker would (lower- and upper-cased, trailing bytes,
twice, comma-joined, in the wrong header, in the query, a provider-key look-alike) refused
401 and never forwarded, and never echoed; output bounds that are no numbers, negative,
huge past 64 bits, under the stack's hard limit, never a 5xx, never an overshoot and never
left reserved; no ``xproxy_`` byte reaching the provider over the whole battery; and the
managed differential (tests/differential_i.py: a compiled and a pure managed gateway on
copies of one database, every answer, upstream byte, usage row and counter compared) at its
deep size.  Registered here, run by benchmarks/attack_battery.py (which adds ``CASES`` to
its own):

    .venv/bin/python -m benchmarks.attack_battery --mode managed -k round_i
    PLANO_FAST_ROUND_I_REQUESTS=2000 .venv/bin/python -m benchmarks.attack_battery --mode managed -k differential
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path

from benchmarks.attack_battery import (
    ALL_MODES, CHAT, CHAT_PATH, Case, Result, Stack, exchange, post, registrar,
)  # fmt: skip
from benchmarks.attack_battery_c import _calls_since

CASES: list[Case] = []
case = registrar(CASES)


def _token(s: Stack) -> bytes:
    return s.auth.split(b"Bearer ", 1)[1].split(b"\r\n", 1)[0]


def _mangled(token: bytes) -> dict[str, bytes]:
    """name -> the credential lines of a mangled token (each must be refused 401)."""
    return {
        "lower-cased": b"Authorization: Bearer " + token.lower() + b"\r\n",
        "upper-cased": b"Authorization: Bearer " + token.upper() + b"\r\n",
        "one byte more": b"Authorization: Bearer " + token + b"x\r\n",
        "one byte less": b"Authorization: Bearer " + token[:-1] + b"\r\n",
        "a comma and itself": b"Authorization: Bearer " + token + b", Bearer " + token + b"\r\n",
        "twice": b"Authorization: Bearer " + token + b"\r\nAuthorization: Bearer " + token + b"\r\n",
        "bearer and x-api-key": b"Authorization: Bearer " + token + b"\r\nx-api-key: " + token + b"\r\n",
        "Basic scheme": b"Authorization: Basic " + token + b"\r\n",
        "no scheme": b"Authorization: " + token + b"\r\n",
        "proxy-authorization": b"Proxy-Authorization: Bearer " + token + b"\r\n",
        "cookie": b"Cookie: token=" + token + b"\r\n",
        "a percent-encoded NUL after": b"Authorization: Bearer " + token + b"%00\r\n",
        "a provider-key look-alike": b"Authorization: Bearer sk-" + token[7:] + b"\r\n",
        "the prefix alone": b"Authorization: Bearer xproxy_\r\n",
        "300 bytes": b"Authorization: Bearer xproxy_" + b"A" * 300 + b"\r\n",
    }


@case("identity", "round i: an xproxy_ token mangled 15 ways (case, trailing bytes, twice, comma-joined, wrong "
      "header or scheme, a look-alike): 401, not forwarded, not echoed; in each other credential place "
      "(x-goog-api-key, api-key, x_api_key, ?key=): 200, the token never upstream",
      modes=("managed",))
def round_i_mangled_tokens(s: Stack) -> Result:
    token = _token(s)
    bad = []
    for name, lines in _mangled(token).items():
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, post(CHAT_PATH, CHAT, lines), wait_s=5, close_wait_s=0)
        forwarded = len(_calls_since(s, before))
        if answer.status != 401 or forwarded or token in answer.raw or token[7:] in answer.raw:
            bad.append(f"{name}: {answer.status} fwd={forwarded} echoed={token[7:] in answer.raw}")
    # The token where a credential may be (docs/security.md "One credential per request"):
    # served, and the provider gets the server-side key only.
    for name, path, lines in (("x-goog-api-key", CHAT_PATH, b"x-goog-api-key: " + token + b"\r\n"),
                              ("api-key", CHAT_PATH, b"api-key: " + token + b"\r\n"),
                              ("x_api_key", CHAT_PATH, b"x_api_key: " + token + b"\r\n"),
                              ("?key=", CHAT_PATH + b"?key=" + token, b"")):
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, post(path, CHAT, lines), wait_s=5, close_wait_s=0)
        calls = _calls_since(s, before)
        leaked = [c for c in calls if b"xproxy_" in (c.path + repr(c.headers)).encode().lower()]
        if answer.status != 200 or len(calls) != 1 or leaked:
            bad.append(f"{name}: {answer.status} fwd={len(calls)} token upstream={bool(leaked)}")
    return Result(not bad, "; ".join(bad)[:300] or f"{len(_mangled(token))} mangled credentials, each 401, none "
                                                   "forwarded or echoed; in x-goog-api-key, api-key, x_api_key or "
                                                   "?key=: 200, the token not forwarded")


_BOUNDS = (b"-1", b"0", b"-0", b"1.5", b"1e3", b"1E400", b'"5"', b"null", b"true", b"[]", b"{}",
           b"9223372036854775807", b"9223372036854775808", b"18446744073709551617", b"1" + b"0" * 40)


@case("budget", "round i: max_tokens / max_completion_tokens no number, negative, zero, fractional, huge past 64 "
      "bits under a hard limit: each 200/400/402, never 5xx; afterwards nothing reserved, the limit not overshot",
      modes=("managed",))
def round_i_output_bounds_under_a_hard_limit(s: Stack) -> Result:
    bad = []
    statuses: dict[int, int] = {}
    for name in (b"max_tokens", b"max_completion_tokens"):
        for bound in _BOUNDS:
            body = b'{"model":"gpt-4o-mini","' + name + b'":' + bound + b',"messages":[{"role":"user","content":"hi"}]}'
            answer = exchange(s.gateway.port, post(CHAT_PATH, body, s.auth), wait_s=5, close_wait_s=0)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            if answer.status not in (200, 400, 402):
                bad.append(f"{name.decode()}={bound.decode()[:20]}: {answer.status}")
    time.sleep(1.0)
    with sqlite3.connect(s.sqlite_path) as db:
        counters = db.execute("select spent_nano_usd, reserved_nano_usd from spending_counters"
                              " where scope_kind = 'project'").fetchall()
        limits = db.execute("select limit_nano_usd from spending_limits where enforcement = 'hard'").fetchall()
        held = db.execute("select count(*) from spending_reservations").fetchone()[0]
    limit = min(r[0] for r in limits)
    if held or any(r[1] for r in counters) or any(r[0] > limit for r in counters):
        bad.append(f"after: {held} reservations, counters {counters}, limit {limit}")
    return Result(not bad, "; ".join(bad)[:300] or f"statuses {sorted(statuses.items())}, nothing reserved after")


@case("identity", "round i: over every request of the battery so far, no xproxy_ byte reached the provider "
      "(headers, path or body, any case)", modes=("managed",))
def round_i_no_token_upstream(s: Stack) -> Result:
    leaked = [c.path for c in s.provider_calls()
              if b"xproxy_" in (c.path + repr(c.headers)).encode().lower() or b"xproxy_" in c.body.lower()]
    return Result(not leaked, f"{len(s.provider_calls())} provider calls, {len(leaked)} with a token {leaked[:3]}")


@case("differential", "round i: the managed differential (tests/differential_i.py) at its deep size "
      "($PLANO_FAST_ROUND_I_REQUESTS, default 600 a phase): 0 divergences between the compiled and the pure "
      "gateway (answers, upstream bytes, usage rows, counters)", modes=("managed",))
def round_i_managed_differential(s: Stack) -> Result:
    from tests.test_differential_i import recording_pair, run_differential

    count = int(os.environ.get("PLANO_FAST_ROUND_I_REQUESTS", "600"))
    with recording_pair() as upstreams, tempfile.TemporaryDirectory(prefix="round-i-") as tmp:
        out = run_differential(Path(tmp), upstreams, seed=101, count=count, stop_at_first=False)
    return Result(not out.divergences, f"{out.requests} requests, {len(out.divergences)} divergences, statuses "
                                       f"{sorted((k.decode()[9:12], v) for k, v in out.statuses.items())}"
                  + (f"; first: {out.divergences[0][:200]}" if out.divergences else ""))


__all__ = ["ALL_MODES", "CASES"]
