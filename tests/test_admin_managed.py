"""Managed-mode admin routes (provider keys, pipes, tokens) and their CLI, over a real store
(SQLite file and PostgreSQL schema), on a real socket, with a real ``KeyCipher``.

Where it matters, the fake context carries a real ``ManagedState`` that
``on_managed_changed`` reloads, so "a revocation is effective at once" is checked against
the very cache the gateway's hot path reads.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plano_fast.admin_client import AdminClientError, add_admin_commands, parse_target, run_admin_command
from plano_fast.config import parse_config
from plano_fast.managed.crypto import KeyCipher, generate_master_key, parse_master_key
from plano_fast.managed.state import ManagedState, token_hash
from tests.test_admin import ADMIN_KEY, Backend, Harness, dump_database, run

OPENAI_SECRET = "sk-proj-ADMINMANAGED-openai-9f8e7d6c5b4a"
ANTHROPIC_SECRET = "sk-ant-ADMINMANAGED-anthropic-0a1b2c3d"
CIPHER = KeyCipher(parse_master_key(generate_master_key()))
MANAGED_PREFIXES = ("/provider-keys", "/pipes", "/tokens")
CONFIG = parse_config(
    """
version: v0.4.0
listeners:
  - type: model
    name: l
    address: 127.0.0.1
    port: 12000
model_providers:
  - model: openai/gpt-4o-mini
    base_url: http://127.0.0.1:9
    access_key: sk-config-openai
    default: true
  - model: anthropic/claude-sonnet-4-6
    base_url: http://127.0.0.1:9
    access_key: sk-config-anthropic
