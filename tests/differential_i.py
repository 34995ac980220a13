"""Round i's managed differential generator: seeded adversarial requests for a compiled
managed gateway and a pure one (``PLANO_FAST_PURE_SCANNER=1``) on copies of one provisioned
database (tests/test_differential_i.py, benchmarks/attack_battery_i.py).

The tenants (``provision_tenants``): a live token on a pipe with a model rewrite, an
Anthropic target, a target whose provider is down (connection refused) and one whose
provider is absent from the config (skipped at load); tokens expired before the gateway
loads them, expiring after it has, revoked, revoked after load, without a pipe; users and
projects with hard limits of both scopes, one too small for any request and one large.

The requests (``request``): those tokens valid, unknown, malformed, lower- and upper-cased,
with trailing bytes, twice, in the wrong header or scheme; chat completions, Messages,
count_tokens and Responses; models the pipe serves, rewrites, does not allow, or routes to
absent targets; ``max_tokens`` (and its Responses / chat twins) absent, small, huge beyond
64 bits, negative, zero, fractional, a string, null, a boolean, an exponent.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from dataclasses import dataclass, field

from plano_fast.managed.state import new_token, token_hash
from plano_fast.store import Store
from plano_fast.store.migrate import prepare_schema
from tests.differential_h import _case_variant
from tests.test_managed import provision, store_call

#: (provider, upstream model, client models served): a rewrite, Anthropic, a provider
#: whose base_url refuses connections, and one absent from model_providers (skipped)
PIPE: list[tuple[str, str | None, str | None]] = [
    ("openai/gpt-4o-mini", None, "gpt-4o-mini*"),
    ("openai/gpt-4o-mini", "gpt-4o-mini", "gpt-4o"),
    ("anthropic/claude-sonnet-4-6", None, "claude-*"),
    ("down/unreachable-model", "unreachable-model", "down-*"),
    ("mistral/mistral-large", None, "absent-*"),
]
#: a limit no request fits (1 nano-dollar) and one every bounded request fits ($1M)
TINY_NANO_USD = 1
LARGE_NANO_USD = 10**15


@dataclass
class Tenants:
    tokens: dict[str, str] = field(default_factory=dict)
    #: token name -> its row id (to revoke, or expire, after load)
    token_ids: dict[str, str] = field(default_factory=dict)


def provision_tenants(sqlite_path: str) -> Tenants:
    """Every tenant, in one database (copied for each gateway)."""
    asyncio.run(prepare_schema(None, sqlite_path))
    out = Tenants()
    live = provision(None, sqlite_path, PIPE)
    out.tokens["live"], out.token_ids["live"] = live.token, live.token_id
    for name, limit in (("project hard, tiny", TINY_NANO_USD), ("project hard, large", LARGE_NANO_USD)):
        tenant = provision(None, sqlite_path, PIPE, limit_nano_usd=limit)
        out.tokens[name], out.token_ids[name] = tenant.token, tenant.token_id

    async def more(store: Store) -> None:
        [pipe] = await store.list_pipes(live.project_id)
        for name in ("expired", "expiring", "revoked", "revoked after load", "user hard, tiny", "user hard, large"):
            user = await store.create_user(name)
            token = out.tokens[name] = new_token()
            # ("expiring" gets its expiry once the gateways have loaded it: ``expire_soon``)
            expires = time.time_ns() - 1 if name == "expired" else None
            row = await store.create_proxy_token(token_hash(token), live.project_id, user_id=user.id,
                                                 pipe_id=pipe.id, expires_at_ns=expires)
            out.token_ids[name] = row.id
            if name == "revoked":
                await store.revoke_proxy_token(row.id)
            elif name.startswith("user hard"):
                limit = TINY_NANO_USD if name.endswith("tiny") else LARGE_NANO_USD
                await store.set_spending_limit("user", user.id, "total", limit, "hard")
        project = await store.create_project("no pipe")
        token = out.tokens["no pipe"] = new_token()
        await store.create_proxy_token(token_hash(token), project.id)

    store_call(None, sqlite_path, more)
    return out


def expire_soon(sqlite_path: str, token_id: str, in_s: float) -> None:
    """The token expires ``in_s`` from now (its row updated: the gateway's next reload
    of its state reads it; until then the expiry it loaded, none, stands)."""
    with sqlite3.connect(sqlite_path) as db:
        db.execute("update proxy_tokens set expires_at_ns = ? where id = ?",
                   (time.time_ns() + int(in_s * 1e9), token_id))


# -- credentials --------------------------------------------------------------------------

#: tenants a generated request may carry (live ones weighted up: most requests forwarded).
#: Not "expiring": a generated request could be sent to one gateway before its expiry and
#: to the other after it; ``fixed`` sends it, well before and well after.
_TENANTS = ("live", "live", "live", "live", "live", "live", "project hard, large", "project hard, large",
            "user hard, large", "user hard, large", "project hard, tiny", "user hard, tiny", "expired", "revoked",
            "no pipe", "revoked after load")
_URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _token(rng: random.Random, tenants: Tenants) -> tuple[bytes, str]:
    """A credential's value and what it is."""
    valid = tenants.tokens[rng.choice(_TENANTS)].encode()
    pick = rng.randrange(20)
    if pick < 13:
        return valid, "valid"
    return [
        (b"xproxy_" + "".join(rng.choice(_URLSAFE) for _ in range(43)).encode(), "unknown"),
        (rng.choice([b"xproxy_", b"xproxy_A", b"xproxy_" + b"A" * 300, b"xproxy_\xc3\xa9" + b"A" * 41,
                     valid[:-1], b"xproxy_" + valid[7:] + b"=", b"xproxy_" + valid[7:].replace(b"A", b"+"),
                     b"xproxy" + valid[7:], b"xproxy-" + valid[7:]]), "malformed"),
        (valid.lower(), "lower-cased"),
        (valid.upper(), "upper-cased"),
        (valid + rng.choice([b"x", b",", b" extra", b";", b"\t\t", b"  ", b"%00", b"\x7f"]), "trailing"),
        (b"sk-" + valid[7:], "provider-looking"),
        (valid, "valid"),
    ][pick - 13]


