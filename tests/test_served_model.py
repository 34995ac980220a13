"""Converted answers report the model the provider says it served, as Plano does, not the
alias the client asked for; the alias is in ``x-plano-requested-model``.  Over real sockets
with the official SDKs, JSON and streamed, for every client format in front of a provider
of another format (the fake provider answers with the model name it was sent)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.store import UsageRow
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_billing_e2e import read_rows, wait_rows
from tests.test_conversion_e2e import _gemini_post
from tests.test_responses_e2e import EXTRA_PROVIDERS

ALIASES = (
    "model_aliases:\n"
    "  sonnet:\n    target: anthropic/claude-sonnet-4-6\n"
    "  flash:\n    target: gemini/gemini-2.5-flash\n"
    "  ds:\n    target: deepseek/deepseek-chat\n"
)


@pytest.fixture(scope="module")
def gw(fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    path: Path = tmp_path_factory.mktemp("served") / "plano_config.yaml"
    write_config(path, fake.port, extra_providers=EXTRA_PROVIDERS.format(port=fake.port))
    path.write_text(path.read_text().replace("model_aliases:\n", ALIASES))
    with GatewayProcess(path) as proc:
        yield proc


@pytest.fixture
def oai(gw: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-c", max_retries=0) as c:
        yield c


# alias -> the model the provider is sent, and says it served
SERVED = {"sonnet": "claude-sonnet-4-6", "flash": "gemini-2.5-flash", "ds": "deepseek-chat"}


@pytest.mark.parametrize("alias", ["sonnet", "flash"])
def test_chat_clients(oai: openai.OpenAI, alias: str) -> None:
    raw = oai.chat.completions.with_raw_response.create(model=alias, messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().model == SERVED[alias]
    assert raw.headers["x-plano-requested-model"] == alias
    with oai.chat.completions.with_streaming_response.create(
        model=alias, messages=[{"role": "user", "content": "hi"}], stream=True,
    ) as resp:
        assert resp.headers["x-plano-requested-model"] == alias
        chunks = list(resp.parse())
    assert chunks and {c.model for c in chunks} == {SERVED[alias]}


@pytest.mark.parametrize("alias", ["sonnet", "flash", "ds"])
def test_responses_clients(oai: openai.OpenAI, alias: str) -> None:
    raw = oai.responses.with_raw_response.create(model=alias, input="hi")
    assert raw.parse().model == SERVED[alias]
    assert raw.headers["x-plano-requested-model"] == alias
    with oai.responses.stream(model=alias, input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.model == SERVED[alias]
    assert {e.response.model for e in events if hasattr(e, "response")} == {SERVED[alias]}


@pytest.mark.parametrize("alias", ["ds", "flash"])
def test_messages_clients(gw: GatewayProcess, alias: str) -> None:
    with anthropic.Anthropic(base_url=gw.url, api_key="sk-c", max_retries=0) as ac:
        raw = ac.messages.with_raw_response.create(model=alias, max_tokens=16,
                                                   messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().model == SERVED[alias]
        assert raw.headers["x-plano-requested-model"] == alias
        with ac.messages.stream(model=alias, max_tokens=16, messages=[{"role": "user", "content": "hi"}]) as stream:
            final = stream.get_final_message()
        assert final.model == SERVED[alias]


def test_gemini_clients(gw: GatewayProcess) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    status, raw = _gemini_post(gw.url + "/v1beta/models/sonnet:generateContent", body)
    assert status == 200, raw
    assert json.loads(raw)["modelVersion"] == "claude-sonnet-4-6"
    status, raw = _gemini_post(gw.url + "/v1beta/models/ds:streamGenerateContent?alt=sse", body)
    assert status == 200, raw
    events = [json.loads(line[6:]) for line in raw.split(b"\r\n") if line.startswith(b"data: ")]
    assert events and {e["modelVersion"] for e in events} == {"deepseek-chat"}


def rows_once_in(db: str, count: int, request_ids: set[str], timeout_s: float = 15) -> list[UsageRow]:
    """The store's rows once there are ``count`` and these requests' are among them (rows of
    the module's earlier requests may land meanwhile: a count alone can be reached before
    these).  A list, not keyed by request id: a doubled row stays visible."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = wait_rows(None, db, count)
        if request_ids <= {r.request_id for r in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_usage_rows_name_the_served_model(gw: GatewayProcess, oai: openai.OpenAI) -> None:
    db = str(gw.config_path.with_suffix(".db"))
    before = {r.request_id for r in read_rows(None, db)}
    raw = oai.responses.with_raw_response.create(model="sonnet", input="row")
    rid = raw.headers["x-plano-request-id"]
    assert rid not in before
    rows = [r for r in rows_once_in(db, len(before) + 1, {rid}) if r.request_id == rid]
    assert [(r.model, r.provider) for r in rows] == [("claude-sonnet-4-6", "anthropic")]
    # ... and the name the client asked for beside it (issue 28: "the alias stays visible in
    # a response header and the usage row")
    assert [r.requested_model for r in rows] == ["sonnet"]


def test_usage_rows_keep_the_requested_name_in_every_client_format(gw: GatewayProcess, oai: openai.OpenAI) -> None:
    """Chat (native and converted), Messages and Gemini clients: the row's requested_model is
    the name in the request (alias or model), its model the one served."""
    db = str(gw.config_path.with_suffix(".db"))
    before = len(read_rows(None, db))
    ids = {
        oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).headers["x-plano-request-id"]: (
            "gpt-4o-mini", "gpt-4o-mini"),
        oai.chat.completions.with_raw_response.create(
            model="flash", messages=[{"role": "user", "content": "hi"}]).headers["x-plano-request-id"]: (
            "flash", "gemini-2.5-flash"),
    }
    with anthropic.Anthropic(base_url=gw.url, api_key="sk-c", max_retries=0) as ac:
        raw = ac.messages.with_raw_response.create(model="ds", max_tokens=16,
                                                   messages=[{"role": "user", "content": "hi"}])
        ids[raw.headers["x-plano-request-id"]] = ("ds", "deepseek-chat")
    status, _ = _gemini_post(gw.url + "/v1beta/models/sonnet:generateContent",
                             {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert status == 200
    rows = rows_once_in(db, before + 4, set(ids))
    assert sorted((r.request_id, (r.requested_model, r.model)) for r in rows if r.request_id in ids) \
        == sorted(ids.items())  # fmt: skip
    gemini = [r for r in rows if r.request_id not in ids and r.model == "claude-sonnet-4-6"
              and r.requested_model == "sonnet" and r.provider == "anthropic"]
    assert gemini, "the Gemini-format request's row does not name the alias it asked for"
