"""Plano's own routing demos (katanemo/plano 0.4.36 ``demos/llm_routing/*``, vendored in
tests/data/plano-demos/, see its SOURCES.md) load as written and route as their READMEs
describe, over real sockets with the official SDKs.

Each served copy differs from the vendored file only where a test must: every provider's
URL points at the fake provider, and a config that relies on Katanemo's hosted router gets
the provider Plano's config generator adds for it (``plano-orchestrator`` serving
``Plano-Orchestrator``), pointed at this file's fake router model.  The fake router checks
that the routes it is shown are the config's, rendered as Plano's template renders them,
and answers by keyword rules standing in for the router model's judgment."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.config import parse_config
from tests.gateway_proc import GatewayProcess
from tests.test_preference_routing import Http, last_model

DEMOS = Path(__file__).parent / "data" / "plano-demos" / "llm_routing"
ENV = {k: f"sk-{k.lower()}" for k in (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GROK_API_KEY", "MOONSHOT_API_KEY")}  # fmt: skip


def routes_line(name: str, description: str) -> str:
    # Plano's route rendering, written out here (not taken from the implementation)
    return json.dumps({"name": name, "description": description,
                       "parameters": {"type": "object", "properties": {}, "required": []}})  # fmt: skip


class RuleRouter:
    """A router model answering ``{"route": [...]}`` by the first rule whose keyword is in
    the last user message (lowercased), else ``[]``; ``routes`` are the route lines it
    must be shown, in order."""

    def __init__(self) -> None:
        self.rules: list[tuple[str, str]] = []
        self.routes: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.last_messages: list[str] = []
        self.bad_prompts: list[str] = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                me.bodies.append(body)
                prompt = body["messages"][0]["content"]
                shown = prompt.split("<routes>\n", 1)[1].split("\n</routes>", 1)[0].split("\n")
                if shown != me.routes:
                    me.bad_prompts.append(prompt)
                conv = json.loads(prompt.split("<conversation>\n", 1)[1].split("\n</conversation>", 1)[0])
                last = conv[-1]["content"]
                me.last_messages.append(last)
                route = next((r for k, r in me.rules if k in last.lower()), None)
                content = json.dumps({"route": [route] if route else []})
                out = json.dumps({"id": "r", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": content}}],
                                  "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}).encode()  # fmt: skip
                self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(out), out))  # fmt: skip

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def expect(self, routes: list[tuple[str, str]], rules: list[tuple[str, str]]) -> None:
        self.routes = [routes_line(n, d) for n, d in routes]
        self.rules = rules
        self.bad_prompts.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def rule_router() -> Iterator[RuleRouter]:
    r = RuleRouter()
    yield r
    r.stop()


def served_copy(name: str, tmp_path: Path, fake_port: int, router_port: int) -> Path:
    """The demo's config, its providers pointed at the fakes, as a file to serve."""
    data = yaml.safe_load((DEMOS / name).read_text())
    key = "model_providers" if "model_providers" in data else "llm_providers"
    router_model = (data.get("overrides") or {}).get("llm_routing_model", "Plano-Orchestrator")
    has_router = False
    for p in data[key]:
        if p["model"].endswith("/" + router_model.split("/", 1)[-1]) or p["model"] == router_model:
            p["base_url"] = f"http://127.0.0.1:{router_port}"
            has_router = True
        else:
            p["base_url"] = f"http://127.0.0.1:{fake_port}"
    if not has_router:
        # what Plano's config generator adds for a config with routes and no router provider
        data[key].append({"name": "plano-orchestrator", "model": f"plano/{router_model}",
                          "base_url": f"http://127.0.0.1:{router_port}"})  # fmt: skip
    for source in data.get("model_metrics_sources") or ():
        source["url"] = "http://127.0.0.1:9/unreachable.json"  # no network in tests
    data.pop("tracing", None)
    if isinstance(data["listeners"], dict):  # v0.1's listeners object
        for listener in data["listeners"].values():
            listener["address"] = "127.0.0.1"
    data["plano_fast"] = {"sqlite_path": str(tmp_path / "d.db"), "usage_journal_path": str(tmp_path / "d.journal")}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- as written --------------------------------------------------------------------------

HOSTED_ROUTER = ["claude_code_router/config.yaml", "codex_router/config.yaml", "model_routing_service/config.yaml",
                 "openclaw_routing/config.yaml", "preference_based_routing/config.yaml", "routing_budget/config.yaml"]  # fmt: skip