def _credential_lines(rng: random.Random, tenants: Tenants) -> bytes:
    token, _ = _token(rng, tenants)
    pick = rng.randrange(22) - 6
    if pick < 9:  # (more than half the requests: Bearer, in any case)
        return _case_variant(rng, b"authorization") + b": Bearer " + token + b"\r\n"
    if pick == 9:
        scheme = rng.choice([b"bearer ", b"BEARER ", b"Bearer  ", b"Basic ", b"", b"Token ", b"Bearer\t"])
        return _case_variant(rng, b"authorization") + b": " + scheme + token + b"\r\n"
    if pick == 10:  # the other places a credential may be (docs/security.md)
        name = rng.choice([b"x-api-key", b"x-goog-api-key", b"api-key", b"x_api_key"])
        return _case_variant(rng, name) + b": " + token + b"\r\n"
    if pick == 11:  # a header that is no credential: the request has none
        name = rng.choice([b"proxy-authorization", b"cookie", b"x-xproxy-token", b"authorisation"])
        return name + b": " + (b"Bearer " if name.endswith(b"authorization") else b"") + token + b"\r\n"
    if pick == 12:  # twice: the same value, or two tokens
        other = token if rng.random() < 0.5 else _token(rng, tenants)[0]
        first = b"authorization: Bearer " + token + b"\r\n"
        second = rng.choice([b"authorization: Bearer ", b"x-api-key: ", b"Authorization: Bearer "])
        return first + second + other + b"\r\n"
    if pick == 13:
        return b""
    if pick == 14:  # a comma-joined pair in one line
        return b"authorization: Bearer " + token + b", Bearer " + token + b"\r\n"
    return b"authorization: Bearer " + token + b"\r\n"


# -- bodies -------------------------------------------------------------------------------

#: raw JSON values for an output bound: small, zero, negative, huge (past 64 bits),
#: fractional, exponent, string, null, boolean, -0
_BOUNDS = (b"5", b"5", b"5", b"16", b"1", b"0", b"-1", b"-0", b"1000000000000", b"9223372036854775807",
           b"9223372036854775808",
           b"18446744073709551617", b"99999999999999999999999999999", b"1.5", b"5.0", b"1e3", b"1E400", b'"10"',
           b"null", b"true", b"false", b"[]", b"{}", b" 5 ")
_MODELS = ("gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o", "gpt-4o",
           "claude-sonnet-4-6", "claude-sonnet-4-6", "claude-sonnet-4-6",
           "absent-model", "gpt-5", "GPT-4O-MINI", "gpt-4o-mini ", "claude-*", "", None)
_MESSAGES = b'[{"role":"user","content":"hello"}]'


