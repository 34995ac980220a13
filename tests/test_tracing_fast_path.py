"""Tracing configured: the compiled dispatch takes every request (issue 27).

``plano_fast/gateway/_dispatch.pyx`` sent every request to the pure twin (``dispatch_py``)
whenever ``tracing`` was configured, though at ``random_sampling: 0`` a request without a
``traceparent`` runs nothing of tracing there (``Tracing.may_sample`` says no: no draw, no
span).  Now it asks ``may_sample`` itself and, where the answer is yes, calls the twin's
``trace`` (the draw, the server span) on the exchange it built, where the twin calls it.

1. Compiled vs pure gateways (``PLANO_FAST_PURE_SCANNER=1``), each with its own recording
   upstream and OTLP receiver, at ``random_sampling`` 0 and 100: plain, streamed and pipelined
   requests, one whose ``traceparent`` says not sampled (passed upstream as sent), one whose
   ``traceparent`` samples it (server and attempt spans, the attempt's ``traceparent``
   upstream): the same upstream bytes (the attempt's span id masked), answers, usage rows
   and spans (their ids and times masked).
2. In process, the twin's step counted (``dispatch.new_exchange``, which only the twin
   looks up per request): no request reaches it, with a ``traceparent`` (sampled or not)
   or without; the sampled one's spans are exported.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plano_fast.wire import PURE_ENV
from tests.gateway_proc import GatewayProcess, _migrate, write_config
from tests.test_feature_fast_paths import _chat, _post, _timeless
from tests.test_plain_request import RecordingUpstream, _exchange, _request
from tests.test_tracing import TRACE_ID, Receiver, attrs
from tests.test_whole_answer import _usage

pytest.importorskip("plano_fast.gateway._forward", reason="the Cython extension is not built")
if os.environ.get(PURE_ENV) == "1":  # both gateways would run the twins
    pytest.skip("pure scanner forced by the environment", allow_module_level=True)

SAMPLED = b"traceparent: 00-%s-00f067aa0ba902b7-01\r\n" % TRACE_ID.encode()
NOT_SAMPLED = b"traceparent: 00-%s-00f067aa0ba902b7-00\r\n" % TRACE_ID.encode()
_TRACEPARENT = re.compile(rb"traceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-")


def _masked(m: re.Match[bytes]) -> bytes:
    """An attempt's traceparent with the gateway's own ids masked (random in each
    process), the client's trace and span kept."""
    trace = m.group(1) if m.group(1) == TRACE_ID.encode() else b"<trace>"
    span = m.group(2) if m.group(2) == b"00f067aa0ba902b7" else b"<attempt>"
    return b"traceparent: 00-%s-%s-" % (trace, span)


class TracedUpstream(RecordingUpstream):
    """``RecordingUpstream`` with the gateway's own trace and span ids masked."""

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        return super().answer(conn, _TRACEPARENT.sub(_masked, head), body, on_connection)


@pytest.fixture
def upstreams() -> Iterator[tuple[TracedUpstream, TracedUpstream]]:
    pair = (TracedUpstream(), TracedUpstream())
    yield pair
    for server in pair:
        server.close()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    pair = (Receiver(), Receiver())
    yield pair
    for r in pair:
        r.close()


def _traced_config(path: Path, upstream_port: int, sampling: int = 0) -> Path:
    config = write_config(path, upstream_port)
    with open(config, "a") as f:
        f.write(f"tracing:\n  random_sampling: {sampling}\n  span_attributes:\n    static: {{environment: test}}\n")
    return config


def _otlp_env(receiver: Receiver) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": "100"}


def _spans(receiver: Receiver, count: int) -> list[tuple[Any, ...]]:
    """The receiver's spans once ``count`` arrived: what does not depend on the process
    (ids but the client's trace and parent, times and request ids masked), sorted."""
    deadline = time.monotonic() + 10
    while len(receiver.spans) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    out = []
    for span in receiver.spans:
        a = attrs(span)
        a.pop("plano_fast.request_id", None)
        parent = span.parent_span_id.hex()
        trace = span.trace_id.hex()
        out.append((span.name, span.kind, trace if trace == TRACE_ID else "<trace>",
                    parent if parent == "00f067aa0ba902b7" else bool(parent), sorted(a.items())))
    return sorted(out, key=repr)


