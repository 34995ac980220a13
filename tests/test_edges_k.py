"""Round k of the attack battery (benchmarks/attack_battery_k.py): what it found, as tests.

* An upstream status line naming another HTTP version (``HTTP/2.0``, ``HTTP/0.9``: llhttp
  takes both) was relayed as an HTTP/1.1 answer; it is the 502 of a malformed head, in both
  head scanners (``wire/_head.pyx``, ``_head_py.py``), the connection not reused.
* A response body that starts with a UTF-8 BOM: the event stream's first event (WHATWG SSE
  skips one leading BOM), a JSON body or a Gemini JSON-array stream (RFC 8259 lets a parser
  ignore it; ``json.loads`` of bytes and the SDKs do) went unread -- the usage in it lost
  (``usage_missing``), and with ``include_usage`` injected the first chunk's
  ``"usage":null`` reached the client.  Both usage scanners and the conversion's SSE parser
  skip it now.
* An answer in ``Content-Encoding: gzip`` / ``deflate`` although the gateway asked for
  ``identity``: relayed as sent, its row was ``usage_missing`` (unpriced in firewall and
  config mode; charged the reservation's bound under a managed hard limit).  Its usage is
  read from the decoded bytes now (``gateway/coded_answer.py``).
* The journals (spill, write-ahead log, kept settles) were created with the process's umask
  (0644: any local user could read the usage rows) and followed a symlink planted at their
  path (an append to any file the gateway may write); a claimed symlink was replayed.
  They are 0600, opened ``O_NOFOLLOW``, and a symlink or another user's file is not claimed.
"""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import stat
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from benchmarks.attack_battery import ScriptedProvider, exchange, json_answer, post
from benchmarks.fake_provider import FakeProviderThread
from plano_fast.billing.journal import Journal
from plano_fast.convert._sse import SSEParser
from plano_fast.managed.settle_journal import SettleJournal
from plano_fast.store.records import CounterKey, Reservation, UsageRow
from plano_fast.wire import _head_py, _scan_py
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_scan import check_all_splits

try:
    from plano_fast.wire import _head as _compiled_head
    from plano_fast.wire import _scan as _compiled_scan
except ImportError:  # extensions not built
    _compiled_head = _compiled_scan = None  # type: ignore[assignment]

BOM = b"\xef\xbb\xbf"
PURE = {"PLANO_FAST_PURE_SCANNER": "1"}
BUILDS = [pytest.param({}, id="compiled"), pytest.param(PURE, id="pure")]
SCANNERS = [pytest.param(_scan_py, id="python")] + (
    [pytest.param(_compiled_scan, id="cython")] if _compiled_scan is not None else [])
HEADS = [pytest.param(_head_py.response_head, id="python")] + (
    [pytest.param(_compiled_head.response_head, id="cython")] if _compiled_head is not None else [])

_OK_BODY = json.dumps({
    "id": "chatcmpl-k", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}).encode()  # fmt: skip
_SCRIPTED_CHAT = b'{"model":"scripted/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def _rows(db_path: Path, request_id: bytes | None, timeout_s: float = 6.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        with sqlite3.connect(db_path) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("select * from usage_log where request_id = ?",
                                                ((request_id or b"").decode(),))]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


# -- an upstream status line of another HTTP version ------------------------------------------------
@pytest.mark.parametrize("response_head", HEADS)
@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/2", b"ICY"])
def test_a_status_line_of_another_version_is_a_malformed_head(response_head: Callable[[bytes], Any],
                                                               version: bytes) -> None:
    with pytest.raises(ValueError, match="HTTP version"):
        response_head(version + b" 200 OK\r\ncontent-length: 2\r\n\r\n{}")


