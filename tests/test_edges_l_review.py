"""Round l's refusals after review (tests/test_edges_l.py holds the round itself).

* A reasoning model's tool loop sends a turn's ``output`` back in ``input`` (OpenAI's
  documented loop; openai-agents' ``to_input_list()``): its reasoning items by ``id``
  without ``encrypted_content``.  Round l refused them even with ``state_storage``.  With
  it, the gateway now keeps its managed turns' output item ids and lets this owner's own
  through; another owner's (or an unknown) id is still a 400, now saying what to do instead.
* Files, vector stores and stored prompts by id (Responses, chat, Messages): the operator's
  account's objects, which no project made through the gateway -- a 400 in managed mode.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from benchmarks.attack_battery import exchange, post
from benchmarks.fake_provider import FakeProviderThread
from plano_fast.errors import ClientError
from plano_fast.responses_managed import refuse_unowned_state
from plano_fast.responses_state import MemoryResponseStore, StoredResponse
from plano_fast.responses_store import PostgresResponseStore, SharedResponseStore, SqliteResponseStore
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_managed import DEFAULT_PIPE, ENV, Tenant, provision

CLOSE = b"Connection: close\r\n"
PURE = {"PLANO_FAST_PURE_SCANNER": "1"}
MODEL = "gpt-4o-mini"
TOOL = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]


def _calls(fake: FakeProviderThread) -> list[Any]:
    return [r for r in fake.requests if not r.path.startswith("/_fake")]


def _start(fake: FakeProviderThread, where: Path, state: bool,
           env: dict[str, str] | None = None) -> tuple[GatewayProcess, list[Tenant]]:
    """A managed gateway (no hard limit; ``state_storage: store`` when ``state``), two tenants
    (two projects)."""
    path = write_config(where / "plano_config.yaml", fake.port, {"managed": "true", "managed_reload_s": 1})
    if state:
        path.write_text(path.read_text() + "state_storage:\n  type: store\n")
    sqlite_path = str(path.with_suffix(".db"))
    tenants: list[Tenant] = []

    def before() -> None:
        tenants.append(provision(None, sqlite_path, DEFAULT_PIPE))
        tenants.append(provision(None, sqlite_path, DEFAULT_PIPE))

    gw = GatewayProcess(path, env={**ENV, **(env or {})}, before_start=before)
    return gw, tenants


@pytest.fixture(scope="module")
def stateful(fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, list[Tenant]]]:
    gw, tenants = _start(fake, tmp_path_factory.mktemp("stateful"), state=True)
    yield gw, tenants
    gw.stop()


@pytest.fixture(scope="module")
def stateless(fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, list[Tenant]]]:
    gw, tenants = _start(fake, tmp_path_factory.mktemp("stateless"), state=False)
    yield gw, tenants
    gw.stop()


def _client(gw: GatewayProcess, tenant: Tenant) -> openai.OpenAI:
    return openai.OpenAI(api_key=tenant.token, base_url=f"http://127.0.0.1:{gw.port}/v1", max_retries=0)


def _tool_turn(client: openai.OpenAI) -> tuple[list[Any], Any]:
    """Turn 1 of the tool loop: the answer's output (a reasoning item by id, a function call)
    appended to the input, and the call's output, as OpenAI's guide writes it."""
    history: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.responses.create(model=MODEL, input=history, tools=TOOL,  # type: ignore[arg-type]
                                    extra_headers={"x-fake-tool-call": "get_weather"})
    history += [item.model_dump(exclude_none=True) for item in first.output]
    call = next(item for item in first.output if item.type == "function_call")
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": '{"c": 21}'})
    return history, first


def test_tool_loop_sends_back_its_own_reasoning_items(
    stateful: tuple[GatewayProcess, list[Tenant]], fake: FakeProviderThread,
) -> None:
    """state_storage, the official SDK, two turns.  Turn 2 sends turn 1's output back (a
    reasoning item by id, no encrypted_content): 200, forwarded with that item (on integ: a
    400 'reasoning' on turn 2).  The same items sent by the other project: 400 naming
    previous_response_id and encrypted_content, nothing forwarded (on integ: 400 too)."""
    gw, (mine, other) = stateful
    client = _client(gw, mine)
    history, first = _tool_turn(client)
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    reasoning_id = first.output[0].id
    time.sleep(0.3)  # (the stored turn's write lands; a miss is read again for 0.25 s anyway)
    second = client.responses.create(model=MODEL, input=history, tools=TOOL)  # type: ignore[arg-type]
    assert second.status == "completed"
    sent = json.loads(_calls(fake)[-1].body)
    assert reasoning_id in json.dumps(sent["input"])

    before = len(_calls(fake))
    with pytest.raises(openai.BadRequestError) as info:
        _client(gw, other).responses.create(model=MODEL, input=history, tools=TOOL)  # type: ignore[arg-type]
    message = info.value.body["message"] if isinstance(info.value.body, dict) else str(info.value)
    assert reasoning_id in message and "previous_response_id" in message and "encrypted_content" in message
    assert _calls(fake)[before:] == []


def test_an_unknown_reasoning_id_is_refused_with_state_storage(
    stateful: tuple[GatewayProcess, list[Tenant]], fake: FakeProviderThread,
) -> None:
    """state_storage: a reasoning item, an item_reference and an image_generation_call by an id
    no stored answer of this owner holds: 400 naming the id, nothing forwarded (on integ: a
    400 not naming the id for the first two; the image_generation_call was forwarded)."""
    gw, (mine, _) = stateful
    auth = b"Authorization: Bearer " + mine.token.encode() + b"\r\n"
    for item in ({"type": "reasoning", "id": "rs_0123456789abcdef", "summary": []},
                 {"type": "item_reference", "id": "msg_0123456789abcdef"},
                 {"type": "image_generation_call", "id": "ig_0123456789abcdef"}):
        body = json.dumps({"model": MODEL, "input": [{"role": "user", "content": "hi"}, item]}).encode()
        before = len(_calls(fake))
        answer = exchange(gw.port, post(b"/v1/responses", body, auth, CLOSE), wait_s=10)
        assert answer.status == 400 and str(item["id"]).encode() in answer.body, answer.raw[:400]
        assert _calls(fake)[before:] == []


def test_without_state_storage_the_refusal_says_what_to_do(
    stateless: tuple[GatewayProcess, list[Tenant]], fake: FakeProviderThread,
) -> None:
    """No state_storage: turn 2 of the tool loop is a 400 whose message names the ways out
    (previous_response_id with state storage, store: false with reasoning.encrypted_content),
    nothing forwarded (on integ: a 400 saying only 'send the item itself')."""
    gw, (mine, _) = stateless
    client = _client(gw, mine)
    history, _ = _tool_turn(client)
    before = len(_calls(fake))
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input=history, tools=TOOL)  # type: ignore[arg-type]
    message = info.value.body["message"] if isinstance(info.value.body, dict) else str(info.value)
    assert "state_storage" in message and "reasoning.encrypted_content" in message and "store" in message
    assert _calls(fake)[before:] == []


# files, vector stores, stored prompts -------------------------------------------------------------
@pytest.fixture(scope="module", params=[pytest.param({}, id="compiled"), pytest.param(PURE, id="pure")])
def builds(request: pytest.FixtureRequest, fake: FakeProviderThread,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, bytes]]:
    gw, tenants = _start(fake, tmp_path_factory.mktemp("files"), state=False, env=request.param)
    yield gw, b"Authorization: Bearer " + tenants[0].token.encode() + b"\r\n"
    gw.stop()


def _chat(content: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]}).encode()


def _messages(content: Any) -> bytes:
    return json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                       "messages": [{"role": "user", "content": content}]}).encode()


def _responses(extra: dict[str, Any]) -> bytes:
    return json.dumps({"model": MODEL, "input": "hi", **extra}).encode()


_FILE_PART = {"type": "input_file", "file_id": "file-0123456789abcdef"}
_ANT_TOOL_USE = [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
    {"type": "tool_use", "id": "toolu_1", "name": "open", "input": {"file_id": "my-own-file"}}]}]
#: (name, path, body, refused)
FILE_CASES: list[tuple[str, bytes, bytes, bool]] = [
    ("chat file part", b"/v1/chat/completions",
     _chat([{"type": "text", "text": "sum up"}, {"type": "file", "file": {"file_id": "file-0123456789abcdef"}}]), True),
    ("chat file part, escaped name", b"/v1/chat/completions",
     _chat([{"type": "file", "file": {"file_id": "file-0123"}}]).replace(b"file_id", b"file\\u005fid"), True),
    ("messages document from the Files API", b"/v1/messages",
     _messages([{"type": "document", "source": {"type": "file", "file_id": "file_0123456789abcdef"}}]), True),
    ("messages image from the Files API, escaped", b"/v1/messages",
     _messages([{"type": "image", "source": {"type": "file", "file_id": "file_01"}}]).replace(b"file_id", b"\\u0066ile_id"),
     True),
    ("messages container_upload", b"/v1/messages", _messages([{"type": "container_upload", "file_id": "file_01"}]), True),
    ("responses input_file", b"/v1/responses", _responses({"input": [{"role": "user", "content": [_FILE_PART]}]}), True),
    ("responses input_image by file_id", b"/v1/responses", _responses({"input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": "file-0123456789abcdef"}]}]}), True),
    ("responses file_search", b"/v1/responses", _responses({"tools": [
        {"type": "file_search", "vector_store_ids": ["vs_0123456789abcdef"]}]}), True),
    ("responses code_interpreter file_ids", b"/v1/responses", _responses({"tools": [
        {"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["file-01"]}}]}), True),
    ("responses stored prompt", b"/v1/responses", _responses({"prompt": {"id": "pmpt_0123456789abcdef"}}), True),
    # controls: nothing of the account's is named
    ("chat text", b"/v1/chat/completions", _chat("hi"), False),
    ("chat tool schema with a file_id property", b"/v1/chat/completions", json.dumps({
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {
            "name": "open", "parameters": {"type": "object", "properties": {"file_id": {"type": "string"}}}}}],
    }).encode(), False),
    ("messages tool_use input holding file_id", b"/v1/messages", json.dumps({
        "model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [*_ANT_TOOL_USE, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]}).encode(), False),
    ("messages base64 document", b"/v1/messages", _messages([{"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}, {"type": "text", "text": "hi"}]), False),
    ("responses metadata file_id", b"/v1/responses", _responses({"metadata": {"file_id": "mine"}}), False),
]


@pytest.mark.parametrize(("name", "path", "body", "refused"), [pytest.param(*c, id=c[0]) for c in FILE_CASES])
def test_the_accounts_files_are_not_named(
    builds: tuple[GatewayProcess, bytes], fake: FakeProviderThread, name: str, path: bytes, body: bytes, refused: bool,
) -> None:
    """Managed, no hard limit, both builds.  A file, vector store or stored prompt by id: 400
    naming it, nothing forwarded (on integ: 200, forwarded under the operator's key).  The
    controls: 200, forwarded once (the same on integ)."""
    gw, auth = builds
    extra = b"anthropic-version: 2023-06-01\r\n" if path == b"/v1/messages" else b""
    before = len(_calls(fake))
    answer = exchange(gw.port, post(path, body, auth, extra + CLOSE), wait_s=10)
    calls = _calls(fake)[before:]
    if refused:
        assert answer.status == 400 and calls == [], answer.raw[:400]
        assert b"operator's provider account" in answer.body or b"prompt" in answer.body, answer.raw[:400]
    else:
        assert answer.status == 200 and len(calls) == 1, answer.raw[:400]


@pytest.mark.parametrize(("method", "path"), [(b"POST", b"/v1/files"), (b"GET", b"/v1/files"),
                                              (b"POST", b"/v1/vector_stores"), (b"GET", b"/v1/vector_stores/vs_1")])
def test_no_project_can_upload(builds: tuple[GatewayProcess, bytes], fake: FakeProviderThread,
                               method: bytes, path: bytes) -> None:
    """Managed: the Files and vector store endpoints are not served (404/405, nothing
    forwarded; the same on integ, a pin): every file id is the operator's account's."""
    gw, auth = builds
    body = b"{}" if method == b"POST" else b""
    data = (method + b" " + path + b" HTTP/1.1\r\nHost: gw\r\n" + auth + CLOSE
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    before = len(_calls(fake))
    answer = exchange(gw.port, data, wait_s=5)
    assert answer.status in (404, 405) and _calls(fake)[before:] == [], answer.raw[:300]


# the checks themselves -----------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    b'{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"f"}}]}]}',
    b'{"model":"m","system":[{"type":"text","text":"x"},{"type":"document","source":{"type":"file","file_id":"f"}}]}',
    b'{"model":"m","messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":'
    b'[{"type":"document","source":{"type":"file","file_id":"f"}}]}]}]}',
    b'{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"fil\\u0065_id":"f"}}]}]}',
])
def test_refuse_stored_files(body: bytes) -> None:
    """Each names a Files API object: ClientError (on integ the function does not exist: an
    ImportError, imported here so that the socket tests above run on integ too)."""
    from plano_fast.responses_managed import refuse_stored_files

    with pytest.raises(ClientError):
        refuse_stored_files(body)


@pytest.mark.parametrize("body", [
    b'{"model":"m","input":[{"role":"user","content":[{"type":"input_file","file_id":"f"}]}]}',
    b'{"model":"m","input":[{"type":"function_call_output","call_id":"c","output":[{"type":"input_image","file_id":"f"}]}]}',
    b'{"model":"m","input":"hi","tools":[{"type":"file_search","vector_store_ids":["vs_1"]}]}',
    b'{"model":"m","input":"hi","tools":[{"type":"image_generation","input_image_mask":{"file_id":"f"}}]}',
    b'{"model":"m","input":"hi","prompt":{"id":"pmpt_1","version":"2"}}',
    b'{"model":"m","input":[{"type":"image_generation_call","id":"ig_1"}]}',
])
def test_refused_without_state_storage(body: bytes) -> None:
    """Each names the account's objects or a stored item: ClientError (on integ: passes)."""
    with pytest.raises(ClientError):
        refuse_unowned_state(body, expands_previous=False)


def test_references_are_left_to_the_store_with_state_storage() -> None:
    """With state storage an item sent back by id is checked against the store later
    (returns None here); a file id is refused either way (ClientError)."""
    refuse_unowned_state(b'{"model":"m","input":[{"type":"reasoning","id":"rs_1","summary":[]}]}', True)
    with pytest.raises(ClientError):
        refuse_unowned_state(b'{"model":"m","input":[{"role":"user","content":[{"type":"input_file",'
                             b'"file_id":"f"}]}]}', True)


@pytest.mark.parametrize(("body", "names"), [
    (b'{"file_id":"x"}', True), (b'{"file\\u005fid":"x"}', True), (b'{"file\\u005Fid":"x"}', True),
    (b'{"\\u0066ile_id":"x"}', True), (b'{"text":"caf\\u00e9"}', False), (b'{"file":"x","id":1}', False),
])
def test_names_a_file(body: bytes, names: bool) -> None:
    """The pre-check the compiled start shares (by memmem): the word, an escaped letter or
    underscore sends the body to the parse; escaped non-ASCII text does not."""
    from plano_fast.responses_managed import names_a_file

    assert names_a_file(body) is names


# the stores: output item ids by owner --------------------------------------------------------------
def _entry(rid: str, owner: str) -> StoredResponse:
    return StoredResponse(rid, owner, "m", "p", [{"role": "user", "content": "hi"}], 0.0, None)


def test_memory_store_owned_items() -> None:
    """Only the owner's own ids are found; an evicted answer's ids are gone (on integ:
    AttributeError, no owned_items)."""
    store = MemoryResponseStore(max_entries=1)
    store.put(_entry("resp_a", "alice"), ("rs_a", "fc_a"))
    assert asyncio.run(store.owned_items("alice", ["rs_a", "fc_a", "rs_x"])) == {"rs_a", "fc_a"}
    assert asyncio.run(store.owned_items("bob", ["rs_a"])) == set()
    store.put(_entry("resp_b", "bob"), ("rs_b",))  # evicts resp_a (max_entries=1)
    assert asyncio.run(store.owned_items("alice", ["rs_a"])) == set()
    assert asyncio.run(store.owned_items("bob", ["rs_b"])) == {"rs_b"}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_shared_store_owned_items(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Written with the turn, read by owner, across a reopened store, 700 at once; expired
    ones are gone (on integ: AttributeError, no owned_items)."""
    dsn = request.getfixturevalue("pg_dsn") if backend == "postgres" else ""

    def make(ttl_s: float, grace_s: float = 0.25) -> SharedResponseStore:
        if backend == "sqlite":
            return SqliteResponseStore(str(tmp_path / "state.db"), ttl_s=ttl_s, max_conversation_bytes=1 << 20,
                                       miss_grace_s=grace_s)
        return PostgresResponseStore(dsn, ttl_s=ttl_s,
                                     max_conversation_bytes=1 << 20, miss_grace_s=grace_s)

    async def go() -> None:
        store = make(60)
        store.put(_entry("resp_a", "alice"), 0, ("rs_a", "fc_a"))
        assert await store.owned_items("alice", ["rs_a"]) == {"rs_a"}  # (in flight: pending)
        await store.flush()
        await store.close()
        again = make(60, 0.0)
        assert await again.owned_items("alice", ["rs_a", "fc_a", "rs_b"]) == {"rs_a", "fc_a"}
        assert await again.owned_items("bob", ["rs_a"]) == set()
        many = tuple(f"fc_{i}" for i in range(700))  # (more than one statement's variables)
        again.put(_entry("resp_m", "alice"), 0, many)
        await again.flush()
        assert await again.owned_items("alice", [*many, "fc_x"]) == set(many)
        await again.close()
        expired = make(-1, 0.0)
        expired.put(_entry("resp_c", "carol"), 0, ("rs_c",))
        await expired.flush()
        assert await expired.owned_items("carol", ["rs_c"]) == set()
        await expired.close()

    asyncio.run(go())