@pytest.mark.parametrize("sampling", [0, 100])
def test_traced_config_goes_upstream_as_the_twin(
    upstreams: tuple[TracedUpstream, TracedUpstream], receivers: tuple[Receiver, Receiver], tmp_path: Path,
    sampling: int
) -> None:
    gateways, dbs = [], []
    for name, upstream, receiver, pure in (("compiled", upstreams[0], receivers[0], {}),
                                           ("pure", upstreams[1], receivers[1], {PURE_ENV: "1"})):
        config = _traced_config(tmp_path / f"{name}.yaml", upstream.port, sampling)
        gateways.append(GatewayProcess(config, env={**_otlp_env(receiver), **pure}))
        dbs.append(str(config.with_suffix(".db")))
    cases = {
        "chat": [_request(b"/v1/chat/completions", _chat(), b"")],
        "stream": [_request(b"/v1/chat/completions", _chat(stream=True), b"")],
        "pipelined": [_request(b"/v1/chat/completions", _chat(), b""),
                      _request(b"/v1/chat/completions", _chat(stream=True), b"")],
        "traceparent, not sampled": [_request(b"/v1/chat/completions", _chat(), NOT_SAMPLED)],
        "traceparent, sampled": [_request(b"/v1/chat/completions", _chat(), SAMPLED)],
    }
    with gateways[0], gateways[1]:
        for case, requests in cases.items():
            seen = [len(u.seen) for u in upstreams]
            answers = _timeless(_exchange(gateways[0], requests))
            assert _timeless(_exchange(gateways[1], requests)) == answers, case
            assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers), case
            assert upstreams[0].seen[seen[0]:] == upstreams[1].seen[seen[1]:], case
        compiled_rows, twin_rows = _usage(dbs[0], 6), _usage(dbs[1], 6)
        # (at 0 the sampled request's server and attempt spans; at 100 every request's but
        # the one its client's traceparent says not to)
        traced = 2 if sampling == 0 else 10
        spans = _spans(receivers[0], traced), _spans(receivers[1], traced)
    assert len(compiled_rows) == 6 and compiled_rows == twin_rows, (compiled_rows, twin_rows)
    assert sorted(s[1] for s in spans[0]) == [2] * (traced // 2) + [3] * (traced // 2), spans[0]  # SERVER, CLIENT
    assert spans[0] == spans[1]
    assert upstreams[0].seen[-2].count(NOT_SAMPLED) == 1  # passed as sent
    assert b"traceparent: 00-%s-<attempt>-01\r\n" % TRACE_ID.encode() in upstreams[0].seen[-1]
    assert (b"traceparent: 00-<trace>-<attempt>-01\r\n" in upstreams[0].seen[0]) is (sampling == 100)


def test_unsampled_requests_take_the_compiled_dispatch(
    upstreams: tuple[TracedUpstream, TracedUpstream], receivers: tuple[Receiver, Receiver], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: ``dispatch.new_exchange`` is looked up per request by the twin only (the
    compiled dispatch holds its own reference since import)."""
    from plano_fast.gateway import dispatch
    from tests.test_billing_faults import InProcessGateway

    twin_steps: list[str] = []
    real_new_exchange = dispatch.new_exchange

    def counting_new_exchange(*args: Any) -> Any:
        twin_steps.append("dispatch")
        return real_new_exchange(*args)

    monkeypatch.setattr(dispatch, "new_exchange", counting_new_exchange)
    for key, value in _otlp_env(receivers[0]).items():
        monkeypatch.setenv(key, value)
    config = _traced_config(tmp_path / "traced.yaml", upstreams[0].port)
    _migrate(config, dict(os.environ))
    gateway = InProcessGateway(config)
    out = []
    try:
        for headers in (b"", b"", NOT_SAMPLED, SAMPLED, b""):
            twin_steps.clear()
            answer = _post(gateway.url, _chat(), headers)
            out.append((answer.split(b"\r\n", 1)[0], list(twin_steps)))
    finally:
        gateway.stop()
    ok = b"HTTP/1.1 200 OK"
    assert out == [(ok, [])] * 5
    assert sorted(s[1] for s in _spans(receivers[0], 2)) == [2, 3]  # the sampled one's


def test_sampled_requests_end_their_spans_in_the_compiled_settle(
    upstreams: tuple[TracedUpstream, TracedUpstream], receivers: tuple[Receiver, Receiver], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, every request sampled: the spans' ends (``spans.end_attempt`` /
    ``end_server``, called through the module by both builds of ``observe``) are called
    from no Python ``observe`` -- the compiled one (``_settle.pyx``) ends them itself.
    (Before, a sampled request's observe went to the twin, ``relay.observe_py``.)  The
    spans are the same: the pair test above, at sampling 100."""
    import sys

    from plano_fast import spans
    from tests.test_billing_faults import InProcessGateway

    callers: list[str] = []
    real_end_attempt, real_end_server = spans.end_attempt, spans.end_server

    def caller() -> str:
        code = sys._getframe(2).f_code
        return f"{Path(code.co_filename).name}:{code.co_name}"

    def end_attempt(*args: Any) -> Any:
        callers.append(caller())
        return real_end_attempt(*args)

    def end_server(*args: Any, **kwargs: Any) -> Any:
        callers.append(caller())
        return real_end_server(*args, **kwargs)

    monkeypatch.setattr(spans, "end_attempt", end_attempt)
    monkeypatch.setattr(spans, "end_server", end_server)
    for key, value in _otlp_env(receivers[0]).items():
        monkeypatch.setenv(key, value)
    config = _traced_config(tmp_path / "traced.yaml", upstreams[0].port, sampling=100)
    _migrate(config, dict(os.environ))
    gateway = InProcessGateway(config)
    try:
        answers = [_post(gateway.url, _chat(), headers).split(b"\r\n", 1)[0] for headers in (b"", SAMPLED, b"")]
    finally:
        gateway.stop()
    assert answers == [b"HTTP/1.1 200 OK"] * 3
    assert len(callers) == 6 and "relay.py:observe" not in callers, callers
    assert sorted(s[1] for s in _spans(receivers[0], 6)) == [2, 2, 2, 3, 3, 3]
