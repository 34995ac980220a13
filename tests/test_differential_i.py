"""Round i: the compiled managed gateway (``plano_fast/gateway/_managed.pyx`` and the compiled
request path) against the pure build on generated adversarial managed requests
(tests/differential_i.py: ``xproxy_`` tokens valid, unknown, malformed, lower- or
upper-cased, with trailing bytes, twice, in the wrong header; expired before and after the
gateway loaded them, revoked before and after; hard limits of user and project scope, one
no request fits and one large; pipes to a down and to an absent target, models the pipe
does not allow; output bounds absent, huge, negative, fractional, not numbers; chat,
Messages, count_tokens and Responses, streamed or not).

A compiled gateway and a pure one (``PLANO_FAST_PURE_SCANNER=1``), each with its own
recording upstream and a copy of the same provisioned database, get the same requests over
real sockets in two phases: between them the "expiring" token's row is given an expiry
1.5 s away and the "revoked after load" one is revoked through each gateway's admin API,
which reloads its state; the phase after starts once the expiry has passed (no periodic
reload: only the start's own expiry check can refuse that token).  Each case returns an answer whose status,
head (but ``date`` and the request id) and body (but the JSON parsers' own wording of a
syntax error) must be the same on both; what each upstream received must be the same
(but the gateway's own request id) and never carry ``xproxy_`` in any case; afterwards
the usage rows (but ids, times and durations), the spending counters and the open
reservations of both databases must be the same, with every 200 answer's request on
exactly one row, nothing left reserved, and no hard limit's counter above its limit.

The seeds are fixed (a failure reproduces); ``PLANO_FAST_HYPOTHESIS=deep`` runs 30x more
(benchmarks/attack_battery_i.py runs it too and prints what it saw).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from plano_fast.wire import PURE_ENV
from tests.differential_i import Tenants, expire_soon, fixed, provision_tenants, request
from tests.gateway_proc import GatewayProcess, write_config
from tests.hypothesis_budget import examples
from tests.test_admin import ADMIN_KEY
from tests.test_differential_h import _JSON_ERROR  # (the JSON parsers' own wording of a syntax error)
from tests.test_managed import ENV
from tests.test_plain_managed import RecordingUpstream as ChatUpstream
from tests.test_whole_answer import _normalized, _read_answer

# (not ``importorskip("plano_fast.gateway._managed")``: imported before the mode's module, the
# compiled start could not be installed over its twin in this process, and the in-process tests
# collected after this file, test_plain_managed's, would find the twin)
pytest.importorskip("plano_fast.gateway._forward", reason="the Cython extensions are not built")
if os.environ.get(PURE_ENV) == "1":  # both gateways would run the twins
    pytest.skip("pure scanner forced by the environment", allow_module_level=True)

_USAGE = {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}
_RESPONSE = {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-4o-mini",
             "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                         "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
             "usage": _USAGE}


def _sse(events: tuple[tuple[str, dict[str, Any]], ...]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (kind.encode(), json.dumps(event).encode()) for kind, event in events)


_RESPONSE_STREAM = _sse((
    ("response.created", {"type": "response.created", "response": {**_RESPONSE, "status": "in_progress",
                                                                   "usage": None}}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "hi"}),
    ("response.completed", {"type": "response.completed", "response": _RESPONSE}),
))
_MESSAGE_STREAM = _sse((
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}),
    ("message_stop", {"type": "message_stop"}),
))


class RecordingUpstream(ChatUpstream):
    """test_plain_managed's upstream (chat, Messages, count_tokens), also answering
    Responses (JSON or a stream) and a streamed Messages request."""

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        target = head.split(b" ", 2)[1]
        try:
            stream = json.loads(body).get("stream") is True
        except (ValueError, AttributeError):
            stream = False
        payload = b""
        if target.endswith(b"/responses"):
            payload = _RESPONSE_STREAM if stream else json.dumps(_RESPONSE).encode()
        elif target.endswith(b"/messages") and stream:
            payload = _MESSAGE_STREAM
        if not payload:
            return super().answer(conn, head, body, on_connection)
        with self.lock:
            self.seen.append(re.sub(rb"x-request-id: [0-9a-f]{32}-[0-9a-f]+\r\n", b"x-request-id: <gateway's>\r\n",
                                    head).replace(b":%d" % self.port, b":<port>") + b"\r\n\r\n" + body)
        kind = b"text/event-stream" if stream else b"application/json"
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                     % (kind, len(payload), payload))
        return True


@contextlib.contextmanager
def recording_pair() -> Iterator[tuple[RecordingUpstream, RecordingUpstream]]:
    """Two recording upstreams (the compiled gateway's, the pure one's), closed after."""
    pair = (RecordingUpstream(), RecordingUpstream())
    try:
        yield pair
    finally:
        for server in pair:
            server.close()


@pytest.fixture
def upstreams() -> Iterator[tuple[RecordingUpstream, RecordingUpstream]]:
    with recording_pair() as pair:
        yield pair


def _answer(gateway: GatewayProcess, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(data)
        answer = _normalized(_read_answer(sock, bytearray()))
    if _JSON_ERROR.search(answer):
        answer = re.sub(rb"content-length: \d+\r\n", b"content-length: <n>\r\n",
                        _JSON_ERROR.sub(b'"message":"<json error>"', answer))
    return answer


#: usage_log columns that differ between two runs of the same request
_VOLATILE = {"id", "request_id", "time_ns", "duration_us", "price_attempted_at_ns", "upstream_us", "ttfb_us"}


#: (usage rows, counters, open reservations, hard limits): rows of each
Ledger = tuple[list[tuple[Any, ...]], ...]


def _ledger(sqlite_path: str) -> Ledger:
    """(usage rows, counters, open reservations, hard limits with their counters' spend)."""
    with sqlite3.connect(sqlite_path) as db:
        cur = db.execute("select * from usage_log")
        names = [d[0] for d in cur.description]
        keep = [i for i, n in enumerate(names) if n not in _VOLATILE and not n.endswith("_ns")]
        usage = sorted((tuple(r[i] for i in keep) for r in cur.fetchall()), key=repr)
        counters = db.execute("select scope_kind, scope_id, period, period_start, spent_nano_usd, reserved_nano_usd"
                              " from spending_counters order by 1, 2, 3, 4").fetchall()
        reservations = db.execute("select * from spending_reservations").fetchall()
        limits = db.execute(
            "select l.scope_kind, l.scope_id, l.limit_nano_usd, coalesce(sum(c.spent_nano_usd), 0)"
            " from spending_limits l left join spending_counters c on c.scope_kind = l.scope_kind"
            " and c.scope_id = l.scope_id and c.period = l.period where l.enforcement = 'hard'"
            " group by l.id order by 1, 2").fetchall()
    return usage, counters, reservations, limits


def _settled_ledgers(dbs: list[str], rows: int) -> list[Ledger]:
    """Both ledgers once each has at least ``rows`` usage rows, none waiting for its price,
    nothing reserved, and the two agree (or 15 s passed: then as they are)."""
    deadline = time.monotonic() + 15
    while True:
        ledgers = [_ledger(db) for db in dbs]
        pending = 0
        for db in dbs:
            with sqlite3.connect(db) as conn:
                pending += conn.execute("select count(*) from usage_log where price_status = 'pending'").fetchone()[0]
        settled = all(len(ledger[0]) >= rows and not ledger[2] for ledger in ledgers) and not pending
        if (settled and ledgers[0] == ledgers[1]) or time.monotonic() > deadline:
            return ledgers
        time.sleep(0.2)


@dataclass
class Outcome:
    statuses: collections.Counter[bytes] = field(default_factory=collections.Counter)
    requests: int = 0
    divergences: list[str] = field(default_factory=list)
    #: the hand-picked requests' status lines, by name, before and after the phase change
    fixed: dict[str, bytes] = field(default_factory=dict)


def run_differential(tmp_path: Path, upstreams: tuple[RecordingUpstream, RecordingUpstream], seed: int,
                     count: int, stop_at_first: bool = True) -> Outcome:
    """The two phases; answers and upstream bytes compared as they come (the first
    divergence raises when ``stop_at_first``, else all are listed), the ledgers at the end."""
    template = str(tmp_path / "template.db")
    tenants: Tenants = provision_tenants(template)
    gateways: list[GatewayProcess] = []
    dbs: list[str] = []
    for name, upstream, env in (("compiled", upstreams[0], {}), ("pure", upstreams[1], {PURE_ENV: "1"})):
        # No periodic reload (600 s): the state changes between the phases are loaded by the
        # admin API's revocation, and the expiry that passes after it is the start's own check.
        config = write_config(tmp_path / f"{name}.yaml", upstream.port,
                              {"managed": "true", "managed_reload_s": 600, "admin_port": 0, "admin_key": ADMIN_KEY})
        db = str(config.with_suffix(".db"))
        gateways.append(GatewayProcess(config, env={**ENV, **env}, migrate=False,
                                       before_start=functools.partial(shutil.copyfile, template, db)))
        dbs.append(db)
    rng = random.Random(seed)
    out = Outcome()
    served = 0

    def compare(data: bytes) -> bytes:
        nonlocal served
        seen = [len(u.seen) for u in upstreams]
        compiled = _answer(gateways[0], data)
        twin = _answer(gateways[1], data)
        out.requests += 1
        out.statuses[compiled[:12]] += 1
        served += compiled.startswith(b"HTTP/1.1 200 ")
        sent = (upstreams[0].seen[seen[0]:], upstreams[1].seen[seen[1]:])
        problem = ("answers differ" if compiled != twin else "upstream bytes differ" if sent[0] != sent[1]
                   else "a token upstream" if any(b"xproxy_" in s.lower() for s in sent[0] + sent[1]) else "")
        if problem:
            out.divergences.append(
                f"{problem}: {data[:300]!r}\n  compiled {compiled[:400]!r}\n  pure     {twin[:400]!r}")
            if stop_at_first:
                raise AssertionError(out.divergences[-1])
        return compiled

    with gateways[0], gateways[1]:
        before = {name: compare(data)[:12] for name, data in fixed(tenants).items()}
        for _ in range(count):
            compare(request(rng, tenants))
        for db, gateway in zip(dbs, gateways):
            expire_soon(db, tenants.token_ids["expiring"], in_s=1.5)
            _revoke(gateway, tenants.token_ids["revoked after load"])  # (and the state reloaded)
        time.sleep(2.0)  # past the expiry, with the token still loaded
        after = {name: compare(data)[:12] for name, data in fixed(tenants).items()}
        for _ in range(max(10, count // 3)):
            compare(request(rng, tenants))
        ledgers = _settled_ledgers(dbs, served)
    for what, compiled_part, twin_part in zip(("usage rows", "counters", "reservations", "hard limits"), *ledgers):
        if compiled_part != twin_part:
            out.divergences.append(f"{what} differ:\n  compiled {compiled_part}\n  pure     {twin_part}")
    usage, counters, reservations, limits = ledgers[0]
    if stop_at_first:
        assert not out.divergences, out.divergences
    # What both must do (agreeing on something wrong fails here too).
    expected = {"live": b"200", "expiring": b"200", "revoked after load": b"200", "expired": b"401",
                "revoked": b"401", "no pipe": b"400", "project hard, tiny": b"402", "user hard, tiny": b"402",
                "project hard, large": b"200", "user hard, large": b"200", "down target": b"502",
                "absent target": b"400", "count_tokens, tiny limit": b"200"}
    assert {name: before[name][9:] for name in expected} == expected, before
    assert {name: after[name][9:] for name in expected} == {
        **expected, "expiring": b"401", "revoked after load": b"401"}, after
    http_status = _column(dbs[0], "http_status")
    assert sum(1 for s in http_status if s == 200) == served, (served, collections.Counter(http_status))
    assert not reservations and all(c[5] == 0 for c in counters), (reservations, counters)
    assert all(spent <= limit for _, _, limit, spent in limits), limits
    out.fixed = {**{f"{k} (before)": v for k, v in before.items()}, **{f"{k} (after)": v for k, v in after.items()}}
    return out


def _revoke(gateway: GatewayProcess, token_id: str) -> None:
    """The admin API's revocation: the token revoked in the store and the state reloaded."""
    req = urllib.request.Request(f"http://127.0.0.1:{gateway.admin_port}/tokens/{token_id}/revoke", method="POST",
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def _column(sqlite_path: str, name: str) -> list[Any]:
    with sqlite3.connect(sqlite_path) as db:
        return [r[0] for r in db.execute(f"select {name} from usage_log")]  # noqa: S608 - a column name of ours


def test_generated_managed_requests_get_the_twins_answers(
    tmp_path: Path, upstreams: tuple[RecordingUpstream, RecordingUpstream]
) -> None:
    out = run_differential(tmp_path, upstreams, seed=11, count=examples(70, deep=2000))
    statuses = out.statuses
    # the comparison means something only if each kind of answer came up
    assert statuses[b"HTTP/1.1 200"] >= 15, statuses
    assert statuses[b"HTTP/1.1 401"] >= 10 and statuses[b"HTTP/1.1 400"] >= 5, statuses
    assert statuses[b"HTTP/1.1 402"] >= 3 and statuses[b"HTTP/1.1 502"] + statuses[b"HTTP/1.1 503"] >= 1, statuses
