"""The admin API over a real store (SQLite file and PostgreSQL schema), on a real socket.

The gateway side is a small fake ``AdminContext``: it holds the store, a dict registry
reloaded from ``store.list_active_api_keys()``, counters of the ``on_*_changed`` calls, a
settable blocked set and (managed mode, tests/test_admin_managed.py) an optional cipher.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from plano_fast.admin import create_admin_app, start_admin_server
from plano_fast.admin_client import add_admin_commands, run_admin_command
from plano_fast.admin_models import nano_to_usd, usd_to_nano
from plano_fast.managed.crypto import KeyCipher
from plano_fast.metrics import Merged, render
from plano_fast.managed.state import ManagedState
from plano_fast.store import RegisteredApiKey, Store, UsageRow, open_store
from plano_fast.store.migrate import migrate

ADMIN_KEY = "admin-key-for-tests-0123456789"
RAW_KEY = "sk-test-RAWSECRET-5f1c0ffee0ddba11"
RAW_HASH = hashlib.sha256(RAW_KEY.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Backend:
    kind: str
    database_url: str | None
    sqlite_path: str


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", None, str(tmp_path / "admin.db"))
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    yield Backend("postgres", dsn, str(tmp_path / "unused.db"))


class FakeContext:
    """What the gateway gives the admin app, reduced to what the tests look at."""

    def __init__(self, store: Store, cipher: KeyCipher | None = None) -> None:
        self.store = store
        self.cipher = cipher
        self.registry: dict[str, RegisteredApiKey] = {}
        self.registry_ready = False
        self.keys_registered = True  # firewall mode's rule: a key limit names a registered key
        self.calls: Counter[str] = Counter()
        self.blocked_set: set[tuple[str, str]] = set()
        self.fail_keys_changed = False
        self.fail_managed_changed = False
        self.managed_state: ManagedState | None = None  # a real one, when a test sets it

    async def reload(self) -> None:
        self.registry = {k.key_hash: k for k in await self.store.list_active_api_keys()}
        self.registry_ready = True

    async def on_keys_changed(self) -> None:
        self.calls["keys"] += 1
        if self.fail_keys_changed:
            raise RuntimeError("registry reload failed")
        await self.reload()

    async def on_prices_changed(self) -> None:
        self.calls["prices"] += 1

    async def on_limits_changed(self) -> None:
        self.calls["limits"] += 1

    async def on_managed_changed(self) -> None:
        self.calls["managed"] += 1
        if self.fail_managed_changed:
            raise RuntimeError("managed state reload failed")
        if self.managed_state is not None:
            await self.managed_state.reload()

    def blocked(self) -> frozenset[tuple[str, str]]:
        return frozenset(self.blocked_set)

    def metrics(self) -> dict[str, float]:
        return {"rows_written": 3, "usage_backlog": 1}

    def exposition(self) -> bytes:
        merged = Merged()
        merged.add({}, self.metrics())
        return render(merged)

    def circuits(self) -> list[dict[str, Any]]:
        return []  # the real view is tested over a gateway (tests/test_managed_failover.py)

    def lookup_key(self, key_hash: str) -> RegisteredApiKey | None:
        return self.registry.get(key_hash)

    def admit_path(self, method: bytes, target: bytes) -> None:
        return None  # every path: the gateway's own rule is tested in test_firewall_hardening


@dataclass
class Harness:
    store: Store
    ctx: FakeContext
    app: web.Application
    session: aiohttp.ClientSession
    base: str
    bodies: list[str] = field(default_factory=list)  # every response body seen

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        hdrs = dict(AUTH) if auth else {}
        hdrs.update(headers or {})
        kwargs: dict[str, Any] = {"headers": hdrs}
        if data is not None:
            kwargs["data"] = data
        elif body is not None:
            kwargs["data"] = json.dumps(body)
            hdrs["Content-Type"] = "application/json"
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            text = await resp.text()
            self.bodies.append(text)
            for name, value in resp.headers.items():
                self.bodies.append(f"{name}: {value}")
            parsed = json.loads(text) if text else None
            return resp.status, parsed, resp.headers


Body = Callable[[Harness], Awaitable[None]]


def run(backend: Backend, body: Body, *, ready: bool = True, cipher: KeyCipher | None = None) -> None:
    async def main() -> None:
        async with open_store(backend.database_url, backend.sqlite_path) as store:
            await migrate(store)
            ctx = FakeContext(store, cipher)
            if ready:
                await ctx.reload()
            app = create_admin_app(ctx, admin_key=ADMIN_KEY)
            runner, port = await start_admin_server(app, "127.0.0.1", 0)
            try:
                async with aiohttp.ClientSession() as session:
                    await body(Harness(store, ctx, app, session, f"http://127.0.0.1:{port}"))
            finally:
                await runner.cleanup()

    asyncio.run(main())


async def dump_database(backend: Backend) -> str:
    """Every table's every row, as text."""
    if backend.database_url is None:
        conn = sqlite3.connect(backend.sqlite_path)
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()
    pg = await asyncpg.connect(backend.database_url)
    try:
        tables = await pg.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        lines = []
        for t in tables:
            rows = await pg.fetch(f'SELECT t::text AS row FROM "{t["table_name"]}" t')
            lines += [str(r["row"]) for r in rows]
        return "\n".join(lines)
    finally:
        await pg.close()