@pytest.fixture(scope="module", params=BUILDS)
def scripted_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[tuple[GatewayProcess, ScriptedProvider]]:
    scripted = ScriptedProvider()
    workdir = tmp_path_factory.mktemp("edges-k-scripted")
    config = write_config(workdir / "gateway.yaml", 9, {}, f"""\
  - model: scripted/gpt-4o-mini
    base_url: http://127.0.0.1:{scripted.port}
    provider_interface: openai
    access_key: sk-upstream
""")
    try:
        with GatewayProcess(config, env=request.param) as gateway:
            yield gateway, scripted
    finally:
        scripted.close()


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
def test_an_upstream_answer_of_another_http_version_is_a_502(
    scripted_gateway: tuple[GatewayProcess, ScriptedProvider], version: bytes,
) -> None:
    """llhttp takes both status lines; the answer was relayed as HTTP/1.1 (a 200 to the client,
    its row ``ok``) although it is not in HTTP/1.1's framing."""
    gateway, scripted = scripted_gateway
    scripted.add("v", json_answer(_OK_BODY).replace(b"HTTP/1.1", version, 1), close=False)
    scripted.add("ok", json_answer(_OK_BODY), close=False)
    got = exchange(gateway.port, post(b"/v1/chat/completions", _SCRIPTED_CHAT, b"", b"x-script: v\r\n"), wait_s=5)
    assert got.status == 502, got.raw[:300]
    assert "HTTP version" in json.loads(got.body)["error"]["message"]
    rows = _rows(gateway.config_path.with_suffix(".db"), got.header(b"x-plano-request-id"))
    assert [r["status"] for r in rows] == ["upstream_failed"]
    after = exchange(gateway.port, post(b"/v1/chat/completions", _SCRIPTED_CHAT, b"", b"x-script: ok\r\n"), wait_s=5)
    assert after.status == 200 and b"fine" in after.body


# -- a leading UTF-8 BOM -------------------------------------------------------------------------
_CHAT_USAGE = b'{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":5}}'
#: (API, streamed, body without a BOM) whose usage a BOM used to hide: a JSON body, a Gemini
#: JSON-array stream, an event stream whose first line is the usage event's ``data:`` (one
#: that starts with an ``event:`` line -- Anthropic's, Responses' -- lost only that name)
_BOM_BODIES = [
    ("chat json", _scan_py.API_OPENAI_CHAT, False,
     b'{"id":"c","object":"chat.completion","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":5}}'),
    ("responses json", _scan_py.API_OPENAI_RESPONSES, False,
     b'{"id":"r","object":"response","usage":{"input_tokens":11,"output_tokens":5}}'),
    ("messages json", _scan_py.API_ANTHROPIC, False,
     b'{"id":"m","type":"message","usage":{"input_tokens":11,"output_tokens":5}}'),
    ("gemini json", _scan_py.API_GEMINI, False,
     b'{"candidates":[],"usageMetadata":{"promptTokenCount":11,"candidatesTokenCount":5}}'),
    ("gemini array stream", _scan_py.API_GEMINI, True,
     b'[{"candidates":[],"usageMetadata":{"promptTokenCount":11,"candidatesTokenCount":5}}\r\n]'),
    ("chat stream, usage first", _scan_py.API_OPENAI_CHAT, True,
     b"data: " + _CHAT_USAGE + b"\n\ndata: [DONE]\n\n"),
    ("gemini sse, one event", _scan_py.API_GEMINI, True,
     b'data: {"candidates":[],"usageMetadata":{"promptTokenCount":11,"candidatesTokenCount":5}}\r\n\r\n'),
]


@pytest.mark.parametrize("scan", SCANNERS)
@pytest.mark.parametrize(("api", "streaming", "body"), [b[1:] for b in _BOM_BODIES], ids=[b[0] for b in _BOM_BODIES])
def test_a_leading_bom_is_skipped_at_every_split(scan: ModuleType, api: int, streaming: bool, body: bytes) -> None:
    plain = check_all_splits(scan, api, streaming, body)
    assert plain[0][:2] == (11, 5) and plain[0][5]  # (the body itself bills 11 + 5)
    with_bom = check_all_splits(scan, api, streaming, BOM + body)
    assert with_bom == (plain[0], BOM + body, plain[2])
    # Only one, only at the start: bytes that begin like a BOM and differ, or a second BOM,
    # are read as they are (then not JSON, or a first line no reader knows).
    for start in (b"\xef", b"\xef\xbb", BOM + BOM):
        assert not check_all_splits(scan, api, streaming, start + body)[0][5], start


