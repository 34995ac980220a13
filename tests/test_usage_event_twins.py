"""The request path's UsageEvent constructor (plano_fast.usage.new_usage_event: compiled in
plano_fast/_usage_event.pyx where built) against the dataclass's own ``__init__``, on
generated field values: the same class, every field the same object, the same equality,
repr and pickling; and the relay's call site uses it."""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plano_fast import usage
from plano_fast.usage import UsageEvent

try:
    from plano_fast import _usage_event as _compiled
except ImportError:  # the extension is not built: new_usage_event is the class itself
    _compiled = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    assert _compiled is not None, "the compiled UsageEvent constructor was not built"
    assert usage.new_usage_event is _compiled.new_usage_event

CONSTRUCTORS: list[Any] = [UsageEvent] + ([_compiled.new_usage_event] if _compiled is not None else [])
VALUE = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.floats(allow_nan=False), st.booleans())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(VALUE, min_size=34, max_size=34))
def test_every_field_lands_where_the_dataclass_puts_it(values: list[Any]) -> None:
    names = [f.name for f in dataclasses.fields(UsageEvent)]
    assert len(names) == len(values)
    reference = UsageEvent(*values)
    for make in CONSTRUCTORS:
        event = make(*values)
        assert type(event) is UsageEvent
        assert all(getattr(event, n) is getattr(reference, n) for n in names)
        assert event == reference and repr(event) == repr(reference)
        assert pickle.loads(pickle.dumps(event)) == reference


def test_the_relay_builds_its_events_with_it() -> None:
    import inspect

    from plano_fast.gateway import relay

    assert relay.new_usage_event is usage.new_usage_event
    assert "return new_usage_event(" in inspect.getsource(relay.make_event_py)


def test_compiled_events_of_scalars_leave_the_cyclic_gc() -> None:
    """Events wait for the flush by the hundred: the compiled constructor takes one whose
    fields are all scalars out of the cyclic GC (nothing it refers to can close a cycle),
    and leaves one that holds anything else tracked.  Fields set later stay scalars."""
    import gc

    if _compiled is None:
        return
    values: list[Any] = ["r", 1, "openai", "m", False, "ok", 200, 1, 2, 0, 0, 0, True, "p", "k", None, None,
                         1.5, "openai", 0, 0, 0, 0, "{}", "chat", 0, None, 1, None, None, 0, "flex", 0, 0]  # fmt: skip
    event = _compiled.new_usage_event(*values)
    assert not gc.is_tracked(event) and event == UsageEvent(*values)
    event.status, event.output_tokens = "client_disconnected", 7  # as the relay's settle does
    assert event == UsageEvent(*values[:5], "client_disconnected", 200, 1, 7, *values[9:])
    for i, other in ((23, ["raw"]), (3, b"model"), (17, 1 + 2j)):  # a container, bytes, another type
        held = values.copy()
        held[i] = other
        assert gc.is_tracked(_compiled.new_usage_event(*held)), i


# -- the exchange's event (plano_fast/gateway/_settle.pyx, twin relay.make_event_py) ----

from plano_fast.gateway import relay as _relay  # first: it installs the compiled method it imports

try:
    from plano_fast.gateway import _settle as _compiled_settle
except ImportError:  # the extension is not built: Exchange.make_event is the twin
    _compiled_settle = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    assert _compiled_settle is not None, "the compiled make_event was not built"
    assert _relay.Exchange.make_event is _compiled_settle.make_event
    assert _relay.Exchange.observe is _compiled_settle.observe

#: the twins tests below compare the compiled settle with the Python one: nothing to compare
#: in a pure build (make test builds it; PLANO_FAST_REQUIRE_EXTENSION=1 makes its absence fail above)
needs_compiled_settle = pytest.mark.skipif(_compiled_settle is None, reason="the compiled settle is not built")

