"""Usage rows over real sockets, per provider family (issue 18).

A real gateway process (config mode, SQLite) in front of a replay upstream that sends
recorded provider bodies (``../shared/data/fixtures``, via tests/shared_data.py) and
documentation-derived ones (tests/test_scan_usage_fields.py, each citing its doc) in
awkward pieces: 1 to 5 bytes per TCP write, so every usage object, SSE line and CRLF arrives
split.  Each request must end as a row in the convention (input = every prompt token, output
= every billed output token), keeping the provider's usage object, priced exactly from the
bundled table, with the price entry recorded.  (Every split offset is covered at the scanner
level by tests/test_scan_usage_fields.py and tests/test_scan_fixtures.py on both scanners.)
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from plano_fast import wire
from plano_fast.pricing import PricingRegistry, TokenCounts
from plano_fast.usage import USAGE_API_NUMBERS
from plano_fast.store import UsageRow
from tests.gateway_proc import GatewayProcess
from tests.test_billing_e2e import read_rows
from tests.test_scan_fixtures import _cassette, _response
from tests.test_scan_usage_fields import (
    ANTHROPIC_DELTA_INPUT_STREAM,
    ANTHROPIC_THINKING,
    ANTHROPIC_THINKING_STREAM,
    GEMINI_AUDIO,
    GEMINI_TOOL_USE,
    OPENAI_AUDIO,
    OPENAI_N2_STREAM,
    RESPONSES_CACHED,
)
from tests.shared_data import FIXTURES
from tests.test_image_output_usage import GEMINI_CACHED_AUDIO, GEMINI_IMAGE, GEMINI_IMAGE_STREAM
from tests.test_service_tier import chat_answer


def _fixture(name: str, index: int) -> bytes:
    return _response(_cassette(name)[index])[1]


# Anthropic, doc-derived: a long-context request (more than 200k prompt tokens, cache reads and
# writes included) with 1h cache writes
ANTHROPIC_LONG_CONTEXT = (
    b'{"id":"msg_3","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],'
    b'"stop_reason":"end_turn","usage":{"input_tokens":150000,"cache_creation_input_tokens":40000,'
    b'"cache_read_input_tokens":60000,"cache_creation":{"ephemeral_5m_input_tokens":10000,'
    b'"ephemeral_1h_input_tokens":30000},"output_tokens":1000}}'
)
# Gemini, doc-derived: a gemini-2.5-pro prompt above its 200k tier
GEMINI_LONG_CONTEXT = (
    b'{"candidates":[{"content":{"parts":[{"text":"ok"}],"role":"model"},"finishReason":"STOP"}],'
    b'"usageMetadata":{"promptTokenCount":250000,"cachedContentTokenCount":50000,"candidatesTokenCount":600,'
    b'"thoughtsTokenCount":400,"totalTokenCount":251000},"modelVersion":"gemini-2.5-pro"}'
)

# case -> (client path, request body, streaming, upstream body, content type, expected row)
# expected: (input, output, cache_read, cache_write, reasoning, tool_use, cache_write_1h,
#            audio_in, audio_out, model, usage_api)
CASES: dict[str, tuple[str, dict[str, Any], bytes, str, tuple[Any, ...]]] = {
    # OpenAI chat, recorded (pydantic-ai): stream with include_usage
    "chat-sse": (
        "/v1/chat/completions", {"model": "openai/gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}},
        _fixture("test_run_stream_sync_streams_real_model.yaml", 0), "text/event-stream",
        (53, 15, 0, 0, 0, 0, 0, 0, 0, "gpt-4o-mini-2024-07-18", "openai_chat"),
    ),
    # OpenAI chat, recorded: the 2026 cache_write_tokens (first call of the cache e2e)
    "chat-json-cache-write": (
        "/v1/chat/completions", {"model": "openai/gpt-4o-mini"},
        _fixture("test_openai_chat_prompt_cache_e2e.yaml", 0), "application/json",
        (4020, 4, 0, 4012, 0, 0, 0, 0, 0, "gpt-5.6-sol", "openai_chat"),
    ),
    # OpenAI chat, doc-derived (tests/test_service_tier.py): served at the priority tier
    "chat-json-priority": (
        "/v1/chat/completions", {"model": "openai/gpt-5", "service_tier": "priority"}, chat_answer('"priority"'),
        "application/json", (1000, 100, 800, 0, 0, 0, 0, 0, 0, "gpt-5-2025-08-07", "openai_chat"),
    ),
    # OpenAI chat, doc-derived (openai-python completion_usage.py): audio parts
    "chat-json-audio": (
        "/v1/chat/completions", {"model": "openai/gpt-4o-audio-preview"}, OPENAI_AUDIO, "application/json",
        (150, 90, 0, 0, 0, 0, 0, 100, 80, "gpt-4o-audio-preview-2024-12-17", "openai_chat"),
    ),
    # Responses, recorded (pydantic-ai): response.completed carries the usage, served at the
    # flex tier
    "responses-sse": (
        "/v1/responses", {"model": "openai/gpt-5", "stream": True},
        _fixture("test_openai_responses_streaming_usage.yaml", 0), "text/event-stream",
        (53, 469, 0, 0, 448, 0, 0, 0, 0, "gpt-5-2025-08-07", "openai_responses"),
    ),
    # Anthropic, recorded (pydantic-ai): cache reads and writes outside input_tokens
    "anthropic-json-cache": (
        "/v1/messages", {"model": "anthropic/claude-sonnet-4-6", "max_tokens": 50},
        _fixture("test_anthropic_cache_real_api.yaml", 1), "application/json",
        (3 + 1111 + 418, 33, 1111, 418, 0, 0, 0, 0, 0, "claude-sonnet-4-5-20250929", "anthropic"),
    ),
    # Anthropic, recorded (anthropic-sdk-python): a stream
    "anthropic-sse-recorded": (
        "/v1/messages", {"model": "anthropic/claude-sonnet-4-6", "max_tokens": 50, "stream": True},
        (FIXTURES / "anthropic-sdk-python" / "tool_use_response.txt").read_bytes(), "text/event-stream",
        (377, 65, 0, 0, 0, 0, 0, 0, 0, "claude-sonnet-4-20250514", "anthropic"),
    ),
    # Anthropic, doc-derived: thinking tokens and 1h cache writes, JSON and stream
    "anthropic-json-thinking": (
        "/v1/messages", {"model": "anthropic/claude-sonnet-4-6", "max_tokens": 50}, ANTHROPIC_THINKING, "application/json",
        (6156, 700, 4096, 2048, 640, 0, 1024, 0, 0, "claude-sonnet-4-5-20250929", "anthropic"),
    ),
    "anthropic-sse-thinking": (
        "/v1/messages", {"model": "anthropic/claude-sonnet-4-6", "max_tokens": 50, "stream": True},
        ANTHROPIC_THINKING_STREAM, "text/event-stream",
        (6156, 700, 4096, 2048, 640, 0, 1024, 0, 0, "claude-sonnet-4-5-20250929", "anthropic"),
    ),
    # OpenAI chat, doc-derived: n=2 streamed without include_usage (injected, its chunk hidden)
    "chat-sse-n2": (
        "/v1/chat/completions", {"model": "openai/gpt-4o-mini", "stream": True, "n": 2},
        OPENAI_N2_STREAM, "text/event-stream",
        (10, 6, 0, 0, 0, 0, 0, 0, 0, "gpt-4o-mini-2024-07-18", "openai_chat"),
    ),
    # Responses, doc-derived: not streamed, cached input and reasoning output
    "responses-json-cached": (
        "/v1/responses", {"model": "openai/gpt-5"}, RESPONSES_CACHED, "application/json",
        (5000, 900, 4000, 0, 850, 0, 0, 0, 0, "gpt-5-2025-08-07", "openai_responses"),
    ),
    # Anthropic, doc-derived: message_delta's cumulative input and cache counts win
    "anthropic-sse-delta-input": (
        "/v1/messages", {"model": "anthropic/claude-sonnet-4-6", "max_tokens": 50, "stream": True},
        ANTHROPIC_DELTA_INPUT_STREAM, "text/event-stream",
        (61 + 2000 + 300, 9, 2000, 300, 0, 0, 100, 0, 0, "claude-sonnet-4-5-20250929", "anthropic"),
    ),
    "anthropic-json-long-context": (
        "/v1/messages", {"model": "anthropic/claude-sonnet-4-6", "max_tokens": 50}, ANTHROPIC_LONG_CONTEXT,
        "application/json",
        (250_000, 1000, 60_000, 40_000, 0, 0, 30_000, 0, 0, "claude-sonnet-4-5-20250929", "anthropic"),
    ),
    "gemini-json-long-context": (
        "/v1beta/models/gemini-2.5-pro:generateContent", {"contents": [{"parts": [{"text": "x"}]}]},
        GEMINI_LONG_CONTEXT, "application/json",
        (250_000, 1000, 50_000, 0, 400, 0, 0, 0, 0, "gemini-2.5-pro", "gemini"),
    ),
    # An OpenAI client on an Anthropic / Gemini provider (converted): billed from the
    # upstream's usage, in its semantics (cache outside input_tokens, thoughts outside
    # candidatesTokenCount), the same row as a native client's
    "converted-chat-on-anthropic-json": (
        "/v1/chat/completions", {"model": "anthropic/claude-sonnet-4-6"}, ANTHROPIC_THINKING, "application/json",
        (6156, 700, 4096, 2048, 640, 0, 1024, 0, 0, "claude-sonnet-4-5-20250929", "anthropic"),
    ),
    "converted-chat-on-anthropic-sse": (
        "/v1/chat/completions", {"model": "anthropic/claude-sonnet-4-6", "stream": True,
                                 "stream_options": {"include_usage": True}},
        ANTHROPIC_DELTA_INPUT_STREAM, "text/event-stream",
        (61 + 2000 + 300, 9, 2000, 300, 0, 0, 100, 0, 0, "claude-sonnet-4-5-20250929", "anthropic"),
    ),
    "converted-chat-on-gemini-json": (
        "/v1/chat/completions", {"model": "gemini/gemini-2.5-pro"}, GEMINI_TOOL_USE, "application/json",
        (1620, 350, 1000, 0, 300, 420, 0, 0, 0, "gemini-2.5-pro", "gemini"),
    ),
    # Gemini native, doc-derived: toolUsePromptTokenCount and thoughts
    "gemini-json-tool-use": (
        "/v1beta/models/gemini-2.5-pro:generateContent", {"contents": [{"parts": [{"text": "x"}]}]},
        GEMINI_TOOL_USE, "application/json",
        (1620, 350, 1000, 0, 300, 420, 0, 0, 0, "gemini-2.5-pro", "gemini"),
    ),
    # Gemini native, doc-derived: audio input (promptTokensDetails' AUDIO entry), priced apart
    "gemini-json-audio": (
        "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": [{"parts": [{"text": "x"}]}]},
        GEMINI_AUDIO, "application/json",
        (1570, 42, 0, 0, 0, 0, 0, 1560, 0, "gemini-2.5-flash", "gemini"),
    ),
    # Gemini native, doc-derived: a generated image (candidatesTokensDetails' IMAGE entry) and
    # cached audio (cacheTokensDetails' AUDIO entry), priced apart (tests/test_image_output_usage.py)
    "gemini-json-image": (
        "/v1beta/models/gemini-2.5-flash-image:generateContent", {"contents": [{"parts": [{"text": "x"}]}]},
        GEMINI_IMAGE, "application/json",
        (12, 1295, 0, 0, 0, 0, 0, 0, 0, "gemini-2.5-flash-image", "gemini"),
    ),
    "gemini-sse-image": (
        "/v1beta/models/gemini-2.5-flash-image:streamGenerateContent?alt=sse",
        {"contents": [{"parts": [{"text": "x"}]}]}, GEMINI_IMAGE_STREAM, "text/event-stream",
        (12, 1295, 0, 0, 0, 0, 0, 0, 0, "gemini-2.5-flash-image", "gemini"),
    ),
    "gemini-json-cached-audio": (
        "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": [{"parts": [{"text": "x"}]}]},
        GEMINI_CACHED_AUDIO, "application/json",
        (2000, 100, 1000, 0, 0, 0, 0, 200, 0, "gemini-2.5-flash", "gemini"),
    ),
    # Gemini native, recorded (pydantic-ai): alt=sse with CRLF framing, cumulative usage
    "gemini-sse": (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", {"contents": [{"parts": [{"text": "x"}]}]},
        _fixture("test_google_stream_usage_is_live_mid_stream.yaml", 0), "text/event-stream",
        (18, 80 + 35, 0, 0, 35, 0, 0, 0, 0, "gemini-2.5-flash", "gemini"),
    ),
}  # fmt: skip

# case -> the web searches its usage reports (Anthropic server_tool_use; 0 when not listed)
SEARCHES = {"anthropic-json-thinking": 1, "converted-chat-on-anthropic-json": 1, "anthropic-sse-delta-input": 1,
            "converted-chat-on-anthropic-sse": 1}  # fmt: skip

# case -> its cost (nano-USD) from the providers' published prices, worked by hand
DOC_COSTS = {
    # Anthropic long context (> 200k prompt tokens, cache included): $6 in, $0.60 read, $7.50
    # 5-minute write, $12 1-hour write, $22.50 out per 1M
    "anthropic-json-long-context": 150_000 * 6_000 + 60_000 * 600 + 10_000 * 7_500 + 30_000 * 12_000 + 1000 * 22_500,
    # gemini-2.5-pro above 200k: $2.50 in, $0.25 cached, $15 out (thoughts included) per 1M
    "gemini-json-long-context": 200_000 * 2_500 + 50_000 * 250 + 1000 * 15_000,
    # claude-sonnet-4-5: $3 in / $0.30 read / $3.75 5m write / $6 1h write / $15 out per 1M, and
    # the web search tool's $10 per 1,000 searches
    "anthropic-json-thinking": 12 * 3_000 + 4096 * 300 + 1024 * 3_750 + 1024 * 6_000 + 700 * 15_000 + 10_000_000,
    # gemini-2.5-flash (https://ai.google.dev/gemini-api/docs/pricing): $0.30 text input,
    # $1.00 audio input, $2.50 out per 1M (was billed 576,000: the audio at the text rate)
    "gemini-json-audio": 10 * 300 + 1560 * 1_000 + 42 * 2_500,
    # gemini-2.5-flash-image: $0.30 in, $2.50 text out, $30 image out per 1M (was 3,241,100:
    # the image at the text rate); streamed or not, the same row and cost
    "gemini-json-image": 12 * 300 + 5 * 2_500 + 1290 * 30_000,
    "gemini-sse-image": 12 * 300 + 5 * 2_500 + 1290 * 30_000,
    # gemini-2.5-flash: 800 text in at $0.30, 400 cached text at $0.03, 600 cached audio at
    # $0.10, 200 audio in at $1.00, 100 out at $2.50 per 1M (was 720,000: cached audio at $0.03)
    "gemini-json-cached-audio": 800 * 300 + 400 * 30 + 600 * 100 + 200 * 1_000 + 100 * 2_500,
    # gpt-5: $1.25 in, $0.125 cached, $10 out (reasoning included) per 1M
    "responses-json-cached": 1000 * 1_250 + 4000 * 125 + 900 * 10_000,
    # the recorded stream served at flex (https://platform.openai.com/docs/pricing, gpt-5
    # Flex): $0.625 in, $5 out per 1M (was billed 4,756,250: the standard rates)
    "responses-sse": 53 * 625 + 469 * 5_000,
    # gpt-5 Priority: $2.50 in, $0.25 cached, $20 out per 1M
    "chat-json-priority": 200 * 2_500 + 800 * 250 + 100 * 20_000,
}

#: POST /v1/messages/count_tokens's answer: counted, never billed
COUNT_TOKENS = b'{"input_tokens":1234}'


def _case_of(request: dict[str, Any]) -> str:
    if "metadata" in request:
        return str(request["metadata"]["case"])
    if "contents" in request and "case" in request["contents"][0]["parts"][0]:
        return str(request["contents"][0]["parts"][0]["case"])
    # a converted request: the case rides in the message text ("case:<name>|")
    text = json.dumps(request)
    start = text.index("case:") + len("case:")
    return text[start : text.index("|", start)]


class _Replay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("content-length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path.endswith("/count_tokens"):
            body, ctype = COUNT_TOKENS, "application/json"
        else:
            case = CASES[_case_of(request)]
            body, ctype = case[2], case[3]
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rng = random.Random(len(body))
        pos = 0
        while pos < len(body):
            n = rng.randint(1, 5)
            piece = body[pos : pos + n]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            pos += n
            if rng.random() < 0.05:
                time.sleep(0.001)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture(scope="module")
def replay() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(replay: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    path = tmp_path_factory.mktemp("rows") / "plano_config.yaml"
    base = f"http://127.0.0.1:{replay}"
    path.write_text(
        f"""\
