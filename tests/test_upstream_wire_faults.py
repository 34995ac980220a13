"""What a provider's broken wire does to the client's answer and to the usage row, over
real sockets, for each client API (OpenAI chat, Responses, Anthropic messages, Gemini),
streamed or not: a scripted upstream (tests/raw_upstream.py) resets or closes mid-stream
after some usage was sent, sends fewer bytes than its Content-Length, stalls mid-stream,
answers 200 with an error event, answers garbage, or answers HTTP/1.0 without a length.

The promise (README "Errors", docs/resilience.md "Wire faults"): a fault before the head
is a 5xx in the client's error shape; a fault after it cuts the client's answer (never a
false end); either way one usage row, with the usage the provider reported before the
fault.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.store.records import PRICE_STATUS_PENDING, UsageRow
from tests.gateway_proc import GatewayProcess, write_config
from tests.raw_upstream import RawUpstream
from tests.test_billing_e2e import read_rows

#: the marker in a request's body naming the fault the scripted upstream plays
FAULT = b"FAULT-"

ANTHROPIC_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"claude-sonnet-4-6","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hello there"}}\n\n'
)
ANTHROPIC_END = (
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":9}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
ANTHROPIC_ERROR = (
    b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
)
CHAT_START = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],'
    b'"usage":{"prompt_tokens":25,"completion_tokens":9,"total_tokens":34}}\n\n'
)
CHAT_END = b"data: [DONE]\n\n"
CHAT_ERROR = b'data: {"error":{"message":"The server had an error","type":"server_error","code":null}}\n\n'
RESP_START = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1",'
    b'"object":"response","created_at":1,"status":"in_progress","model":"gpt-4o-mini","output":[],"usage":null}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":1,'
    b'"item_id":"m1","output_index":0,"content_index":0,"delta":"Hello"}\n\n'
)
RESP_END = (
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":2,"response":{"id":"resp_1",'
    b'"object":"response","created_at":1,"status":"completed","model":"gpt-4o-mini","output":[{"type":"message",'
    b'"id":"m1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello",'
    b'"annotations":[]}]}],"usage":{"input_tokens":25,"input_tokens_details":{"cached_tokens":0},'
    b'"output_tokens":9,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":34}}}\n\n'
)
RESP_ERROR = b'event: error\ndata: {"type":"error","sequence_number":2,"code":"server_error","message":"boom","param":null}\n\n'
GEMINI_START = (
    b'data: {"candidates":[{"content":{"parts":[{"text":"Hello"}],"role":"model"},"index":0}],'
    b'"usageMetadata":{"promptTokenCount":25,"candidatesTokenCount":1,"totalTokenCount":26},'
    b'"modelVersion":"gemini-2.5-flash"}\r\n\r\n'
)
GEMINI_END = (
    b'data: {"candidates":[{"content":{"parts":[{"text":" there"}],"role":"model"},"finishReason":"STOP","index":0}],'
    b'"usageMetadata":{"promptTokenCount":25,"candidatesTokenCount":9,"totalTokenCount":34},'
    b'"modelVersion":"gemini-2.5-flash"}\r\n\r\n'
)
GEMINI_ERROR = b'data: {"error":{"code":500,"message":"Internal error","status":"INTERNAL"}}\r\n\r\n'

JSON_ANSWERS = {
    "chat": b'{"id":"c1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
            b'"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":25,"completion_tokens":9,"total_tokens":34}}',
    "responses": RESP_END.split(b"data: ", 1)[1].strip()[len(b'{"type":"response.completed","sequence_number":2,"response":'):-1],
    "messages": b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-6","content":'
                b'[{"type":"text","text":"Hello there"}],"stop_reason":"end_turn","stop_sequence":null,'
                b'"usage":{"input_tokens":25,"output_tokens":9}}',
    "gemini": b'{"candidates":[{"content":{"parts":[{"text":"Hello there"}],"role":"model"},"finishReason":"STOP",'
              b'"index":0}],"usageMetadata":{"promptTokenCount":25,"candidatesTokenCount":9,"totalTokenCount":34},'
              b'"modelVersion":"gemini-2.5-flash"}',
}
STREAMS = {  # (start, end, error event)
    "chat": (CHAT_START, CHAT_END, CHAT_ERROR),
    "responses": (RESP_START, RESP_END, RESP_ERROR),
    "messages": (ANTHROPIC_START, ANTHROPIC_END, ANTHROPIC_ERROR),
    "gemini": (GEMINI_START, GEMINI_END, GEMINI_ERROR),
}


def _api_of(path: bytes) -> str:
    if b"/messages" in path:
        return "messages"
    if b"/responses" in path:
        return "responses"
    if b"generatecontent" in path.lower():
        return "gemini"
    return "chat"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


class Wire(RawUpstream):
    """Plays the fault the request's body names (``FAULT-<name>``)."""

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        fault = body.split(FAULT, 1)[1].split(b'"', 1)[0].decode() if FAULT in body else "none"
        api = _api_of(head.split(b" ", 2)[1])
        streaming = b'"stream":true' in body.replace(b" ", b"") or b"streamGenerateContent" in head
        start, end, error = STREAMS[api]
        whole = JSON_ANSWERS[api]
        if fault == "none":
            if streaming:
                conn.sendall(SSE_HEAD + _chunk(start) + _chunk(end) + b"0\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(whole), whole))
            return True
        if fault == "reset":  # head, the events with the early usage, then RST
            conn.sendall(SSE_HEAD + _chunk(start))
            time.sleep(0.2)
            _reset(conn)
            return False
        if fault == "close":  # the same, then a clean FIN (no terminating chunk)
            conn.sendall(SSE_HEAD + _chunk(start))
            time.sleep(0.2)
            return False
        if fault == "short":  # Content-Length promises more than comes, then FIN
            if streaming:
                data = start + end
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(data) + 100, data))
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(whole), whole[: len(whole) // 2]))
            time.sleep(0.2)
            return False
        if fault == "stall":  # head and the early usage, then nothing (the idle timeout cuts)
            conn.sendall(SSE_HEAD + _chunk(start))
            time.sleep(5)
            return False
        if fault == "stall_head":  # nothing at all
            time.sleep(5)
            return False
        if fault == "interim_stall":  # an interim 103, then nothing: no final answer at all
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n")
            time.sleep(5)
            return False
        if fault == "error_event":  # 200, some events, an error event, the stream's end
            conn.sendall(SSE_HEAD + _chunk(start) + _chunk(error) + b"0\r\n\r\n")
            return True
        if fault == "garbage":
            conn.sendall(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n")
            time.sleep(0.2)
            return False
        if fault == "non_http_close":
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            time.sleep(0.2)
            return False
        if fault == "http10":  # HTTP/1.0, no length: the body ends with the connection
            data = (start + end) if streaming else whole
            ctype = b"text/event-stream" if streaming else b"application/json"
            conn.sendall(b"HTTP/1.0 200 OK\r\ncontent-type: %s\r\n\r\n%s" % (ctype, data))
            time.sleep(0.1)
            return False
        if fault == "http10_reset":  # the same, cut by a reset before its end
            data = start if streaming else whole[: len(whole) // 2]
            ctype = b"text/event-stream" if streaming else b"application/json"
            conn.sendall(b"HTTP/1.0 200 OK\r\ncontent-type: %s\r\n\r\n%s" % (ctype, data))
            time.sleep(0.2)
            _reset(conn)
            return False
        if fault == "extra":  # a whole answer, then a second, unasked-for one in the same write
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nEVIL!"
                         % (len(whole), whole))
            return True
        if fault == "extra_late":  # the same, the unasked-for answer a moment later
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(whole), whole))
            time.sleep(0.05)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nEVIL!")
            return True
        raise AssertionError(fault)