def register_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "api_key": RAW_KEY,
        "provider": "openai",
        "upstream_url": "https://api.openai.com",
        "display_name": "my-test-key",
    }
    body.update(extra)
    return body


def usage_row(request_id: str, project_id: str, *, cost: int | None, t: int, model: str = "gpt-4o") -> UsageRow:
    return UsageRow(
        request_id=request_id, time_ns=t, project_id=project_id, user_id=None, key_hash=RAW_HASH,
        token_id=None, provider="openai", model=model, input_tokens=100, output_tokens=20,
        cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0, streaming=False,
        status="ok", http_status=200, priced=cost is not None, cost_nano_usd=cost, duration_us=5,
    )  # fmt: skip


# --------------------------------------------------------------------------- auth


PUBLIC = {"/healthz", "/auth/check", "/auth/check/{tail}"}


def test_every_route_requires_the_admin_key(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        seen_public: set[str] = set()
        checked = 0
        for route in h.app.router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = str(info.get("path") or info.get("formatter"))
            if path in PUBLIC:
                seen_public.add(path)
                continue
            concrete = path.replace("{id}", "some-id")
            method = "GET" if route.method == "*" else route.method
            for headers in (
                {},
                {"Authorization": "Bearer wrong-key"},
                {"x-admin-key": "wrong-key"},
                {"Authorization": f"Basic {ADMIN_KEY}"},
                {"Authorization": f"Bearer {ADMIN_KEY[:-1]}"},
            ):
                status, answer, resp_headers = await h.call(method, concrete, {"x": 1}, auth=False, headers=headers)
                assert status == 401, (method, concrete, headers)
                if method != "HEAD":
                    assert answer["error"] == "unauthorized"
                    assert ADMIN_KEY not in json.dumps(answer)
                checked += 1
        assert seen_public == PUBLIC
        assert checked >= 5 * 20
        # unknown paths and wrong methods look exactly the same without the key
        for method, path in (("GET", "/nope"), ("POST", "/api-keys/nope"), ("DELETE", "/api-keys"),
                             ("PATCH", "/limits"), ("GET", "/healthz/x")):  # fmt: skip
            status, answer, _ = await h.call(method, path, auth=False)
            assert (status, answer["error"]) == (401, "unauthorized"), path
        # with the key: a JSON 404 / 405
        status, answer, _ = await h.call("GET", "/nope")
        assert (status, answer["error"]) == (404, "not_found")
        status, answer, _ = await h.call("DELETE", "/api-keys")
        assert (status, answer["error"]) == (405, "method_not_allowed")
        # both header forms work
        assert (await h.call("GET", "/projects", auth=False, headers={"x-admin-key": ADMIN_KEY}))[0] == 200
        assert (await h.call("GET", "/projects", auth=False, headers={"authorization": f"bearer {ADMIN_KEY}"}))[0] == 200
        # public routes
        status, answer, _ = await h.call("GET", "/healthz", auth=False)
        assert (status, answer) == (200, {"status": "ok"})
        status, answer, _ = await h.call("GET", "/auth/check", auth=False)
        assert (status, answer["error"]) == (401, "missing_api_key")
        # the admin key is not a client key
        status, answer, _ = await h.call("GET", "/auth/check", auth=True)
        assert (status, answer["error"]) == (401, "invalid_api_key")

    run(backend, body)


def test_an_empty_admin_key_is_refused() -> None:
    for key in ("", "   "):
        with pytest.raises(ValueError, match="admin key"):
            create_admin_app(object(), admin_key=key)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- keys


def test_register_keeps_only_the_hash(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def body(h: Harness) -> None:
        status, key, _ = await h.call("POST", "/api-keys/register", register_body(project="team-a", egress_ip="10.0.0.7"))
        assert status == 201, key
        assert key["key_hash"] == RAW_HASH and key["project_created"] is True
        assert (key["provider"], key["upstream_url"], key["egress_ip"]) == ("openai", "https://api.openai.com", "10.0.0.7")
        project = await h.store.get_project(key["project_id"])
        assert project is not None and project.name == "team-a"
        assert h.ctx.calls["keys"] == 1 and RAW_HASH in h.ctx.registry

        status, listed, _ = await h.call("GET", "/api-keys")
        assert status == 200 and [k["key_hash"] for k in listed["api_keys"]] == [RAW_HASH]
        status, listed, _ = await h.call("GET", f"/api-keys?project_id={key['project_id']}")
        assert [k["key_hash"] for k in listed["api_keys"]] == [RAW_HASH]
        status, answer, _ = await h.call("GET", "/api-keys?project_id=other")
        assert (status, answer["error"]) == (404, "not_found")

        # registering it again (by key or by hash) is a conflict
        status, answer, _ = await h.call("POST", "/api-keys/register", register_body())
        assert (status, answer["error"]) == (409, "already_exists")
        status, answer, _ = await h.call("POST", "/api-keys/register", {
            "key_hash": RAW_HASH, "provider": "openai", "upstream_url": "https://api.openai.com"})  # fmt: skip
        assert status == 409
        assert len(await h.store.list_projects()) == 1  # no orphan project

        # the key works at /auth/check, also with the key in the query string
        assert (await h.call("GET", f"/auth/check/v1beta/models/x:generateContent?key={RAW_KEY}", auth=False))[0] == 200

        # deactivate by raw key, then reactivate by hash
        status, answer, _ = await h.call("POST", "/api-keys/deactivate", {"api_key": RAW_KEY})
        assert (status, answer) == (200, {"key_hash": RAW_HASH, "is_active": False})
        assert RAW_HASH not in h.ctx.registry and h.ctx.calls["keys"] == 2
        status, _, _ = await h.call("GET", "/auth/check", auth=False, headers={"Authorization": f"Bearer {RAW_KEY}"})
        assert status == 401
        status, answer, _ = await h.call("POST", "/api-keys/activate", {"key_hash": RAW_HASH})
        assert (status, answer["is_active"]) == (200, True)
        assert RAW_HASH in h.ctx.registry
        status, answer, _ = await h.call("POST", "/api-keys/deactivate", {"key_hash": "0" * 64})
        assert (status, answer["error"]) == (404, "not_found")
        status, answer, _ = await h.call("POST", "/api-keys/deactivate", {"api_key": RAW_KEY, "key_hash": RAW_HASH})
        assert status == 400 and "exactly one of 'api_key' or 'key_hash'" in answer["message"]

        # a wrong-shaped key is refused without echoing it
        status, answer, _ = await h.call("POST", "/api-keys/register", register_body(api_key=RAW_KEY + " tail"))
        assert status == 400 and answer["message"] == "field 'api_key': must not contain whitespace or control characters"
        status, answer, _ = await h.call("POST", "/api-keys/register", register_body(api_key=12345))
        assert status == 400 and "field 'api_key'" in answer["message"]

        everything = "\n".join(h.bodies)
        assert RAW_HASH in everything  # positive control: the hash is shown
        assert RAW_KEY not in everything
        database = await dump_database(backend)
        assert RAW_HASH in database and RAW_KEY not in database

    run(backend, body)
    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "/auth/check" in logged  # positive control: the access log ran
    assert RAW_KEY not in logged and ADMIN_KEY not in logged


def test_register_project_resolution(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        def key(n: int, **extra: Any) -> dict[str, Any]:
            return register_body(api_key=f"sk-project-test-{n}", **extra)

        # absent: one new project per key, named after display_name (or the hash)
        status, a, _ = await h.call("POST", "/api-keys/register", key(1))
        assert status == 201 and a["project_created"] is True
        assert (await h.store.get_project(a["project_id"])).name == "my-test-key"  # type: ignore[union-attr]
        status, b, _ = await h.call("POST", "/api-keys/register", key(2, display_name=None))
        assert (await h.store.get_project(b["project_id"])).name == f"key-{b['key_hash'][:12]}"  # type: ignore[union-attr]
        # by id, and by (unique) name
        status, c, _ = await h.call("POST", "/api-keys/register", key(3, project=a["project_id"]))
        assert (status, c["project_id"], c["project_created"]) == (201, a["project_id"], False)
        status, d, _ = await h.call("POST", "/api-keys/register", key(4, project="my-test-key"))
        assert (status, d["project_id"], d["project_created"]) == (201, a["project_id"], False)
        # a name shared by two projects is ambiguous; an unknown UUID is a 404
        assert (await h.call("POST", "/projects", {"name": "twin"}))[0] == 201
        assert (await h.call("POST", "/projects", {"name": "twin"}))[0] == 201
        status, answer, _ = await h.call("POST", "/api-keys/register", key(5, project="twin"))
        assert (status, answer["error"]) == (409, "ambiguous_project")
        status, answer, _ = await h.call(
            "POST", "/api-keys/register", key(6, project="8d1c2b6e-3f52-4a57-9a4c-0c9a8e2b1d11"))
        assert (status, answer["message"]) == (404, "field 'project': no project has this id")
        assert len(await h.store.list_projects()) == 4
        assert h.ctx.calls["keys"] == 4

    run(backend, body)


def test_validation_errors_name_the_field(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            ({k: v for k, v in register_body().items() if k != "provider"}, "field 'provider': required"),
            (register_body(provider="nope"), "field 'provider': unknown provider"),
            (register_body(upstream_url="ftp://api.openai.com"), "field 'upstream_url': must use http or https"),
            (register_body(upstream_url="https://"), "field 'upstream_url': must include a host"),
            (register_body(upstream_url="not a url"), "field 'upstream_url'"),
            (register_body(upstream_url="https://user:pw@api.openai.com"), "field 'upstream_url': must not contain credentials"),
            (register_body(upstream_url="https://api.openai.com:99999"), "field 'upstream_url'"),
            (register_body(upstream_url="https://api.openai.com/?x=1"), "field 'upstream_url': must not contain a query"),
            (register_body(egress_ip="10.0.0.256"), "field 'egress_ip': must be a valid IPv4 or IPv6 address"),
            (register_body(egress_ip="example.com"), "field 'egress_ip'"),
            (register_body(colour="blue"), "field 'colour': unknown field"),
            (register_body(display_name=""), "field 'display_name'"),
            ({"provider": "openai", "upstream_url": "https://a.example"}, "exactly one of 'api_key' or 'key_hash'"),
            (register_body(api_key=None, key_hash="ABC"), "field 'key_hash': must be a lowercase hex SHA-256"),
        ]
        for payload, expected in cases:
            status, answer, _ = await h.call("POST", "/api-keys/register", payload)
            assert status == 400, payload
            assert answer["error"] == "invalid_request"
            assert expected in answer["message"], (expected, answer)
            assert RAW_KEY not in json.dumps(answer)
        # several problems at once: all named
        status, answer, _ = await h.call("POST", "/api-keys/register", {"api_key": RAW_KEY, "extra": 1})
        fields = {d["field"] for d in answer["details"]}
        assert status == 400 and fields == {"provider", "upstream_url", "extra"}
        # bodies that are not JSON objects
        for raw in (b"", b"{", b"[1, 2]", b"\xff\xfe", b'{"limit_usd": NaN}'):
            status, answer, _ = await h.call("POST", "/api-keys/register", data=raw)
            assert status == 400 and answer["error"] == "invalid_request", raw
        status, answer, _ = await h.call("POST", "/projects", data=b"x" * (65 * 1024))
        assert (status, answer["error"]) == (413, "request_too_large")
        assert (await h.call("POST", "/projects", {}))[1]["message"] == "field 'name': required"
        assert "field 'email'" in (await h.call("POST", "/users", {"name": "u", "email": "no-at"}))[1]["message"]
        assert "field 'id'" in (await h.call("POST", "/projects", {"name": "p", "id": "a b"}))[1]["message"]
        assert h.ctx.calls["keys"] == 0

    run(backend, body)


# --------------------------------------------------------------------------- money


def test_money_conversion_is_exact() -> None:
    assert usd_to_nano("0.000000001") == 1
    assert usd_to_nano("12.34") == 12_340_000_000
    assert usd_to_nano("123456789.123456789") == 123_456_789_123_456_789
    assert usd_to_nano(7) == 7_000_000_000
    for bad in ("0.0000000001", "-1", "1e3", "NaN", 1.5, True, "", "9223372036.854775808"):
        with pytest.raises(ValueError):
            usd_to_nano(bad)
    assert usd_to_nano("9223372036.854775807") == 2**63 - 1
    assert [nano_to_usd(n) for n in (0, 1, 12_340_000_000, 5_000_000_000)] == ["0", "0.000000001", "12.34", "5"]


def test_limits(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        project = (await h.call("POST", "/projects", {"name": "p"}))[1]
        pid = project["id"]
        base = {"scope_kind": "project", "scope_id": pid, "period": "monthly"}
        status, limit, _ = await h.call("PUT", "/limits", {**base, "limit_usd": "0.000000001"})
        assert status == 200 and (limit["limit_nano_usd"], limit["limit_usd"]) == (1, "0.000000001")
        assert limit["enforcement"] == "soft" and limit["is_active"] is True
        # a JSON number is parsed exactly too (no float on the way)
        status, limit, _ = await h.call("PUT", "/limits", data=json.dumps({**base, "limit_usd": 12.34}).encode())
        assert status == 200 and limit["limit_nano_usd"] == 12_340_000_000
        status, limit, _ = await h.call("PUT", "/limits", {**base, "limit_usd": "12.34", "enforcement": "hard"})
        assert (limit["limit_nano_usd"], limit["limit_usd"], limit["enforcement"]) == (12_340_000_000, "12.34", "hard")
        status, daily, _ = await h.call("PUT", "/limits", {**base, "period": "daily", "limit_nano_usd": 5})
        assert status == 200 and daily["limit_usd"] == "0.000000005"
        listed = (await h.call("GET", "/limits"))[1]["limits"]
        assert sorted((x["period"], x["limit_nano_usd"]) for x in listed) == [("daily", 5), ("monthly", 12_340_000_000)]
        assert h.ctx.calls["limits"] == 4
        stored = await h.store.list_spending_limits("project", pid)
        assert sorted(x.limit_nano_usd for x in stored) == [5, 12_340_000_000]

        bad: list[tuple[dict[str, Any], int, str]] = [
            ({**base, "limit_usd": "0.0000000001"}, 400, "field 'limit_usd': has more than 9 decimal places"),
            ({**base, "limit_usd": "-3"}, 400, "field 'limit_usd'"),
            ({**base, "limit_usd": "1", "limit_nano_usd": 1}, 400, "exactly one of 'limit_usd' or 'limit_nano_usd'"),
            (base, 400, "exactly one of 'limit_usd' or 'limit_nano_usd'"),
            ({**base, "limit_nano_usd": -1}, 400, "field 'limit_nano_usd'"),
            ({**base, "period": "weekly", "limit_usd": "1"}, 400, "field 'period'"),
            ({**base, "scope_kind": "team", "limit_usd": "1"}, 400, "field 'scope_kind'"),
            ({**base, "enforcement": "strict", "limit_usd": "1"}, 400, "field 'enforcement'"),
            ({**base, "scope_kind": "key", "limit_usd": "1"}, 400, "field 'scope_id'"),
            ({**base, "scope_id": "missing", "limit_usd": "1"}, 404, "field 'scope_id': no project"),
            ({**base, "scope_kind": "user", "limit_usd": "1"}, 404, "field 'scope_id': no user"),
        ]
        for payload, code, expected in bad:
            status, answer, _ = await h.call("PUT", "/limits", payload)
            assert status == code and expected in answer["message"], (payload, answer)
        assert h.ctx.calls["limits"] == 4

        status, answer, _ = await h.call("DELETE", f"/limits/{daily['id']}")
        assert (status, answer["deleted"]) == (200, True)
        assert (await h.call("DELETE", f"/limits/{daily['id']}"))[0] == 404
        assert h.ctx.calls["limits"] == 5
        # a user limit and a key limit
        user = (await h.call("POST", "/users", {"name": "ann", "email": "ann@example.com"}))[1]
        assert (await h.call("PUT", "/limits", {**base, "scope_kind": "user", "scope_id": user["id"], "limit_usd": 3}))[0] == 200
        await h.call("POST", "/api-keys/register", register_body(project=pid))
        status, klimit, _ = await h.call("PUT", "/limits", {**base, "scope_kind": "key", "scope_id": RAW_HASH, "limit_usd": "0.5"})
        assert status == 200 and klimit["limit_nano_usd"] == 500_000_000

    run(backend, body)


def test_pricing(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        pid = (await h.call("POST", "/projects", {"name": "p"}))[1]["id"]
        # an unpriced row of the model, already attempted: a new price requeues it
        await h.store.write_usage([usage_row("r-unpriced", pid, cost=None, t=time.time_ns(), model="my-model")])
        [row] = await h.store.fetch_unpriced(10)
        assert row.row_id is not None
        await h.store.set_prices([(row.row_id, None, "unpriced_unknown")])
        assert await h.store.fetch_unpriced(10) == []

        status, price, _ = await h.call("PUT", "/pricing", {
            "model": "My-Model", "input_per_mtok_usd": "2.5", "output_per_mtok_usd": 10,
            "cache_read_per_mtok_usd": "0.000000001"})  # fmt: skip
        assert status == 200, price
        assert price["project_id"] is None and price["model"] == "my-model"
        assert (price["input_per_mtok_nano_usd"], price["output_per_mtok_nano_usd"]) == (2_500_000_000, 10_000_000_000)
        assert (price["cache_read_per_mtok_nano_usd"], price["cache_write_per_mtok_nano_usd"]) == (1, 0)
        assert (price["input_per_mtok_usd"], price["cache_read_per_mtok_usd"]) == ("2.5", "0.000000001")
        assert price["requeued_unpriced_rows"] == 1
        assert len(await h.store.fetch_unpriced(10)) == 1
        status, project_price, _ = await h.call("PUT", "/pricing", {
            "model": "my-model", "project_id": pid, "input_per_mtok_usd": "0.15", "output_per_mtok_usd": "0.6"})  # fmt: skip
        assert status == 200 and project_price["input_per_mtok_nano_usd"] == 150_000_000
        listed = (await h.call("GET", "/pricing"))[1]["prices"]
        assert [(p["project_id"], p["output_per_mtok_nano_usd"]) for p in listed] == [(None, 10_000_000_000), (pid, 600_000_000)]
        assert h.ctx.calls["prices"] == 2

        for payload, code, expected in [
            ({"model": "m", "input_per_mtok_usd": "1"}, 400, "field 'output_per_mtok_usd': required"),
            ({"model": "m", "input_per_mtok_usd": "0.0000000001", "output_per_mtok_usd": 1}, 400, "field 'input_per_mtok_usd'"),
            ({"model": "m", "input_per_mtok_usd": 1, "output_per_mtok_usd": 1, "project_id": "nope"}, 404, "field 'project_id'"),
            ({"model": "", "input_per_mtok_usd": 1, "output_per_mtok_usd": 1}, 400, "field 'model'"),
        ]:
            status, answer, _ = await h.call("PUT", "/pricing", payload)
            assert status == code and expected in answer["message"], answer
        assert (await h.call("DELETE", f"/pricing/{price['id']}"))[0] == 200
        assert (await h.call("DELETE", f"/pricing/{price['id']}"))[0] == 404
        assert h.ctx.calls["prices"] == 3
        assert [p.id for p in await h.store.list_custom_prices()] == [project_price["id"]]

    run(backend, body)


# --------------------------------------------------------------------------- /auth/check


def test_auth_check_fails_closed_before_the_registry_loads(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        status, answer, headers = await h.call("GET", "/auth/check", auth=False, headers={"Authorization": f"Bearer {RAW_KEY}"})
        assert (status, answer["error"], headers["retry-after"]) == (503, "registry_unavailable", "1")
        await h.ctx.reload()
        assert (await h.call("GET", "/auth/check", auth=False, headers={"Authorization": f"Bearer {RAW_KEY}"}))[0] == 401

    run(backend, body, ready=False)


def test_auth_check(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        status, key, _ = await h.call("POST", "/api-keys/register", register_body(provider="claude",
                                      upstream_url="https://api.anthropic.com", egress_ip="::1"))  # fmt: skip
        assert status == 201
        pid = key["project_id"]
        status, answer, _ = await h.call("GET", "/auth/check", auth=False, headers={"Authorization": "Bearer sk-unknown"})
        assert status == 401 and answer == {"error": "invalid_api_key", "message": "the API key is not registered or is inactive"}

        expected = {
            "x-xproxy-firewall-mode": "true",
            "x-xproxy-upstream-url": "https://api.anthropic.com",
            "x-xproxy-project-id": pid,
            "x-xproxy-provider-hint": "anthropic",
            "x-xproxy-api-key-hash": RAW_HASH,
            "x-xproxy-egress-ip": "::1",
        }
        for method, path, headers in [
            ("GET", "/auth/check", {"Authorization": f"Bearer {RAW_KEY}", "x-xproxy-mode": "firewall"}),
            ("GET", "/auth/check", {"x-api-key": RAW_KEY}),
            ("GET", "/auth/check", {"x-goog-api-key": RAW_KEY}),
            ("GET", f"/auth/check?key={RAW_KEY}", {}),
            ("POST", "/auth/check/v1/messages", {"x-api-key": RAW_KEY}),  # Envoy: path_prefix + path
        ]:
            status, _, resp_headers = await h.call(method, path, auth=False, headers=headers)
            assert status == 200, (method, path)
            assert {k: resp_headers.get(k) for k in expected} == expected

        h.ctx.blocked_set = {("project", pid)}
        status, answer, _ = await h.call("GET", "/auth/check", auth=False, headers={"x-api-key": RAW_KEY})
        assert (status, answer) == (429, {"error": "spending_limit_exceeded", "message": "project has exceeded its spending limit"})
        h.ctx.blocked_set = {("key", RAW_HASH)}
        status, answer, _ = await h.call("GET", "/auth/check", auth=False, headers={"x-api-key": RAW_KEY})
        assert (status, answer["error"]) == (429, "spending_limit_exceeded")
        h.ctx.blocked_set = {("project", "another")}
        assert (await h.call("GET", "/auth/check", auth=False, headers={"x-api-key": RAW_KEY}))[0] == 200

        await h.call("POST", "/api-keys/deactivate", {"key_hash": RAW_HASH})
        assert (await h.call("GET", "/auth/check", auth=False, headers={"x-api-key": RAW_KEY}))[0] == 401
        assert RAW_KEY not in "\n".join(h.bodies)

    run(backend, body)


# --------------------------------------------------------------------------- budget / usage


def test_budget_blocked_shape(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        assert (await h.call("GET", "/budget/blocked"))[:2] == (200, {"blocked": [], "scopes": []})
        h.ctx.blocked_set = {("project", "p2"), ("key", RAW_HASH), ("project", "p1"), ("user", "u1")}
        status, answer, _ = await h.call("GET", "/budget/blocked")
        assert status == 200
        assert answer == {
            "blocked": ["p1", "p2"],
            "scopes": [["key", RAW_HASH], ["project", "p1"], ["project", "p2"], ["user", "u1"]],
        }

    run(backend, body)


def test_usage_recent_and_totals(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        p1 = (await h.call("POST", "/projects", {"name": "one"}))[1]["id"]
        p2 = (await h.call("POST", "/projects", {"name": "two"}))[1]["id"]
        now = time.time_ns()
        inserted = await h.store.write_usage([
            usage_row("r1", p1, cost=12_340_000_000, t=now - 3_000),
            usage_row("r2", p1, cost=None, t=now - 2_000),
            usage_row("r3", p1, cost=1, t=now - 1_000),
            usage_row("r4", p2, cost=7, t=now - 500),
        ])  # fmt: skip
        assert inserted == 4
        status, answer, _ = await h.call("GET", f"/usage/recent?project_id={p1}")
        assert status == 200 and answer["project_id"] == p1
        rows = answer["usage"]
        assert [r["request_id"] for r in rows] == ["r3", "r2", "r1"]
        assert [(r["cost_nano_usd"], r["cost_usd"]) for r in rows] == [(1, "0.000000001"), (None, None), (12_340_000_000, "12.34")]
        assert rows[0]["key_hash"] == RAW_HASH and rows[0]["input_tokens"] == 100
        assert [r["request_id"] for r in (await h.call("GET", f"/usage/recent?project_id={p1}&limit=1"))[1]["usage"]] == ["r3"]
        assert len((await h.call("GET", "/usage/recent"))[1]["usage"]) == 4
        for bad in ("limit=0", "limit=abc", "limit=1001"):
            status, answer, _ = await h.call("GET", f"/usage/recent?{bad}")
            assert status == 400 and answer["message"].startswith("parameter 'limit'")

        status, totals, _ = await h.call("GET", f"/usage/totals?project_id={p1}&days=1")
        assert status == 200
        [t] = totals["totals"]
        assert (t["project_id"], t["model"], t["requests"], t["unpriced_requests"]) == (p1, "gpt-4o", 3, 1)
        assert (t["cost_nano_usd"], t["cost_usd"]) == (12_340_000_001, "12.340000001")
        assert t["day_start"] == totals["start_day"] == (now // 86_400_000_000_000) * 86_400
        status, everything, _ = await h.call("GET", "/usage/totals")
        assert everything["days"] == 30
        assert sorted((t["project_id"], t["requests"]) for t in everything["totals"]) == sorted([(p1, 3), (p2, 1)])
        [overall] = everything["all_projects"]
        assert (overall["requests"], overall["cost_nano_usd"]) == (4, 12_340_000_008)
        assert (await h.call("GET", "/usage/totals?days=0"))[0] == 400

    run(backend, body)


# --------------------------------------------------------------------------- projects / users


def test_projects_and_users(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        status, p, _ = await h.call("POST", "/projects", {"name": "alpha", "id": "proj-alpha"})
        assert (status, p["id"], p["name"]) == (201, "proj-alpha", "alpha")
        assert (await h.call("POST", "/projects", {"name": "again", "id": "proj-alpha"}))[0] == 409
        assert (await h.call("GET", "/projects/proj-alpha"))[1]["name"] == "alpha"
        assert [x["id"] for x in (await h.call("GET", "/projects"))[1]["projects"]] == ["proj-alpha"]
        await h.call("POST", "/api-keys/register", register_body(project="proj-alpha"))
        await h.call("PUT", "/limits", {"scope_kind": "project", "scope_id": "proj-alpha", "period": "total", "limit_usd": 1})
        calls = dict(h.ctx.calls)
        assert (await h.call("DELETE", "/projects/proj-alpha"))[1] == {"deleted": True}
        assert h.ctx.calls["keys"] == calls["keys"] + 1 and h.ctx.calls["limits"] == calls["limits"] + 1
        assert h.ctx.calls["prices"] == calls.get("prices", 0) + 1
        assert h.ctx.calls["managed"] == calls.get("managed", 0) + 1
        assert await h.store.list_api_keys() == [] and RAW_HASH not in h.ctx.registry
        assert (await h.call("GET", "/projects/proj-alpha"))[0] == 404
        assert (await h.call("DELETE", "/projects/proj-alpha"))[0] == 404

        status, u, _ = await h.call("POST", "/users", {"name": "ann", "email": "ann@example.com"})
        assert status == 201 and u["email"] == "ann@example.com"
        assert (await h.call("POST", "/users", {"name": "ann2", "email": "ann@example.com"}))[0] == 409
        assert (await h.call("GET", f"/users/{u['id']}"))[1]["name"] == "ann"
        assert len((await h.call("GET", "/users"))[1]["users"]) == 1
        assert (await h.call("DELETE", f"/users/{u['id']}"))[0] == 200
        assert (await h.call("GET", f"/users/{u['id']}"))[0] == 404

    run(backend, body)


def test_a_failed_reload_still_saves_and_warns(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        h.ctx.fail_keys_changed = True
        status, answer, _ = await h.call("POST", "/api-keys/register", register_body())
        assert status == 201 and "on_keys_changed failed" in answer["warning"]
        assert await h.store.get_api_key(RAW_HASH) is not None

    run(backend, body)


# --------------------------------------------------------------------------- CLI mirror


def _cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plano-fast")
    add_admin_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_mirror(backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PLANO_FAST_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("CLIENT_KEY", RAW_KEY)

    async def body(h: Harness) -> None:
        async def cli(*argv: str) -> tuple[int, Any]:
            args = _cli_parser().parse_args([*argv, "--admin-url", h.base])
            capsys.readouterr()
            rc = await asyncio.to_thread(run_admin_command, args)
            out = capsys.readouterr()
            return rc, json.loads(out.out) if rc == 0 else out.err

        rc, key = await cli("keys", "register", "--api-key-env", "CLIENT_KEY", "--provider", "openai",
                            "--upstream-url", "https://api.openai.com", "--project", "cli-team")  # fmt: skip
        assert rc == 0 and key["key_hash"] == RAW_HASH and key["project_created"] is True
        rc, listed = await cli("keys", "list")
        assert rc == 0 and [k["key_hash"] for k in listed["api_keys"]] == [RAW_HASH]
        rc, limit = await cli("limits", "set", "--scope-id", key["project_id"], "--limit-usd", "12.34")
        assert rc == 0 and (limit["limit_nano_usd"], limit["period"]) == (12_340_000_000, "monthly")
        rc, limits = await cli("limits", "list")
        assert rc == 0 and len(limits["limits"]) == 1
        await h.store.write_usage([usage_row("cli-1", key["project_id"], cost=5, t=time.time_ns())])
        rc, usage = await cli("usage", "--project-id", key["project_id"])
        assert rc == 0 and [r["request_id"] for r in usage["usage"]] == ["cli-1"]
        rc, totals = await cli("usage", "--totals", "--days", "2")
        assert rc == 0 and totals["totals"][0]["requests"] == 1
        rc, answer = await cli("keys", "deactivate", "--key-hash", RAW_HASH)
        assert rc == 0 and answer["is_active"] is False
        rc, err = await cli("limits", "set", "--scope-id", "nope", "--limit-usd", "1")
        assert rc == 1 and "404" in err
        rc, err = await cli("limits", "delete", limit["id"])
        assert rc == 0
        rc, err = await cli("keys", "list", "--admin-key", "wrong")
        assert rc == 1 and "unauthorized" in err
        monkeypatch.delenv("PLANO_FAST_ADMIN_KEY")
        rc, err = await cli("keys", "list")
        assert rc == 2 and "PLANO_FAST_ADMIN_KEY" in err
        assert RAW_KEY not in "\n".join(h.bodies)

    run(backend, body)


def test_projects_by_name_or_id_everywhere(backend: Backend) -> None:
    """Every route that takes a project takes its id or its name; an unknown one is a
    404 (never an empty list), a name shared by two projects a 409."""

    async def body(h: Harness) -> None:
        status, team, _ = await h.call("POST", "/projects", {"name": "my-team"})
        assert status == 201
        pid = team["id"]
        await h.store.write_usage([usage_row("r-1", pid, cost=5, t=time.time_ns())])
        for ref in (pid, "my-team"):
            assert (await h.call("GET", f"/projects/{ref}"))[1]["id"] == pid
            status, limit, _ = await h.call("PUT", "/limits", {
                "scope_kind": "project", "scope_id": ref, "period": "monthly", "limit_usd": "5"})  # fmt: skip
            assert status == 200 and limit["scope_id"] == pid, limit
            status, limits, _ = await h.call("GET", f"/limits?scope_kind=project&scope_id={ref}")
            assert status == 200 and [x["scope_id"] for x in limits["limits"]] == [pid]
            status, usage, _ = await h.call("GET", f"/usage/recent?project_id={ref}")
            assert status == 200 and [r["request_id"] for r in usage["usage"]] == ["r-1"]
            assert usage["project_id"] == pid
            status, totals, _ = await h.call("GET", f"/usage/totals?project_id={ref}")
            assert status == 200 and totals["totals"][0]["requests"] == 1
            status, price, _ = await h.call("PUT", "/pricing", {
                "model": "m", "project_id": ref, "input_per_mtok_usd": "1", "output_per_mtok_usd": "2"})  # fmt: skip
            assert status == 200 and price["project_id"] == pid, price
            status, keys, _ = await h.call("GET", f"/api-keys?project_id={ref}")
            assert status == 200 and keys == {"api_keys": []}

        for method, path, payload in (
            ("GET", "/projects/no-such-project", None),
            ("DELETE", "/projects/no-such-project", None),
            ("PUT", "/limits", {"scope_kind": "project", "scope_id": "no-such-project",
                                "period": "monthly", "limit_usd": "1"}),
            ("GET", "/limits?scope_kind=project&scope_id=no-such-project", None),
            ("GET", "/usage/recent?project_id=no-such-project", None),
            ("GET", "/usage/totals?project_id=no-such-project", None),
            ("GET", "/api-keys?project_id=no-such-project", None),
            ("PUT", "/pricing", {"model": "m", "project_id": "no-such-project",
                                 "input_per_mtok_usd": "1", "output_per_mtok_usd": "2"}),
        ):  # fmt: skip
            status, answer, _ = await h.call(method, path, payload)
            assert (status, answer["error"]) == (404, "not_found"), (method, path, answer)
            assert "no-such-project" not in answer["message"]  # error bodies never echo input

        assert (await h.call("POST", "/projects", {"name": "my-team"}))[0] == 201
        status, answer, _ = await h.call("GET", "/usage/recent?project_id=my-team")
        assert (status, answer["error"]) == (409, "ambiguous_project")
        assert (await h.call("GET", f"/usage/recent?project_id={pid}"))[0] == 200  # the id still works
        assert (await h.call("DELETE", f"/projects/{pid}"))[0] == 200
        assert (await h.call("GET", "/projects/my-team"))[0] == 200  # one left with that name

    run(backend, body)


def test_cli_takes_project_names_and_says_when_nothing_matched(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PLANO_FAST_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("CLIENT_KEY", RAW_KEY)

    async def body(h: Harness) -> None:
        async def cli(*argv: str) -> tuple[int, str, str]:
            args = _cli_parser().parse_args([*argv, "--admin-url", h.base])
            capsys.readouterr()
            rc = await asyncio.to_thread(run_admin_command, args)
            out = capsys.readouterr()
            return rc, out.out, out.err

        rc, out, _ = await cli("keys", "register", "--api-key-env", "CLIENT_KEY", "--provider", "openai",
                               "--upstream-url", "https://api.openai.com", "--project", "my-team")  # fmt: skip
        assert rc == 0
        pid = json.loads(out)["project_id"]
        rc, out, err = await cli("limits", "set", "--scope-kind", "project", "--scope-id", "my-team",
                                 "--limit-usd", "50")  # fmt: skip
        assert rc == 0 and json.loads(out)["scope_id"] == pid, err
        rc, out, err = await cli("usage", "--project-id", "my-team")
        assert rc == 0 and json.loads(out)["usage"] == []
        assert err == "plano-fast: no usage rows for project id my-team (nothing matched)\n"
        rc, out, err = await cli("keys", "list", "--project", "my-team")
        assert rc == 0 and len(json.loads(out)["api_keys"]) == 1 and err == ""

        rc, out, err = await cli("usage", "--project-id", "no-such-project")
        assert (rc, out) == (1, "")
        assert err == (
            "plano-fast: error: admin API answered 404 not_found: "
            "field 'project_id': no project has this id or name\n"
        )
        rc, out, err = await cli("limits", "set", "--scope-id", "no-such-project", "--limit-usd", "1")
        assert rc == 1 and err.count("\n") == 1 and "404 not_found" in err
        rc, out, err = await cli("limits", "list", "--scope-kind", "user")
        assert rc == 0 and err == "plano-fast: no spending limits for scope kind user (nothing matched)\n"

    run(backend, body)


def test_cli_cannot_reach() -> None:
    args = _cli_parser().parse_args(["keys", "list", "--admin-url", "http://127.0.0.1:9", "--admin-key", "k"])
    assert run_admin_command(args) == 2
