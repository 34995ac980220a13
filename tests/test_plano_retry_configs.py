"""Plano's own retry_policy configs (katanemo/plano PR #926's description, PR #930's e2e
configs: tests/configs/plano_retry/) through ``plano-fast validate`` and, for the ones whose
behaviour Plano's e2e tests describe, through the real gateway against fake providers.

Where plano_fast differs from the PR series on purpose (docs/resilience.md): a fallback is
only ever a listed one (no implicit "Provider_List" when ``fallback_models`` is absent, the
concern of Plano PR #733), and the fields it does not act on yet (``on_timeout``,
``on_high_latency``, ``retry_after_handling``) are refused by name instead of ignored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from benchmarks.fake_faults import Fault
from benchmarks.fake_provider import FakeProviderThread
from plano_fast.cli import main as cli
from tests.gateway_proc import GatewayProcess

CONFIGS = Path(__file__).parent / "configs" / "plano_retry"
ACCEPTED = [
    "retry_it1_basic_429.yaml", "retry_it2_503_different_provider.yaml", "retry_it3_all_exhausted.yaml",
    "retry_it4_no_retry_policy.yaml", "retry_it5_max_attempts.yaml", "retry_it6_backoff_delay.yaml",
    "retry_it7_fallback_priority.yaml", "retry_it12_streaming.yaml", "retry_it13_body_preserved.yaml",
]  # fmt: skip
REFUSED = {
    "retry_it8_retry_after_honored.yaml": "retry_after_handling",
    "retry_it9_retry_after_blocks_selection.yaml": "retry_after_handling",
    "retry_it10_timeout_triggers_retry.yaml": "on_timeout",
    "retry_it11_high_latency_failover.yaml": "on_high_latency",
}
PORT_VARS = ("MOCK_PRIMARY_PORT", "MOCK_SECONDARY_PORT", "MOCK_TERTIARY_PORT", "MOCK_FALLBACK1_PORT",
             "MOCK_FALLBACK2_PORT")  # fmt: skip


def pr926_config() -> str:
    """PR #926's description block, made a whole file: a version and a listener, and its
    fallback model configured (a fallback must be a configured model here)."""
    fragment = (CONFIGS / "pr926_description.yaml").read_text()
    return (
        "version: v0.4.0\nlisteners:\n  - {type: model, name: llm, port: 12000}\n" + fragment
        + "  - model: anthropic/claude-sonnet-4-0\n    access_key: $ANTHROPIC_API_KEY\n"
    )


def validate(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = cli(["validate", *extra, str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for i, name in enumerate(PORT_VARS):
        monkeypatch.setenv(name, str(9100 + i))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant")


# -- validation ------------------------------------------------------------------------------


def test_the_pr926_description_config_validates_strictly(
    env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pr926.yaml"
    path.write_text(pr926_config())
    code, out = validate(path, capsys, "--strict")
    assert code == 0 and ": ok (2 providers: openai/gpt-4o, anthropic/claude-sonnet-4-0" in out, out
    # the fragment alone names a fallback it does not configure: refused, by its path
    code, out = validate(CONFIGS / "pr926_description.yaml", capsys)
    assert code == 1
    assert "model_providers[0].retry_policy.fallback_models[0]: 'anthropic/claude-sonnet-4-0' is not a configured model" in out


@pytest.mark.parametrize("name", ACCEPTED)
def test_pr930_e2e_configs_validate(env: None, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = validate(CONFIGS / name, capsys, "--strict")
    assert code == 0 and ": ok (" in out, out


@pytest.mark.parametrize(("name", "field"), sorted(REFUSED.items()))
def test_fields_not_acted_on_are_refused_by_name(
    env: None, name: str, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = validate(CONFIGS / name, capsys)
    assert code == 1
    assert f"model_providers[0].retry_policy.{field}: not supported by plano_fast yet" in out, out


def test_every_plano_config_is_covered() -> None:
    on_disk = {p.name for p in CONFIGS.glob("retry_it*.yaml")}
    assert on_disk == set(ACCEPTED) | set(REFUSED)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('default_strategy: "different_provider"', 'default_strategy: "sideways"'),
         r"model_providers[0].retry_policy.default_strategy: Input should be 'same_model', 'same_provider' or "
         r"'different_provider' (got 'sideways')"),
        (('strategy: "different_provider"\n          max_attempts: 3', 'strategy: "round_robin"\n          max_attempts: 3'),
         "model_providers[0].retry_policy.on_status_codes[0].strategy: Input should be"),
        (("      backoff:\n", "      retries_on: [500]\n      backoff:\n"),
         "model_providers[0].retry_policy.retries_on: unknown field"),
        (("        jitter: true", "        jitter: true\n        factor: 2"),
         "model_providers[0].retry_policy.backoff.factor: unknown field"),
        (("apply_to: all_retries", "apply_to: same_provider"),
         "model_providers[0].retry_policy.backoff.apply_to: Input should be 'all_retries', 'global' or 'same_model'"),
        (("codes: [429, 503]", 'codes: [429, "503-500"]'),
         "model_providers[0].retry_policy.on_status_codes[0].codes: range '503-500' must be within 400-599"),
        (("          max_attempts: 3\n", "          max_attempts: 3\n          when: always\n"),
         "model_providers[0].retry_policy.on_status_codes[0].when: unknown field"),
    ],
    ids=["strategy", "rule-strategy", "policy-field", "backoff-field", "apply-to", "code-range", "rule-field"],
)
def test_unknown_strategies_and_fields_name_their_path(
    env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], message: str
) -> None:
    text = pr926_config()
    assert change[0] in text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(change[0], change[1], 1))
    code, out = validate(path, capsys)
    assert code == 1 and message in out, out


def test_plano_schema_spellings_are_accepted(env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PR #926's schema: status ranges ("502-504") and backoff ``apply_to: global``."""
    from plano_fast.config import load_config

    path = tmp_path / "ranges.yaml"
    path.write_text(pr926_config().replace("codes: [429, 503]", 'codes: [429, "502-504"]')
                    .replace("apply_to: all_retries", "apply_to: global"))  # fmt: skip
    assert validate(path, capsys, "--strict")[0] == 0
    policy = load_config(path).providers[0].retry_policy
    assert policy is not None and policy.on_status_codes[0].codes == {429, 502, 503, 504}
    assert policy.backoff.apply_to == "all_retries"