#: how long the faults that stay silent are waited for: (model suffix, first-byte timeout,
#: body idle timeout).  The timeout itself is what those tests pin, not its length, and
#: nothing can come early: ``stall`` and ``interim_stall`` send their head (or 103) and
#: then nothing, ``stall_head`` nothing at all, so only the timer that ends each is short
#: (a head that a loaded machine delays still meets its 1 s first-byte timeout).  The
#: other faults keep 1 s for both: they end the connection 0.05-0.2 s into it, and a
#: timeout firing first would test another path.
WIRE_TIMEOUTS = [("", "1s", "1s"), ("-idle", "1s", "250ms"), ("-silent", "250ms", "1s")]
#: which fault goes to which provider (by the model's suffix)
SUFFIX_OF_FAULT = {"stall": "-idle", "interim_stall": "-idle", "stall_head": "-silent"}

PROVIDER = """\
  - model: openai/gpt-wire{suffix}
    base_url: http://127.0.0.1:{port}
    access_key: sk-server-openai-key
    first_byte_timeout: {first_byte}
    body_idle_timeout: {idle}
  - model: anthropic/claude-wire{suffix}
    base_url: http://127.0.0.1:{port}
    access_key: sk-ant-server-key
    first_byte_timeout: {first_byte}
    body_idle_timeout: {idle}
  - model: gemini/gemini-wire{suffix}
    base_url: http://127.0.0.1:{port}/v1beta
    access_key: gemini-server-key
    first_byte_timeout: {first_byte}
    body_idle_timeout: {idle}
"""
CLOSED_PROVIDER = """\
  - model: openai/gpt-closed
    base_url: http://127.0.0.1:{closed_port}
    access_key: sk-server-openai-key
"""


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed: refused until reused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def gw(fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    upstream = Wire()
    path = tmp_path_factory.mktemp("wire") / "plano_config.yaml"
    providers = "".join(PROVIDER.format(suffix=suffix, port=upstream.port, first_byte=first_byte, idle=idle)
                        for suffix, first_byte, idle in WIRE_TIMEOUTS)  # fmt: skip
    write_config(path, fake.port, None, providers + CLOSED_PROVIDER.format(closed_port=closed_port()))
    try:
        with GatewayProcess(path) as proc:
            yield proc, path
    finally:
        upstream.close()


def request(api: str, stream: bool, fault: str) -> tuple[str, bytes, dict[str, str]]:
    marker = f"{FAULT.decode()}{fault}"
    suffix = SUFFIX_OF_FAULT.get(fault, "")
    if api == "chat":
        body: dict[str, object] = {"model": f"openai/gpt-wire{suffix}", "messages": [{"role": "user", "content": marker}]}
        if stream:
            body["stream"] = True
        return "/v1/chat/completions", json.dumps(body).encode(), {"authorization": "Bearer sk-c"}
    if api == "responses":
        body = {"model": f"openai/gpt-wire{suffix}", "input": marker, "store": False}
        if stream:
            body["stream"] = True
        return "/v1/responses", json.dumps(body).encode(), {"authorization": "Bearer sk-c"}
    if api == "messages":
        body = {"model": f"anthropic/claude-wire{suffix}", "max_tokens": 20, "messages": [{"role": "user", "content": marker}]}
        if stream:
            body["stream"] = True
        return "/v1/messages", json.dumps(body).encode(), {"x-api-key": "sk-c", "anthropic-version": "2023-06-01"}
    body = {"contents": [{"role": "user", "parts": [{"text": marker}]}]}
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/gemini-wire{suffix}:{method}", json.dumps(body).encode(), {"x-goog-api-key": "k"}


class Answer:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ")[1]) if lines[0].startswith(b"HTTP/") else 0
        self.headers = {k.strip().lower().decode(): v.strip().decode()
                        for k, _, v in (line.partition(b":") for line in lines[1:])}

    @property
    def complete(self) -> bool:
        if self.headers.get("transfer-encoding") == "chunked":
            return self.body.endswith(b"0\r\n\r\n")
        return len(self.body) == int(self.headers.get("content-length", -1))

    def json(self) -> dict[str, object]:
        data = self.body
        if self.headers.get("transfer-encoding") == "chunked":
            out, rest = b"", data
            while rest:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size, 16)
                out, rest = out + rest[:n], rest[n + 2:]
                if n == 0:
                    break
            data = out
        return json.loads(data)  # type: ignore[no-any-return]


