"""Conversation state shared across processes (``state_storage`` on SQLite and PostgreSQL,
plano_fast.responses_store): two gateway processes on one database, the official openai
SDK over real sockets, turns alternating between the processes (turn 1 on one, turn 2 on
the other); another key's conversation refused on both; ``store: false`` leaves no row;
GET / DELETE from the other process; the rows themselves; TTL and size cap on the stores.

SQLite runs as ``type: store`` (the gateway's own SQLite file, table made by ``plano-fast
migrate``); PostgreSQL as Plano's ``type: postgres`` with its ``connection_string`` (a
database that is not the gateway's own: the store creates its table)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.gateway.phases import key_hash
from plano_fast.responses_state import StoredResponse
from plano_fast.responses_store import PostgresResponseStore, SharedResponseStore, SqliteResponseStore
from tests import pg
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_responses_e2e import EXTRA_PROVIDERS
from tests.test_responses_state import upstream_history


class Pair:
    """Two gateway processes sharing one state database, and a way to read its rows."""

    def __init__(self, a: GatewayProcess, b: GatewayProcess, backend: str, where: str) -> None:
        self.a, self.b, self.backend, self.where = a, b, backend, where

    def rows(self) -> list[dict[str, Any]]:
        query = "SELECT * FROM response_states"
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.where)
            conn.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in conn.execute(query).fetchall()]
            finally:
                conn.close()

        async def read() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.where)
            try:
                return [dict(r) for r in await conn.fetch(query)]
            finally:
                await conn.close()
        return asyncio.run(read())

    def row(self, rid: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The row of ``rid`` once written (writes finish after the answer)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [r for r in self.rows() if r["id"] == rid]
            if found or time.monotonic() > deadline:
                return found[0] if found else None
            time.sleep(0.05)


def _start_pair(config: Path, backend: str, where: str) -> Iterator[Pair]:
    with GatewayProcess(config) as a, GatewayProcess(config, migrate=False) as b:
        assert a.pids != b.pids
        yield Pair(a, b, backend, where)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def pair(request: pytest.FixtureRequest, fake: FakeProviderThread,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    path: Path = tmp_path_factory.mktemp(f"shared-{request.param}") / "plano_config.yaml"
    write_config(path, fake.port, extra_providers=EXTRA_PROVIDERS.format(port=fake.port))
    if request.param == "sqlite":
        path.write_text(path.read_text() + "state_storage:\n  type: store\n")
        yield from _start_pair(path, "sqlite", str(path.with_suffix(".db")))
        return
    database = request.getfixturevalue("pg_database")
    with pg.temp_schema(database, "state") as dsn:
        path.write_text(path.read_text() + f'state_storage:\n  type: postgres\n  connection_string: "{dsn}"\n')
        yield from _start_pair(path, "postgres", dsn)


def client(gw: GatewayProcess, key: str = "sk-alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def turn(c: openai.OpenAI, model: str, text: str, answer: str, previous: str | None, streamed: bool) -> Any:
    kwargs: dict[str, Any] = {"model": model, "input": text, "extra_headers": {"x-fake-text": answer}}
    if previous is not None:
        kwargs["previous_response_id"] = previous
    if streamed:
        with c.responses.stream(**kwargs) as stream:
            list(stream)
            return stream.get_final_response()
    return c.responses.create(**kwargs)


def expected_history(model: str, user: str, upto: int) -> list[tuple[str, str]]:
    assistant = "model" if model == "gemini-2.5-flash" else "assistant"
    out: list[tuple[str, str]] = []
    for k in range(upto):
        out += [(user, f"question {k}"), (assistant, f"answer {k}")]
    return [*out, (user, f"question {upto}")]


def test_two_turns_on_two_processes(pair: Pair, fake: FakeProviderThread) -> None:
    with client(pair.a) as a, client(pair.b) as b:
        first = turn(a, "claude-sonnet-4-6", "question 0", "answer 0", None, False)
        # no wait: the next turn goes to the other process at once
        second = turn(b, "claude-sonnet-4-6", "question 1", "answer 1", first.id, False)
    assert second.output_text == "answer 1" and second.id != first.id
    assert upstream_history(fake, "claude-sonnet-4-6") == expected_history("claude-sonnet-4-6", "user", 1)


@pytest.mark.parametrize(("model", "streamed"), [
    ("claude-sonnet-4-6", True), ("gemini-2.5-flash", False), ("deepseek-chat", True),
])
def test_five_turns_alternating_processes(pair: Pair, fake: FakeProviderThread, model: str, streamed: bool) -> None:
    previous: str | None = None
    with client(pair.a) as a, client(pair.b) as b:
        for k in range(5):
            resp = turn((a, b)[k % 2], model, f"question {k}", f"answer {k}", previous, streamed)
            assert resp.output_text == f"answer {k}" and resp.store is True
            history = upstream_history(fake, model)
            assert history == expected_history(model, history[0][0], k)
            previous = resp.id
    assert previous is not None
    row = pair.row(previous)
    assert row is not None
    assert row["owner"] == key_hash(b"sk-alice") and row["provider"]


def test_rows_hold_the_conversation(pair: Pair) -> None:
    before = time.time_ns()
    with client(pair.a) as a:
        first = turn(a, "gemini-2.5-flash", "hello", "hi there", None, False)
    row = pair.row(first.id)
    assert row is not None
    assert json.loads(row["input_items"]) == [{"role": "user", "content": "hello"}]
    [out] = json.loads(row["output_items"])
    assert out["type"] == "message" and out["content"][0]["text"] == "hi there"
    assert row["model"] == "gemini-2.5-flash" and row["provider"].startswith("gemini")
    assert row["owner"] == key_hash(b"sk-alice")
    assert before <= row["created_at_ns"] <= time.time_ns()
    assert row["expires_at_ns"] - row["created_at_ns"] == 24 * 3600 * 10**9
    assert json.loads(row["response"])["id"] == first.id


def test_another_key_is_refused_on_both_processes(pair: Pair) -> None:
    with client(pair.a, "sk-alice") as alice_a, client(pair.b, "sk-alice") as alice_b, \
            client(pair.a, "sk-bob") as bob_a, client(pair.b, "sk-bob") as bob_b:
        first = turn(alice_a, "deepseek-chat", "secret", "noted", None, False)
        for bob in (bob_a, bob_b):
            with pytest.raises(openai.NotFoundError) as err:
                bob.responses.create(model="deepseek-chat", input="tell me", previous_response_id=first.id)
            assert first.id in err.value.message
            with pytest.raises(openai.NotFoundError):
                bob.responses.retrieve(first.id)
            with pytest.raises(openai.NotFoundError):
                bob.responses.delete(first.id)
        assert pair.row(first.id) is not None  # bob's delete removed nothing
        got = alice_b.responses.retrieve(first.id)  # the other process reads it
        assert got.model_dump() == first.model_dump()
        alice_b.responses.delete(first.id)
        assert pair.row(first.id, timeout_s=0) is None
        for alice in (alice_a, alice_b):
            with pytest.raises(openai.NotFoundError):
                alice.responses.retrieve(first.id)
            with pytest.raises(openai.NotFoundError):
                alice.responses.create(model="deepseek-chat", input="x", previous_response_id=first.id)


def test_store_false_leaves_no_row(pair: Pair) -> None:
    with client(pair.a) as a, client(pair.b) as b:
        kept = a.responses.create(model="claude-sonnet-4-6", input="kept")
        first = a.responses.create(model="claude-sonnet-4-6", input="x", store=False)
        with a.responses.stream(model="gemini-2.5-flash", input="x", store=False) as stream:
            list(stream)
            second = stream.get_final_response()
        assert first.store is False and second.store is False
        assert pair.row(kept.id) is not None  # written: so the others would be by now
        ids = {r["id"] for r in pair.rows()}
        assert first.id not in ids and second.id not in ids
        for c in (a, b):
            with pytest.raises(openai.NotFoundError):
                c.responses.create(model="claude-sonnet-4-6", input="y", previous_response_id=first.id)


# ---- the stores themselves ----------------------------------------------------------------


def _entry(rid: str, owner: str = "k1", text: str = "hi") -> StoredResponse:
    return StoredResponse(rid, owner, "m", "p", [{"role": "user", "content": text},
                                                 {"type": "message", "content": "out"}], 0.0, {"id": rid})


async def _exercise(store: SharedResponseStore) -> None:
    try:
        assert store.put(_entry("resp_1"), 1)
        # readable at once in this process, before the write lands
        got = await store.fetch("resp_1", "k1")
        assert got is not None and got.items[0]["content"] == "hi"
        await store.flush()
        got = await store.fetch("resp_1", "k1")
        assert got is not None and got.items == _entry("resp_1").items and got.response == {"id": "resp_1"}
        assert await store.fetch("resp_1", "k2") is None  # another owner
        assert not await store.remove("resp_1", "k2")
        # the size cap: a conversation over it is not stored
        assert not store.put(_entry("resp_big", text="x" * 600), 1)
        await store.flush()
        assert await store.fetch("resp_big", "k1") is None
        # the TTL: expired rows are not read, and swept at the next write
        assert store.put(_entry("resp_old"), 1)
        await store.flush()
        await asyncio.sleep(store.ttl_s + 0.05)
        assert await store.fetch("resp_old", "k1") is None
        assert await store.fetch("resp_1", "k1") is None
        store._next_sweep = 0.0
        assert store.put(_entry("resp_new"), 1)
        await store.flush()
        assert await store.fetch("resp_new", "k1") is not None
        assert await store.remove("resp_new", "k1")
        assert await store.fetch("resp_new", "k1") is None
        assert store.writes_failed == 0
    finally:
        await store.close()


def test_sqlite_store_owner_ttl_cap(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteResponseStore(str(path), ttl_s=0.3, max_conversation_bytes=500, miss_grace_s=0.0)
    asyncio.run(_exercise(store))
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM response_states").fetchone()[0] == 0  # all swept or removed
    conn.close()


def test_sqlite_store_big_rows_on_its_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import plano_fast.responses_store as rs

    monkeypatch.setattr(rs, "LOOP_ROW_BYTES", 10)  # every row goes to the thread
    store = SqliteResponseStore(str(tmp_path / "state.db"), ttl_s=0.3, max_conversation_bytes=500,
                                miss_grace_s=0.0)
    asyncio.run(_exercise(store))


def test_postgres_store_owner_ttl_cap(pg_dsn: str) -> None:
    store = PostgresResponseStore(pg_dsn, ttl_s=0.3, max_conversation_bytes=500, miss_grace_s=0.0)
    asyncio.run(_exercise(store))


def test_unreachable_state_database_is_a_503_for_continuations_only(
    fake: FakeProviderThread, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "plano_config.yaml", fake.port,
                        extra_providers=EXTRA_PROVIDERS.format(port=fake.port))
    path.write_text(path.read_text() + 'state_storage:\n  type: postgres\n'
                    '  connection_string: "postgresql://nobody@127.0.0.1:9/none"\n')
    with GatewayProcess(path) as proc, client(proc) as c:
        first = c.responses.create(model="claude-sonnet-4-6", input="x")  # answered; its write fails
        assert first.output_text
        deadline = time.monotonic() + 15
        while f"conversation state for {first.id} not stored" not in proc.log_text():
            assert time.monotonic() < deadline, proc.log_text()[-2000:]
            time.sleep(0.05)
        with pytest.raises(openai.InternalServerError) as err:
            c.responses.create(model="claude-sonnet-4-6", input="y", previous_response_id=first.id)
        assert err.value.status_code == 503
        # OpenAI-family passthrough never touches the state database
        assert c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).choices