@pytest.mark.parametrize("name", HOSTED_ROUTER)
def test_a_demo_relying_on_the_hosted_router_loads_and_says_routing_is_off(name: str) -> None:
    """plano_fast does not call Katanemo's hosted router: the config loads, with a warning
    naming the router model to serve; nothing else in it is refused."""
    cfg = parse_config((DEMOS / name).read_text(), source=name, env=ENV)
    assert cfg.preference_routing is None
    assert any("preference routing is off" in w and "Plano-Orchestrator" in w for w in cfg.warnings), cfg.warnings
    expected = ["routing.routing_budget"] if name.startswith("routing_budget") else []
    assert [u.split(": ")[1] for u in cfg.unimplemented] == expected, cfg.unimplemented


def test_self_hosted_router_demos_load_with_their_router() -> None:
    cfg = parse_config((DEMOS / "model_routing_service/config_k8s.yaml").read_text(), env=ENV)
    pr = cfg.preference_routing
    assert pr is not None and pr.router_model == "Plano-Orchestrator"
    assert pr.router_provider.base_url == "http://plano-orchestrator:10000"
    assert [(p.name, p.models) for p in pr.preferences] == [
        ("complex_reasoning", ("openai/gpt-4o",)), ("code_generation", ("anthropic/claude-sonnet-4-6",))]
    cfg = parse_config((DEMOS / "preference_based_routing/plano_config_local.yaml").read_text(), env=ENV)
    assert cfg.preference_routing is not None
    assert cfg.preference_routing.router_model == "hf.co/katanemo/Arch-Router-1.5B.gguf:Q4_K_M"


def test_routing_budget_is_reported_and_refused_under_strict(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = DEMOS / "routing_budget/config.yaml"
    env = {**ENV, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "plano_fast", "validate", str(path)],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "routing.routing_budget" in text and "not implemented" in text
    strict = subprocess.run([sys.executable, "-m", "plano_fast", "validate", "--strict", str(path)],
                            capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])  # fmt: skip
    assert strict.returncode != 0 and "routing.routing_budget" in strict.stdout + strict.stderr


# -- served ------------------------------------------------------------------------------

CODE_GEN = "generating new code snippets, functions, or boilerplate based on user prompts or requirements"
CODE_UNDERSTANDING = "understand and explain existing code snippets, functions, or libraries"


def test_preference_based_routing(fake: FakeProviderThread, rule_router: RuleRouter, tmp_path: Path) -> None:
    """README + hurl_tests: "hi" stays on gpt-4o-mini; explaining code goes to gpt-4o
    (code understanding, streamed); writing code to claude-sonnet-4-6 (code generation)."""
    rule_router.expect([("code understanding", CODE_UNDERSTANDING), ("code generation", CODE_GEN)],
                       [("explain", "code understanding"), ("create", "code generation")])  # fmt: skip
    path = served_copy("preference_based_routing/config.yaml", tmp_path, fake.port, rule_router.port)
    with GatewayProcess(path, env=ENV) as gw:
        oc = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        got = oc.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert got.model.startswith("gpt-4o-mini") and got.usage is not None  # simple.hurl
        stream = oc.chat.completions.create(model="openai/gpt-4o-mini", stream=True, messages=[{
            "role": "user", "content": "Can you explain what this Python function does?\n\ndef fibonacci(n):\n"
            "    if n <= 1:\n        return n\n    return fibonacci(n-1) + fibonacci(n-2)"}])  # fmt: skip
        first = next(iter(stream))
        assert first.model.startswith("gpt-4o") and not first.model.startswith("gpt-4o-mini")  # simple_stream.hurl
        for _ in stream:
            pass
        assert last_model(fake) == "gpt-4o"
        with Http(gw.port) as h:  # the README's local-router curl, on the decision API
            status, decision = h.request("POST", "/routing/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 1024,
                "messages": [{"role": "user", "content": "Create a REST API endpoint in Rust using actix-web"}]})  # fmt: skip
        assert status == 200 and decision["models"] == ["anthropic/claude-sonnet-4-6"]
        assert decision["route"] == "code generation"
    assert rule_router.bad_prompts == []