def call(gateway: GatewayProcess, api: str, stream: bool, fault: str) -> Answer:
    path, body, headers = request(api, stream, fault)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=15)
    with sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n"
                     f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
        raw = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            raw += data
    return Answer(raw)


def new_row(path: Path, before: set[str]) -> UsageRow:
    """The one row written since ``before`` (the request ids seen then)."""
    db = str(path.with_suffix(".db"))
    deadline = time.monotonic() + 10
    while True:
        new = [r for r in read_rows(None, db) if r.request_id not in before]
        if new or time.monotonic() > deadline:
            assert len(new) == 1, new
            return new[0]
        time.sleep(0.05)


def exchange(gw: tuple[GatewayProcess, Path], api: str, stream: bool, fault: str) -> tuple[Answer, UsageRow]:
    gateway, path = gw
    before = {r.request_id for r in read_rows(None, str(path.with_suffix(".db")))}
    answer = call(gateway, api, stream, fault)
    return answer, new_row(path, before)  # (a second row would come in the same flush)


APIS = ["chat", "responses", "messages", "gemini"]
#: the usage each stream's start carries (what a cut after it bills): (input, output), or
#: None where the format sends its usage only with its end (OpenAI Responses).  The chat
#: stream's start has its usage chunk (the cut takes only ``[DONE]``); Anthropic's its
#: ``message_start`` (input only); Gemini's a running usageMetadata.
SEEN_AT_START = {"chat": (25, 9), "responses": None, "messages": (25, 0), "gemini": (25, 1)}
ERROR_SHAPES = {
    "chat": lambda doc: doc["error"]["code"] and doc["error"]["message"],
    "responses": lambda doc: doc["error"]["code"] and doc["error"]["message"],
    "messages": lambda doc: doc["type"] == "error" and doc["error"]["type"] and doc["error"]["message"],
    "gemini": lambda doc: doc["error"]["code"] and doc["error"]["status"] and doc["error"]["message"],
}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_reset_is_no_end_of_a_close_delimited_answer(gw: tuple[GatewayProcess, Path], api: str, stream: bool) -> None:
    """HTTP/1.0 without a length: the body ends with the connection -- its orderly close.
    A reset before it is a cut: the client's answer is cut too (no terminating chunk) and
    the row is ``upstream_failed`` (main relayed the reset as the end: a complete answer,
    ``ok`` with a Gemini stream's running usage, or ``usage_missing``)."""
    answer, row = exchange(gw, api, stream, "http10_reset")
    assert answer.status == 200 and not answer.complete, answer.raw[-200:]
    assert (row.status, row.http_status) == ("upstream_failed", 200), row
    seen = SEEN_AT_START[api] if stream else None
    assert (row.input_tokens, row.output_tokens) == (seen or (0, 0)), row


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [False, True])
def test_an_orderly_close_ends_a_close_delimited_answer(gw: tuple[GatewayProcess, Path], api: str, stream: bool) -> None:
    answer, row = exchange(gw, api, stream, "http10")
    assert answer.status == 200 and answer.complete, answer.raw[-200:]
    assert (row.status, row.input_tokens, row.output_tokens, row.priced) == ("ok", 25, 9, True), row


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("fault", ["reset", "close", "short", "stall"])
def test_a_stream_cut_after_its_head_is_cut_for_the_client_and_billed_as_seen(
    gw: tuple[GatewayProcess, Path], api: str, fault: str
) -> None:
    """Reset, closed, shorter than its Content-Length, or silent past ``body_idle_timeout``
    after the head and the stream's first events: the client's answer is cut (never ended
    falsely), one ``upstream_failed`` row with the usage the provider reported before."""
    answer, row = exchange(gw, api, True, fault)
    assert answer.status == 200 and not answer.complete, answer.raw[-200:]
    assert (row.status, row.http_status, row.streaming) == ("upstream_failed", 200, True), row
    if fault == "short":  # the whole stream came, its usage with it; only the length lied
        assert (row.input_tokens, row.output_tokens) == (25, 9), row
    else:
        assert (row.input_tokens, row.output_tokens) == (SEEN_AT_START[api] or (0, 0)), row


