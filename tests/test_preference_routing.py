"""Preference routing (issue 23): config, selection and sessions (pure), then over real
sockets with a fake router model (a tiny Arch-Router stand-in that checks the prompt it
receives against Plano's template and answers by keyword) and the official SDKs."""
from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast import preference_routing as PR
from plano_fast.config import ConfigError, parse_config
from plano_fast.pricing import PricingRegistry
from plano_fast.routing import Router
from tests.gateway_proc import GatewayProcess
from tests.test_billing_e2e import read_rows
from tests.test_metrics import ADMIN_KEY, scrape_text
from tests.test_ratelimit import redis_url  # noqa: F401 - the fixture
from tests.test_router_prompt import PLANO_TEMPLATE

ROUTES = [
    ("code generation", "generating new code snippets, functions, or boilerplate"),
    ("general questions", "casual conversation and simple queries"),
]


def expected_prompt(messages: list[dict[str, str]]) -> str:
    """Plano's prompt for short conversations, built from its template (not from the
    implementation): routes as spaced JSON lines, messages as json.dumps(indent=4)."""
    routes = "\n".join(
        json.dumps({"name": n, "description": d,
                    "parameters": {"type": "object", "properties": {}, "required": []}})
        for n, d in ROUTES
    )  # fmt: skip
    conv = json.dumps([{"role": m["role"], "content": m["content"]} for m in messages
                       if m["role"] not in ("system", "developer", "tool")], indent=4)  # fmt: skip
    return PLANO_TEMPLATE.replace("{routes}", routes).replace("{conversation}", conv)


# -- the fake router model ------------------------------------------------------------


class FakeRouter:
    """Answers ``{"route": [...]}`` by keyword in the last user line of the prompt:
    "code" -> code generation, "slow" -> only once ``release_slow()`` is called (a minute
    at most), "garbage" -> not JSON, "legacy" -> the single-route form, else an empty
    list.  Records every prompt."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.delay_s = 0.0
        self._slow_released = threading.Event()
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                router.bodies.append(body)
                prompt = body["messages"][0]["content"]
                router.prompts.append(prompt)
                conv = prompt.split("<conversation>\n", 1)[1].split("\n</conversation>", 1)[0]
                last = json.loads(conv)[-1]["content"]
                if router.delay_s:
                    time.sleep(router.delay_s)
                if "slow" in last:
                    router._slow_released.wait(60)
                if "garbage" in last:
                    content = "I think you want code"
                elif "legacy" in last:
                    content = "{'route': 'code generation'}"
                elif "code" in last:
                    content = '{"route": ["code generation"]}'
                else:
                    content = '{"route": []}'
                out = json.dumps({
                    "id": "r", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode()  # fmt: skip
                # One write: a head and a body in two segments meet Nagle + delayed ACK (40 ms).
                self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(out), out))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release_slow(self) -> None:
        """Let the "slow" answers go (held until now: one the gateway gave up on)."""
        self._slow_released.set()

    def stop(self) -> None:
        self.release_slow()
        self.server.shutdown()
        self.server.server_close()


def routing_yaml(fake_port: int, router_port: int, session_ttl_s: int = 1) -> str:
    """``model_providers`` (three models on the fake provider, the router model on
    ``router_port``), ``routing_preferences``, ``overrides`` and ``routing``: the top-level
    YAML of a preference-routed config (also ``benchmarks/run.py --features routing``)."""
    base = f"http://127.0.0.1:{fake_port}"
    return f"""\
model_providers:
  - {{model: openai/gpt-4o-mini, base_url: {base}, access_key: sk-o, default: true}}
  - {{model: openai/gpt-4o, base_url: {base}, access_key: sk-o}}
  - {{model: openai/gpt-4.1, base_url: {base}, access_key: sk-o}}
  - name: arch-router
    model: arch/Arch-Router
    base_url: http://127.0.0.1:{router_port}
    provider_interface: openai
    access_key: sk-router
routing_preferences:
  - name: code generation
    description: generating new code snippets, functions, or boilerplate
    models: [openai/gpt-4o, openai/gpt-4.1]
    selection_policy: {{prefer: cheapest}}
  - name: general questions
    description: casual conversation and simple queries
    models: [openai/gpt-4o-mini]
overrides: {{llm_routing_model: Arch-Router}}
routing: {{timeout_ms: 300, session_ttl_seconds: {session_ttl_s}}}
"""


def routing_config(path: Path, fake_port: int, router_port: int, *, extra: str = "") -> Path:
    path.write_text(f"""\
