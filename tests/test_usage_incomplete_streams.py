"""A complete 2xx stream whose final usage never came, in each provider format, over real
sockets (a scripted upstream, tests/raw_upstream.py): the row must not claim an exact usage
the gateway did not see.

* Anthropic: ``message_start`` (input counts, ``output_tokens`` 1: a placeholder), the
  text, a ``message_delta`` without ``usage``, ``message_stop``;
* Gemini: chunks with cumulative ``usageMetadata``, the last one (``finishReason``) without;
* OpenAI chat with ``include_usage``: chunks, ``[DONE]``, no usage chunk.

All three are ``usage_missing`` (unpriced without a hard limit; under one, charged at the
bound: tests/test_managed_missing_usage.py), the input counts that were final kept on the
row (README "Usage rows", docs/security.md "Answers without usage under a hard limit").
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.store.records import UsageRow
from tests.gateway_proc import GatewayProcess, write_config
from tests.raw_upstream import RawUpstream
from tests.test_billing_e2e import read_rows
from tests.test_scan import ANTHROPIC, CHAT, GEMINI, IMPLEMENTATIONS

ANTHROPIC_NO_FINAL_USAGE = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"claude-sonnet-4-6","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hello there, a longer answer than one token"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
GEMINI_NO_FINAL_USAGE = (
    b'data: {"candidates":[{"content":{"parts":[{"text":"Hello"}],"role":"model"},"index":0}],'
    b'"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":1,"totalTokenCount":13},'
    b'"modelVersion":"gemini-2.5-flash"}\r\n\r\n'
    b'data: {"candidates":[{"content":{"parts":[{"text":" there, a longer answer"}],"role":"model"},'
    b'"finishReason":"STOP","index":0}],"modelVersion":"gemini-2.5-flash"}\r\n\r\n'
)
GEMINI_FINAL_USAGE = GEMINI_NO_FINAL_USAGE[: -len(b'"modelVersion":"gemini-2.5-flash"}\r\n\r\n')] + (
    b'"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":7,"totalTokenCount":19},'
    b'"modelVersion":"gemini-2.5-flash"}\r\n\r\n'
)
OPENAI_NO_USAGE_CHUNK = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"stop"}],"usage":null}\n\n'
    b"data: [DONE]\n\n"
)


LIE_MARK = b"lie:"


def ANTHROPIC_ANSWER(usage: object) -> bytes:  # noqa: N802 - a template, like the constants
    return json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
                       "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                       "stop_sequence": None, "usage": usage}).encode()


def GEMINI_ANSWER(usage: object) -> bytes:  # noqa: N802
    return json.dumps({"candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"},
                                       "finishReason": "STOP", "index": 0}],
                       "modelVersion": "gemini-2.5-flash", "usageMetadata": usage}).encode()


TOLD_MARK = b"told:"


def ANTHROPIC_STREAM(start: object, final: object) -> bytes:  # noqa: N802
    """An Anthropic stream: ``message_start`` with usage ``start``, ``message_delta`` with ``final``."""
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
               "content": [], "stop_reason": None, "stop_sequence": None, "usage": start}
    events = [("message_start", {"type": "message_start", "message": message}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "Hello"}}),
              ("content_block_stop", {"type": "content_block_stop", "index": 0}),
              ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                    "stop_sequence": None}, "usage": final}),
              ("message_stop", {"type": "message_stop"})]  # fmt: skip
    return b"".join(b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(doc).encode()) for name, doc in events)


def OPENAI_STREAM(usage: object) -> bytes:  # noqa: N802
    """An OpenAI chat stream: a text chunk, the finish chunk, a usage chunk with ``usage``, ``[DONE]``."""
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"},
                                    "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
              {**head, "choices": [], "usage": usage}]  # fmt: skip
    return b"".join(b"data: %s\n\n" % json.dumps(c).encode() for c in chunks) + b"data: [DONE]\n\n"


def _gemini_chunk(text: str, output_tokens: int, final: bool = False) -> bytes:
    """One Gemini SSE chunk carrying the running (cumulative) usageMetadata, as Gemini sends."""
    candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if final:
        candidate["finishReason"] = "STOP"
    usage = {"promptTokenCount": 12, "candidatesTokenCount": output_tokens, "totalTokenCount": 12 + output_tokens}
    return b"data: %s\r\n\r\n" % json.dumps({"candidates": [candidate], "usageMetadata": usage}).encode()


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class ScriptedStreams(RawUpstream):
    """Answers every request with the stream its path (and a marker in the body) names."""

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        path = head.split(b" ", 2)[1]
        if TOLD_MARK in body:  # a stream with the usage the test names ([start, final] for Anthropic)
            usage = json.loads(body.split(TOLD_MARK, 1)[1].split(b"|", 1)[0].replace(b"\\", b""))
            stream = ANTHROPIC_STREAM(*usage) if b"/messages" in path else OPENAI_STREAM(usage)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(stream), stream))  # fmt: skip
            return True
        if LIE_MARK in body:  # a non-streamed answer with the usage object the test names
            lie = json.loads(body.split(LIE_MARK, 1)[1].split(b"|", 1)[0].replace(b"\\", b""))
            answer = (ANTHROPIC_ANSWER if b"/messages" in path else GEMINI_ANSWER)(lie)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(answer), answer))  # fmt: skip
            return True
        if b"LEAVE-" in body:  # a Gemini stream whose client leaves after its first chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            conn.sendall(_chunked(_gemini_chunk("Hello", 1)))
            time.sleep(0.5)  # the client leaves meanwhile
            for i in range(2, 8):
                conn.sendall(_chunked(_gemini_chunk(" more", i)))
                time.sleep(0.02)
            if b"LEAVE-CUT" in body:
                return False  # dropped before the final chunk
            conn.sendall(_chunked(_gemini_chunk(".", 500, final=True)) + b"0\r\n\r\n")
            return True
        if b"/messages" in path:
            stream = ANTHROPIC_NO_FINAL_USAGE
        elif b"streamGenerateContent" in path:
            stream = GEMINI_FINAL_USAGE if b"final-usage" in body else GEMINI_NO_FINAL_USAGE
        else:
            stream = OPENAI_NO_USAGE_CHUNK
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(stream), stream))  # fmt: skip
        return True


PROVIDERS = """\
  - model: openai/gpt-raw
    base_url: http://127.0.0.1:{port}
    access_key: sk-server-openai-key
  - model: anthropic/claude-raw
    base_url: http://127.0.0.1:{port}
    access_key: sk-ant-server-key
  - model: gemini/gemini-raw
    base_url: http://127.0.0.1:{port}/v1beta
    access_key: gemini-server-key
