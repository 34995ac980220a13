"""The observability twins (plano_fast.wire._obs / _obs_py): the request metrics'
accumulator and the access log's JSON lines, checked against what they replace (bisect on
float seconds; orjson of a dict) and against each other on generated input, including text
a client can put in a model name or a request id: quotes, backslashes, control characters,
non-ASCII and lone surrogates."""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plano_fast.access_log import FIELDS, RECORD, AccessLog
from plano_fast.wire import LATENCY_BUCKETS_S, _obs_py

try:
    from plano_fast.wire import _obs as _compiled_obs
except ImportError:  # the extension is not built: only the twin is tested
    _compiled_obs = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    assert _compiled_obs is not None, "the compiled observability module was not built"

MODULES: list[Any] = [_obs_py] + ([_compiled_obs] if _compiled_obs is not None else [])
IDS = ["python", "cython"][: len(MODULES)]
LABELS = ("firewall", "openai", "gpt-4o-mini", "chat_completions")
T0 = 1_764_900_000_000_000_000  # 2025-12-05T02:00:00Z, ns


def reference_line(values: tuple[Any, ...]) -> bytes:
    """The line as the access log wrote it before the compiled writer (a dict, orjson)."""
    (started_ns, request_id, mode, project, key_hash, provider, model, endpoint, status, outcome,
     stream, input_tokens, output_tokens, cache_read_tokens, reasoning_tokens, ended_ns, head_ns,
     sent_ns, attempts, client, guardrails, route, attempt_trail) = values  # fmt: skip
    seconds, ns = divmod(started_ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    duration_us = (ended_ns - started_ns) // 1000
    upstream_us = (ended_ns - sent_ns) // 1000 if sent_ns else None
    record = {
        "time": f"{stamp}.{ns // 1_000_000:03d}Z", "request_id": request_id, "mode": mode,
        "project": project, "key": key_hash[:12] if key_hash else None, "provider": provider,
        "model": model, "endpoint": endpoint, "status": status, "outcome": outcome, "stream": stream,
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cache_read_tokens": cache_read_tokens, "reasoning_tokens": reasoning_tokens,
        "duration_ms": duration_us / 1000,
        "ttft_ms": (head_ns - started_ns) // 1000 / 1000 if head_ns else None,
        "upstream_ms": upstream_us / 1000 if upstream_us is not None else None,
        "overhead_us": duration_us - upstream_us if upstream_us is not None else None,
        "attempts": attempts, "client": client, "guardrails": guardrails, "route": route,
        "attempt_trail": attempt_trail,
    }  # fmt: skip
    assert tuple(record) == FIELDS
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def record(**changes: Any) -> tuple[Any, ...]:
    base = dict(zip(RECORD, (
        T0 + 123_456_789, "req-1f-2a", "firewall", "project-1", "ab" * 32, "openai", "gpt-4o-mini",
        "chat_completions", 200, "ok", False, 12, 30, 0, 0, T0 + 125_456_789, 0, T0 + 123_606_789, 1,
        "127.0.0.1:40312", None, None, None,
    )))  # fmt: skip
    base.update(changes)
    return tuple(base.values())


HOSTILE = [
    'quote " and backslash \\ and slash /',
    "controls \x00\x01\x08\t\n\x0b\x0c\r\x1f\x7f end",
    "non-ascii é ü ß 中文 \u2028\u2029 \U0001f600",
    # NEL, LS, PS: line breaks for str.splitlines(); raw, a model name could forge a line
    'x\x85{"status":200}\u2028{"model":"forged"}\u2029y',
    "lone \ud800 high, lone \udfff low, pair \ud83d\ude00 as two",
    "",
    "a" * 5000,
]


@pytest.mark.parametrize("mod", MODULES, ids=IDS)
@pytest.mark.parametrize("text", HOSTILE)
def test_text_fields_are_escaped_and_read_back(mod: Any, text: str) -> None:
    values = record(request_id=text, model=text, route=text, guardrails=[text, "pii"], attempt_trail=text,
                    provider=text, client=text, project=text)  # fmt: skip
    out = mod.lines([values])
    assert out.endswith(b"\n") and out.count(b"\n") == 1  # one line, whatever the text
    assert len(out.decode("utf-8", "surrogatepass").splitlines()) == 1  # for every reader of lines
    doc = json.loads(out)
    assert list(doc) == list(FIELDS)
    # what JSON can say of the text: itself, except that two surrogates in a row that make
    # a pair read back as the one character they encode (the stdlib's round trip)
    expected = json.loads(json.dumps(text))
    for field in ("request_id", "model", "route", "attempt_trail", "provider", "client", "project"):
        assert doc[field] == expected, field
    assert doc["guardrails"] == [expected, "pii"]
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # orjson refuses lone surrogates
        assert out == unicode_breaks_escaped(reference_line(values))


def unicode_breaks_escaped(line: bytes) -> bytes:
    """orjson's line with NEL, LS and PS escaped, as the writer does (orjson keeps them raw)."""
    for char in ("\x85", "\u2028", "\u2029"):
        line = line.replace(char.encode(), b"\\u%04x" % ord(char))
    return line


@pytest.mark.parametrize("mod", MODULES, ids=IDS)
def test_the_derived_fields(mod: Any) -> None:
    doc = json.loads(mod.lines([record(head_ns=T0 + 124_000_999, stream=True)]))
    assert doc["time"] == "2025-12-05T02:00:00.123Z"
    assert doc["key"] == "abababababab"
    assert doc["duration_ms"] == 2.0 and doc["upstream_ms"] == 1.85 and doc["overhead_us"] == 150
    assert doc["ttft_ms"] == 0.544 and doc["stream"] is True
    doc = json.loads(mod.lines([record(sent_ns=0, key_hash=None)]))
    assert doc["upstream_ms"] is None and doc["overhead_us"] is None and doc["ttft_ms"] is None
    assert doc["key"] is None


@pytest.mark.parametrize("mod", MODULES, ids=IDS)
def test_a_value_of_another_type_is_refused(mod: Any) -> None:
    with pytest.raises(TypeError):
        mod.lines([record(model=b"bytes")])
    with pytest.raises(ValueError):
        mod.lines([record()[:-1]])


#: any code point, surrogates included (hypothesis leaves them out by default)
_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=40)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), _text)
_ns = st.integers(T0 - 10**12, T0 + 10**12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(_text, min_size=8, max_size=8),
    ints=st.lists(st.one_of(st.none(), st.integers(-(2**70), 2**70)), min_size=6, max_size=6),
    stamps=st.tuples(_ns, _ns, st.one_of(st.just(0), _ns), st.one_of(st.just(0), _ns)),
    extra=st.tuples(_scalar, st.one_of(st.none(), st.lists(_text, max_size=3)), st.booleans()),
)
def test_the_twins_write_the_same_bytes(
    texts: list[str], ints: list[int | None], stamps: tuple[int, int, int, int], extra: tuple[Any, Any, bool]
) -> None:
    started, ended, head, sent = stamps
    values = record(
        started_ns=started, ended_ns=ended, head_ns=head, sent_ns=sent, request_id=texts[0], mode=texts[1],
        project=texts[2], key_hash=texts[3], provider=texts[4], model=texts[5], endpoint=texts[6],
        outcome=texts[7], status=ints[0], input_tokens=ints[1], output_tokens=ints[2],
        cache_read_tokens=ints[3], reasoning_tokens=ints[4], attempts=ints[5], client=extra[0],
        guardrails=extra[1], stream=extra[2], route=texts[5], attempt_trail=texts[0],
    )  # fmt: skip
    outs = [mod.lines([values, values]) for mod in MODULES]
    assert all(out == outs[0] for out in outs)
    first = outs[0].split(b"\n")[0]
    doc = json.loads(first)
    readback = [json.loads(json.dumps(t)) for t in texts]  # surrogate pairs combined, as JSON does
    assert doc["model"] == readback[5] and doc["request_id"] == readback[0] and doc["status"] == ints[0]
    assert doc["key"] == (json.loads(json.dumps(texts[3][:12])) or None)
    strings = [v for v in texts + [extra[0]] + (extra[1] or []) if isinstance(v, str)]
    numbers = [v for v in ints + [extra[0]] if isinstance(v, int)]
    # orjson (the reference) refuses lone surrogates and integers beyond 64 bits
    if not any(0xD800 <= ord(c) <= 0xDFFF for t in strings for c in t) and all(
        -(2**63) <= n < 2**64 for n in numbers
    ):
        assert first + b"\n" == unicode_breaks_escaped(reference_line(values))


