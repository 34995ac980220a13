"""One pooled upstream connection carries responses of every framing in turn.

The upstream connection's response parser is reused from one response to the next (llhttp
starts the next message itself), so a chunked stream followed by a Content-Length JSON
answer, and back, must each be read whole and the connection kept.  The provider here is
a raw socket server that counts the connections it accepts.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.gateway_proc import GatewayProcess, write_config
from tests.raw_upstream import RawUpstream

_USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def _json_answer(n: int) -> bytes:
    body = json.dumps({
        "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"json {n}"},
                     "finish_reason": "stop"}],
        "usage": _USAGE,
    }).encode()  # fmt: skip
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % len(body)) + body


def _stream_answer(n: int) -> bytes:
    def chunk(delta: dict[str, object], usage: object = None, finish: object = None) -> bytes:
        event = {
            "id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini", "usage": usage,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta else [],
        }  # fmt: skip
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    events = [
        chunk({"role": "assistant", "content": "stream "}),
        chunk({"content": str(n)}, finish="stop"),
        chunk({}, usage=_USAGE),
        b"data: [DONE]\n\n",
    ]
    out = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"]
    for event in events:
        out.append(b"%x\r\n%s\r\n" % (len(event), event))
    out.append(b"0\r\n\r\n")
    return b"".join(out)


class RawProvider(RawUpstream):
    """Keep-alive HTTP/1.1 server answering stream/JSON by the request's ``stream`` flag."""

    def __init__(self) -> None:
        self.requests = 0
        super().__init__()

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        self.requests += 1
        stream = json.loads(body).get("stream") is True
        conn.sendall(_stream_answer(self.requests) if stream else _json_answer(self.requests))
        return True


@pytest.fixture
def raw_provider() -> Iterator[RawProvider]:
    provider = RawProvider()
    yield provider
    provider.close()


def test_one_connection_carries_streamed_and_json_responses_in_turn(
    raw_provider: RawProvider, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "plano_config.yaml", raw_provider.port)
    with GatewayProcess(config) as gw:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-client", max_retries=0)
        answers = []
        for i in range(6):
            if i % 2 == 0:
                chunks = list(client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
                ))  # fmt: skip
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                answers.append(text)
                # The client did not ask for usage: the gateway injected and hid it.
                assert all(c.usage is None for c in chunks)
            else:
                reply = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
                answers.append(reply.choices[0].message.content)
    assert answers == ["stream 1", "json 2", "stream 3", "json 4", "stream 5", "json 6"]
    assert raw_provider.requests == 6
    assert raw_provider.connections == 1  # every response ended cleanly: the connection stayed