version: v0.4.0
listeners:
  - {{type: model, name: m, address: 127.0.0.1, port: 12000, timeout: 5s}}
{routing_yaml(fake_port, router_port)}{extra}plano_fast:
  sqlite_path: {path.with_suffix('.db')}
  usage_journal_path: {path.with_suffix('.journal')}
  usage_flush_interval_s: 1
  price_interval_s: 1
  admin_port: 0
  admin_key: {ADMIN_KEY}
  access_log: {path.with_suffix('.access.log')}
""")
    return path


@pytest.fixture(scope="module")
def fake_router() -> Iterator[FakeRouter]:
    router = FakeRouter()
    yield router
    router.stop()


@pytest.fixture(scope="module")
def routed(fake: FakeProviderThread, fake_router: FakeRouter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    cfg = routing_config(tmp_path_factory.mktemp("pr") / "plano_config.yaml", fake.port, fake_router.port)
    with GatewayProcess(cfg) as proc:
        yield proc


def last_model(fake: FakeProviderThread) -> str:
    return str(fake.requests[-1].json()["model"])


# -- config ----------------------------------------------------------------------------


def parse(text: str) -> Any:
    return parse_config(text, source="c.yaml", env={})


BASE = """\
model_providers:
  - {model: openai/gpt-4o-mini, access_key: k, default: true}
  - {model: openai/gpt-4o, access_key: k}
  - {name: router, model: arch/Arch-Router, base_url: "http://127.0.0.1:1", provider_interface: openai}
"""


def test_v04_top_level_preferences_load() -> None:
    cfg = parse("version: v0.4.0\n" + BASE + """\
routing_preferences:
  - {name: code, description: writes code, models: [openai/gpt-4o, gpt-4o-mini], selection_policy: {prefer: cheapest}}
  - {name: chat, description: small talk, models: [openai/gpt-4o-mini]}
overrides: {llm_routing_model: arch/Arch-Router, orchestrator_model_context_length: 4096}
routing: {session_ttl_seconds: 60, session_max_entries: 50, route_on_user_only: true,
          session_cache: {type: memory, tenant_header: X-Tenant}}
""")
    pr = cfg.preference_routing
    assert pr is not None
    assert [(p.name, p.models, p.prefer) for p in pr.preferences] == [
        ("code", ("openai/gpt-4o", "gpt-4o-mini"), "cheapest"), ("chat", ("openai/gpt-4o-mini",), "none"),
    ]
    assert pr.router_provider.name == "router" and pr.router_model == "Arch-Router"
    assert (pr.session_ttl_s, pr.session_max_entries, pr.route_on_user_only, pr.tenant_header,
            pr.max_token_length) == (60, 50, True, b"x-tenant", 4096)  # fmt: skip
    assert not any("routing" in line for line in cfg.unimplemented)


def test_v03_inline_preferences_are_lifted_and_legacy_routing_model() -> None:
    cfg = parse("""\
version: v0.3.0
model_providers:
  - {model: openai/gpt-4o-mini, access_key: k, default: true}
  - model: openai/gpt-4o
    access_key: k
    routing_preferences: [{name: code understanding, description: explain code}]
  - model: anthropic/claude-sonnet-4-6
    access_key: k
    routing_preferences: [{name: code generation, description: write code}]
  - {name: arch-router, model: arch/Arch-Router, base_url: "http://127.0.0.1:1", provider_interface: openai}
routing: {model: Arch-Router}
""")
    pr = cfg.preference_routing
    assert pr is not None and pr.router_provider.name == "arch-router"
    assert [(p.name, p.models) for p in pr.preferences] == [
        ("code understanding", ("openai/gpt-4o",)), ("code generation", ("anthropic/claude-sonnet-4-6",)),
    ]


def test_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as e:
        parse("version: v0.4.0\n" + BASE + """\
routing_preferences:
  - {name: code, description: d, models: [openai/gpt-5-nope], selection_policy: {prefer: cheap}}
  - {name: code, description: d, models: []}
  - {name: x, description: d, models: [openai/gpt-4o], extra: 1}