"""


@pytest.fixture(scope="module")
def gw(fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    upstream = ScriptedStreams()
    path = tmp_path_factory.mktemp("incomplete") / "plano_config.yaml"
    write_config(path, fake.port, None, PROVIDERS.format(port=upstream.port))
    try:
        with GatewayProcess(path) as proc:
            yield proc, path
    finally:
        upstream.close()


def post(gateway: GatewayProcess, path: str, body: dict[str, object], headers: dict[str, str]) -> tuple[bytes, str]:
    req = urllib.request.Request(gateway.url + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", **headers})  # fmt: skip
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.status == 200
        return resp.read(), resp.headers["x-plano-request-id"]


def row_of(path: Path, request_id: str) -> UsageRow:
    deadline = time.monotonic() + 15
    while True:
        found = [r for r in read_rows(None, str(path.with_suffix(".db"))) if r.request_id == request_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.1)


def test_anthropic_stream_without_its_message_delta_usage(gw: tuple[GatewayProcess, Path]) -> None:
    gateway, path = gw
    body, rid = post(gateway, "/v1/messages", {"model": "claude-raw", "max_tokens": 50, "stream": True,
                                               "messages": [{"role": "user", "content": "hi"}]},
                     {"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01"})
    assert body.endswith(b'data: {"type":"message_stop"}\n\n')  # complete for the client
    row = row_of(path, rid)
    assert (row.status, row.http_status, row.priced, row.cost_nano_usd) == ("usage_missing", 200, False, None)
    assert row.input_tokens == 25  # message_start's input count is final
    assert row.output_tokens == 0  # its output_tokens (1) is a placeholder: no output reported


def test_gemini_stream_whose_last_chunk_has_no_usage(gw: tuple[GatewayProcess, Path]) -> None:
    gateway, path = gw
    _, rid = post(gateway, "/v1beta/models/gemini-raw:streamGenerateContent?alt=sse",
                  {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, {"x-goog-api-key": "client-key"})
    row = row_of(path, rid)
    # (it was "ok" with the first chunk's 1 output token, priced as if exact)
    assert (row.status, row.http_status, row.priced, row.cost_nano_usd) == ("usage_missing", 200, False, None)
    assert row.input_tokens == 12  # promptTokenCount is final in every chunk
    # with its usage on the last chunk, the same stream is billed as usual
    _, rid = post(gateway, "/v1beta/models/gemini-raw:streamGenerateContent?alt=sse",
                  {"contents": [{"role": "user", "parts": [{"text": "final-usage"}]}]}, {"x-goog-api-key": "client-key"})
    row = row_of(path, rid)
    assert (row.status, row.input_tokens, row.output_tokens) == ("ok", 12, 7)


def test_openai_stream_ending_without_its_usage_chunk(gw: tuple[GatewayProcess, Path]) -> None:
    gateway, path = gw
    _, rid = post(gateway, "/v1/chat/completions", {"model": "gpt-raw", "stream": True,
                                                    "stream_options": {"include_usage": True},
                                                    "messages": [{"role": "user", "content": "hi"}]},
                  {"authorization": "Bearer sk-client"})
    row = row_of(path, rid)
    assert (row.status, row.http_status, row.priced, row.input_tokens, row.output_tokens) == (
        "usage_missing", 200, False, 0, 0)


# -- the scanner rule, both implementations, whole and one byte at a time -------------------
@pytest.mark.parametrize("scan", IMPLEMENTATIONS)
@pytest.mark.parametrize(("api", "stream", "has_usage", "counts"), [
    (ANTHROPIC, ANTHROPIC_NO_FINAL_USAGE, False, (25, 0)),  # (message_start's output 1: a placeholder)
    (GEMINI, GEMINI_NO_FINAL_USAGE, False, (12, 1)),
    (GEMINI, GEMINI_FINAL_USAGE, True, (12, 7)),
    # a Gemini chunk without usage before the last one's does not matter
    (GEMINI, GEMINI_NO_FINAL_USAGE + GEMINI_FINAL_USAGE, True, (12, 7)),
    (CHAT, OPENAI_NO_USAGE_CHUNK, False, (0, 0)),
], ids=["anthropic", "gemini-no-final", "gemini-final", "gemini-gap-then-final", "openai"])  # fmt: skip
def test_the_scanner_reports_no_usage_when_the_final_one_is_missing(
    scan: Any, api: int, stream: bytes, has_usage: bool, counts: tuple[int, int]
) -> None:
    for pieces in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        scanner = scan.UsageScanner(api, True, False)
        for piece in pieces:
            scanner.feed(piece)
        scanner.finish()
        usage = scanner.result()
        assert (usage.has_usage, usage.input_tokens, usage.output_tokens) == (has_usage, *counts)


# -- usage that lies, in a non-streamed answer converted for an OpenAI client ----------------
LIES = {
    "anthropic": [{"input_tokens": -5, "output_tokens": 3}, {"input_tokens": 5.0, "output_tokens": 3},
                  {"input_tokens": 10**30, "output_tokens": 3},
                  {"input_tokens": 5, "output_tokens": 3, "cache_read_input_tokens": -1}],
    "gemini": [{"promptTokenCount": -5, "candidatesTokenCount": 3}, {"promptTokenCount": 5.5, "candidatesTokenCount": 3},
               {"promptTokenCount": 10**30, "candidatesTokenCount": 3},
               {"promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": -2}],
}  # fmt: skip


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_usage_that_lies_is_reported_to_the_client_as_it_is_billed(
    gw: tuple[GatewayProcess, Path], provider: str
) -> None:
    """A usage object the scanner refuses (a negative, fractional or huge count) bills no
    usage (``usage_missing``); the converted answer told the client otherwise (the counts
    that parsed, 10**30 passed on).  Now it reports none either: zeros, as for an answer
    without usage."""
    gateway, path = gw
    model = "claude-raw" if provider == "anthropic" else "gemini-raw"
    good = {"anthropic": {"input_tokens": 5, "output_tokens": 3}, "gemini": {"promptTokenCount": 5,
                                                                            "candidatesTokenCount": 3}}[provider]
    answers = []  # all asked first, then their rows read: one flush interval, not one each
    for usage in [*LIES[provider], good]:
        content = (LIE_MARK + json.dumps(usage).encode() + b"|").decode()
        answer, rid = post(gateway, "/v1/chat/completions",
                           {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": content}]},
                           {"authorization": "Bearer sk-client"})
        answers.append((usage, json.loads(answer)["usage"], rid))
    for usage, told, rid in answers:
        row = row_of(path, rid)
        billed = (row.input_tokens, row.output_tokens) if row.status == "ok" else (0, 0)
        assert (told["prompt_tokens"], told["completion_tokens"]) == billed, (usage, told, row)
        assert row.status == ("ok" if usage is good else "usage_missing"), usage


def test_a_converted_gemini_stream_tells_the_client_the_usage_it_billed(gw: tuple[GatewayProcess, Path]) -> None:
    """An OpenAI client with ``include_usage`` on a Gemini stream: without usage on the
    last chunk, no usage chunk (it sent the first chunk's 1 output token as the usage);
    with it, the usage chunk is the row's."""
    gateway, path = gw
    for marker, billed in (("hi", None), ("final-usage", (12, 7))):
        answer, rid = post(gateway, "/v1/chat/completions", {
            "model": "gemini-raw", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": marker}]}, {"authorization": "Bearer sk-client"})
        chunks = [json.loads(line[6:]) for line in answer.split(b"\n") if line.startswith(b"data: {")]
        told = [(c["usage"]["prompt_tokens"], c["usage"]["completion_tokens"]) for c in chunks if c.get("usage")]
        row = row_of(path, rid)
        assert answer.endswith(b"data: [DONE]\n\n")
        if billed is None:
            assert (told, row.status) == ([], "usage_missing")
        else:
            assert (told, row.status, (row.input_tokens, row.output_tokens)) == ([billed], "ok", billed)


# -- usage that lies, in a stream converted for a client of another format -------------------
START = {"input_tokens": 25, "output_tokens": 1}  # message_start's: input final, output a placeholder
STREAM_LIES = {
    # [message_start usage, message_delta usage]: the final one refused, or none counting at all
    "anthropic": [[START, {"output_tokens": -3}], [START, {"output_tokens": 3.0}], [START, {"output_tokens": 10**30}],
                  [START, {"output_tokens": "3"}], [START, {"output_tokens": 3, "cache_read_input_tokens": -1}],
                  [START, {"output_tokens": 3, "output_tokens_details": 5}]],
    "openai": [{"prompt_tokens": -5, "completion_tokens": 3}, {"prompt_tokens": 5.0, "completion_tokens": 3},
               {"prompt_tokens": 10**30, "completion_tokens": 3}, {"prompt_tokens": "5", "completion_tokens": 3},
               {"prompt_tokens": 5, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": -1}}],
}  # fmt: skip
STREAM_GOOD = {
    # message_start's usage refused (10**30), message_delta's counted: billed (0, 7), as the scanner merges
    "anthropic": [[START, {"output_tokens": 7}], [{"input_tokens": 10**30, "output_tokens": 1}, {"output_tokens": 7}]],
    "openai": [{"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}],
}  # fmt: skip


def _told(client: str, answer: bytes) -> tuple[int, int] | None:
    """The final usage the converted stream told the client (None: it told none)."""
    docs = [json.loads(line[6:]) for line in answer.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data: {")]
    if client == "openai":
        told = [(d["usage"]["prompt_tokens"], d["usage"]["completion_tokens"]) for d in docs if d.get("usage")]
    elif client == "anthropic":  # message_delta's usage is required by the format: zeros when none
        told = [(d["usage"]["input_tokens"] + d["usage"]["cache_read_input_tokens"]
                 + d["usage"]["cache_creation_input_tokens"], d["usage"]["output_tokens"])
                for d in docs if d.get("type") == "message_delta"]
        assert len(told) == 1, answer
        return None if told == [(0, 0)] else told[0]
    else:
        told = [(d["usageMetadata"]["promptTokenCount"],
                 d["usageMetadata"]["candidatesTokenCount"] + d["usageMetadata"].get("thoughtsTokenCount", 0))
                for d in docs if "usageMetadata" in d]  # fmt: skip
    assert len(told) <= 1, answer
    return told[0] if told else None


# (a Responses client on an OpenAI provider is forwarded as is: no conversion)
CONVERTED = [("openai", "anthropic"), ("gemini", "anthropic"), ("responses", "anthropic"),
             ("anthropic", "openai"), ("gemini", "openai")]  # fmt: skip


@pytest.mark.parametrize(("client", "provider"), CONVERTED, ids=[f"{c}-on-{p}" for c, p in CONVERTED])
def test_a_converted_stream_tells_the_client_the_usage_it_billed(
    gw: tuple[GatewayProcess, Path], client: str, provider: str
) -> None:
    """A provider stream whose final usage lies (a negative, fractional, huge or string
    count, a details member that is not an object) is billed ``usage_missing``; the stream
    converted for a client of another format told it the counts that parsed (10**30 passed
    on).  Now it tells what was billed: none (zeros in Anthropic's required
    ``message_delta.usage``), and the row's counts when the usage counts."""
    gateway, path = gw
    model = "claude-raw" if provider == "anthropic" else "gpt-raw"
    sent = []
    for usage in [*STREAM_LIES[provider], *STREAM_GOOD[provider]]:
        content = (TOLD_MARK + json.dumps(usage).encode() + b"|").decode()
        if client == "gemini":
            answer, rid = post(gateway, f"/v1beta/models/{model}:streamGenerateContent?alt=sse",
                               {"contents": [{"role": "user", "parts": [{"text": content}]}]},
                               {"x-goog-api-key": "client-key"})
        elif client == "anthropic":
            answer, rid = post(gateway, "/v1/messages", {"model": model, "max_tokens": 50, "stream": True,
                                                         "messages": [{"role": "user", "content": content}]},
                               {"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01"})
        elif client == "responses":
            answer, rid = post(gateway, "/v1/responses", {"model": model, "stream": True, "input": content},
                               {"authorization": "Bearer sk-client"})
        else:
            answer, rid = post(gateway, "/v1/chat/completions", {
                "model": model, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": content}]}, {"authorization": "Bearer sk-client"})
        sent.append((usage, answer, rid))
    row_of(path, sent[-1][2])  # rows are written in order: the others are in by then
    rows = {r.request_id: r for r in read_rows(None, str(path.with_suffix(".db")))}
    for usage, answer, rid in sent:
        row = rows.get(rid) or row_of(path, rid)
        good = usage in STREAM_GOOD[provider]
        assert row.status == ("ok" if good else "usage_missing"), (usage, row)
        billed = (row.input_tokens, row.output_tokens) if good else None
        told = _told_responses(answer) if client == "responses" else _told(client, answer)
        assert told == billed, (usage, told, row)


def _told_responses(answer: bytes) -> tuple[int, int] | None:
    """A Responses stream's ``response.completed`` usage (always present: zeros when none)."""
    docs = [json.loads(line[6:]) for line in answer.split(b"\n") if line.startswith(b"data: {")]
    done = [d["response"]["usage"] for d in docs if d.get("type") == "response.completed"]
    assert len(done) == 1, answer
    told = (done[0]["input_tokens"], done[0]["output_tokens"])
    return None if told == (0, 0) else told


@pytest.mark.parametrize("how", ["LEAVE-END", "LEAVE-CUT"])
def test_a_gemini_stream_cut_after_its_client_left_is_an_estimate(gw: tuple[GatewayProcess, Path], how: str) -> None:
    """Gemini repeats its running usage on every chunk: a stream read to its end after the
    client left is billed at the provider's final counts (client_disconnected), but one cut
    before its end has counts short of the bill -- an estimate, never passed off as the
    provider's usage (it was client_disconnected with 7 of 500 output tokens, priced as
    complete; under a hard limit an estimate is charged the reservation).  Priced at the
    running counts seen, as the same cut with the client there is."""
    gateway, path = gw
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": how}]}]}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /v1beta/models/gemini-raw:streamGenerateContent?alt=sse HTTP/1.1\r\nhost: x\r\n"
                     b"x-goog-api-key: client-key\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        head = sock.recv(65536)
    [request_id] = [line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n")
                    if line.lower().startswith(b"x-plano-request-id:")]
    row = row_of(path, request_id)
    if how == "LEAVE-END":
        assert (row.status, row.input_tokens, row.output_tokens) == ("client_disconnected", 12, 500)
    else:
        assert row.status == "client_disconnected_estimated", row
        # the counts seen, as a stream the provider cuts with its client there is priced
        # (upstream_failed, tests/test_upstream_wire_faults.py); main took the larger of
        # them and a text estimate of the same chunks (9 here)
        assert (row.input_tokens, row.output_tokens) == (12, 7), row