#: answers as providers send them: (scan API, streaming, body chunks)
_ANSWERS: list[tuple[int, bool, list[bytes]]] = [
    (1, False, [b'{"id":"c1","model":"gpt-4o-2024","choices":[],"usage":{"prompt_tokens":12,'
                b'"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4},'
                b'"completion_tokens_details":{"reasoning_tokens":2}}}']),
    (1, False, [b'{"id":"c1","choices":[]}']),  # no usage, no model
    (1, True, [b'data: {"id":"c","model":"gpt-4o","choices":[{"delta":{"content":"hi"}}]}\n\n',
               b'data: {"id":"c","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":7,'
               b'"completion_tokens":3}}\n\ndata: [DONE]\n\n']),
    (2, False, [b'{"id":"r","model":"gpt-4.1","usage":{"input_tokens":9,"output_tokens":4,'
                b'"input_tokens_details":{"cached_tokens":1}}}']),
    (1, False, [b'{"id":"c2","model":"gpt-5","service_tier":"flex","choices":[],'  # a service tier
                b'"usage":{"prompt_tokens":12,"completion_tokens":5}}']),
    (3, False, [b'{"id":"m","model":"claude-x","usage":{"input_tokens":3,"output_tokens":4,'
                b'"cache_read_input_tokens":2,"cache_creation_input_tokens":5,"note":"caf\xc3\xa9 \xff"}}']),
    (3, False, [b'{"id":"m","model":"claude-w","usage":{"input_tokens":5,"output_tokens":9,'
                b'"server_tool_use":{"web_search_requests":2}}}']),  # web searches: priced per request
    (3, True, [b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-y",'
               b'"usage":{"input_tokens":11,"output_tokens":1}}}\n\n']),  # cut before message_delta
    (4, False, [b'{"candidates":[],"modelVersion":"gemini-2.0","usageMetadata":{"promptTokenCount":6,'
                b'"candidatesTokenCount":2,"thoughtsTokenCount":1}}']),
]
_TEXT = st.one_of(st.none(), st.text(max_size=6))


@needs_compiled_settle
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=st.sampled_from(_ANSWERS), outcome=st.sampled_from(["ok", "usage_missing", "client_gone"]),
       http_status=st.sampled_from([200, 400, 502]), model=_TEXT, project_id=_TEXT, key_hash=_TEXT,
       requested_model=_TEXT, provider_id=st.text(max_size=6), streaming=st.booleans(),
       attempts=st.integers(0, 2), failed=st.one_of(st.none(), st.lists(st.sampled_from(["503", "connect_error"]),
                                                                          min_size=1, max_size=2)),
       metered=st.booleans(), wire_format=st.sampled_from(["openai", "anthropic", "gemini"]))
def test_the_compiled_event_is_the_twins(
    answer: tuple[int, bool, list[bytes]], outcome: str, http_status: int, model: str | None,
    project_id: str | None, key_hash: str | None, requested_model: str | None, provider_id: str,
    streaming: bool, attempts: int, failed: list[str] | None, metered: bool, wire_format: str,
) -> None:
    """``Exchange.make_event`` compiled against its twin on one exchange with a real scanner
    that read a real answer (or none: not metered; retried): every field the same object
    type and value but the duration (the clock moves between the two calls)."""
    from plano_fast import wire as scan
    from plano_fast.gateway import relay
    from plano_fast.gateway.modes.firewall import FirewallExchange

    class _Ctx:
        timeouts = (1.0, 2.0, 3.0)

    exchange = relay.new_exchange(FirewallExchange, _Ctx(), object(), object())  # type: ignore[arg-type]
    api, stream, chunks = answer
    if metered:
        scanner = scan.UsageScanner(api, stream, False)
        for chunk in chunks:
            scanner.feed(chunk)
        scanner.finish()
        exchange.scanner = scanner
        exchange.scan_api = api
    exchange.model, exchange.project_id, exchange.key_hash = model, project_id, key_hash
    exchange.requested_model, exchange.provider_id, exchange.streaming = requested_model, provider_id, streaming
    exchange.attempts, exchange.failed_attempts, exchange.wire_format = attempts, failed, wire_format
    exchange.status = http_status
    makers: list[Any] = [relay.make_event_py] + (
        [_compiled_settle.make_event] if _compiled_settle is not None else []
    )
    reference = relay.make_event_py(exchange, outcome, http_status)
    for make in makers:
        event = make(exchange, outcome, http_status)
        assert type(event) is UsageEvent
        for field in dataclasses.fields(UsageEvent):
            got, want = getattr(event, field.name), getattr(reference, field.name)
            assert type(got) is type(want), field.name
            if field.name == "duration_ms":
                assert 0 <= got - want < 60_000
            else:
                assert got == want, field.name
    if _compiled_settle is not None:
        with pytest.raises(TypeError):
            _compiled_settle.make_event(object(), outcome, http_status)