routing: {session_max_entries: 20000, session_ttl_seconds: -1, route_on_user_only: "yes"}
""")
    text = str(e.value)
    for needle in (
        "routing_preferences[0].models[0]: 'openai/gpt-5-nope' is not a configured model",
        "routing_preferences[0].selection_policy.prefer: expected one of cheapest, fastest, none",
        "routing_preferences[1].models: required",
        "routing_preferences[2].extra: unknown field",
        "routing.session_max_entries:",
        "routing.session_ttl_seconds:",
        "routing.route_on_user_only:",
    ):
        assert needle in text, (needle, text)
    with pytest.raises(ConfigError, match="routing_preferences: top-level routing_preferences needs version v0.4.0"):
        parse("version: v0.3.0\n" + BASE + "routing_preferences: [{name: a, description: b, models: [openai/gpt-4o]}]\n")
    with pytest.raises(ConfigError, match="routing.llm_provider: no model provider is named 'nope'"):
        parse("version: v0.4.0\n" + BASE + "routing_preferences: [{name: a, description: b, models: [openai/gpt-4o]}]\n"
              "routing: {llm_provider: nope}\n")


def test_no_router_provider_is_a_warning_and_routing_off() -> None:
    cfg = parse("version: v0.4.0\nmodel_providers:\n  - {model: openai/gpt-4o, access_key: k, default: true}\n"
                "routing_preferences: [{name: a, description: b, models: [openai/gpt-4o]}]\n")
    assert cfg.preference_routing is None
    assert any("preference routing is off: no model provider serves the router model 'Plano-Orchestrator'" in w
               for w in cfg.warnings)


# -- selection and sessions -----------------------------------------------------------


def test_cheapest_uses_the_price_table_unknown_last() -> None:
    cfg = parse("version: v0.4.0\n" + BASE.replace("default: true}", "default: true}\n  - {model: openai/gpt-4.1, access_key: k}\n  - {model: custom/mystery, base_url: 'http://127.0.0.1:1', provider_interface: openai}"))
    router = Router(cfg)
    pricing = PricingRegistry()
    models = ("custom/mystery", "openai/gpt-4o", "openai/gpt-4.1", "openai/gpt-4o-mini")
    assert PR.rank(models, "cheapest", router, pricing, None, (1000, 1000)) == [
        "openai/gpt-4o-mini", "openai/gpt-4.1", "openai/gpt-4o", "custom/mystery",
    ]
    assert PR.rank(models, "none", router, pricing, None, (1000, 1000)) == list(models)
    # fastest: the gateway's own measurements; unmeasured models last, in order
    from plano_fast.metrics import RequestMetrics

    m = RequestMetrics()
    m.observe(("config", "openai", "gpt-4o", "chat_completions"), 200, 0.5, 0.4, None, None)
    m.observe(("config", "openai", "gpt-4.1", "chat_completions"), 200, 0.9, 0.8, None, None)
    window = PR.LatencyWindow(m, window_s=300, step_s=10)
    assert PR.rank(models, "fastest", router, pricing, window.means(0.0), (1, 1)) == [
        "openai/gpt-4o", "openai/gpt-4.1", "custom/mystery", "openai/gpt-4o-mini",
    ]
    # gpt-4o slows down: the window follows recent traffic, not the mean since start
    for t in range(1, 40):
        m.observe(("config", "openai", "gpt-4o", "chat_completions"), 200, 2.1, 2.0, None, None)
        window.means(t * 10.0)
    means = window.means(400.0)
    assert means[("openai", "gpt-4o")] == pytest.approx(2.0) and means[("openai", "gpt-4.1")] == pytest.approx(0.8)
    assert PR.rank(models, "fastest", router, pricing, means, (1, 1))[:2] == ["openai/gpt-4.1", "openai/gpt-4o"]
    assert PR.estimate_tokens(400, {"max_tokens": 7}) == (100, 7)
    assert PR.estimate_tokens(400, {}) == (100, 100)


def test_session_cache_expires_and_is_bounded() -> None:
    c = PR.SessionCache(ttl_s=10, max_entries=2)
    c.put("a", ("m1",), "r", now=0)
    c.put("b", ("m2",), None, now=0)
    assert c.get("a", now=5) == (("m1",), "r")  # a is now most recent
    c.put("c", ("m3",), None, now=5)  # evicts b, the least recently used
    assert c.get("b", now=5) is None and len(c) == 2
    assert c.get("a", now=10.5) is None  # expired


def test_a_pinned_decision_is_reused_until_its_session_changes() -> None:
    """``_pinned`` returns the same Decision for a session's unchanged cache entry (no
    frozen dataclass built per pinned request), a new one once the session was decided
    again, and keeps no more decisions than the session cache keeps sessions."""
    r = PR.PreferenceRouter.__new__(PR.PreferenceRouter)
    r.sessions = PR.SessionCache(ttl_s=3600, max_entries=2)
    r._pinned_decisions = {}
    r.pinned_hits = 0
    r.sessions.put("s", ("openai/gpt-4o", "openai/gpt-4.1"), "code generation", time.monotonic())
    first, again = r._pinned("s"), r._pinned("s")
    assert first == PR.Decision(("openai/gpt-4o", "openai/gpt-4.1"), "code generation", True, "s")
    assert again is first and r.pinned_hits == 2
    r.sessions.put("s", ("openai/gpt-4o-mini",), None, time.monotonic())  # decided again
    assert r._pinned("s") == PR.Decision(("openai/gpt-4o-mini",), None, True, "s")
    for session in ("t", "u", "v"):
        r.sessions.put(session, ("openai/gpt-4o",), None, time.monotonic())
        assert r._pinned(session) is not None
    assert len(r._pinned_decisions) <= 2
    assert r._pinned("missing") is None


# -- over sockets ---------------------------------------------------------------------


class Http:
    """A keep-alive HTTP/1.1 client (http.client) for the raw endpoints."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"content-type": "application/json", **(headers or {})}
        self.conn.request(method, path, body=data, headers=hdrs)
        resp = self.conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw


