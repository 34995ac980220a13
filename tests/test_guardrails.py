"""The DLP floor (issue 24): detectors on a labelled corpus (precision and recall printed),
redaction that changes nothing but the matched spans, and the actions over real sockets
with the official SDKs."""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.guardrails import (
    DETECTORS,
    GuardrailBlocked,
    GuardrailConfigError,
    apply,
    parse_policy,
    scan_text,
)
from tests.gateway_proc import GatewayProcess


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        candidate = digits + check
        total = sum(
            (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 else d
            for i, d in enumerate(int(c) for c in reversed(candidate))
        )
        if total % 10 == 0:
            return candidate
    raise AssertionError


def corpus() -> dict[str, tuple[list[str], list[str]]]:
    """detector -> (texts that contain one, near misses that must not match)."""
    rng = random.Random(2026)
    cards = [luhn_complete(p, n, rng) for p, n in [("4", 16), ("51", 16), ("37", 15), ("6011", 16), ("35", 16)] * 4]
    bad_cards = [c[:-1] + str((int(c[-1]) + 1) % 10) for c in cards]
    return {
        "credit_card": (
            [f"my card is {c}" for c in cards] + ["card 4111 1111 1111 1111 exp 12/29", "4111-1111-1111-1111"],
            [f"order {c}" for c in bad_cards] + ["0000 0000 0000 0000", "call 555-0100", "id 1234567890"],
        ),
        "iban": (
            ["pay to GB82WEST12345698765432", "DE89 3704 0044 0532 0130 00 please", "FR1420041010050500013M02606"],
            ["GB82WEST12345698765433", "DE89370400440532013001", "AB12CDEF"],
        ),
        "ssn": (
            ["ssn 123-45-6789", "my number is 078-05-1120."],
            ["000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000", "2024-01-15"],
        ),
        "email": (
            ["write to jane.doe@example.com", "x+tag@mail.co.uk!"],
            ["not an email@", "user at example dot com", "@handle"],
        ),
        "phone": (
            ["call +1 415-555-0134 now", "(212) 555-0199", "+442071838750", "030 1234 5678"],
            ["version 1.2.3", "2024-01-15", "costs 12345"],
        ),
        "ip_address": (
            ["host 192.168.1.20 is down", "v6 2001:db8::1 here", "10.0.0.1"],
            ["999.1.1.1", "1.2.3", "version 1.2.3.4.5", "12:30"],
        ),
        "secrets": (
            ["key sk-proj-" + "a1B2c3D4" * 6, "sk-ant-api03-" + "x" * 40, "AIza" + "Sy" + "A" * 33,
             "AKIAIOSFODNN7EXAMPLE", "ghp_" + "a" * 36, "-----BEGIN RSA PRIVATE KEY-----",
             "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"],
            ["task-force meeting", "sk-short", "AKIA123", "ghp_short", "-----BEGIN PUBLIC KEY-----"],
        ),
    }  # fmt: skip


def test_detectors_on_a_labelled_corpus() -> None:
    report = []
    for name, (positives, negatives) in corpus().items():
        enabled = {name: "log"}
        tp = sum(1 for t in positives if scan_text(t, enabled, {}))
        fp = sum(1 for t in negatives if scan_text(t, enabled, {}))
        recall, precision = tp / len(positives), tp / max(1, tp + fp)
        report.append(f"{name}: precision {precision:.2f} recall {recall:.2f} ({len(positives)}+/{len(negatives)}-)")
        assert recall == 1.0 and fp == 0, (name, [t for t in negatives if scan_text(t, enabled, {})],
                                           [t for t in positives if not scan_text(t, enabled, {})])  # fmt: skip
    print("\n".join(report))


def test_config_errors_name_the_field() -> None:
    assert parse_policy(None) is None
    for raw, message in [
        ({"detectors": {"ssn": "shout"}}, r"guardrails\.detectors\.ssn: one of"),
        ({"detectors": {"dna": "log"}}, r"detectors\.dna: unknown detector"),
        ({"custom": [{"name": "x", "pattern": "("}]}, r"custom\[0\]\.pattern"),
        ({"providers": {"openai": {"nope": "log"}}}, r"providers\.openai\.nope"),
        ({"colour": 1}, r"guardrails\.colour: unknown field"),
    ]:
        with pytest.raises(GuardrailConfigError, match=message):
            parse_policy(raw)


def test_message_text_only_every_format() -> None:
    policy = parse_policy({"detectors": {"email": "redact"}})
    assert policy is not None
    mail = "a@example.com"
    docs = {
        "openai": {"model": mail, "messages": [{"role": "user", "content": f"hi {mail}"},
                   {"role": "user", "content": [{"type": "text", "text": mail},
                                                {"type": "image_url", "image_url": {"url": f"data:,{mail}"}}]}]},
        "anthropic": {"system": mail, "metadata": {"user_id": mail},
                      "messages": [{"role": "user", "content": [{"type": "text", "text": mail},
                                   {"type": "tool_result", "tool_use_id": "t", "content": mail}]}]},
        "gemini": {"contents": [{"parts": [{"text": mail}, {"inlineData": {"data": mail}}]}],
                   "systemInstruction": {"parts": [{"text": mail}]}},
        "responses": {"instructions": mail, "input": [{"role": "user", "content": [{"type": "input_text", "text": mail}]},
                                                       {"type": "function_call_output", "call_id": "c", "output": mail}]},
    }  # fmt: skip
    for fmt, doc in docs.items():
        outcome = apply(policy, doc, fmt, None)
        body = json.loads(outcome.body or b"{}")
        text = json.dumps(body)
        assert "[REDACTED:email]" in text
        kept = text.count(mail)
        assert kept == {"openai": 2, "anthropic": 1, "gemini": 1, "responses": 0}[fmt], (fmt, text)


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(st.text(max_size=40), min_size=1, max_size=4),
    where=st.lists(st.integers(0, 3), max_size=3),
)
def test_redaction_changes_only_the_matched_spans(texts: list[str], where: list[int]) -> None:
    policy = parse_policy({"detectors": {"email": "redact", "ssn": "redact"}})
    assert policy is not None
    secret = ["bob@example.org", "123-45-6789"]
    messages = []
    for i, text in enumerate(texts):
        inserted = text + (" " + secret[i % 2] + " " if i in where else "")
        messages.append({"role": "user", "content": inserted})
    doc = {"model": "m", "temperature": 0.5, "messages": messages}
    original = json.loads(json.dumps(doc))
    outcome = apply(policy, doc, "openai", None)
    if outcome.body is None:
        assert doc == original
        return
    out = json.loads(outcome.body)
    assert {k: v for k, v in out.items() if k != "messages"} == {"model": "m", "temperature": 0.5}
    for before, after in zip(original["messages"], out["messages"]):
        enabled = {"email": "redact", "ssn": "redact"}
        expected, pos = [], 0
        for f in scan_text(before["content"], enabled, {}):
            expected += [before["content"][pos:f.start], f"[REDACTED:{f.detector}]"]
            pos = f.end
        assert after["content"] == "".join(expected) + before["content"][pos:]


