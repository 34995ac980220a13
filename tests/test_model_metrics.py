"""model_metrics_sources (issue 23): Plano's cost and latency sources feeding
``selection_policy``.  Pure parsing with the expectations of Plano's own unit tests
(katanemo/plano 0.4.36 ``crates/brightstaff/src/router/model_metrics.rs`` tests), then a
gateway over real sockets against a tiny fake Prometheus HTTP API and a fake models.dev
catalog, both served by this file."""
from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast import model_metrics as MM
from plano_fast.config import ConfigError, parse_config
from tests.gateway_proc import GatewayProcess
from tests.test_metrics import ADMIN_KEY, scrape_text
from tests.test_preference_routing import FakeRouter, Http, client, last_model

# -- pure --------------------------------------------------------------------------------


def test_sources_parse_as_plano_s_schema() -> None:
    sources, errors = MM.parse_sources([
        {"type": "cost", "provider": "models.dev", "refresh_interval": 3600,
         "model_aliases": {"openai/gpt-oss-120b": "openai/gpt-4o"}},
        {"type": "latency", "provider": "prometheus", "url": "http://prometheus:9090",
         "query": "avg by (model_name) (rate(plano_llm_latency_seconds_sum[5m]))", "refresh_interval": 60},
    ])  # fmt: skip
    assert errors == []
    assert sources == (
        MM.CostSource("models.dev", "https://models.dev/api.json", 3600, {"openai/gpt-oss-120b": "openai/gpt-4o"}),
        MM.LatencySource("http://prometheus:9090", "avg by (model_name) (rate(plano_llm_latency_seconds_sum[5m]))", 60),
    )
    assert MM.parse_sources([{"type": "cost", "provider": "digitalocean"}])[0] == (
        MM.CostSource("digitalocean", MM.DO_PRICING_URL),
    )
    _, errors = MM.parse_sources([
        {"type": "cost", "provider": "openrouter"},
        {"type": "latency", "provider": "prometheus", "url": "http://p:9090"},
        {"type": "latency", "provider": "datadog", "url": "http://p", "query": "q"},
        {"type": "throughput"},
        {"type": "cost", "provider": "models.dev", "refresh_interval": 0, "query": "q"},
        {"type": "cost", "provider": "digitalocean"},
    ])  # fmt: skip
    got = {(".".join(map(str, loc)), msg.split(",")[0].split(":")[0]) for loc, msg in errors}
    assert got == {
        ("model_metrics_sources.0.provider", "expected digitalocean or models.dev"),
        ("model_metrics_sources.1.query", "required"),
        ("model_metrics_sources.2.provider", "expected prometheus"),
        ("model_metrics_sources.3.type", "expected cost or latency"),
        ("model_metrics_sources.4.refresh_interval", "expected a whole number of seconds >= 1"),
        ("model_metrics_sources.4.query", "unknown field for a cost source"),
        ("model_metrics_sources", "only one cost metrics source is allowed"),
    }


def test_digitalocean_prices_are_per_token_scaled_to_per_million() -> None:
    # Plano's test_parse_do_pricing_scales_per_token_to_per_million, same catalog values
    doc = {"data": [
        {"model_id": "digitalocean/anthropic-claude-4.6-sonnet",
         "pricing": {"input_price_per_million": 3e-6, "output_price_per_million": 15e-6,
                     "cache_read_input_price_per_million": 3e-7}},
        {"model_id": "digitalocean/openai-gpt-4o",
         "pricing": {"input_price_per_million": 2.5e-6, "output_price_per_million": 10e-6}},
        {"model_id": "no-pricing"},
    ]}  # fmt: skip
    got = MM.parse_digitalocean(doc, {"digitalocean/openai-gpt-4o": "openai/gpt-4o"})
    assert got.keys() == {"digitalocean/anthropic-claude-4.6-sonnet", "openai/gpt-4o"}
    assert got["digitalocean/anthropic-claude-4.6-sonnet"] == pytest.approx(18.0)
    assert got["openai/gpt-4o"] == pytest.approx(12.5)
    with pytest.raises(ValueError):
        MM.parse_digitalocean({"models": []}, {})


def test_models_dev_keys_are_provider_slash_model_plus_the_bare_id() -> None:
    # Plano's test_parse_models_dev_pricing_composes_provider_keys / _applies_aliases
    doc = {
        "anthropic": {"models": {"claude-opus-4-5": {"cost": {"input": 5.0, "output": 25.0, "cache_read": 0.5}}}},
        "groq": {"models": {"llama-3.3-70b-versatile": {"cost": {"input": 0.59, "output": 0.79}},
                            "whisper-large-v3-turbo": {"cost": None}}},
    }  # fmt: skip
    got = MM.parse_models_dev(doc, {})
    assert got["anthropic/claude-opus-4-5"] == 30.0 and got["claude-opus-4-5"] == 30.0
    assert got["groq/llama-3.3-70b-versatile"] == pytest.approx(1.38)
    assert "groq/whisper-large-v3-turbo" not in got
    aliased = MM.parse_models_dev({"openai": {"models": {"gpt-oss-120b": {"cost": {"input": 1.0, "output": 2.0}}}}},
                                  {"openai/gpt-oss-120b": "openai/gpt-4o"})  # fmt: skip
    assert aliased["openai/gpt-4o"] == 3.0 and "openai/gpt-oss-120b" not in aliased