def client(gw: GatewayProcess, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", default_headers=headers, max_retries=0)


def test_code_goes_to_the_routes_cheapest_model_with_plano_s_prompt(
    routed: GatewayProcess, fake: FakeProviderThread, fake_router: FakeRouter
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "you are helpful"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "write code: a quicksort in Python"},
    ]
    raw = client(routed).chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=messages)
    assert raw.headers["x-model-router-selected-route"] == "code generation"
    assert raw.parse().choices[0].message.content
    assert last_model(fake) == "gpt-4.1"  # cheaper than gpt-4o by the price table
    assert fake_router.prompts[-1] == expected_prompt(messages)
    assert fake_router.bodies[-1]["model"] == "Arch-Router" and fake_router.bodies[-1]["temperature"] == 0.01
    # a converted answer (an Anthropic-format client served by the OpenAI route) names the
    # route too: its head is rebuilt, not relayed
    with anthropic.Anthropic(base_url=routed.url, api_key="sk-client", max_retries=0) as ac:
        araw = ac.messages.with_raw_response.create(
            model="openai/gpt-4o-mini", max_tokens=32,
            messages=[{"role": "user", "content": "write code: a quicksort in Python"}])
    assert araw.headers["x-model-router-selected-route"] == "code generation"
    assert araw.parse().content and last_model(fake) == "gpt-4.1"
    # no match: the request's own model, no route header
    raw = client(routed).chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "how are you today?"}])
    assert "x-model-router-selected-route" not in raw.headers
    assert last_model(fake) == "gpt-4o-mini"
    # the access log names the route of routed requests
    log = routed.config_path.with_suffix(".access.log")
    deadline = time.monotonic() + 5
    lines: list[Any] = []
    while time.monotonic() < deadline and len(lines) < 2:
        time.sleep(0.2)
        lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    assert [(x["model"], x["route"]) for x in lines[-2:]] == [("gpt-4.1", "code generation"), ("gpt-4o-mini", None)]
    # the older single-route answer form
    client(routed).chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "legacy please"}])
    assert last_model(fake) == "gpt-4.1"


def test_anthropic_and_responses_clients_are_routed(routed: GatewayProcess, fake: FakeProviderThread) -> None:
    ac = anthropic.Anthropic(base_url=routed.url, api_key="sk-client", max_retries=0)
    ac.messages.create(model="openai/gpt-4o-mini", max_tokens=16, system="sys",
                       messages=[{"role": "user", "content": "some code please"}])  # fmt: skip
    assert last_model(fake) == "gpt-4.1"
    client(routed).responses.create(model="openai/gpt-4o-mini", input="write code for me")
    assert last_model(fake) == "gpt-4.1"


def test_router_timeout_and_garbage_fall_back_within_the_bound(
    routed: GatewayProcess, fake: FakeProviderThread, fake_router: FakeRouter
) -> None:
    started = time.monotonic()
    # the router holds this answer until the test has its own: the fallback came first
    client(routed).chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "slow code"}])
    elapsed = time.monotonic() - started
    fake_router.release_slow()
    assert last_model(fake) == "gpt-4o-mini"
    # routing.timeout_ms: 300, not the default timeout (3 s)
    assert 0.3 <= elapsed < PR.DEFAULT_ROUTER_TIMEOUT_MS / 1000 / 2, elapsed
    client(routed).chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "garbage code"}])
    assert last_model(fake) == "gpt-4o-mini"


def test_sessions_stay_pinned_and_expire(routed: GatewayProcess, fake: FakeProviderThread, fake_router: FakeRouter) -> None:
    c = client(routed, **{"x-model-affinity": f"s-{time.time_ns()}"})
    c.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "write code"}])
    assert last_model(fake) == "gpt-4.1"
    calls = len(fake_router.prompts)
    raw = c.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "thanks, and the weather?"}])
    assert last_model(fake) == "gpt-4.1"  # pinned: no router call
    assert len(fake_router.prompts) == calls
    assert raw.headers["x-model-router-selected-route"] == "code generation"
    time.sleep(1.1)  # session_ttl_seconds: 1
    c.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "thanks, and the weather?"}])
    assert last_model(fake) == "gpt-4o-mini" and len(fake_router.prompts) == calls + 1
    text = scrape_text(routed)
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("plano_fast_router_")}  # fmt: skip
    assert values["plano_fast_router_calls"] >= 2 and values["plano_fast_router_session_pins"] >= 1, values