@pytest.mark.parametrize("api", APIS)
def test_a_stream_cut_before_its_usage_stays_unpriced(gw: tuple[GatewayProcess, Path], api: str) -> None:
    """A cut stream whose usage never came whole (Responses: none; Anthropic: the input of
    ``message_start`` alone) is left unpriced by the flush, and stays so: the late pricer
    (every 0.2 s here) priced it from its token columns -- at 0, or at its input alone --
    on main.  One whose usage came (a chat usage chunk, Gemini's running counts) is priced
    from it at once."""
    gateway, path = gw
    _, row = exchange(gw, api, True, "reset")
    # Until the pricer has looked at it (an unpriced row is written ``pending``; the pricer
    # stamps every row it fetches, priced or not, and never fetches that row again): main's
    # pricer priced it at that first look.  A row priced at its flush is not pending.
    deadline = time.monotonic() + 10
    while row.price_status == PRICE_STATUS_PENDING and time.monotonic() < deadline:
        time.sleep(0.05)
        (row,) = [r for r in read_rows(None, str(path.with_suffix(".db"))) if r.request_id == row.request_id]
    if api in ("responses", "messages"):
        # (marked unpriced_unknown by the pricer, as a usage_missing row is)
        assert (row.priced, row.cost_nano_usd, row.price_status) == (False, None, "unpriced_unknown"), row
    else:
        assert row.priced and (row.cost_nano_usd or 0) > 0, row