@needs_compiled_settle
def test_the_compiled_duration_is_the_twins_arithmetic() -> None:
    """The duration: ``(time.time_ns() - started_ns) / 1e6`` in both (an exchange started
    long ago, so that the double's rounding of a large difference is exercised too)."""
    import time

    from plano_fast import wire as scan
    from plano_fast.gateway import relay

    class _Ctx:
        timeouts = (1.0, 2.0, 3.0)

    exchange = relay.new_exchange(relay.Exchange, _Ctx(), object(), object())  # type: ignore[arg-type]
    exchange.scanner = scan.UsageScanner(1, False, False)
    exchange.scanner.feed(b'{"usage":{"prompt_tokens":1,"completion_tokens":2}}')
    exchange.scanner.finish()
    for started in (exchange.started_ns, 123_456_789_123_456_789, 1):
        exchange.started_ns = started
        for make in [relay.make_event_py] + (
            [_compiled_settle.make_event] if _compiled_settle is not None else []
        ):
            before = (time.time_ns() - started) / 1e6
            got = make(exchange, "ok", 200).duration_ms
            after = (time.time_ns() - started) / 1e6
            assert type(got) is float and before <= got <= after


class _Proto:
    """What a responder reads of its protocol (its transport; the client's address)."""

    def __init__(self) -> None:
        self.transport = object()
        self.peer_text = "10.1.2.3:4567"


@needs_compiled_settle
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=st.sampled_from(["ok", "usage_missing", "upstream_failed", "upstream_error", "client_gone",
                               "client_gone_estimated", "not_billable"]),
       http_status=st.sampled_from([200, 429, 500, 504]), has_usage=st.booleans(), streaming=st.booleans(),
       model=st.one_of(st.none(), st.sampled_from(["gpt-4o", "claude-x"])), metrics_on=st.booleans(),
       access_log=st.booleans(), failed=st.one_of(st.none(), st.lists(st.just("503"), min_size=1, max_size=2)),
       tokens=st.lists(st.integers(0, 10**6), min_size=5, max_size=5), guard_names=st.one_of(st.none(),
                                                                                              st.just(["pii"])))
def test_the_compiled_observe_is_the_twins(
    status: str, http_status: int, has_usage: bool, streaming: bool, model: str | None, metrics_on: bool,
    access_log: bool, failed: list[str] | None, tokens: list[int], guard_names: list[str] | None,
) -> None:
    """``Exchange.observe`` compiled against its twin: the same metrics (requests, tokens,
    errors, one observation per histogram), the same retry counters, the same access-log
    record but for the clock reading it takes."""
    import time

    from plano_fast.access_log import AccessLog
    from plano_fast.gateway import relay
    from plano_fast.gateway.modes.firewall import FirewallExchange
    from plano_fast.http_server import Responder

    makers: list[Any] = [relay.observe_py] + ([_compiled_settle.observe] if _compiled_settle is not None else [])
    seen: list[tuple[Any, ...]] = []
    for observe in makers:
        ctx = relay.ExchangeContext(None, None, lambda e: None, (1.0, 2.0, 3.0))  # type: ignore[arg-type]
        ctx.request_metrics = metrics_on
        ctx.access_log = AccessLog("stdout") if access_log else None
        responder = Responder(_Proto(), True)  # type: ignore[arg-type]
        exchange = relay.new_exchange(FirewallExchange, ctx, object(), responder)  # type: ignore[arg-type]
        exchange.started_ns, exchange.request_id = 1_700_000_000_000_000_000, "0123-1"
        exchange.sent_ns, exchange.head_ns = exchange.started_ns + 2_000_000, exchange.started_ns + 9_000_000
        exchange.streaming, exchange.endpoint_name, exchange.failed_attempts = streaming, "chat_completions", failed
        exchange.project_id, exchange.key_hash, exchange.guard_names = "p1", "kh", guard_names
        event = usage.new_usage_event(
            exchange.request_id, exchange.started_ns, "openai", model, streaming, status, http_status, *tokens,
            has_usage, "p1", "kh", None, None, 12.5, "openai", 0, 0, 0, 0, None, "openai_chat", 0, None,
            len(failed or ()) + 1, None, None, 0, None, 0, 0,
        )
        before = time.time_ns()
        observe(exchange, event)
        after = time.time_ns()
        snap = ctx.metrics.snapshot()
        # (per histogram its +Inf count: the sums hold the clock reading)
        hists = [[(tuple(labels), row[-2]) for labels, row in h] for h in snap["histograms"]]
        record: tuple[Any, ...] = ()
        if access_log:
            assert ctx.access_log is not None and responder.logged is True
            [record] = ctx.access_log._pending
            assert type(record[15]) is int and before <= record[15] <= after
            record = record[:15] + record[16:]
        seen.append((snap["requests"], snap["tokens"], snap["errors"], hists, ctx.requests_retried,
                     ctx.attempts_failed, record))
    for s in seen:
        assert s == seen[0]
    if _compiled_settle is not None:
        with pytest.raises(TypeError):
            _compiled_settle.observe(object(), None)