def test_decision_api(routed: GatewayProcess, fake: FakeProviderThread, fake_router: FakeRouter) -> None:
    before = len(fake.requests)
    with Http(routed.port) as h:
        decision_api(h, routed, fake, before)


def decision_api(h: Http, routed: GatewayProcess, fake: FakeProviderThread, before: int) -> None:
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "write code"}]}
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    status, got = h.request("POST", "/routing/v1/chat/completions", body, {"traceparent": tp})
    assert status == 200
    assert got == {"models": ["openai/gpt-4.1", "openai/gpt-4o"], "route": "code generation",
                   "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "pinned": False, "switched": False}  # fmt: skip
    status, got = h.request("POST", "/routing/v1/messages", {"model": "openai/gpt-4o-mini", "max_tokens": 5,
                            "messages": [{"role": "user", "content": "hello"}]})  # fmt: skip
    assert got["models"] == ["openai/gpt-4o-mini"] and got["route"] is None and len(got["trace_id"]) == 32
    session = {"x-model-affinity": f"d-{time.time_ns()}"}
    _, r1 = h.request("POST", "/routing/v1/responses", {"model": "openai/gpt-4o-mini", "input": "code!"}, session)
    _, r2 = h.request("POST", "/routing/v1/responses", {"model": "openai/gpt-4o-mini", "input": "hi"}, session)
    assert r1["pinned"] is False and r2["pinned"] is True
    assert r2["models"] == ["openai/gpt-4.1", "openai/gpt-4o"] and r2["session_id"] == session["x-model-affinity"]
    assert len(fake.requests) == before  # no model was called
    assert h.request("GET", "/routing/v1/chat/completions")[0] == 405
    assert h.request("POST", "/routing/v1/chat/completions", {"model": "nope/x", "messages": []})[0] == 400


def test_routed_requests_fail_over_to_the_next_ranked_model(
    fake: FakeProviderThread, fake_router: FakeRouter, tmp_path: Path
) -> None:
    """With a retry policy, the ranked models after the first are its fallbacks."""
    cfg = routing_config(tmp_path / "c.yaml", fake.port, fake_router.port)
    text = cfg.read_text().replace(
        "  - {model: openai/gpt-4.1, base_url: ",
        "  - {retry_policy: {default_strategy: different_provider, default_max_attempts: 2, backoff: {base_ms: 0, max_ms: 0}},\n"
        "     model: openai/gpt-4.1, base_url: ",
    ).replace("different_provider", "same_provider")
    cfg.write_text(text)
    with GatewayProcess(cfg) as gw:
        key = f"fo-{time.time_ns()}"
        c = client(gw, **{"x-fake-fail-first": "1", "x-fake-fail-key": key, "x-fake-status": "503"})
        c.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "code it"}])
        models = [r.json()["model"] for r in fake.requests if r.header("x-fake-fail-key") == key]
        assert models == ["gpt-4.1", "gpt-4o"]


def test_measure_added_latency(fake: FakeProviderThread, fake_router: FakeRouter, tmp_path: Path) -> None:
    """Prints the added latency of a routed request (router call included) and of a
    pinned one against an unrouted one; asserts only loose bounds (shared machine)."""
    cfg = routing_config(tmp_path / "m.yaml", fake.port, fake_router.port)
    with GatewayProcess(cfg) as gw:
        def p50(port: int, content: str, n: int = 400, **headers: str) -> float:
            body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
            times = []
            with Http(port) as http:
                for _ in range(n):
                    t = time.perf_counter()
                    assert http.request("POST", "/v1/chat/completions", body, headers)[0] == 200
                    times.append(time.perf_counter() - t)
            return statistics.median(times) * 1000

        rbody = {"model": "Arch-Router", "messages": [{"role": "user", "content": "<conversation>\n[{\"role\": \"user\", \"content\": \"code\"}]\n</conversation>"}]}
        fake_router.delay_s = 0.001  # the 1 ms router service time
        times = []
        with Http(fake_router.port) as direct:
            for _ in range(200):
                t = time.perf_counter()
                direct.request("POST", "/v1/chat/completions", rbody)
                times.append(time.perf_counter() - t)
        router_direct = statistics.median(times) * 1000
        p50(gw.port, "warm", 20)
        plain = p50(gw.port, "hello there")  # routed, no match: the router call is the cost
        routed_ms = p50(gw.port, "write code")
        pinned = p50(gw.port, "write code", **{"x-model-affinity": "bench"})
        # an unrouted request: the same gateway without routing preferences
        unrouted_cfg = tmp_path / "u.yaml"
        text = cfg.read_text()
        unrouted_cfg.write_text(text.split("routing_preferences:")[0] + "plano_fast:" + text.split("plano_fast:")[1])
        fake_router.delay_s = 0.0
    with GatewayProcess(unrouted_cfg) as gw2:
        p50(gw2.port, "warm", 20)
        unrouted = p50(gw2.port, "write code")
    print(f"\np50 ms: unrouted {unrouted:.3f}, routed {routed_ms:.3f} (no match {plain:.3f}), pinned {pinned:.3f}, "
          f"router direct {router_direct:.3f}; added by routing {routed_ms - unrouted:.3f}, "
          f"excluding the router's own round trip {routed_ms - unrouted - router_direct:.3f}; "
          f"pinned vs unrouted {pinned - unrouted:.3f}")  # fmt: skip
    assert routed_ms > unrouted  # the router call is paid
    assert pinned < routed_ms