# -- the metrics accumulator ----------------------------------------------------------------


def reference_observe(durations: list[tuple[int, int, int, int]]) -> tuple[list[float] | None, ...]:
    """The histograms as RequestMetrics computed them before (bisect on float seconds)."""
    rows: list[list[float] | None] = [None, None, None, None]

    def add(i: int, seconds: float) -> None:
        row = rows[i] = rows[i] or [0.0] * (len(LATENCY_BUCKETS_S) + 2)
        row[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        row[-1] += seconds

    for started, ended, sent, head in durations:
        duration_s = (ended - started) / 1e9
        add(0, duration_s)
        if sent:
            upstream_s = (ended - sent) / 1e9
            add(1, upstream_s)
            # the overhead from the integer readings (before: duration_s - upstream_s, whose
            # float rounding could cross a bucket bound the exact difference does not)
            add(3, max(sent - started, 0) / 1e9)
        if head:
            add(2, (head - started) / 1e9)
    return tuple(rows)


BOUNDARY_NS = [round(b * 1e9) + d for b in LATENCY_BUCKETS_S for d in (-1, 0, 1)] + [0, 1, 10**12]


@pytest.mark.parametrize("mod", MODULES, ids=IDS)
def test_buckets_match_bisect_on_seconds_at_every_bound(mod: Any) -> None:
    table = mod.RouteTable()
    readings = [(T0, T0 + d, 0, 0) for d in BOUNDARY_NS]
    for started, ended, sent, head in readings:
        table.observe_ns(LABELS, 200, started, ended, sent, head, None)
    hists = table.routes[LABELS].hists
    ref = reference_observe(readings)
    assert hists[0][:-1] == ref[0][:-1]  # type: ignore[index]
    assert hists[0][-1] == pytest.approx(ref[0][-1])  # type: ignore[index]
    assert hists[1:] == [None, None, None]


_reading = st.tuples(
    st.integers(0, 400 * 10**9), st.one_of(st.just(None), st.integers(0, 400 * 10**9)),
    st.one_of(st.just(None), st.integers(1, 400 * 10**9)), st.integers(-5, 700),
    st.one_of(st.none(), st.tuples(*[st.integers(0, 10**7)] * 5)), st.sampled_from(["a", "b"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_reading, max_size=40))
def test_the_twins_count_the_same(readings: list[Any]) -> None:
    tables = [mod.RouteTable() for mod in MODULES]
    plain: list[tuple[int, int, int, int]] = []
    for duration, upstream, ttft, status, tokens, model in readings:
        ended = T0 + duration
        sent = ended - upstream if upstream is not None and upstream <= duration else 0
        head = T0 + ttft if ttft is not None else 0
        if model == "a":
            plain.append((T0, ended, sent, head))
        for table in tables:
            table.observe_ns(("m", "p", model, "e"), status, T0, ended, sent, head, tokens)
    views = [
        {k: (s.statuses, s.hists, s.tokens) for k, s in table.routes.items()} for table in tables
    ]
    assert all(view == views[0] for view in views)
    stats = views[0].get(("m", "p", "a", "e"))
    ref = reference_observe(plain)
    if stats is None:
        assert not plain
        return
    for got, want in zip(stats[1], ref):
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert got[:-1] == want[:-1]
            assert got[-1] == pytest.approx(want[-1], rel=1e-9, abs=1e-12)
    assert sum(stats[0]) == sum(1 for r in readings if r[5] == "a")


@pytest.mark.parametrize("mod", MODULES, ids=IDS)
def test_lines_of_any_iterable(mod: Any) -> None:
    records = [record(request_id=f"r{i}") for i in range(3)]
    assert mod.lines(iter(records)) == mod.lines(records) == mod.lines(tuple(records))
    assert mod.lines([]) == b""


@pytest.mark.parametrize("mod", MODULES, ids=IDS)
def test_has_header(mod: Any) -> None:
    headers = [(b"host", b"x"), (b"traceparent", b"00-..."), (b"content-length", b"2")]
    assert mod.has_header(headers, b"traceparent")
    assert not mod.has_header(headers[:1] + headers[2:], b"traceparent")
    assert not mod.has_header([(b"traceparentx", b""), (b"traceparen", b"")], b"traceparent")
    assert not mod.has_header([], b"traceparent")
    assert mod.has_header(tuple(headers), b"traceparent") and not mod.has_header((), b"traceparent")


@pytest.mark.parametrize("mod", MODULES, ids=IDS)
def test_has_header_of_a_fast_path_request(mod: Any) -> None:
    """A request the fast path parsed hands over ``RequestHeaders`` (its pairs made on
    first use): asked as the list of its pairs would be."""
    _request = pytest.importorskip("plano_fast.wire._request", reason="the Cython extension is not built")
    for lines in (b"Host: x\r\nTraceParent: 00-a\r\n", b"Host: x\r\nTraceparentx: 0\r\nTraceparen: 0\r\n",
                  b"traceparent:0\r\nHost: x\r\n", b"Host: x\r\n"):
        parsed = _request.parse_request(b"GET / HTTP/1.1\r\n" + lines + b"\r\n", 0, 4096, 4096)
        assert parsed is not None
        for name in (b"traceparent", b"host", b"traceparen"):
            assert mod.has_header(parsed[2], name) is mod.has_header(list(parsed[2]), name)
        assert mod.has_header(parsed[2], b"traceparent") is (b"parent:" in lines.lower())


def test_a_bad_record_costs_its_own_line_only(tmp_path: Any) -> None:
    log = AccessLog(str(tmp_path / "access.jsonl"))
    log.open()
    log.record(record(request_id="first"))
    log.record(record(model=object()))  # a writer bug, not a client's text
    log.record(record(request_id="third"))
    log.flush()
    log._out.close()  # type: ignore[union-attr]
    docs = [json.loads(line) for line in (tmp_path / "access.jsonl").read_text().splitlines()]
    assert [d["request_id"] for d in docs] == ["first", "third"]



@pytest.mark.parametrize("mod", MODULES, ids=IDS)
def test_record_appender_appends_to_the_pending_list(mod: Any) -> None:
    """``AccessLog.record``: an append to the very list the writer empties, every record
    kept as it came, in order (the compiled one also takes a record of scalars out of the
    cyclic GC: records wait for the writer by the thousand)."""
    import gc

    pending: list[Any] = []
    record = mod.record_appender(pending)
    scalars = (1, "a", None, 2.5, True, 10**30)
    held = (1, ["guard"], None)
    other = [1, 2]
    for values in (scalars, held, other):
        record(values)
    assert pending == [scalars, held, other] and pending[0] is scalars and pending[2] is other
    assert gc.is_tracked(held)
    if mod is not _obs_py:
        assert not gc.is_tracked(scalars)
    log = AccessLog("stdout")
    log.record(scalars)
    assert log._pending == [scalars]
