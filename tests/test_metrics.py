"""Metrics that add up across workers, and the JSON access log (issue 21), parsed with the
official prometheus_client parser, over real sockets with --workers 2."""

from __future__ import annotations

import json
import random
import re
import threading
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.metrics import (
    LATENCY_BUCKETS_S,
    MAX_MODELS,
    Merged,
    RequestMetrics,
    read_snapshots,
    render,
    retire_snapshot,
)
from tests.gateway_proc import ROOT, GatewayProcess

ADMIN_KEY = "admin-key-for-metrics-tests-0123456789"


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_snapshots_add_up_and_parse() -> None:
    a, b = RequestMetrics(), RequestMetrics()
    labels = ("config", "openai", "gpt-4o-mini", "chat_completions")
    for m, n in ((a, 3), (b, 4)):
        for i in range(n):
            m.observe(labels, 200, 0.002 * (i + 1), 0.0015 * (i + 1), None, (10, 5, 2, 0, 1))
    b.observe(labels, 503, 0.5, 0.5, None, None)
    b.error("upstream")
    merged = Merged()
    merged.add(a.snapshot(), {"rows_written": 2, "last_flush_s": 1.5})
    merged.add(json.loads(json.dumps({**b.snapshot(), "process": {"rows_written": 3, "last_flush_s": 0.5}})))
    fams = families(render(merged).decode())
    names = ("mode", "provider", "model", "endpoint", "status")
    requests = {tuple(s.labels[n] for n in names): s.value for s in fams["plano_fast_requests"].samples}
    assert requests == {labels + ("2xx",): 7, labels + ("5xx",): 1}
    hist = {s.name + str(s.labels.get("le")): s.value for s in fams["plano_fast_request_duration_seconds"].samples}
    assert hist["plano_fast_request_duration_seconds_countNone"] == 8
    assert hist["plano_fast_request_duration_seconds_bucket+Inf"] == 8
    assert hist[f"plano_fast_request_duration_seconds_bucket{LATENCY_BUCKETS_S[0]!r}"] == 0
    overhead = [s for s in fams["plano_fast_gateway_overhead_seconds"].samples if s.name.endswith("_sum")]
    assert abs(overhead[0].value - sum(0.0005 * (i + 1) for i in range(3)) - sum(0.0005 * (i + 1) for i in range(4))) < 1e-9
    tokens = {s.labels["kind"]: s.value for s in fams["plano_fast_tokens"].samples}
    assert tokens == {"input": 70, "output": 35, "cache_read": 14, "cache_write": 0, "reasoning": 7}
    assert fams["plano_fast_rows_written"].samples[0].value == 5  # summed over workers
    assert fams["plano_fast_last_flush_s"].samples[0].value == 1.5  # the largest worker's


def test_model_label_is_bounded() -> None:
    m = RequestMetrics()
    assert [m.model_label(f"m{i}") for i in range(MAX_MODELS)] == [f"m{i}" for i in range(MAX_MODELS)]
    assert m.model_label("one-more") == "other" and m.model_label("m0") == "m0"


def scrape_text(gateway: GatewayProcess) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{gateway.admin_port}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.read().decode())


def scrape(gateway: GatewayProcess) -> dict[str, Any]:
    return families(scrape_text(gateway))


def request_counts(fams: dict[str, Any]) -> dict[str, float]:
    """plano_fast_requests_total by model."""
    counts: dict[str, float] = {}
    for s in fams["plano_fast_requests"].samples if "plano_fast_requests" in fams else ():
        if s.name == "plano_fast_requests_total":
            counts[s.labels["model"]] = counts.get(s.labels["model"], 0) + s.value
    return counts


def test_two_workers_one_scrape_gives_the_whole_instance(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> None:
    log_path = tmp_path / "access.jsonl"
    gateway = make_gateway(
        {"admin_port": 0, "admin_key": ADMIN_KEY, "access_log": str(log_path), "metrics_publish_interval_s": 0.25},
        workers=2,
    )
    sent = {"gpt-4o-mini": 0, "claude-sonnet-4-6": 0}
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client-SECRET", max_retries=0) as client:
        for _ in range(30):
            model = random.choice(list(sent))
            stream = random.random() < 0.5
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=stream
            )
            if stream:
                for _ in reply:  # type: ignore[union-attr]
                    pass
            sent[model] += 1
        try:
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        except openai.BadRequestError:
            pass
    # Each worker publishes every 0.25 s: once a scrape gives the whole instance's count,
    # both workers' snapshots hold every request (the sum is whole only then); and the rows
    # are flushed and priced (checked below) within a few flush intervals.
    def settled(fams: dict[str, Any]) -> bool:
        if "plano_fast_cost_nano_usd" not in fams or request_counts(fams) != sent:
            return False
        priced = {s.labels["model"] for s in fams["plano_fast_cost_nano_usd"].samples
                  if s.name.endswith("_total") and s.value > 0}  # fmt: skip
        return {m for m, n in sent.items() if n} <= priced

    deadline = time.monotonic() + 10
    while not settled(scrape(gateway)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(8):  # each scrape lands on either worker: every one gives the total
        fams = scrape(gateway)
        assert request_counts(fams) == sent
        errors = {s.labels["type"]: s.value for s in fams["plano_fast_errors"].samples}
        assert errors.get("client") == 1
        ttft = [s for s in fams["plano_fast_time_to_first_token_seconds"].samples if s.name.endswith("_count")]
        assert sum(s.value for s in ttft) >= 1
    # the rows were flushed and priced: their cost, by provider and model (both models have
    # a bundled price), and the flush's duration
    cost = {s.labels["model"]: s.value for s in fams["plano_fast_cost_nano_usd"].samples if s.name.endswith("_total")}
    assert {m for m, n in sent.items() if n} <= {m for m, v in cost.items() if v > 0}
    flushes = [s for s in fams["plano_fast_usage_flush_duration_seconds"].samples if s.name.endswith("_count")]
    assert flushes and flushes[0].value >= 1
    # every series the Grafana dashboard queries is in a real scrape
    # (names as written in the exposition, which is what Prometheus stores; the client
    # parser renames counters to *_total)
    exposed = set(re.findall(r"(?m)^(plano_fast_[a-z_]+)", scrape_text(gateway)))
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "plano_fast.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"plano_fast_[a-z_]+", target["expr"])
    }
    assert len(queried) >= 12 and queried - exposed == set()
    gateway.stop()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(lines) == 31  # the refused request (unknown model) has its line too
    refused = [line for line in lines if line["outcome"] == "refused"]
    assert [(r["status"], r["model"], r["attempt_trail"]) for r in refused] == [(400, "no-such-model", "model_not_found")]
    lines = [line for line in lines if line["outcome"] != "refused"]
    assert {line["model"] for line in lines} <= {"gpt-4o-mini", "claude-sonnet-4-6"}
    first = lines[0]
    assert first["mode"] == "config" and first["status"] == 200 and first["endpoint"] == "chat_completions"
    assert first["duration_ms"] > 0 and first["overhead_us"] is not None and first["client"].startswith("127.0.0.1:")
    assert "SECRET" not in log_path.read_text()