# katanemo/plano demos/llm_routing/preference_based_routing/plano_config_local.yaml (0.4.36),
# verbatim but for the provider base URLs (the fakes) and the plano_fast section.
DEMO_LOCAL = """\
version: v0.3.0

overrides:
  llm_routing_model: plano/hf.co/katanemo/Arch-Router-1.5B.gguf:Q4_K_M

listeners:
  - type: model
    name: model_listener
    port: 12000

model_providers:

  - model: plano/hf.co/katanemo/Arch-Router-1.5B.gguf:Q4_K_M
    base_url: http://localhost:11434

  - model: openai/gpt-4o-mini
    access_key: $OPENAI_API_KEY
    default: true

  - model: openai/gpt-4o
    access_key: $OPENAI_API_KEY
    routing_preferences:
      - name: code understanding
        description: understand and explain existing code snippets, functions, or libraries

  - model: openai/gpt-4.1
    access_key: $OPENAI_API_KEY
    routing_preferences:
      - name: code generation
        description: generating new code snippets, functions, or boilerplate based on user prompts or requirements

tracing:
  random_sampling: 100
"""


def test_plano_demo_local_router_config_loads_and_routes(
    fake: FakeProviderThread, fake_router: FakeRouter, tmp_path: Path
) -> None:
    cfg = parse_config(DEMO_LOCAL, env={"OPENAI_API_KEY": "sk-o"})
    pr = cfg.preference_routing
    assert pr is not None and pr.router_model == "hf.co/katanemo/Arch-Router-1.5B.gguf:Q4_K_M"
    assert [(p.name, p.models) for p in pr.preferences] == [
        ("code understanding", ("openai/gpt-4o",)), ("code generation", ("openai/gpt-4.1",)),
    ]
    text = DEMO_LOCAL.replace("http://localhost:11434", f"http://127.0.0.1:{fake_router.port}").replace(
        "    access_key: $OPENAI_API_KEY\n", f"    access_key: $OPENAI_API_KEY\n    base_url: http://127.0.0.1:{fake.port}\n"
    ).replace("tracing:\n  random_sampling: 100\n", "")
    path = tmp_path / "demo.yaml"
    path.write_text(text + f"plano_fast:\n  sqlite_path: {tmp_path / 'd.db'}\n  usage_journal_path: {tmp_path / 'd.journal'}\n")
    calls = len(fake_router.bodies)
    with GatewayProcess(path, env={"OPENAI_API_KEY": "sk-o"}) as gw:
        # The demo README: code generation requests go to gpt-4.1, the rest to the default.
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "write code for fizzbuzz"}])
        assert last_model(fake) == "gpt-4.1"
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "what is the capital of France?"}])
        assert last_model(fake) == "gpt-4o-mini"
    assert fake_router.bodies[calls]["model"] == "hf.co/katanemo/Arch-Router-1.5B.gguf:Q4_K_M"


@pytest.mark.parametrize("body", [
    b'{"model":"m","routing_preferences":[{"a":1}],"messages":[]}',
    b'{"routing_preferences":[],"model":"m"}',
    b'{"model":"m", "routing_preferences" : {"x":"}"} }',
    b'{ "routing_preferences":1 }',
    b'{"a":1,"routing_preferences":2,"routing_preferences":3}',
    '{"a":"é \\u00e9","routing_preferences":[1,2],\n "b": [1, 2]}'.encode(),
    b'{"a":1}',
])  # fmt: skip
def test_strip_member_keeps_the_other_bytes(body: bytes) -> None:
    out = PR.strip_member(body, "routing_preferences")
    pairs = json.loads(out, object_pairs_hook=lambda p: p)
    want = json.loads(body, object_pairs_hook=lambda p: [x for x in p if x[0] != "routing_preferences"])
    assert pairs == want
    if b"routing_preferences" not in body:
        assert out is body
    # every byte left is a byte of the original, in order (nothing re-encoded)
    it = iter(body)
    assert all(any(c == o for o in it) for c in out)