def test_prometheus_answer_and_plano_s_ranking() -> None:
    doc = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"model_name": "openai/gpt-4o"}, "value": [1700000000.1, "1.20"]},
        {"metric": {"model_name": "openai/gpt-4o-mini"}, "value": [1700000000.1, "0.40"]},
        {"metric": {"job": "no model label"}, "value": [1700000000.1, "0.1"]},
        {"metric": {"model_name": "x"}, "value": [1700000000.1, "not a number"]},
    ]}}  # fmt: skip
    assert MM.parse_prometheus(doc) == {"openai/gpt-4o": 1.2, "openai/gpt-4o-mini": 0.4}
    with pytest.raises(ValueError):
        MM.parse_prometheus({"status": "error", "error": "bad query"})
    # Plano's rank_by_ascending_metric tests: lowest first; no data last in order; NaN = none
    assert MM.rank_by(("a", "b", "c"), {"a": 0.01, "b": 0.005, "c": 0.02}) == ["b", "a", "c"]
    assert MM.rank_by(("x", "y"), {}) == ["x", "y"]
    assert MM.rank_by(("a", "b"), {"b": 100.0}) == ["b", "a"]
    assert MM.rank_by(("a", "b", "c", "d"), {"a": math.nan, "b": 0.5, "c": 0.1}) == ["c", "b", "a", "d"]


def test_config_carries_the_sources_and_validate_no_longer_lists_them() -> None:
    base = """\
version: v0.4.0
model_providers:
  - {model: openai/gpt-4o-mini, access_key: k, default: true}
  - {model: openai/gpt-4o, access_key: k}
  - {name: router, model: arch/Arch-Router, base_url: "http://127.0.0.1:1", provider_interface: openai}
"""
    routes = """\
routing_preferences:
  - {name: code, description: writes code, models: [openai/gpt-4o, openai/gpt-4o-mini], selection_policy: {prefer: fastest}}
overrides: {llm_routing_model: arch/Arch-Router}
"""
    sources = "model_metrics_sources:\n  - {type: latency, provider: prometheus, url: 'http://127.0.0.1:9', query: up}\n"
    cfg = parse_config(base + routes + sources, source="c.yaml", env={})
    assert cfg.preference_routing is not None
    assert cfg.preference_routing.metrics_sources == (MM.LatencySource("http://127.0.0.1:9", "up"),)
    assert not any("model_metrics_sources" in line for line in cfg.unimplemented)
    # without routes: accepted, with a warning that nothing fetches them
    cfg = parse_config(base + sources, source="c.yaml", env={})
    assert any("model_metrics_sources" in w and "not fetched" in w for w in cfg.warnings)
    with pytest.raises(ConfigError) as exc:
        parse_config(base + routes + "model_metrics_sources:\n  - {type: latency, provider: prometheus}\n",
                     source="c.yaml", env={})  # fmt: skip
    assert "model_metrics_sources[0].url" in str(exc.value) or "model_metrics_sources.0.url" in str(exc.value)


# -- the fake sources ------------------------------------------------------------------


class FakeMetrics:
    """A Prometheus HTTP API (``GET /api/v1/query``) and a models.dev catalog
    (``GET /models.json``); ``fail_*`` turn either into a 500."""

    def __init__(self) -> None:
        self.latency: dict[str, float] = {}
        self.costs: dict[str, dict[str, dict[str, float]]] = {}
        self.fail_latency = False
        self.fail_cost = False
        self.queries: list[str] = []
        self.cost_gets = 0
        me = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/api/v1/query":
                    me.queries.append(parse_qs(url.query)["query"][0])
                    fail = me.fail_latency
                    doc: Any = {"status": "success", "data": {"resultType": "vector", "result": [
                        {"metric": {"model_name": m, "instance": "x"}, "value": [time.time(), repr(v)]}
                        for m, v in me.latency.items()]}}  # fmt: skip
                elif url.path == "/models.json":
                    me.cost_gets += 1
                    fail = me.fail_cost
                    doc = {p: {"id": p, "models": {m: {"id": m, "cost": c} for m, c in models.items()}}
                           for p, models in me.costs.items()}  # fmt: skip
                else:
                    fail, doc = True, None
                out = b'{"status":"error"}' if fail else json.dumps(doc).encode()
                self.wfile.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (500 if fail else 200, len(out), out))  # fmt: skip

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_metrics() -> Iterator[FakeMetrics]:
    m = FakeMetrics()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def fake_router() -> Iterator[FakeRouter]:
    r = FakeRouter()
    yield r
    r.stop()


QUERY = 'histogram_quantile(0.95, sum by (model_name, le) (rate(llm_latency_bucket[5m])))'


