"""A gateway loads only what its configuration uses.

The admin API (aiohttp's web server), managed mode's key cipher (cryptography),
prometheus_client's exposition and the OpenTelemetry SDK (tracing) cost ~0.25 s of CPU to
import: a gateway without an admin port, managed mode, a scrape or a ``tracing`` section
does not import them, so a restart is that much faster
(and so is each of the suite's hundreds of gateway starts).  Checked on a real ``serve``: ``-X importtime`` (the environment's
``PYTHONPROFILEIMPORTTIME``) lists every module the process imported, on its stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess, write_config

#: imported only when the configuration asks for what they serve (OpenTelemetry: the
#: relay's span calls are plano_fast.spans, which imports none of it)
LAZY = (
    "aiohttp", "cryptography", "prometheus_client", "plano_fast.admin", "plano_fast.admin_managed",
    "opentelemetry", "plano_fast.tracing", "plano_fast.otlp",
)  # fmt: skip


def _imported(log: str) -> set[str]:
    names = set()
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


def _loaded(imported: set[str], package: str) -> list[str]:
    return sorted(m for m in imported if m == package or m.startswith(package + "."))


def test_a_plain_gateway_starts_without_the_admin_api_managed_mode_or_prometheus(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = make_gateway(env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = _imported(gateway.log_text())
    assert "plano_fast.app" in imported and "plano_fast.gateway.dispatch" in imported  # the log is read
    assert {p: _loaded(imported, p) for p in LAZY if _loaded(imported, p)} == {}


def test_the_admin_api_and_managed_mode_still_load_what_they_use(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    from tests.test_managed import ENV

    gateway = make_gateway(
        {"managed": "true", "admin_port": 0, "admin_key": "admin-secret-for-imports"},
        env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    imported = _imported(gateway.log_text())
    assert gateway.admin_port
    for package in ("aiohttp", "cryptography", "plano_fast.admin"):
        assert _loaded(imported, package), package


def test_a_tracing_section_loads_the_opentelemetry_sdk(fake: FakeProviderThread, tmp_path: Path) -> None:
    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    with open(config, "a") as f:
        f.write("tracing:\n  random_sampling: 0\n")
    gateway = GatewayProcess(config, env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        imported = _imported(gateway.log_text())
    finally:
        gateway.stop()
    for package in ("opentelemetry.sdk.trace", "plano_fast.tracing", "plano_fast.otlp"):
        assert _loaded(imported, package), package