def test_a_body_override_wins_and_never_reaches_the_provider(
    routed: GatewayProcess, fake: FakeProviderThread, fake_router: FakeRouter
) -> None:
    override = [{"name": "code generation", "description": "any code at all", "models": ["openai/gpt-4o"]}]
    client(routed).chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "code please"}],
        extra_body={"routing_preferences": override},
    )  # fmt: skip
    sent = fake.requests[-1].json()
    assert sent["model"] == "gpt-4o" and "routing_preferences" not in sent  # not gpt-4.1: the override won
    assert '"description": "any code at all"' in fake_router.prompts[-1]
    assert "general questions" not in fake_router.prompts[-1]
    with pytest.raises(openai.BadRequestError, match=r"routing_preferences\[0\].models\[0\]: 'nope/x' is not a configured model"):
        client(routed).chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "code"}],
            extra_body={"routing_preferences": [{"name": "a", "description": "b", "models": ["nope/x"]}]},
        )  # fmt: skip


def test_the_router_call_is_billed_to_the_caller_as_its_own_row(
    routed: GatewayProcess, fake: FakeProviderThread
) -> None:
    import hashlib

    c = openai.OpenAI(base_url=routed.url + "/v1", api_key="sk-billed-caller", max_retries=0)
    r = c.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "write code"}])
    assert r.model
    caller = hashlib.sha256(b"sk-billed-caller").hexdigest()
    db = str(routed.config_path.with_suffix(".db"))
    deadline = time.monotonic() + 15
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = [row for row in read_rows(None, db) if row.key_hash == caller]
        if len(rows) == 2:
            break
        time.sleep(0.2)
    by_kind = {row.request_id.endswith(PR.ROUTER_ROW_SUFFIX): row for row in rows}
    assert set(by_kind) == {True, False}, rows
    router_row, llm_row = by_kind[True], by_kind[False]
    assert router_row.request_id == llm_row.request_id + "-router"
    assert (router_row.model, router_row.input_tokens, router_row.output_tokens) == ("Arch-Router", 1, 1)
    assert llm_row.model == "gpt-4.1"


def test_route_on_user_only_tells_user_turns_from_continuations() -> None:
    """Plano's session_router::is_user_turn cases; the turn key is the conversation's
    identity (system, tools, first user message, requested model), not its tail."""
    from plano_fast import router_prompt as RP

    user = {"role": "user", "content": "write code"}
    tool_tail = {"messages": [user, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                              {"role": "tool", "tool_call_id": "1", "content": "done"}]}  # fmt: skip
    assert RP.is_user_turn({"messages": [user]}, "chat_completions")
    assert not RP.is_user_turn(tool_tail, "chat_completions")
    assert not RP.is_user_turn({"messages": [user, {"role": "assistant", "content": "ok"}]}, "chat_completions")
    # Anthropic: tool results in a user message are not the user speaking; text beside them is
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "42"}
    assert not RP.is_user_turn({"messages": [{"role": "user", "content": [result]}]}, "messages")
    assert RP.is_user_turn({"messages": [{"role": "user", "content": [result, {"type": "text", "text": "now fix it"}]}]}, "messages")
    reminder = {"type": "text", "text": "<system-reminder>todo list changed</system-reminder>\n "}
    assert not RP.is_user_turn({"messages": [{"role": "user", "content": [result, reminder]}]}, "messages")
    assert not RP.is_user_turn({"messages": [{"role": "user", "content": "<system-reminder>cut off"}]}, "messages")
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
    assert RP.is_user_turn({"messages": [{"role": "user", "content": [image]}]}, "messages")
    assert RP.is_user_turn({"input": "hi"}, "responses")
    assert not RP.is_user_turn({"input": [{"role": "user", "content": "hi"},
                                          {"type": "function_call_output", "call_id": "c", "output": "x"}]}, "responses")  # fmt: skip
    assert not RP.is_user_turn({"messages": []}, "chat_completions")
    key = RP.turn_key({"messages": [user]}, "chat_completions", "m", None)
    assert RP.turn_key(tool_tail, "chat_completions", "m", None) == key
    assert RP.turn_key(tool_tail, "chat_completions", "small-model", None) != key
    assert RP.turn_key({"messages": [{"role": "system", "content": "s"}, user]}, "chat_completions", "m", None) != key