@pytest.mark.parametrize("scan", SCANNERS)
def test_a_bom_is_held_with_the_first_event_when_the_usage_chunk_is_stripped(scan: ModuleType) -> None:
    """``strip_usage_chunk`` (include_usage injected): the first chunk's ``"usage":null`` and
    the usage-only chunk are cut as without a BOM (the BOM counted in the cut's offsets), the
    BOM still goes to the client, at every split.  The first chunk went uncut."""
    first = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]%s}\n\n'
    body = first % b',"usage":null' + b"data: " + _CHAT_USAGE + b"\n\ndata: [DONE]\n\n"
    expected = check_all_splits(scan, _scan_py.API_OPENAI_CHAT, True, body, strip=True)
    assert expected[0][:2] == (11, 5) and expected[1] == first % b"" + b"data: [DONE]\n\n"
    got = check_all_splits(scan, _scan_py.API_OPENAI_CHAT, True, BOM + body, strip=True)
    assert got == (expected[0], BOM + expected[1], expected[2])


def test_the_conversion_stream_parser_skips_a_leading_bom_at_every_split() -> None:
    body = BOM + b'event: message_start\ndata: {"a":1}\n\nevent: ping\ndata: {}\n\n'
    want = [("message_start", b'{"a":1}'), ("ping", b"{}")]
    for k in range(len(body) + 1):
        parser = SSEParser()
        events = parser.feed(body[:k]) + parser.feed(body[k:]) + parser.close()
        assert events == want, k
    parser = SSEParser()
    assert [e for i in range(len(body)) for e in parser.feed(body[i:i + 1])] + parser.close() == want


# -- end to end: a BOM and a content coding from the provider ----------------------------------------
@pytest.fixture(scope="module", params=BUILDS)
def fake_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[GatewayProcess, FakeProviderThread]]:
    workdir = tmp_path_factory.mktemp("edges-k-fake")
    with FakeProviderThread() as fake:
        config = write_config(workdir / "config.yaml", fake.port, {}, f"""\
  - model: gemini/*
    base_url: http://127.0.0.1:{fake.port}/v1beta
    access_key: sk-gemini
""")
        with GatewayProcess(config, env=request.param) as gateway:
            yield gateway, fake


_COUNTS = b"x-fake-input-tokens: 321\r\nx-fake-output-tokens: 7\r\n"
_ANSWERS = {
    "chat": post(b"/v1/chat/completions", b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}', b""),
    "chat stream": post(b"/v1/chat/completions", b'{"model":"gpt-4o-mini","stream":true,'
                        b'"messages":[{"role":"user","content":"hi"}]}', b""),
    "messages stream": post(b"/v1/messages", b'{"model":"anthropic/claude-sonnet-4-6","max_tokens":50,"stream":true,'
                            b'"messages":[{"role":"user","content":"hi"}]}', b"", b"anthropic-version: 2023-06-01\r\n"),
    "gemini array stream": post(b"/v1beta/models/gemini%2Fgemini-2.0-flash:streamGenerateContent",
                                b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}', b""),
}


def _with(data: bytes, lines: bytes) -> bytes:
    head, sep, body = data.partition(b"\r\n\r\n")
    return head + b"\r\n" + lines.rstrip(b"\r\n") + sep + body