def metrics_config(path: Path, fake_port: int, router_port: int, metrics_port: int) -> Path:
    base = f"http://127.0.0.1:{fake_port}"
    path.write_text(f"""\
version: v0.4.0
listeners:
  - {{type: model, name: m, address: 127.0.0.1, port: 12000, timeout: 5s}}
model_providers:
  - {{model: openai/gpt-4o-mini, base_url: {base}, access_key: sk-o, default: true}}
  - {{model: openai/gpt-4o, base_url: {base}, access_key: sk-o}}
  - {{model: openai/gpt-4.1, base_url: {base}, access_key: sk-o}}
  - {{name: arch-router, model: arch/Arch-Router, base_url: "http://127.0.0.1:{router_port}", provider_interface: openai}}
routing_preferences:
  - name: code generation
    description: generating new code snippets, functions, or boilerplate
    models: [openai/gpt-4o, openai/gpt-4.1]
    selection_policy: {{prefer: cheapest}}
overrides: {{llm_routing_model: Arch-Router}}
model_metrics_sources:
  - type: cost
    provider: models.dev
    url: http://127.0.0.1:{metrics_port}/models.json
    refresh_interval: 1
  - type: latency
    provider: prometheus
    url: http://127.0.0.1:{metrics_port}/
    query: '{QUERY}'
    refresh_interval: 1
plano_fast:
  sqlite_path: {path.with_suffix('.db')}
  usage_journal_path: {path.with_suffix('.journal')}
  admin_port: 0
  admin_key: {ADMIN_KEY}
""")
    return path


def wait_for(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


FASTEST_OVERRIDE = [{"name": "code generation", "description": "generating new code",
                     "models": ["openai/gpt-4.1", "openai/gpt-4o", "openai/gpt-4o-mini"],
                     "selection_policy": {"prefer": "fastest"}}]  # fmt: skip


def test_sources_rank_routes_and_fall_back_when_they_fail(
    fake: FakeProviderThread, fake_router: FakeRouter, fake_metrics: FakeMetrics, tmp_path: Path
) -> None:
    fake_metrics.fail_cost = True  # the catalog is down when the gateway starts
    fake_metrics.latency = {"openai/gpt-4o-mini": 0.4, "openai/gpt-4o": 1.2}
    cfg = metrics_config(tmp_path / "c.yaml", fake.port, fake_router.port, fake_metrics.port)
    code = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "write code"}]}
    fastest = {**code, "routing_preferences": FASTEST_OVERRIDE}
    with GatewayProcess(cfg) as gw, Http(gw.port) as h:
        wait_for(lambda: fake_metrics.cost_gets >= 2 and len(fake_metrics.queries) >= 1)
        # no cost figures: the bundled price table (gpt-4.1 is cheaper than gpt-4o there)
        assert h.request("POST", "/routing/v1/chat/completions", code)[1]["models"] == ["openai/gpt-4.1", "openai/gpt-4o"]
        # fastest: Prometheus' figures, the query as configured; gpt-4.1 has none: last
        assert fake_metrics.queries[0] == QUERY
        assert h.request("POST", "/routing/v1/chat/completions", fastest)[1]["models"] == [
            "openai/gpt-4o-mini", "openai/gpt-4o", "openai/gpt-4.1"]
        # the catalog comes back and says gpt-4o is the cheaper: the route follows it
        fake_metrics.costs = {"openai": {"gpt-4o": {"input": 0.1, "output": 0.2}, "gpt-4.1": {"input": 2.0, "output": 8.0}}}
        fake_metrics.fail_cost = False
        wait_for(lambda: h.request("POST", "/routing/v1/chat/completions", code)[1]["models"][0] == "openai/gpt-4o")
        assert h.request("POST", "/routing/v1/chat/completions", code)[1]["models"] == ["openai/gpt-4o", "openai/gpt-4.1"]
        client(gw).chat.completions.create(**code)  # type: ignore[call-overload]
        assert last_model(fake) == "gpt-4o"
        # latency changes are picked up at the next refresh
        fake_metrics.latency = {"openai/gpt-4o-mini": 0.4, "openai/gpt-4o": 0.1, "openai/gpt-4.1": 0.2}
        want = ["openai/gpt-4o", "openai/gpt-4.1", "openai/gpt-4o-mini"]
        wait_for(lambda: h.request("POST", "/routing/v1/chat/completions", fastest)[1]["models"] == want)
        # Prometheus fails for several refreshes: the last good figures are kept, one log line
        fake_metrics.fail_latency = True
        n = len(fake_metrics.queries)
        wait_for(lambda: len(fake_metrics.queries) >= n + 3)
        assert h.request("POST", "/routing/v1/chat/completions", fastest)[1]["models"] == want
        failures = {line.split()[0]: float(line.split()[1]) for line in scrape_text(gw).splitlines()
                    if line.startswith("plano_fast_model_metrics_fetch_failures")}  # fmt: skip
        assert failures["plano_fast_model_metrics_fetch_failures"] >= 4  # 1+ cost, 3+ latency
        fake_metrics.fail_latency = False
        wait_for(lambda: "latency source prometheus answers again" in gw.log_text())
        log = gw.log_text()
    assert log.count("latency source prometheus at") == 1, log
    assert log.count("cost source models.dev at") == 1, log
    assert "cost source models.dev answers again" in log