def _members(rng: random.Random, model: str | None, bound_names: tuple[bytes, ...]) -> list[bytes]:
    members = []
    if model is not None:
        members.append(b'"model":' + json.dumps(model).encode())
    for name in bound_names:
        if rng.random() < 0.5:  # (half of them one a provider would take)
            members.append(b'"' + name + b'":' + rng.choice(_BOUNDS if rng.random() < 0.5 else (b"5", b"16", b"4096")))
    if rng.random() < 0.3:
        members.append(b'"stream":' + rng.choice([b"true", b"true", b"false", b'"yes"', b"null"]))
    if rng.random() < 0.05:
        members.append(b'"max_tokens":7')  # (a duplicate, or a bound of the wrong API)
    return members


def body(rng: random.Random, path: bytes) -> bytes:
    """A body for ``path``'s API (sometimes another API's, or not JSON)."""
    odd = rng.randrange(40)
    if odd == 0:
        return rng.choice([b"{not json", b"", b"[]", b'{"model":1,"messages":[]}', b"null", b'{"model":"gpt-4o-mini"'])
    if odd == 1:
        return b'{"model":"gpt-4o-mini","messages":' + _MESSAGES + b',"background":true}'
    model = rng.choice(_MODELS)
    if path.endswith(b"/responses"):
        members = _members(rng, model, (b"max_output_tokens",))
        members.append(b'"input":' + rng.choice([b'"hello"', b'[{"role":"user","content":"hello"}]', b"[]"]))
    elif path.endswith((b"/messages", b"/count_tokens")):
        members = _members(rng, model, (b"max_tokens",))
        members.append(b'"messages":' + _MESSAGES)
    else:
        members = _members(rng, model, (b"max_tokens", b"max_completion_tokens"))
        members.append(b'"messages":' + _MESSAGES)
    rng.shuffle(members)
    return b"{" + b",".join(members) + b"}"


_PATHS = (b"/v1/chat/completions", b"/v1/chat/completions", b"/v1/chat/completions", b"/v1/messages",
          b"/v1/messages", b"/v1/messages/count_tokens", b"/v1/responses", b"/v1/responses", b"/chat/completions",
          b"/v1/chat/completions?key=x")


def request(rng: random.Random, tenants: Tenants) -> bytes:
    """One generated request."""
    path = rng.choice(_PATHS)
    data = body(rng, path)
    lines = [b"host: gw", b"content-type: application/json"]
    head = _credential_lines(rng, tenants)
    if path.startswith((b"/v1/messages")) and rng.random() < 0.7:
        lines.append(b"anthropic-version: " + rng.choice([b"2023-06-01", b"2023-01-01"]))
    if rng.random() < 0.1:
        lines.append(b"x-request-id: " + rng.choice([b"abc-123", b"x" * 129, b"a b"]))
    lines.append(b"content-length: %d" % len(data))
    rng.shuffle(lines)
    return b"POST " + path + b" HTTP/1.1\r\n" + head + b"\r\n".join(lines) + b"\r\n\r\n" + data


def fixed(tenants: Tenants) -> dict[str, bytes]:
    """Hand-picked requests beside the generated ones, by name: each tenant once on chat,
    the down and absent targets (each once: the circuit breaker's timing stays out of it),
    count_tokens under a limit no request fits, bounds no number or huge under each large
    hard limit."""
    def req(path: bytes, data: bytes, token: str) -> bytes:
        return (b"POST %s HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
                % (path, tenants.tokens[token].encode(), len(data), data))

    chat = b'{"model":"gpt-4o-mini","messages":' + _MESSAGES + b"}"
    out = {name: req(b"/v1/chat/completions", chat, name) for name in tenants.tokens}
    out["down target"] = req(b"/v1/chat/completions", b'{"model":"down-1","messages":' + _MESSAGES + b"}", "live")
    out["absent target"] = req(b"/v1/chat/completions", b'{"model":"absent-1","messages":' + _MESSAGES + b"}", "live")
    out["count_tokens, tiny limit"] = req(
        b"/v1/messages/count_tokens", b'{"model":"claude-sonnet-4-6","messages":' + _MESSAGES + b"}", "user hard, tiny")
    for name in ("project hard, large", "user hard, large"):
        for bound in (b"1000000000000", b"9223372036854775808", b"-1", b"0", b"1.5"):
            out[f"{name}, max_tokens {bound.decode()}"] = req(
                b"/v1/chat/completions",
                b'{"model":"gpt-4o-mini","max_tokens":' + bound + b',"messages":' + _MESSAGES + b"}", name)
    return out