def test_model_routing_service(fake: FakeProviderThread, rule_router: RuleRouter, tmp_path: Path) -> None:
    """README + demo.sh: the /routing/v1 decisions, OpenAI and Anthropic formats, no match
    keeps the request's model, inline routing_preferences, and X-Model-Affinity pinning."""
    rule_router.expect(
        [("complex_reasoning", "complex reasoning tasks, multi-step analysis, or detailed explanations"),
         ("code_generation", "generating new code, writing functions, or creating boilerplate")],
        [("quicksort", "coding"), ("trade-offs", "complex_reasoning"), ("write a", "code_generation"),
         ("create a", "code_generation")],
    )  # fmt: skip
    path = served_copy("model_routing_service/config.yaml", tmp_path, fake.port, rule_router.port)
    before = len(fake.requests)
    with GatewayProcess(path, env=ENV) as gw, Http(gw.port) as h:
        def decide(content: str, path: str = "/routing/v1/chat/completions", **extra: Any) -> Any:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}
            status, got = h.request("POST", path, body)
            assert status == 200, got
            return got

        got = decide("Write a Python function that implements binary search on a sorted array")
        assert (got["models"], got["route"]) == (["anthropic/claude-sonnet-4-6", "openai/gpt-4o"], "code_generation")
        got = decide("Explain the trade-offs between microservices and monolithic architectures")
        assert (got["models"], got["route"]) == (["openai/gpt-4o", "openai/gpt-4o-mini"], "complex_reasoning")
        got = decide("What is the capital of France?")
        assert got["route"] is None and got["models"] == ["gpt-4o-mini"]  # Plano: ["none"], the sentinel
        got = decide("Create a REST API endpoint in Rust using actix-web", "/routing/v1/messages", max_tokens=1024)
        assert (got["models"], got["route"]) == (["anthropic/claude-sonnet-4-6", "openai/gpt-4o"], "code_generation")
        inline = [{"name": "coding", "description": "code generation, writing functions, debugging",
                   "models": ["anthropic/claude-sonnet-4-6", "openai/gpt-4o", "openai/gpt-4o-mini"],
                   "selection_policy": {"prefer": "cheapest"}}]  # fmt: skip
        rule_router.routes = [routes_line("coding", "code generation, writing functions, debugging")]
        got = decide("Write a quicksort implementation in Go", routing_preferences=inline)
        assert got["route"] == "coding" and got["models"][0] == "openai/gpt-4o-mini"  # the cheapest by the price table
        rule_router.expect(
            [("complex_reasoning", "complex reasoning tasks, multi-step analysis, or detailed explanations"),
             ("code_generation", "generating new code, writing functions, or creating boilerplate")],
            [("trade-offs", "complex_reasoning"), ("write a", "code_generation")])  # fmt: skip
        s1 = {"x-model-affinity": "demo-session-001"}
        _, first = h.request("POST", "/routing/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "Write a Python function that implements binary search on a sorted array"}]}, s1)  # fmt: skip
        _, second = h.request("POST", "/routing/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "Now explain how merge sort works and when to prefer it over quicksort"}]}, s1)  # fmt: skip
        assert (first["pinned"], second["pinned"]) == (False, True)
        assert first["session_id"] == second["session_id"] == "demo-session-001"
        assert second["models"] == first["models"] == ["anthropic/claude-sonnet-4-6", "openai/gpt-4o"]
        _, other = h.request("POST", "/routing/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "Explain the trade-offs between microservices and monolithic architectures"}]},
            {"x-model-affinity": "demo-session-002"})  # fmt: skip
        assert other["pinned"] is False and other["route"] == "complex_reasoning"
    assert len(fake.requests) == before  # the decision API calls no model
    assert rule_router.bad_prompts == []


def test_claude_code_router_keeps_a_turn_s_tool_steps_on_its_model(
    fake: FakeProviderThread, rule_router: RuleRouter, tmp_path: Path
) -> None:
    """README: model selection happens once, on the user's message; the tool steps that
    follow stay on that model (route_on_user_only); the next message is routed afresh;
    the small/fast model is a lane of its own (an alias)."""
    rule_router.expect([("code generation", CODE_GEN), ("code understanding", CODE_UNDERSTANDING)],
                       [("write", "code generation"), ("explain", "code understanding")])  # fmt: skip
    path = served_copy("claude_code_router/config.yaml", tmp_path, fake.port, rule_router.port)
    with GatewayProcess(path, env=ENV) as gw:
        ac = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
        system = "You are Claude Code."
        tools: Any = [{"name": "Bash", "description": "run", "input_schema": {"type": "object", "properties": {}}}]
        turn: list[Any] = [{"role": "user", "content": "write a function that parses dates"}]
        ac.messages.create(model="claude-sonnet-4-6", max_tokens=64, system=system, tools=tools, messages=turn)
        assert last_model(fake) == "gpt-5-2025-08-07"
        calls = len(rule_router.bodies)
        turn += [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                                         {"type": "text", "text": "<system-reminder>keep going</system-reminder>"}]},
        ]  # fmt: skip
        raw = ac.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=64, system=system,
                                                   tools=tools, messages=turn)  # fmt: skip
        assert last_model(fake) == "gpt-5-2025-08-07" and len(rule_router.bodies) == calls  # replayed, no router call
        assert raw.headers["x-model-router-selected-route"] == "code generation"
        # the small/fast lane: its own conversation, routed on its own
        ac.messages.create(model="arch.claude.code.small.fast", max_tokens=16,
                           messages=[{"role": "user", "content": "summarise this title"}])  # fmt: skip
        assert last_model(fake) == "claude-haiku-4-5" and len(rule_router.bodies) == calls + 1
        # the user's next message: routed afresh
        turn += [{"role": "assistant", "content": "done"}, {"role": "user", "content": "explain what you wrote"}]
        ac.messages.create(model="claude-sonnet-4-6", max_tokens=64, system=system, tools=tools, messages=turn)
        assert last_model(fake) == "gpt-4.1-2025-04-14" and len(rule_router.bodies) == calls + 2
        assert rule_router.last_messages[-1] == "explain what you wrote"
    assert rule_router.bad_prompts == []