# -- behaviour, as Plano's e2e tests describe it --------------------------------------------


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeProviderThread, FakeProviderThread]]:
    with FakeProviderThread() as primary, FakeProviderThread() as secondary:
        yield primary, secondary


def gateway_for(text: str, tmp_path: Path, ports: dict[str, int]) -> GatewayProcess:
    """A Plano config with its mock hosts on 127.0.0.1 and a store of the test's own."""
    path = tmp_path / "plano.yaml"
    path.write_text(text.replace("host.docker.internal", "127.0.0.1") + (
        f"plano_fast:\n  sqlite_path: {tmp_path / 'usage.db'}\n  usage_journal_path: {tmp_path / 'usage.journal'}\n"))
    env = {name: str(port) for name, port in ports.items()}
    return GatewayProcess(path, env={**env, "OPENAI_API_KEY": "sk-openai", "ANTHROPIC_API_KEY": "sk-ant"})


def chat(gateway: GatewayProcess, model: str) -> Any:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def calls(fake: FakeProviderThread) -> list[str]:
    return [r.path for r in fake.requests if not r.path.startswith("/_fake")]


@pytest.fixture
def clean(fakes: tuple[FakeProviderThread, FakeProviderThread]) -> tuple[FakeProviderThread, FakeProviderThread]:
    for fake in fakes:
        fake.faults.clear()
        fake.clear()
    return fakes