# -- over sockets --------------------------------------------------------------------------

ADMIN_KEY = "admin-key-for-guardrail-tests-012345678"
SETTINGS = {
    "guardrails": json.dumps({"detectors": {"ssn": "block", "credit_card": "redact", "email": "warn",
                                            "secrets": "block", "ip_address": "log"}}),
    "admin_port": 0, "admin_key": ADMIN_KEY,
}  # fmt: skip
CARD = "4111 1111 1111 1111"


@pytest.fixture
def guarded(make_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> GatewayProcess:
    settings = dict(SETTINGS, access_log=str(tmp_path / "access.jsonl"))
    return make_gateway(settings)


def calls(fake: FakeProviderThread) -> list[Any]:
    return [r for r in fake.requests if not r.path.startswith("/_fake")]


def test_actions_over_sockets(guarded: GatewayProcess, fake: FakeProviderThread, tmp_path: Path) -> None:
    fake.clear()
    with openai.OpenAI(base_url=guarded.url + "/v1", api_key="sk-client", max_retries=0) as client:
        with pytest.raises(openai.PermissionDeniedError) as err:
            client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": "my ssn is 123-45-6789"}])  # fmt: skip
        assert err.value.response.headers["x-plano-guardrail"] == "ssn"
        assert "123-45-6789" not in err.value.response.text
        assert calls(fake) == []
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"card {CARD}, mail me at a@example.com from 10.1.2.3"}],
        )
        assert raw.headers["x-plano-guardrail-warning"] == "email"
        (seen,) = calls(fake)
        sent = seen.json()["messages"][0]["content"]
        assert CARD not in sent and "[REDACTED:credit_card]" in sent and "a@example.com" in sent
    fake.clear()
    with anthropic.Anthropic(base_url=guarded.url, api_key="sk-client", max_retries=0) as ac:
        with pytest.raises(anthropic.PermissionDeniedError):
            ac.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                               messages=[{"role": "user", "content": "use key sk-proj-" + "Zz09" * 12}])  # fmt: skip
    assert calls(fake) == []
    req = urllib.request.Request(
        f"http://127.0.0.1:{guarded.admin_port}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        metrics = resp.read().decode()
    for detector, action in [("ssn", "block"), ("credit_card", "redact"), ("email", "warn"),
                             ("ip_address", "log"), ("secrets", "block")]:  # fmt: skip
        assert f'plano_fast_guardrail_detections_total{{action="{action}",detector="{detector}"}} 1.0' in metrics
    guarded.stop()
    logged = guarded.log_path.read_text() + (tmp_path / "access.jsonl").read_text()
    for secret in ("123-45-6789", "1111 1111", "a@example.com", "10.1.2.3", "Zz09"):
        assert secret not in logged
    # one line per answered request, the refusals included (in order: ssn blocked, the
    # redacted request answered, secrets blocked)
    lines = [json.loads(line) for line in (tmp_path / "access.jsonl").read_text().splitlines()]
    assert [(line["status"], line["outcome"]) for line in lines] == [(403, "refused"), (200, "ok"), (403, "refused")]
    assert lines[0]["guardrails"] == ["ssn"] and lines[0]["attempt_trail"] == "guardrail_blocked"
    assert lines[1]["guardrails"] == ["credit_card", "email", "ip_address"]
    assert lines[2]["guardrails"] == ["secrets"] and lines[2]["endpoint"] == "messages"


def test_all_detectors_are_covered_by_the_corpus() -> None:
    assert set(corpus()) == set(DETECTORS)
    assert GuardrailBlocked(["ssn"]).status == 403


def test_project_overrides_in_firewall_mode(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> None:
    """``projects:`` overrides win for their project only: project A blocks e-mail
    addresses, project B (global action: log) forwards them; both over real sockets."""
    import asyncio
    import hashlib

    from plano_fast.store import open_store
    from plano_fast.store.migrate import run_migrate

    sqlite_path = str(tmp_path / "plano_config_0.db")
    keys = {"a": "sk-guard-project-a-0123456789", "b": "sk-guard-project-b-0123456789"}

    async def provision() -> dict[str, str]:
        await run_migrate(None, sqlite_path)
        ids = {}
        async with open_store(None, sqlite_path) as store:
            for name, key in keys.items():
                project = await store.create_project(f"guard-{name}")
                await store.register_api_key(hashlib.sha256(key.encode()).hexdigest(), project.id, "openai",
                                             fake.url, name)  # fmt: skip
                ids[name] = project.id
        return ids

    ids = asyncio.run(provision())
    policy = {"detectors": {"email": "log"}, "projects": {ids["a"]: {"email": "block"}}}
    gateway = make_gateway({"mode": "firewall", "guardrails": json.dumps(policy)})
    text = [{"role": "user", "content": "write to ops@example.com"}]
    fake.clear()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=keys["a"], max_retries=0) as client:
        with pytest.raises(openai.PermissionDeniedError) as err:
            client.chat.completions.create(model="gpt-4o-mini", messages=text)  # type: ignore[arg-type]
        assert err.value.response.headers["x-plano-guardrail"] == "email"
    assert calls(fake) == []
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=keys["b"], max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=text)  # type: ignore[arg-type]
    (seen,) = calls(fake)
    assert "ops@example.com" in seen.json()["messages"][0]["content"]


def test_project_overrides_are_validated() -> None:
    with pytest.raises(GuardrailConfigError, match=r"guardrails\.projects\.p1\.dna: unknown detector"):
        parse_policy({"projects": {"p1": {"dna": "log"}}})
    policy = parse_policy({"detectors": {"email": "log"}, "providers": {"openai": {"email": "warn"}},
                           "projects": {"p1": {"email": "block"}}})  # fmt: skip
    assert policy is not None
    assert policy.actions_for("openai", "p1")["email"] == "block"  # the project is the most specific
    assert policy.actions_for("openai", "p2")["email"] == "warn"
    assert policy.actions_for(None, None)["email"] == "log"
