"""The suite runs whole from a lone clone: its data is vendored with sources and
licences, and under PLANO_FAST_TEST_REQUIRE_ALL=1 (CI) a skip that is not a documented
opt-in fails instead of passing silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.shared_data import DATA, FIXTURES, PRICING, ROOT


def test_vendored_data_is_in_the_repository_with_its_licences() -> None:
    assert FIXTURES == DATA / "fixtures" or "PLANO_FAST_FIXTURES" in os.environ
    assert PRICING == DATA / "pricing" or "PLANO_FAST_PRICING_DATA" in os.environ
    for folder in ("anthropic-sdk-python", "pydantic-ai", "vercel-ai"):
        assert (DATA / "fixtures" / folder / "LICENSE").is_file(), folder
        assert folder in (DATA / "fixtures" / "SOURCES.md").read_text()
    for folder in ("portkey-models", "litellm", "genai-prices"):
        assert (DATA / "pricing" / folder / "LICENSE").is_file(), folder
    assert (DATA / "README.md").is_file()
    # Real files, not links to a workspace outside the clone.
    assert not [p for p in DATA.rglob("*") if p.is_symlink()]
    # Nothing in the tests reaches for the team workspace beside the checkout.
    for test in (ROOT / "tests").glob("*.py"):
        assert '"shared"' not in test.read_text() or test.name == Path(__file__).name, test


def test_a_skip_that_is_not_an_opt_in_fails_in_ci(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n"
        "def test_missing_data():\n    pytest.skip('shared fixtures not present')\n"
        "def test_opt_in():\n    pytest.skip('set PLANO_FAST_RUN_BENCH_SMOKE=1 to run it')\n"
    )
    # No installed plugin (hypothesis, pytest-benchmark, anyio...) takes part in the rule
    # under test, a hook of tests/conftest.py: not loading them makes each run ~0.5 s, not ~2.5.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("PLANO_FAST_TEST_REQUIRE_ALL", None)

    def run(**extra: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(tmp_path)],
            capture_output=True, text=True, cwd=tmp_path, env={**env, **extra}, timeout=120,
        )  # fmt: skip
        return result.stdout.strip().splitlines()[-1]

    assert run().startswith("2 skipped in ")
    ci = run(PLANO_FAST_TEST_REQUIRE_ALL="1")
    assert ci.startswith("1 failed, 1 skipped"), ci


def test_sdk_clients_share_the_default_tls_context_only() -> None:
    """tests/conftest.py builds the SDK clients' default TLS context once (loading the CA
    bundle is ~23 ms of CPU a client); any other verify setting still gets its own context."""
    import ssl

    from httpx2._transports import default as transport

    first, second = transport.create_ssl_context(), transport.create_ssl_context(verify=True)
    assert first is second and first.verify_mode == ssl.CERT_REQUIRED
    unverified = transport.create_ssl_context(verify=False)
    assert unverified is not transport.create_ssl_context(verify=False) and unverified is not first
    assert unverified.verify_mode == ssl.CERT_NONE
    own = ssl.create_default_context()
    assert transport.create_ssl_context(verify=own) is own