def test_codex_router(fake: FakeProviderThread, rule_router: RuleRouter, tmp_path: Path) -> None:
    """config.yaml's routes (the README still names gpt-5 for code understanding; the
    config routes project understanding to grok): code generation -> gpt-5.3-codex,
    project understanding -> grok-4-1-fast-non-reasoning, the rest -> the request's model."""
    rule_router.expect(
        [("code generation", CODE_GEN),
         ("project understanding", "understand repository structure, codebase, and code files, readmes, and other documentation")],
        [("implement", "code generation"), ("repository", "project understanding")])  # fmt: skip
    path = served_copy("codex_router/config.yaml", tmp_path, fake.port, rule_router.port)
    with GatewayProcess(path, env=ENV) as gw:
        oc = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        oc.responses.create(model="arch.codex.default", input="implement a retry helper")
        assert last_model(fake) == "gpt-5.3-codex"
        oc.responses.create(model="arch.codex.default", input="how is this repository laid out?")
        assert last_model(fake) == "grok-4-1-fast-non-reasoning"
        oc.responses.create(model="arch.codex.default", input="thanks!")
        assert last_model(fake) == "gpt-5.3-codex"  # the alias' own target
    assert rule_router.bad_prompts == []


def test_openclaw_routing(fake: FakeProviderThread, rule_router: RuleRouter, tmp_path: Path) -> None:
    """README's table, messages 1-4: conversation and agentic tasks -> Kimi K2.5, code and
    tests -> Claude; a v0.1 config (listeners object, llm_providers)."""
    rule_router.expect(
        [("general conversation", "general chat, greetings, casual conversation, Q&A, and everyday questions"),
         ("code generation", "generating code, writing scripts, implementing functions, and building tool integrations")],
        [("python", "code generation"), ("unit tests", "code generation"), ("what's up", "general conversation"),
         ("remind me", "general conversation")])  # fmt: skip
    path = served_copy("openclaw_routing/config.yaml", tmp_path, fake.port, rule_router.port)
    with GatewayProcess(path, env=ENV) as gw:
        oc = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
        for text, want in [
            ("Hey, what's up? Tell me something interesting.", "kimi-k2.5"),
            ("Remind me tomorrow at 9am and ping Slack about the deploy", "kimi-k2.5"),
            ("Write a Python rate limiter with the token bucket algorithm", "claude-sonnet-4-5"),
            ("Write unit tests for the auth middleware, cover edge cases", "claude-sonnet-4-5"),
        ]:
            oc.chat.completions.create(model="openai/kimi-k2.5", messages=[{"role": "user", "content": text}])
            assert last_model(fake) == want, text
        assert fake.requests[-1].path == "/v1/messages"  # Claude through its own API
        assert rule_router.bodies[-1]["model"] == "Plano-Orchestrator"
    assert rule_router.bad_prompts == []


def test_routing_budget_demo_routes_without_the_budget(
    fake: FakeProviderThread, rule_router: RuleRouter, tmp_path: Path
) -> None:
    """The budget is not implemented (reported at start); the routes work, and the
    models.dev source that cannot be reached is one warning, not a failure."""
    rule_router.expect([("code understanding", CODE_UNDERSTANDING), ("code generation", CODE_GEN)],
                       [("explain", "code understanding"), ("write", "code generation")])  # fmt: skip
    path = served_copy("routing_budget/config.yaml", tmp_path, fake.port, rule_router.port)
    with GatewayProcess(path, env=ENV) as gw:
        oc = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        oc.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "write a parser"}])
        assert last_model(fake) == "claude-sonnet-4-6"
        oc.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "explain this"}])
        assert last_model(fake) == "gpt-4o"
        deadline = time.monotonic() + 5
        while "cost source models.dev" not in gw.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = gw.log_text()
    assert "routing.routing_budget" in log and log.count("cost source models.dev at") == 1, log
    assert rule_router.bad_prompts == []