"""
)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", None, str(tmp_path / "admin.db"))
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    yield Backend("postgres", dsn, str(tmp_path / "unused.db"))


def attach_state(h: Harness) -> ManagedState:
    state = ManagedState(h.store, CIPHER, CONFIG)
    h.ctx.managed_state = state
    return state


async def project(h: Harness, name: str = "team") -> str:
    status, p, _ = await h.call("POST", "/projects", {"name": name})
    assert status == 201
    return str(p["id"])


async def provider_key(h: Harness, project_id: str | None, secret: str = OPENAI_SECRET, provider: str = "openai") -> str:
    body: dict[str, Any] = {"provider": provider, "api_key": secret}
    if project_id is not None:
        body["project_id"] = project_id
    status, key, _ = await h.call("POST", "/provider-keys", body)
    assert status == 201, key
    return str(key["id"])


def target(key_id: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai/gpt-4o-mini", "model_filter": "gpt-4o-mini*", "provider_key_id": key_id, **extra}


def iso_in(seconds: float) -> str:
    return (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)).isoformat()


# --------------------------------------------------------------------------- auth / mode


def managed_routes(h: Harness) -> list[tuple[str, str]]:
    routes = []
    for route in h.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = str(info.get("path") or info.get("formatter"))
        if path.startswith(MANAGED_PREFIXES) and route.method != "HEAD":  # HEAD: a GET's twin
            routes.append((route.method, path.replace("{id}", "some-id")))
    return routes


def test_managed_routes_require_the_admin_key(backend: Backend) -> None:
    """(tests/test_admin.py's every-route test walks the router, so it covers these too.)"""

    async def body(h: Harness) -> None:
        routes = managed_routes(h)
        assert len(routes) == 10
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-admin-key": ADMIN_KEY + "x"}):
                status, answer, _ = await h.call(method, path, {"x": 1}, auth=False, headers=headers)
                assert (status, answer["error"]) == (401, "unauthorized"), (method, path)
        assert h.ctx.calls["managed"] == 0

    run(backend, body, cipher=CIPHER)


def test_managed_routes_409_when_managed_mode_is_off(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        pid = await project(h)
        routes = managed_routes(h)
        assert len(routes) == 10
        valid = {
            "/provider-keys": {"provider": "openai", "api_key": OPENAI_SECRET, "project_id": pid},
            "/tokens": {"project_id": pid},
        }
        for method, path in routes:
            status, answer, _ = await h.call(method, path, valid.get(path, {"x": 1}))
            assert (status, answer["error"]) == (409, "managed_mode_disabled"), (method, path)
            assert "managed" in answer["message"]
        assert await h.store.list_provider_keys() == [] and await h.store.list_proxy_tokens() == []
        assert h.ctx.calls["managed"] == 0
        assert OPENAI_SECRET not in "\n".join(h.bodies)

    run(backend, body, cipher=None)


# --------------------------------------------------------------------------- provider keys


def test_provider_keys_are_stored_encrypted_and_never_shown(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        state = attach_state(h)
        pid = await project(h)
        status, key, _ = await h.call("POST", "/provider-keys", {
            "provider": "openai", "api_key": OPENAI_SECRET, "project_id": pid, "display_name": "prod"})  # fmt: skip
        assert status == 201, key
        assert set(key) == {"id", "provider", "project_id", "display_name", "key_id", "is_active",
                            "created_at_ns", "revoked_at_ns", "api_key_last4"}  # fmt: skip
        assert (key["provider"], key["project_id"], key["display_name"], key["key_id"], key["is_active"]) == (
            "openai", pid, "prod", CIPHER.key_id, True)  # fmt: skip
        assert key["api_key_last4"] == "..." + OPENAI_SECRET[-4:]
        assert h.ctx.calls["managed"] == 1

        # stored: ciphertext that opens to the key with this cipher (and only for its provider)
        stored = await h.store.get_provider_key(key["id"])
        assert stored is not None and OPENAI_SECRET.encode() not in stored.ciphertext
        assert CIPHER.decrypt(stored.ciphertext, stored.nonce, stored.key_id, "openai") == OPENAI_SECRET
        with pytest.raises(Exception):
            CIPHER.decrypt(stored.ciphertext, stored.nonce, stored.key_id, "anthropic")

        # a shared key; a provider alias is stored as its canonical id
        status, shared, _ = await h.call("POST", "/provider-keys", {"provider": "claude", "api_key": ANTHROPIC_SECRET})
        assert status == 201 and (shared["provider"], shared["project_id"]) == ("anthropic", None)
        status, short, _ = await h.call("POST", "/provider-keys", {"provider": "openai", "api_key": "sk-short"})
        assert status == 201 and "api_key_last4" not in short  # too short for a hint

        listed = (await h.call("GET", "/provider-keys"))[1]["provider_keys"]
        assert [k["id"] for k in listed] == [key["id"], shared["id"], short["id"]]
        assert all("api_key_last4" not in k and "ciphertext" not in k for k in listed)
        assert [k["id"] for k in (await h.call("GET", f"/provider-keys?project_id={pid}"))[1]["provider_keys"]] == [key["id"]]

        # a pipe over it resolves in the real managed state, with the decrypted key
        status, pipe, _ = await h.call("POST", "/pipes", {"project_id": pid, "name": "default", "targets": [target(key["id"])]})
        assert status == 201, pipe
        [resolved] = state.pipes[pipe["id"]].targets
        assert (b"authorization", f"Bearer {OPENAI_SECRET}".encode()) in resolved.chat_auth

        # validation names the field and never echoes the key
        for payload, code, expected in [
            ({"provider": "openai"}, 400, "field 'api_key': required"),
            ({"provider": "openai", "api_key": OPENAI_SECRET + " x"}, 400, "field 'api_key': must be printable ASCII"),
            ({"provider": "openai", "api_key": OPENAI_SECRET + "é"}, 400, "field 'api_key'"),
            ({"provider": "openai", "api_key": ""}, 400, "field 'api_key'"),
            ({"provider": "openai", "api_key": 42}, 400, "field 'api_key'"),
            ({"api_key": OPENAI_SECRET}, 400, "field 'provider': required"),
            ({"provider": "no such!", "api_key": OPENAI_SECRET}, 400, "field 'provider'"),
            ({"provider": "openai", "api_key": OPENAI_SECRET, "project_id": "nope"}, 404, "field 'project_id'"),
            ({"provider": "openai", "api_key": OPENAI_SECRET, "secret": 1}, 400, "field 'secret': unknown field"),
        ]:
            status, answer, _ = await h.call("POST", "/provider-keys", payload)
            assert status == code and expected in answer["message"], (payload, answer)
        assert len(await h.store.list_provider_keys()) == 3

        # revoke: the pipe's target is dropped from the managed state at once
        calls = h.ctx.calls["managed"]
        status, revoked, _ = await h.call("POST", f"/provider-keys/{key['id']}/revoke")
        assert status == 200 and revoked["is_active"] is False and revoked["revoked_at_ns"]
        assert (revoked["changed"], revoked["pipes_affected"]) == (True, [pipe["id"]])
        assert h.ctx.calls["managed"] == calls + 1
        assert state.pipes[pipe["id"]].targets == ()
        got = (await h.call("GET", f"/pipes/{pipe['id']}"))[1]
        assert got["targets"][0]["provider_key_active"] is False
        status, again, _ = await h.call("POST", f"/provider-keys/{key['id']}/revoke")
        assert (status, again["changed"]) == (200, False)
        assert (await h.call("POST", "/provider-keys/nope/revoke"))[0] == 404

        everything = "\n".join(h.bodies)
        assert key["id"] in everything  # positive control
        for secret in (OPENAI_SECRET, ANTHROPIC_SECRET, "sk-short"):
            assert secret not in everything
        database = await dump_database(backend)
        assert CIPHER.key_id in database and key["id"] in database  # positive control
        for secret in (OPENAI_SECRET, ANTHROPIC_SECRET, "sk-short", OPENAI_SECRET[:12], OPENAI_SECRET[-12:]):
            assert secret not in database

    run(backend, body, cipher=CIPHER)


# --------------------------------------------------------------------------- pipes


def test_pipe_validation_names_the_field(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        pid = await project(h)
        other = await project(h, "other")
        key = await provider_key(h, pid)
        shared = await provider_key(h, None)
        foreign = await provider_key(h, other)
        revoked = await provider_key(h, pid)
        assert (await h.call("POST", f"/provider-keys/{revoked}/revoke"))[0] == 200
        calls = h.ctx.calls["managed"]

        def pipe(*targets: dict[str, Any], **extra: Any) -> dict[str, Any]:
            return {"project_id": pid, "name": "default", "targets": list(targets), **extra}

        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"project_id": pid, "name": "x"}, 400, "field 'targets': required"),
            (pipe(), 400, "field 'targets': List should have at least 1 item"),
            (pipe(target(key), targets=[target(key)] * 65), 400, "field 'targets'"),
            ({"name": "x", "targets": [target(key)]}, 400, "field 'project_id': required"),
            (pipe(target(key), name=""), 400, "field 'name'"),
            (pipe(target(key), name="  "), 400, "field 'name': must not be blank"),
            (pipe({"model": "gpt-4o", "provider_key_id": key}), 400, "field 'targets.0.provider': required"),
            (pipe(target(key, provider="")), 400, "field 'targets.0.provider'"),
            (pipe(target(key, provider="   ")), 400, "field 'targets.0.provider': must not be blank"),
            (pipe(target(key, provider=7)), 400, "field 'targets.0.provider'"),
            (pipe({"provider": "openai", "provider_key_id": key}), 400, "field 'targets.0': give 'model' or 'model_filter'"),
            (pipe({"provider": "openai", "model": "gpt-4o"}), 400, "field 'targets.0.provider_key_id': required"),
            (pipe(target(key, weight=-1)), 400, "field 'targets.0.weight'"),
            (pipe(target(key, weight="2")), 400, "field 'targets.0.weight'"),
            (pipe(target(key, colour="blue")), 400, "field 'targets.0.colour': unknown field"),
            (pipe(target(key), target("nope")), 400, "field 'targets.1.provider_key_id': no provider key has this id"),
            (pipe(target(revoked)), 400, "field 'targets.0.provider_key_id': this provider key is revoked"),
            (pipe(target(foreign)), 400, "field 'targets.0.provider_key_id': this provider key belongs to another project"),
            (pipe(target(key), project_id="nope"), 404, "field 'project_id': no project has this id"),
        ]
        for payload, code, expected in cases:
            status, answer, _ = await h.call("POST", "/pipes", payload)
            assert status == code and expected in answer["message"], (payload, answer)
            if code == 400:
                assert answer["error"] == "invalid_request" and answer["details"]
        # several bad targets: every one named
        status, answer, _ = await h.call("POST", "/pipes", pipe(target("nope"), target(key), target(revoked)))
        assert status == 400
        assert [d["field"] for d in answer["details"]] == ["targets.0.provider_key_id", "targets.2.provider_key_id"]
        assert await h.store.list_pipes() == [] and h.ctx.calls["managed"] == calls

        # a good one: project key first, shared key as failover
        status, created, _ = await h.call("POST", "/pipes", pipe(
            target(key, weight=3), {"provider": "openai", "model": "gpt-4o-mini", "provider_key_id": shared}))  # fmt: skip
        assert status == 201, created
        assert "warnings" not in created and h.ctx.calls["managed"] == calls + 1
        assert [(t["provider_key_id"], t["weight"], t["model"], t["model_filter"], t["provider_key_active"])
                for t in created["targets"]] == [
            (key, 3, None, "gpt-4o-mini*", True), (shared, 1, "gpt-4o-mini", None, True)]  # fmt: skip
        stored = await h.store.get_pipe(created["id"])
        assert stored is not None and [t.provider_key_id for t in stored.targets] == [key, shared]
        status, answer, _ = await h.call("POST", "/pipes", pipe(target(key)))
        assert (status, answer["error"]) == (409, "already_exists") and "field 'name'" in answer["message"]
        # a plain provider mismatch is saved with a warning
        status, odd, _ = await h.call("POST", "/pipes", pipe(
            {"provider": "anthropic/claude-sonnet-4-6", "model": "claude-x", "provider_key_id": key}, name="odd"))  # fmt: skip
        assert status == 201 and "looks like anthropic" in odd["warnings"][0]

        assert (await h.call("GET", f"/pipes/{created['id']}"))[1] == created
        assert [p["id"] for p in (await h.call("GET", "/pipes"))[1]["pipes"]] == [created["id"], odd["id"]]
        assert (await h.call("GET", f"/pipes?project_id={other}"))[1] == {"pipes": []}
        assert (await h.call("GET", "/pipes/nope"))[0] == 404

    run(backend, body, cipher=CIPHER)


def test_deleting_a_pipe_with_bound_tokens(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        state = attach_state(h)
        pid = await project(h)
        key = await provider_key(h, pid)
        default = (await h.call("POST", "/pipes", {"project_id": pid, "name": "default", "targets": [target(key)]}))[1]
        narrow = (await h.call("POST", "/pipes", {"project_id": pid, "name": "narrow", "targets": [target(key)]}))[1]
        status, tok, _ = await h.call("POST", "/tokens", {"project_id": pid, "pipe_id": narrow["id"]})
        assert status == 201
        assert state.lookup(token_hash(tok["token"]), time.time_ns()) is not None

        # unbinding would move the token to the default pipe: refused
        status, answer, _ = await h.call("DELETE", f"/pipes/{narrow['id']}")
        assert (status, answer["error"]) == (409, "pipe_in_use")
        assert answer["token_ids"] == [tok["id"]]
        assert await h.store.get_pipe(narrow["id"]) is not None
        calls = h.ctx.calls["managed"]
        status, answer, _ = await h.call("DELETE", f"/pipes/{narrow['id']}?revoke_tokens=true")
        assert (status, answer["deleted"], answer["revoked_tokens"]) == (200, True, [tok["id"]])
        assert h.ctx.calls["managed"] == calls + 1
        assert state.lookup(token_hash(tok["token"]), time.time_ns()) is None
        assert narrow["id"] not in state.pipes and default["id"] in state.pipes
        assert (await h.call("DELETE", f"/pipes/{narrow['id']}"))[0] == 404
        # no active token bound: deleted straight away
        assert (await h.call("DELETE", f"/pipes/{default['id']}"))[1]["revoked_tokens"] == []
        assert await h.store.list_pipes() == []

        # deleting a project with a pipe over its own key (RESTRICT on PostgreSQL) works
        key2 = await provider_key(h, pid)
        await h.call("POST", "/pipes", {"project_id": pid, "name": "again", "targets": [target(key2)]})
        calls = h.ctx.calls["managed"]
        status, answer, _ = await h.call("DELETE", f"/projects/{pid}")
        assert (status, answer) == (200, {"deleted": True})
        assert h.ctx.calls["managed"] == calls + 1
        assert await h.store.list_provider_keys() == [] and await h.store.list_proxy_tokens() == []

    run(backend, body, cipher=CIPHER)


# --------------------------------------------------------------------------- tokens


def test_token_is_shown_once_and_stored_as_its_hash(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        state = attach_state(h)
        pid = await project(h)
        other = await project(h, "other")
        user = (await h.call("POST", "/users", {"name": "ann"}))[1]
        key = await provider_key(h, pid)
        pipe = (await h.call("POST", "/pipes", {"project_id": pid, "name": "default", "targets": [target(key)]}))[1]
        other_key = await provider_key(h, other)
        other_pipe = (await h.call("POST", "/pipes", {"project_id": other, "name": "p", "targets": [target(other_key)]}))[1]
        calls = h.ctx.calls["managed"]

        before = time.time_ns()
        status, tok, _ = await h.call("POST", "/tokens", {
            "project_id": pid, "user_id": user["id"], "pipe_id": pipe["id"], "name": "ci", "expires_in_s": 3600})  # fmt: skip
        assert status == 201, tok
        raw = tok["token"]
        assert raw.startswith("xproxy_") and len(raw) > 40
        assert "shown once" in tok["note"]
        assert (tok["project_id"], tok["user_id"], tok["pipe_id"], tok["name"], tok["state"]) == (
            pid, user["id"], pipe["id"], "ci", "active")  # fmt: skip
        assert before + 3600 * 10**9 <= tok["expires_at_ns"] <= time.time_ns() + 3600 * 10**9
        assert tok["expires_at"].endswith("Z") and "token_hash" not in tok
        assert h.ctx.calls["managed"] == calls + 1
        # the store holds the hash only; the managed state knows the token at once
        row = await h.store.get_proxy_token(token_hash(raw))
        assert row is not None and row.id == tok["id"]
        found = state.lookup(token_hash(raw), time.time_ns())
        assert found is not None and state.pipe_for(found) is not None

        # other expiry forms
        status, at, _ = await h.call("POST", "/tokens", {"project_id": pid, "expires_at": iso_in(86_400)})
        assert status == 201 and abs(at["expires_at_ns"] - (time.time_ns() + 86_400 * 10**9)) < 60 * 10**9
        status, never, _ = await h.call("POST", "/tokens", {"project_id": pid})
        assert status == 201 and never["expires_at_ns"] is None and never["pipe_id"] is None

        for payload, code, expected in [
            ({}, 400, "field 'project_id': required"),
            ({"project_id": "nope"}, 404, "field 'project_id': no project"),
            ({"project_id": pid, "user_id": "nope"}, 404, "field 'user_id': no user"),
            ({"project_id": pid, "pipe_id": "nope"}, 404, "field 'pipe_id': no pipe"),
            ({"project_id": pid, "pipe_id": other_pipe["id"]}, 400, "field 'pipe_id': the pipe belongs to another project"),
            ({"project_id": pid, "expires_in_s": 0}, 400, "field 'expires_in_s'"),
            ({"project_id": pid, "expires_in_s": "60"}, 400, "field 'expires_in_s'"),
            ({"project_id": pid, "expires_at": "tomorrow"}, 400, "field 'expires_at': must be an ISO 8601"),
            ({"project_id": pid, "expires_at": "2030-01-01T00:00:00"}, 400, "field 'expires_at': must include a UTC offset"),
            ({"project_id": pid, "expires_at": iso_in(-60)}, 400, "field 'expires_at': must be in the future"),
            ({"project_id": pid, "expires_at": "9999-01-01T00:00:00Z"}, 400, "field 'expires_at': must be within 10 years"),
            ({"project_id": pid, "expires_in_s": 60, "expires_at": iso_in(60)}, 400, "at most one of 'expires_in_s' or 'expires_at'"),
            ({"project_id": pid, "token": "xproxy_mine"}, 400, "field 'token': unknown field"),
        ]:
            status, answer, _ = await h.call("POST", "/tokens", payload)
            assert status == code and expected in answer["message"], (payload, answer)
        assert len(await h.store.list_proxy_tokens()) == 3

        # listings show neither the token nor its hash
        first_listing = len(h.bodies)
        listed = (await h.call("GET", "/tokens"))[1]["tokens"]
        assert [t["id"] for t in listed] == [tok["id"], at["id"], never["id"]]
        assert all("token" not in t and "token_hash" not in t for t in listed)
        assert [t["id"] for t in (await h.call("GET", f"/tokens?user_id={user['id']}"))[1]["tokens"]] == [tok["id"]]
        assert (await h.call("GET", f"/tokens?project_id={other}"))[1] == {"tokens": []}
        later = "\n".join(h.bodies[first_listing:])
        assert tok["id"] in later  # positive control
        assert raw not in later and token_hash(raw) not in later

        # revoke: effective at once in the managed state
        calls = h.ctx.calls["managed"]
        status, revoked, _ = await h.call("POST", f"/tokens/{tok['id']}/revoke")
        assert status == 200 and (revoked["state"], revoked["revoked"], revoked["changed"]) == ("revoked", True, True)
        assert h.ctx.calls["managed"] == calls + 1
        assert state.lookup(token_hash(raw), time.time_ns()) is None
        assert tok["id"] not in {t.id for t in await h.store.list_active_proxy_tokens()}
        status, again, _ = await h.call("POST", f"/tokens/{tok['id']}/revoke")
        assert (status, again["changed"]) == (200, False)
        assert (await h.call("POST", "/tokens/nope/revoke"))[0] == 404

        # the raw token appeared in exactly one answer: its creation
        assert sum(raw in b for b in h.bodies) == 1
        database = await dump_database(backend)
        assert token_hash(raw) in database  # positive control
        assert raw not in database and raw[len("xproxy_"):] not in database

        # deleting the user takes its tokens with it, and the state is told
        calls = h.ctx.calls["managed"]
        assert (await h.call("DELETE", f"/users/{user['id']}"))[0] == 200
        assert h.ctx.calls["managed"] == calls + 1

    run(backend, body, cipher=CIPHER)


def test_a_failed_managed_reload_still_saves_and_warns(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        pid = await project(h)
        status, tok, _ = await h.call("POST", "/tokens", {"project_id": pid})
        assert status == 201
        h.ctx.fail_managed_changed = True
        status, answer, _ = await h.call("POST", f"/tokens/{tok['id']}/revoke")
        assert status == 200 and "on_managed_changed failed" in answer["warning"]
        assert await h.store.list_active_proxy_tokens() == []

    run(backend, body, cipher=CIPHER)


# --------------------------------------------------------------------------- CLI mirror


def _cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plano-fast")
    add_admin_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_parse_target() -> None:
    assert parse_target("provider=openai,model=gpt-4o,filter=gpt-4o*,key=k1,weight=2") == {
        "provider": "openai", "model": "gpt-4o", "model_filter": "gpt-4o*", "provider_key_id": "k1", "weight": 2}  # fmt: skip
    assert parse_target("provider=openai/gpt-4o-mini,model_filter=*,provider_key_id=k") == {
        "provider": "openai/gpt-4o-mini", "model_filter": "*", "provider_key_id": "k"}  # fmt: skip
    for bad in ("provider=openai", "key=k", "provider=a,key=k,colour=blue", "provider=a,key=k,weight=x",
                "provider=a,provider=b,key=k", "openai"):  # fmt: skip
        with pytest.raises(AdminClientError):
            parse_target(bad)


def test_new_master_key_needs_no_server(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PLANO_FAST_ADMIN_KEY", raising=False)
    args = _cli_parser().parse_args(["managed", "new-master-key"])
    assert run_admin_command(args) == 0
    first = capsys.readouterr().out.strip()
    assert len(parse_master_key(first)) == 32
    assert run_admin_command(args) == 0
    assert capsys.readouterr().out.strip() != first


def test_cli_mirror(backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PLANO_FAST_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("OPENAI_SERVER_KEY", OPENAI_SECRET)

    async def body(h: Harness) -> None:
        state = attach_state(h)
        printed: list[str] = []

        async def cli(*argv: str, stdin: str | None = None) -> tuple[int, Any]:
            args = _cli_parser().parse_args([*argv, "--admin-url", h.base])
            capsys.readouterr()
            if stdin is not None:
                monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
            rc = await asyncio.to_thread(run_admin_command, args)
            out = capsys.readouterr()
            printed.extend((out.out, out.err))
            if rc != 0:
                return rc, out.err
            return rc, json.loads(out.out) if out.out.lstrip().startswith("{") else out.out.strip()

        rc, user = await cli("users", "create", "--name", "ann", "--email", "ann@example.com")
        assert rc == 0 and user["email"] == "ann@example.com"
        rc, users = await cli("users", "list")
        assert rc == 0 and [u["id"] for u in users["users"]] == [user["id"]]
        rc, proj = await cli("projects", "create", "--name", "cli-team", "--id", "cli-team")
        assert rc == 0 and proj["id"] == "cli-team"
        rc, projects = await cli("projects", "list")
        assert rc == 0 and [p["id"] for p in projects["projects"]] == ["cli-team"]

        rc, key = await cli("provider-keys", "add", "--provider", "openai", "--project-id", "cli-team",
                            "--api-key-env", "OPENAI_SERVER_KEY", "--display-name", "prod")  # fmt: skip
        assert rc == 0 and key["api_key_last4"] == "..." + OPENAI_SECRET[-4:]
        rc, shared = await cli("provider-keys", "add", "--provider", "anthropic", "--api-key-stdin",
                               stdin=ANTHROPIC_SECRET + "\n")  # fmt: skip
        assert rc == 0 and shared["project_id"] is None
        stored = await h.store.get_provider_key(shared["id"])
        assert stored is not None
        assert CIPHER.decrypt(stored.ciphertext, stored.nonce, stored.key_id, "anthropic") == ANTHROPIC_SECRET
        rc, err = await cli("provider-keys", "add", "--provider", "openai", "--api-key-stdin", stdin="\n")
        assert rc == 2 and "no provider API key given" in err
        rc, keys = await cli("provider-keys", "list", "--project-id", "cli-team")
        assert rc == 0 and [k["id"] for k in keys["provider_keys"]] == [key["id"]]

        rc, pipe = await cli("pipes", "create", "--project-id", "cli-team",
                             "--target", f"provider=openai/gpt-4o-mini,filter=gpt-4o-mini*,key={key['id']},weight=2",
                             "--target", f"provider=anthropic/claude-sonnet-4-6,filter=claude-*,key={shared['id']}")  # fmt: skip
        assert rc == 0 and pipe["name"] == "default"
        assert [(t["provider_key_id"], t["weight"]) for t in pipe["targets"]] == [(key["id"], 2), (shared["id"], 1)]
        assert len(state.pipes[pipe["id"]].targets) == 2
        rc, err = await cli("pipes", "create", "--project-id", "cli-team", "--name", "x",
                            "--target", "provider=openai,model=m,key=nope")  # fmt: skip
        assert rc == 1 and "targets.0.provider_key_id" in err
        rc, err = await cli("pipes", "create", "--project-id", "cli-team", "--target", "provider=openai,model=m")
        assert rc == 2 and "key=" in err
        rc, pipes = await cli("pipes", "list")
        assert rc == 0 and [p["id"] for p in pipes["pipes"]] == [pipe["id"]]

        rc, tok = await cli("tokens", "create", "--project-id", "cli-team", "--user-id", user["id"],
                            "--pipe-id", pipe["id"], "--name", "laptop", "--expires-in", "600")  # fmt: skip
        assert rc == 0 and tok["token"].startswith("xproxy_") and "shown once" in tok["note"]
        rc, bare = await cli("tokens", "create", "--project-id", "cli-team", "--pipe-id", pipe["id"],
                             "--expires-at", iso_in(3600), "--token-only")  # fmt: skip
        assert rc == 0 and bare.startswith("xproxy_") and "\n" not in bare
        assert state.lookup(token_hash(bare), time.time_ns()) is not None
        rc, tokens = await cli("tokens", "list", "--project-id", "cli-team")
        assert rc == 0 and len(tokens["tokens"]) == 2
        assert tok["token"] not in json.dumps(tokens) and bare not in json.dumps(tokens)
        rc, revoked = await cli("tokens", "revoke", tok["id"])
        assert rc == 0 and revoked["state"] == "revoked"
        assert state.lookup(token_hash(tok["token"]), time.time_ns()) is None

        rc, err = await cli("pipes", "delete", pipe["id"])
        assert rc == 1 and "pipe_in_use" in err
        rc, answer = await cli("pipes", "delete", pipe["id"], "--revoke-tokens")
        assert rc == 0 and answer["deleted"] is True and len(answer["revoked_tokens"]) == 1
        assert state.lookup(token_hash(bare), time.time_ns()) is None
        rc, answer = await cli("provider-keys", "revoke", key["id"])
        assert rc == 0 and answer["is_active"] is False

        rc, err = await cli("tokens", "list", "--admin-key", "wrong")
        assert rc == 1 and "unauthorized" in err
        # the provider keys went to the API, never back out of it
        everything = "\n".join(h.bodies + printed)
        assert key["id"] in everything  # positive control
        assert OPENAI_SECRET not in everything and ANTHROPIC_SECRET not in everything
        # each token was printed once, at its creation
        assert sum(tok["token"] in p for p in printed) == 1 and sum(bare in p for p in printed) == 1

    run(backend, body, cipher=CIPHER)


def test_managed_routes_take_a_project_name(backend: Backend) -> None:
    async def body(h: Harness) -> None:
        pid = await project(h, "named-team")
        key = await provider_key(h, "named-team")
        assert (await h.call("GET", "/provider-keys?project_id=named-team"))[1]["provider_keys"][0]["project_id"] == pid
        status, pipe, _ = await h.call(
            "POST", "/pipes", {"project_id": "named-team", "name": "default", "targets": [target(key)]}
        )
        assert status == 201 and pipe["project_id"] == pid, pipe
        assert [p["id"] for p in (await h.call("GET", "/pipes?project_id=named-team"))[1]["pipes"]] == [pipe["id"]]
        status, tok, _ = await h.call("POST", "/tokens", {"project_id": "named-team"})
        assert status == 201 and tok["project_id"] == pid, tok
        assert len((await h.call("GET", "/tokens?project_id=named-team"))[1]["tokens"]) == 1
        for method, path, payload in (
            ("POST", "/provider-keys", {"provider": "openai", "api_key": OPENAI_SECRET, "project_id": "nope"}),
            ("GET", "/provider-keys?project_id=nope", None),
            ("POST", "/pipes", {"project_id": "nope", "name": "x", "targets": [target(key)]}),
            ("GET", "/pipes?project_id=nope", None),
            ("POST", "/tokens", {"project_id": "nope"}),
            ("GET", "/tokens?project_id=nope", None),
        ):
            status, answer, _ = await h.call(method, path, payload)
            assert (status, answer["error"]) == (404, "not_found"), (method, path, answer)

    run(backend, body, cipher=CIPHER)