def test_server_timing_header_on_request(make_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = make_gateway({"server_timing": "true"})
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    timing = raw.headers["server-timing"]
    match = re.fullmatch(r"gateway;dur=([0-9.]+), upstream;dur=([0-9.]+)", timing)
    assert match is not None and float(match.group(1)) < 1000
    off = make_gateway()
    with openai.OpenAI(base_url=off.url + "/v1", api_key="sk-client", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert "server-timing" not in raw.headers


def test_counters_never_go_down_between_scrapes_of_two_workers(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """Scrapes faster than the workers publish, while requests flow: each lands on
    either worker, and the instance's request count never goes down from one to the next
    (Prometheus would take that for a counter reset and count everything again)."""
    # publishing every 0.25 s: the 1.5 s of scrapes span 6 publications (4 s spanned 4)
    gateway = make_gateway({"admin_port": 0, "admin_key": ADMIN_KEY, "metrics_publish_interval_s": 0.25}, workers=2)
    done = threading.Event()
    sent = 0

    def load() -> None:
        nonlocal sent
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
            while not done.is_set():
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
                sent += 1

    thread = threading.Thread(target=load)
    thread.start()
    totals = []
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            fams = scrape(gateway)
            totals.append(sum(s.value for s in fams["plano_fast_requests"].samples if s.name.endswith("_total")))
            time.sleep(0.03)
    finally:
        done.set()
        thread.join()
    assert sent > 20 and totals[-1] > 0
    assert all(b >= a for a, b in zip(totals, totals[1:])), totals


def test_a_retiring_worker_is_read_once(tmp_path: Path) -> None:
    """retire_snapshot writes retired-<pid>.json before removing <pid>.json: a scrape in
    between reads the worker once, not twice (its counters would jump, then fall back)."""
    m = RequestMetrics()
    m.observe(("config", "openai", "gpt-4o-mini", "chat_completions"), 200, 0.01, 0.009, None, None)
    snap = {**m.snapshot(), "process": {"rows_written": 1, "client_connections": 3}}
    (tmp_path / "101.json").write_text(json.dumps(snap))
    (tmp_path / "202.json").write_text(json.dumps(snap))
    retired = {**snap, "process": {"rows_written": 1}}  # as retire_snapshot writes it
    (tmp_path / "retired-101.json").write_text(json.dumps(retired))  # both there: mid-retire
    merged = Merged()
    for s in read_snapshots(tmp_path):
        merged.add(s)
    assert sum(merged.requests.values()) == 2
    retire_snapshot(tmp_path, 202)
    assert not (tmp_path / "202.json").exists()
    merged = Merged()
    for s in read_snapshots(tmp_path):
        merged.add(s)
    assert sum(merged.requests.values()) == 2 and merged.process["rows_written"] == 2
    assert "client_connections" not in merged.process  # gauges of dead workers are dropped


def test_a_provider_that_cannot_be_reached_is_one_upstream_error(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    """A connect failure is settled by its exchange (errors_total{type="upstream"}) and then
    answered by the server as a 502: counted once, not once more as a gateway refusal."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    gateway = make_gateway({"admin_port": 0, "admin_key": ADMIN_KEY}, extra_providers=f"""\
  - name: down
    model: openai/gpt-4.1-nano
    base_url: http://127.0.0.1:{closed_port}
    access_key: sk-server-openai-key
""")
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="gpt-4.1-nano", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502
    # Published once a second; both counts (were there two) happened before the client had
    # its 502, so the first snapshot with one holds the other too.
    deadline = time.monotonic() + 10
    while not (errors := {s.labels["type"]: s.value for s in scrape(gateway)["plano_fast_errors"].samples}):
        assert time.monotonic() < deadline, "no error counted"
        time.sleep(0.05)
    assert errors == {"upstream": 1}