version: v0.4.0
listeners:
  - type: model
    name: rows
    address: 127.0.0.1
    port: 12000
    timeout: 10s
model_providers:
  - model: openai/*
    base_url: {base}
    access_key: sk-openai
  - model: anthropic/*
    base_url: {base}
    access_key: sk-ant
  - model: gemini/gemini-2.5-pro
    base_url: {base}/v1beta
    access_key: gm-key
  - model: gemini/gemini-2.5-flash
    base_url: {base}/v1beta
    access_key: gm-key
  - model: gemini/gemini-2.5-flash-image
    base_url: {base}/v1beta
    access_key: gm-key
plano_fast:
  sqlite_path: {path.with_suffix(".db")}
  usage_journal_path: {path.with_suffix(".journal")}
  usage_flush_interval_s: 1
  price_interval_s: 1
"""
    )
    with GatewayProcess(path) as proc:
        yield proc


def _post(url: str, path: str, body: dict[str, Any]) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"content-type": "application/json"}
    if path.startswith("/v1/messages"):
        headers.update({"x-api-key": "client", "anthropic-version": "2023-06-01"})
    elif path.startswith("/v1beta"):
        headers["x-goog-api-key"] = "client"
    else:
        headers["authorization"] = "Bearer client"
    conn.request("POST", path, json.dumps(body).encode(), headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    assert response.status == 200, data
    return data


def _told_openai(answer: bytes) -> tuple[int, int, int, int]:
    """(prompt, completion, cached, reasoning) of an OpenAI answer or stream's usage."""
    if answer.startswith(b"{"):
        (usage,) = [json.loads(answer)["usage"]]
    else:
        docs = [json.loads(line[6:]) for line in answer.split(b"\n") if line.startswith(b"data: {")]
        (usage,) = [d["usage"] for d in docs if d.get("usage")]
    return (usage["prompt_tokens"], usage["completion_tokens"], usage["prompt_tokens_details"]["cached_tokens"],
            usage["completion_tokens_details"]["reasoning_tokens"])


def _kept(r: UsageRow) -> Any:
    """A row's kept provider usage document, scanned again."""
    assert r.usage_raw is not None and r.usage_api is not None
    kept = wire.UsageScanner(USAGE_API_NUMBERS[r.usage_api], False)
    kept.feed(r.usage_raw.encode())
    kept.finish()
    return kept.result()


def _searches(r: UsageRow) -> int:
    """The web searches of a row's kept provider usage object (no column of their own)."""
    searches: int = _kept(r).web_search_requests
    return searches


def _row_tuple(r: UsageRow) -> tuple[Any, ...]:
    return (
        r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens, r.reasoning_tokens,
        r.tool_use_prompt_tokens, r.cache_write_1h_tokens, r.audio_input_tokens, r.audio_output_tokens,
        r.model, r.usage_api,
    )  # fmt: skip


def test_every_family_ends_as_a_row_in_the_convention(gateway: GatewayProcess) -> None:
    for name, (path, request, body, _, _) in CASES.items():
        request = dict(request)
        if path.startswith("/v1beta"):
            request["contents"] = [{"parts": [{"text": "x", "case": name}]}]
        elif name.startswith("converted-"):
            request["messages"] = [{"role": "user", "content": f"case:{name}|"}]
        else:
            request.setdefault("messages", [{"role": "user", "content": "x"}])
            request["metadata"] = {"case": name}
        relayed = _post(gateway.url, path, request)
        if name.startswith("converted-"):  # the client is told the usage it is billed
            row = CASES[name][4]
            assert _told_openai(relayed) == (row[0], row[1], row[2], row[4]), (name, relayed)
        elif "include_usage" in json.dumps(request) or not request.get("stream"):
            assert relayed == body  # relayed untouched
        elif path == "/v1/chat/completions":  # the injected usage chunk hidden again
            assert b'"usage"' not in relayed and relayed.endswith(b"data: [DONE]\n\n"), relayed
    counted = {"model": "anthropic/claude-sonnet-4-6", "messages": [{"role": "user", "content": "x"}]}
    assert _post(gateway.url, "/v1/messages/count_tokens", counted) == COUNT_TOKENS
    sqlite = str(gateway.config_path.with_suffix(".db"))
    deadline = time.monotonic() + 20
    rows: list[UsageRow] = []
    while time.monotonic() < deadline:
        rows = read_rows(None, sqlite)
        if len(rows) >= len(CASES) + 1 and all(r.priced for r in rows):
            break
        time.sleep(0.2)
    assert len(rows) == len(CASES) + 1
    (free,) = [r for r in rows if r.status == "not_billable"]  # count_tokens: free
    assert (free.cost_nano_usd, free.input_tokens, free.output_tokens) == (0, 0, 0), free
    rows.remove(free)
    # (web searches, priced per request, have no column: the kept usage object tells them)
    got = sorted(_row_tuple(r) + (_searches(r),) for r in rows)
    def want_of(name: str) -> tuple[Any, ...]:
        return CASES[name][4] + (SEARCHES.get(name, 0),)

    want = sorted(map(want_of, CASES))
    assert got == want
    for name, cost in DOC_COSTS.items():  # (a converted twin of a case is the same row)
        costs = {r.cost_nano_usd for r in rows if _row_tuple(r) + (_searches(r),) == want_of(name)}
        assert costs == {cost}, name
    registry = PricingRegistry()
    for r in rows:
        assert r.status == "ok" and r.priced and r.usage_raw, r
        quote = registry.quote(r.provider, r.model or "", r.project_id, TokenCounts(
            r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens, r.reasoning_tokens,
            r.cache_write_1h_tokens, r.audio_input_tokens, r.audio_output_tokens, r.tool_use_prompt_tokens,
            _searches(r), _kept(r).image_output_tokens, _kept(r).audio_cache_read_tokens),
            service_tier=_kept(r).service_tier)  # fmt: skip
        assert quote is not None
        assert (r.cost_nano_usd, r.price_entry) == (quote.cost_nano_usd, quote.entry), r
        assert r.price_status == ("priced_partial" if quote.partial else "priced")
    # every dimension of these rows (1h writes, audio, cache writes, web searches, images,
    # cached audio) has its own price
    assert [r.model for r in rows if r.price_status == "priced_partial"] == []