@pytest.mark.parametrize("api", APIS)
def test_a_json_answer_shorter_than_its_length_is_cut(gw: tuple[GatewayProcess, Path], api: str) -> None:
    answer, row = exchange(gw, api, False, "short")
    assert answer.status == 200 and not answer.complete
    assert (row.status, row.http_status, row.input_tokens, row.output_tokens) == ("upstream_failed", 200, 0, 0), row
    assert not row.priced  # no usage seen: unpriced and visible, never a silent zero


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", ["garbage", "non_http_close", "stall_head"])
def test_no_answer_is_a_5xx_in_the_clients_format(
    gw: tuple[GatewayProcess, Path], api: str, stream: bool, fault: str
) -> None:
    """Not HTTP at all, or nothing within ``first_byte_timeout``: nothing reached the
    client, which gets the gateway's 502 / 504 in its own error shape; the row bills
    nothing."""
    answer, row = exchange(gw, api, stream, fault)
    status = 504 if fault == "stall_head" else 502
    assert answer.status == status and answer.complete
    assert answer.headers["content-type"] == "application/json"
    doc = answer.json()
    assert ERROR_SHAPES[api](doc), doc
    assert ("timeout" if status == 504 else "invalid response from upstream") in json.dumps(doc)
    assert (row.status, row.http_status, row.input_tokens, row.output_tokens) == ("upstream_failed", status, 0, 0)
    assert row.priced and row.cost_nano_usd == 0
    # The gateway's own answer names the request as a relayed one does (absent on main):
    # the client can match it to this row.
    assert answer.headers.get("x-plano-request-id") == row.request_id, answer.headers


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [False, True])
def test_an_interim_answer_then_silence_is_no_final_answer(
    gw: tuple[GatewayProcess, Path], api: str, stream: bool
) -> None:
    """A 103 Early Hints and then nothing past ``body_idle_timeout``: nothing reached the
    client, so its 504 says the provider sent no final answer (main said "stalled
    mid-response", as if an answer had been cut)."""
    answer, row = exchange(gw, api, stream, "interim_stall")
    assert answer.status == 504 and answer.complete, answer.raw[-300:]
    text = json.dumps(answer.json())
    assert "no final response" in text and "stalled mid-response" not in text, text
    assert (row.status, row.http_status, row.input_tokens, row.output_tokens) == ("upstream_failed", 504, 0, 0)
    assert answer.headers.get("x-plano-request-id") == row.request_id


def test_a_provider_that_refuses_the_connection_is_a_502_naming_the_request(gw: tuple[GatewayProcess, Path]) -> None:
    """Nothing listens at the provider's address: the gateway's 502 carries the request id
    of its ``upstream_failed`` row (main sent no ``x-plano-request-id`` on it)."""
    gateway, path = gw
    before = {r.request_id for r in read_rows(None, str(path.with_suffix(".db")))}
    body = json.dumps({"model": "openai/gpt-closed", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                     b"content-type: application/json\r\nauthorization: Bearer sk-c\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        raw = b""
        while data := sock.recv(65536):
            raw += data
    answer = Answer(raw)
    row = new_row(path, before)
    assert answer.status == 502 and answer.complete, raw[:300]
    assert (row.status, row.http_status) == ("upstream_failed", 502), row
    assert answer.headers.get("x-plano-request-id") == row.request_id, answer.headers


@pytest.mark.parametrize("api", APIS)
def test_an_error_event_in_a_200_stream_is_relayed_and_billed_as_seen(gw: tuple[GatewayProcess, Path], api: str) -> None:
    """A 200 stream that ends with the provider's error event (Anthropic ``event: error``,
    an OpenAI ``{"error": ...}`` chunk, a Responses ``error`` event, a Gemini error
    chunk): relayed as it came, to its end; the row has the usage seen (``ok`` when the
    final usage came before the error, else ``usage_missing``: unpriced)."""
    error = STREAMS[api][2]
    answer, row = exchange(gw, api, True, "error_event")
    assert answer.status == 200 and answer.complete
    assert error in answer.body  # (one chunk: the upstream sent it as one)
    if api == "chat":  # its usage chunk came before the error
        assert (row.status, row.input_tokens, row.output_tokens, row.priced) == ("ok", 25, 9, True), row
    else:
        assert (row.status, row.priced) == ("usage_missing", False), row


@pytest.mark.parametrize("fault", ["extra", "extra_late"])
def test_an_answer_nobody_asked_for_is_never_the_next_requests(gw: tuple[GatewayProcess, Path], fault: str) -> None:
    """A provider that sends a second answer after the one asked for (in the same write,
    or a moment later on the idle keep-alive connection): that connection is never reused,
    so the next requests get their own answers, not the stray one."""
    answer, row = exchange(gw, "chat", False, fault)
    assert answer.status == 200 and answer.complete and row.status == "ok"
    time.sleep(0.1)
    for _ in range(3):
        answer, row = exchange(gw, "chat", False, "none")
        assert answer.status == 200 and b"EVIL" not in answer.body and answer.json()["id"] == "c1"
        assert (row.status, row.input_tokens, row.output_tokens) == ("ok", 25, 9)