def test_post_json_retries_once_on_a_kept_alive_connection_the_router_closed() -> None:
    """A router that closes idle keep-alive connections (without saying so) must not make
    the next routed request fall back: the call goes again on a fresh connection."""
    import asyncio

    from plano_fast.deadlines import DeadlineClock
    from plano_fast.upstream import UpstreamPool

    answer = b'{"choices":[{"message":{"content":"{\\"route\\": [\\"code\\"]}"}}]}'
    accepted: list[asyncio.StreamWriter] = []

    async def main() -> list[tuple[int, bytes]]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            for n in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if n == 1:
                    break  # the second request on a connection: closed unanswered (idle reaped)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = parse(f"version: v0.4.0\nmodel_providers:\n  - {{model: arch/Arch-Router, base_url: 'http://127.0.0.1:{port}', provider_interface: openai, default: true}}\n")
        clock = DeadlineClock(0.05)
        clock.start()
        pool = UpstreamPool(connect_timeout_s=1, idle_timeout_s=30, max_idle_per_origin=4, dns_ttl_s=60, clock=clock)
        try:
            out = [await PR.post_json(pool, cfg.providers[0], "Arch-Router", b"{}", 2.0)]
            out.append(await PR.post_json(pool, cfg.providers[0], "Arch-Router", b"{}", 2.0))
            return out
        finally:
            pool.close()
            clock.stop()
            server.close()
            for w in accepted:
                w.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)

    assert asyncio.run(main()) == [(200, answer), (200, answer)]
    assert len(accepted) == 2


def test_the_route_is_a_span_attribute(fake: FakeProviderThread, fake_router: FakeRouter, tmp_path: Path) -> None:
    from tests.test_tracing import PARENT, Receiver, attrs

    receiver = Receiver()
    cfg = routing_config(tmp_path / "t.yaml", fake.port, fake_router.port, extra="tracing: {random_sampling: 0}\n")
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    try:
        with GatewayProcess(cfg, env=env) as gw:
            client(gw, traceparent=PARENT).chat.completions.create(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "write code"}])
            deadline = time.monotonic() + 10
            while not any(s.kind == 2 for s in receiver.spans) and time.monotonic() < deadline:
                time.sleep(0.1)
        (server,) = [s for s in receiver.spans if s.kind == 2]
        a = attrs(server)
        assert a["plano.route.name"] == "code generation" and "routing.determination_ms" in a
    finally:
        receiver.close()


def test_redis_sessions_are_shared_between_instances(
    fake: FakeProviderThread, fake_router: FakeRouter, tmp_path: Path, redis_url: str
) -> None:
    """Two gateways sharing routing.session_cache type redis: a session pinned by one is
    pinned in the other without a router call."""
    extra = f"routing: {{timeout_ms: 300, session_ttl_seconds: 60, session_cache: {{type: redis, url: '{redis_url}'}}}}\n"
    configs = []
    for name in ("a", "b"):
        cfg = routing_config(tmp_path / f"{name}.yaml", fake.port, fake_router.port)
        cfg.write_text(cfg.read_text().replace("routing: {timeout_ms: 300, session_ttl_seconds: 1}\n", extra))
        configs.append(cfg)
    assert not parse_config(configs[0].read_text(), env={}).unimplemented
    session = {"x-model-affinity": f"shared-{time.time_ns()}"}
    with GatewayProcess(configs[0]) as a, GatewayProcess(configs[1]) as b:
        client(a, **session).chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "write code"}])
        assert last_model(fake) == "gpt-4.1"
        calls = len(fake_router.prompts)
        raw = client(b, **session).chat.completions.with_raw_response.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "and the weather?"}])
        assert last_model(fake) == "gpt-4.1" and len(fake_router.prompts) == calls
        assert raw.headers["x-model-router-selected-route"] == "code generation"


def test_redis_session_url_is_required() -> None:
    with pytest.raises(ConfigError, match=r"routing.session_cache.url: type redis needs a redis:// URL"):
        parse("version: v0.4.0\n" + BASE + "routing_preferences: [{name: a, description: b, models: [openai/gpt-4o]}]\n"
              "overrides: {llm_routing_model: arch/Arch-Router}\nrouting: {session_cache: {type: redis}}\n")


def test_routing_errors_are_reported_with_the_config_s_other_errors() -> None:
    with pytest.raises(ConfigError) as e:
        parse("version: v0.4.0\n" + BASE + "model_aliases: {fast: {target: nope/x}}\n"
              "routing_preferences: [{name: a, description: b, models: [openai/gpt-4o], selection_policy: {prefer: slowest}}]\n")
    text = str(e.value)
    assert "model_aliases" in text and "routing_preferences[0].selection_policy.prefer" in text, text
