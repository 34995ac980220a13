"""Conversation state (Plano's ``state_storage: {type: memory}``) for Responses requests
served through conversion: the store itself, and two-turn / five-turn conversations over
real sockets with the openai SDK (JSON and streamed), tool results sent on their own with
``previous_response_id``, another key's conversation refused (404), ``store: false``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.responses_state import (
    ConversationNotFound,
    MemoryResponseStore,
    StoredResponse,
    begin_turn,
    store_from_config,
)
from plano_fast.responses_store import PostgresResponseStore, SqliteResponseStore
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_responses_e2e import EXTRA_PROVIDERS, TOOL_CALL, TOOLS, last

# ---- the store ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(rid: str, owner: str = "k1", items: list[Any] | None = None) -> StoredResponse:
    return StoredResponse(rid, owner, "m", "p", items if items is not None else [{"role": "user", "content": rid}], 0.0)


def test_owner_ttl_and_caps() -> None:
    clock = Clock()
    store = MemoryResponseStore(ttl_s=60, max_entries=2, max_conversation_bytes=200, clock=clock)
    assert store.put(entry("resp_a"))
    assert store.get("resp_a", "k1").items == [{"role": "user", "content": "resp_a"}]
    with pytest.raises(ConversationNotFound):
        store.get("resp_a", "k2")  # another key's conversation looks like no conversation
    assert not store.delete("resp_a", "k2")
    clock.now += 61
    with pytest.raises(ConversationNotFound):
        store.get("resp_a", "k1")  # expired
    assert len(store) == 0
    store.put(entry("resp_1"))
    store.put(entry("resp_2"))
    store.put(entry("resp_3"))
    assert len(store) == 2  # the oldest is evicted
    with pytest.raises(ConversationNotFound):
        store.get("resp_1", "k1")
    assert not store.put(entry("resp_big", items=[{"role": "user", "content": "x" * 300}]))
    with pytest.raises(ConversationNotFound):
        store.get("resp_big", "k1")
    assert store.delete("resp_3", "k1") and len(store) == 1


def test_begin_turn_expands_history() -> None:
    store = MemoryResponseStore()
    store.put(entry("resp_1", items=[{"role": "user", "content": "hi"},
                                    {"type": "message", "role": "assistant", "content": "hello"}]))
    doc, turn = begin_turn({"model": "m", "input": "again", "previous_response_id": "resp_1"}, store, "k1")
    assert doc == {"model": "m", "store": True, "input": [
        {"role": "user", "content": "hi"}, {"type": "message", "role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"}]}
    turn.record({"id": "resp_2", "status": "completed", "output": [{"type": "message", "role": "assistant",
                                                                      "content": "bye"}]})
    assert len(store.get("resp_2", "k1").items) == 4
    _, off = begin_turn({"model": "m", "input": "x", "store": False}, store, "k1")
    off.record({"id": "resp_3", "status": "completed", "output": []})
    with pytest.raises(ConversationNotFound):
        store.get("resp_3", "k1")
    with pytest.raises(ConversationNotFound):
        begin_turn({"input": "x", "previous_response_id": "resp_1"}, store, "k2")


def test_config() -> None:
    assert store_from_config({}) is None
    assert isinstance(store_from_config({"state_storage": {"type": "memory"}}), MemoryResponseStore)
    assert isinstance(store_from_config({"state_storage_v1_responses": {"type": "memory"}}), MemoryResponseStore)
    pg = store_from_config({"state_storage": {"type": "postgres", "connection_string": "postgresql://h/d",
                                              "ttl_s": 60, "max_conversation_bytes": 100}})
    assert isinstance(pg, PostgresResponseStore) and (pg.dsn, pg.ttl_s, pg.max_conversation_bytes) == (
        "postgresql://h/d", 60.0, 100)
    # postgres without a connection string: the gateway's own database, else off
    assert isinstance(store_from_config({"state_storage": {"type": "postgres"}}, database_url="postgresql://g/d"),
                      PostgresResponseStore)
    assert store_from_config({"state_storage": {"type": "postgres"}}) is None
    # sqlite: its path, else the gateway's sqlite_path; store: the gateway's own database
    lite = store_from_config({"state_storage": {"type": "sqlite"}}, sqlite_path="/tmp/g.db")
    assert isinstance(lite, SqliteResponseStore) and lite.path == "/tmp/g.db"
    lite = store_from_config({"state_storage": {"type": "sqlite", "path": "/tmp/s.db"}}, sqlite_path="/tmp/g.db")
    assert isinstance(lite, SqliteResponseStore) and lite.path == "/tmp/s.db"
    assert isinstance(store_from_config({"state_storage": {"type": "store"}}, sqlite_path="/tmp/g.db"),
                      SqliteResponseStore)
    own = store_from_config({"state_storage": {"type": "store"}}, database_url="postgresql://g/d")
    assert isinstance(own, PostgresResponseStore) and own.dsn == "postgresql://g/d"
    assert store_from_config({"state_storage": {"type": "redis"}}) is None


# ---- over sockets ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    path: Path = tmp_path_factory.mktemp("state") / "plano_config.yaml"
    write_config(path, fake.port, extra_providers=EXTRA_PROVIDERS.format(port=fake.port))
    path.write_text(path.read_text() + "state_storage:\n  type: memory\n")
    with GatewayProcess(path) as proc:
        yield proc


def client_for(gw: GatewayProcess, key: str = "sk-alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def upstream_history(fake: FakeProviderThread, model: str) -> list[tuple[str, str]]:
    """(role, text) of every message the provider received last, in its own format."""
    if model == "claude-sonnet-4-6":
        body = last(fake, "/v1/messages").json()
        return [(m["role"], "".join(b.get("text", "") for b in m["content"])) for m in body["messages"]]
    if model == "gemini-2.5-flash":
        body = [r for r in fake.requests if "enerateContent" in r.path][-1].json()
        return [(c["role"], "".join(p.get("text", "") for p in c["parts"])) for c in body["contents"]]
    body = last(fake, "/chat/completions").json()
    return [(m["role"], m["content"] or "") for m in body["messages"]]


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "gemini-2.5-flash", "deepseek-chat"])
def test_five_turn_conversation(gw: GatewayProcess, fake: FakeProviderThread, model: str, streamed: bool) -> None:
    previous: str | None = None
    with client_for(gw) as client:
        for turn in range(5):
            kwargs: dict[str, Any] = {"model": model, "input": f"question {turn}",
                                      "extra_headers": {"x-fake-text": f"answer {turn}"}}
            if previous is not None:
                kwargs["previous_response_id"] = previous
            if streamed:
                with client.responses.stream(**kwargs) as stream:
                    list(stream)
                    resp = stream.get_final_response()
            else:
                resp = client.responses.create(**kwargs)
            assert resp.output_text == f"answer {turn}" and resp.store is True
            assert resp.id.startswith("resp_") and resp.id != previous
            history = upstream_history(fake, model)
            user, assistant = history[0][0], "model" if model == "gemini-2.5-flash" else "assistant"
            expected: list[tuple[str, str]] = []
            for k in range(turn):
                expected += [(user, f"question {k}"), (assistant, f"answer {k}")]
            assert history == [*expected, (user, f"question {turn}")]
            previous = resp.id


def test_tool_output_sent_alone_with_previous_response_id(gw: GatewayProcess, fake: FakeProviderThread) -> None:
    """The Codex / Agents SDK pattern: turn 2 carries only the function_call_output."""
    with client_for(gw) as client:
        first = client.responses.create(model="claude-sonnet-4-6", input="Weather in Paris?", tools=TOOLS,
                                        extra_headers=TOOL_CALL)
        [call] = [item for item in first.output if item.type == "function_call"]
        second = client.responses.create(
            model="claude-sonnet-4-6", previous_response_id=first.id, tools=TOOLS,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18C"}],
            extra_headers={"x-fake-text": "It is 18C."},
        )
    assert second.output_text == "It is 18C."
    messages = last(fake, "/v1/messages").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [{"type": "tool_use", "id": call.call_id, "name": "get_weather",
                                       "input": {"city": "Paris"}}]
    assert messages[2]["content"] == [{"type": "tool_result", "tool_use_id": call.call_id, "content": "18C"}]


def test_another_keys_conversation_is_not_found(gw: GatewayProcess) -> None:
    with client_for(gw, "sk-alice") as alice, client_for(gw, "sk-bob") as bob:
        first = alice.responses.create(model="deepseek-chat", input="secret")
        with pytest.raises(openai.NotFoundError) as err:
            bob.responses.create(model="deepseek-chat", input="tell me", previous_response_id=first.id)
        assert first.id in err.value.message
        with pytest.raises(openai.NotFoundError):
            alice.responses.create(model="deepseek-chat", input="x", previous_response_id="resp_unknown")
        alice.responses.create(model="deepseek-chat", input="again", previous_response_id=first.id)


def test_store_false_keeps_nothing(gw: GatewayProcess) -> None:
    with client_for(gw) as client:
        first = client.responses.create(model="gemini-2.5-flash", input="x", store=False)
        assert first.store is False
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="gemini-2.5-flash", input="y", previous_response_id=first.id)


def test_without_state_storage_previous_response_id_is_a_400(fake: FakeProviderThread, tmp_path: Path) -> None:
    path = write_config(tmp_path / "plano_config.yaml", fake.port)
    with GatewayProcess(path) as proc, client_for(proc) as client:
        first = client.responses.create(model="claude-sonnet-4-6", input="x")
        assert first.store is False
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model="claude-sonnet-4-6", input="y", previous_response_id=first.id)
    assert "previous_response_id" in err.value.message


def test_get_and_delete_stored_responses(gw: GatewayProcess) -> None:
    with client_for(gw, "sk-alice") as alice, client_for(gw, "sk-bob") as bob:
        first = alice.responses.create(model="claude-sonnet-4-6", input="hello", metadata={"k": "v"},
                                       extra_headers={"x-fake-text": "stored answer"})
        got = alice.responses.retrieve(first.id)
        assert (got.id, got.output_text, got.metadata, got.status) == (first.id, "stored answer", {"k": "v"}, "completed")
        assert got.model_dump() == first.model_dump()
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(first.id)  # another key's: not found
        with pytest.raises(openai.NotFoundError):
            bob.responses.delete(first.id)
        alice.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            alice.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            alice.responses.create(model="claude-sonnet-4-6", input="x", previous_response_id=first.id)