def test_pr926_description_fails_over_on_429_503_and_server_errors(
    clean: tuple[FakeProviderThread, FakeProviderThread], tmp_path: Path
) -> None:
    primary, secondary = clean
    text = pr926_config().replace(
        "access_key: $OPENAI_API_KEY\n", "access_key: $OPENAI_API_KEY\n    base_url: http://127.0.0.1:${MOCK_PRIMARY_PORT}\n"
    ).replace(
        "access_key: $ANTHROPIC_API_KEY\n",
        "access_key: $ANTHROPIC_API_KEY\n    base_url: http://127.0.0.1:${MOCK_SECONDARY_PORT}\n",
    )  # fmt: skip
    with gateway_for(text, tmp_path, {"MOCK_PRIMARY_PORT": primary.port, "MOCK_SECONDARY_PORT": secondary.port}) as gw:
        for status in (429, 503, 500):  # the rule's codes, then the default rule
            primary.faults.add(Fault("status", status))
            assert chat(gw, "gpt-4o").model == "claude-sonnet-4-0"
        assert calls(primary) == ["/v1/chat/completions"] * 3
        assert calls(secondary) == ["/v1/messages"] * 3
        # the fallback fails too: different_provider has no third provider; the error is relayed
        primary.faults.add(Fault("status", 503))
        secondary.faults.add(Fault("status", 503))
        with pytest.raises(openai.InternalServerError):
            chat(gw, "gpt-4o")
        assert len(calls(primary)) == 4 and len(calls(secondary)) == 4


def test_it6_same_model_backoff_without_jitter_waits_500_then_1000_ms(
    clean: tuple[FakeProviderThread, FakeProviderThread], tmp_path: Path
) -> None:
    primary, _ = clean
    text = (CONFIGS / "retry_it6_backoff_delay.yaml").read_text()
    with gateway_for(text, tmp_path, {"MOCK_PRIMARY_PORT": primary.port}) as gw:
        primary.faults.add(Fault("status", 429), 2)
        started = time.monotonic()
        assert chat(gw, "gpt-4o").model == "gpt-4o"
        assert time.monotonic() - started >= 1.5 * 0.95  # Plano's e2e: the backoff is observed
        recorded = [r for r in primary.requests if not r.path.startswith("/_fake")]
        assert len(recorded) == 3
        gaps = [b.time - a.time for a, b in zip(recorded, recorded[1:])]
        assert 0.5 * 0.95 <= gaps[0] <= 0.5 + 0.3 and 1.0 * 0.95 <= gaps[1] <= 1.0 + 0.3


def test_it7_fallbacks_are_tried_in_their_listed_order(
    clean: tuple[FakeProviderThread, FakeProviderThread], tmp_path: Path
) -> None:
    primary, secondary = clean
    text = (CONFIGS / "retry_it7_fallback_priority.yaml").read_text()
    ports = {"MOCK_PRIMARY_PORT": primary.port, "MOCK_FALLBACK1_PORT": secondary.port,
             "MOCK_FALLBACK2_PORT": secondary.port}  # fmt: skip
    with gateway_for(text, tmp_path, ports) as gw:
        primary.faults.add(Fault("status", 429))
        secondary.faults.add(Fault("status", 429), 1, model="claude-3-5-sonnet")
        assert chat(gw, "gpt-4o").model == "mistral-large"
        assert calls(primary) == ["/v1/chat/completions"]
        assert [r.json()["model"] for r in secondary.requests if not r.path.startswith("/_fake")] == [
            "claude-3-5-sonnet", "mistral-large",
        ]


@pytest.mark.parametrize("name", ["retry_it4_no_retry_policy.yaml", "retry_it1_basic_429.yaml"])
def test_no_listed_fallback_means_no_other_provider(
    clean: tuple[FakeProviderThread, FakeProviderThread], tmp_path: Path, name: str
) -> None:
    """it4 (no retry_policy): the 429 is relayed, the other provider never called -- as
    Plano describes.  it1 (different_provider, no fallback_models): Plano's series would
    pick another configured provider; here a fallback is only a listed one, so the 429 is
    relayed too (the difference docs/resilience.md states)."""
    primary, secondary = clean
    text = (CONFIGS / name).read_text()
    with gateway_for(text, tmp_path, {"MOCK_PRIMARY_PORT": primary.port, "MOCK_SECONDARY_PORT": secondary.port}) as gw:
        primary.faults.add(Fault("status", 429, retry_after="0"))
        with pytest.raises(openai.RateLimitError):
            chat(gw, "gpt-4o")
        assert calls(primary) == ["/v1/chat/completions"] and calls(secondary) == []