@pytest.mark.parametrize("name", ["chat", "gemini array stream"])
def test_an_answer_starting_with_a_bom_is_billed(fake_gateway: tuple[GatewayProcess, FakeProviderThread],
                                                 name: str) -> None:
    """Its row was ``usage_missing`` (the JSON body and the JSON-array stream unread)."""
    gateway, _ = fake_gateway
    answer = exchange(gateway.port, _with(_ANSWERS[name], b"x-fake-bom: 1\r\n" + _COUNTS), wait_s=8)
    assert answer.status == 200 and answer.body.startswith(BOM)  # relayed as sent
    rows = _rows(gateway.config_path.with_suffix(".db"), answer.header(b"x-plano-request-id"))
    assert [(r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [("ok", 321, 7)]


@pytest.mark.parametrize("coding", [b"gzip", b"deflate"])
@pytest.mark.parametrize("name", list(_ANSWERS))
def test_a_coded_answer_is_relayed_decoded_and_billed_at_its_usage(
    fake_gateway: tuple[GatewayProcess, FakeProviderThread], name: str, coding: bytes,
) -> None:
    """The gateway asked for identity; a provider that compresses anyway was relayed with its
    row ``usage_missing``.  Since session l the client gets the answer decoded, in no coding
    (plano_fast.gateway.coded_answer; session k relayed the coded bytes, so a stream kept the
    usage chunk the gateway asked for and a client without gzip got bytes it could not read)."""
    gateway, _ = fake_gateway
    answer = exchange(gateway.port, _with(_ANSWERS[name], b"x-fake-content-encoding: " + coding + b"\r\n" + _COUNTS),
                      wait_s=8)
    assert answer.status == 200 and answer.header(b"content-encoding") is None
    assert answer.header(b"content-length") is None  # (the coded length: sent chunked instead)
    if name == "chat stream":  # the usage chunk the gateway asked for (include_usage) is cut
        events = [json.loads(line[6:]) for line in answer.body.split(b"\n") if line.startswith(b"data: {")]
        assert events and all(e["choices"] for e in events) and answer.body.endswith(b"data: [DONE]\n\n")
    else:
        assert b"321" in answer.body  # the provider's answer, its usage included
    rows = _rows(gateway.config_path.with_suffix(".db"), answer.header(b"x-plano-request-id"))
    assert [(r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [("ok", 321, 7)]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_coded_answer_converted_to_the_clients_format_is_decoded(
    fake_gateway: tuple[GatewayProcess, FakeProviderThread], stream: bool,
) -> None:
    """A chat request served by a Messages provider: the converter was given gzip bytes (a
    502, or a stream it could not read, under ``content-encoding: gzip``)."""
    gateway, _ = fake_gateway
    body = (b'{"model":"anthropic/claude-sonnet-4-6","max_tokens":50,"stream":%s,'
            b'"messages":[{"role":"user","content":"hi"}]}' % (b"true" if stream else b"false"))
    answer = exchange(gateway.port, post(b"/v1/chat/completions", body, b"", b"x-fake-content-encoding: gzip\r\n" + _COUNTS),
                      wait_s=8)
    assert answer.status == 200 and answer.header(b"content-encoding") is None, answer.raw[:400]
    if stream:
        chunks = [json.loads(line[6:]) for line in answer.body.split(b"\n") if line.startswith(b"data: {")]
        assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    else:
        assert json.loads(answer.body)["object"] == "chat.completion"
    rows = _rows(gateway.config_path.with_suffix(".db"), answer.header(b"x-plano-request-id"))
    assert [(r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [("ok", 321, 7)]


def test_a_coded_stream_under_a_managed_hard_limit_is_charged_its_usage(tmp_path: Path) -> None:
    """It was charged the reservation's bound (``usage_missing`` under a hard limit)."""
    from tests.test_managed import DEFAULT_PIPE, ENV, STREAM_BODY, provision, request_cost

    tenants: list[Any] = []
    with FakeProviderThread() as fake:
        config = write_config(tmp_path / "managed.yaml", fake.port, {"managed": "true", "managed_reload_s": 1})
        db_path = config.with_suffix(".db")
        with GatewayProcess(config, env=ENV, before_start=lambda: tenants.append(
                provision(None, str(db_path), DEFAULT_PIPE, limit_nano_usd=100 * request_cost(STREAM_BODY)))) as gateway:
            auth = b"Authorization: Bearer " + tenants[0].token.encode() + b"\r\n"
            answer = exchange(gateway.port, post(b"/v1/chat/completions", STREAM_BODY, auth,
                                                 b"x-fake-content-encoding: gzip\r\nx-fake-input-tokens: %d\r\n"
                                                 b"x-fake-output-tokens: 50\r\n" % len(STREAM_BODY)), wait_s=8)
            assert answer.status == 200
            rows = _rows(db_path, answer.header(b"x-plano-request-id"))
            with sqlite3.connect(db_path) as db:
                spent = db.execute("select spent_nano_usd from spending_counters where scope_kind='project'").fetchone()[0]
    assert [(r["status"], r["cost_nano_usd"]) for r in rows] == [("ok", request_cost(STREAM_BODY))]
    assert spent == request_cost(STREAM_BODY)


# -- the journals' files ---------------------------------------------------------------------------------
def _pair() -> tuple[Reservation, UsageRow]:
    row = UsageRow("r-k", 1, "p", None, None, None, "openai", "gpt-4o-mini", 3, 1, 0, 0, 0, False, "ok", 200,
                   True, 5)
    return Reservation("res-k", 5, (CounterKey("project", "p", 0, 0),), 2, "inst"), row


def test_journal_files_are_the_gateways_users_alone(tmp_path: Path) -> None:
    """They took the umask (0644 here): any local user could read the usage rows."""
    umask = os.umask(0o022)  # (the usual one: files 0644 unless asked otherwise)
    try:
        kept = SettleJournal(str(tmp_path / "usage.journal"))
        kept.keep([_pair()])
        spill = Journal(tmp_path / "usage.journal")
        spill.spill([_pair()[1]])
        spill.set_aside({"x": 1}, "test")
    finally:
        os.umask(umask)
    for path in (kept.path, spill.path, spill.rejected_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_symlink_at_the_settle_journal_path_is_not_written_through(tmp_path: Path) -> None:
    """The kept settles were appended to whatever file a link planted at the path named."""
    target = tmp_path / "elsewhere"
    target.write_text("untouched\n")
    kept = SettleJournal(str(tmp_path / "usage.journal"))
    kept.path.symlink_to(target)
    with pytest.raises(OSError):
        kept.keep([_pair()])
    assert target.read_text() == "untouched\n"


def test_a_symlink_or_another_users_file_is_not_claimed(tmp_path: Path) -> None:
    """A link named like a stopped process's kept settles was claimed and replayed: its
    target's lines read as settles (rows written, reservations freed)."""
    forged = tmp_path / "forged"
    forged.write_text("{}\n")
    kept = SettleJournal(str(tmp_path / "usage.journal"))
    link = kept.path.with_name(kept.path.name.rsplit(".", 1)[0] + ".999999")
    link.symlink_to(forged)
    assert kept.claim() == []
    assert link.is_symlink() and forged.read_text() == "{}\n"


_HAS_CE = [pytest.param(_head_py.has_content_encoding, id="python")] + (
    [pytest.param(_compiled_head.has_content_encoding, id="cython")] if _compiled_head is not None else [])


@pytest.mark.parametrize("has_content_encoding", _HAS_CE)
def test_the_relays_coded_answer_test_finds_the_name_in_any_case_only_as_a_name(
    has_content_encoding: Callable[[bytes], bool],
) -> None:
    for block, want in (
        (b"content-type: x\r\nContent-Encoding: gzip\r\n", True),
        (b"CONTENT-ENCODING: br\r\n", True),
        (b"content-encoding:gzip\r\n", True),
        (b"x-content-encoding: gzip\r\ncontent-encodings: x\r\n", False),
        (b"x-a: content-encoding: gzip\r\n", False),
        (b"content-encoding", False),
        (b"", False),
    ):
        assert has_content_encoding(block) is want, block
