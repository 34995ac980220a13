"""Shared fixtures: the shipped fake provider and the real gateway as a subprocess."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.fake_provider import FakeProviderThread
from tests import pg
from tests.gateway_proc import GatewayProcess, write_config


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database of this session on a reachable or private PostgreSQL.

    Skipped only when no PostgreSQL can be found or started and
    PLANO_FAST_TEST_REQUIRE_PG is unset (CI sets it: there, no PostgreSQL is a failure).
    """
    try:
        pg.server_dsn()
    except pg.PostgresUnavailable as exc:
        if os.environ.get("PLANO_FAST_TEST_REQUIRE_PG"):
            raise
        pytest.skip(f"no PostgreSQL available: {exc}")
    with pg.temp_database() as dsn:
        yield dsn
    pg.stop_private_cluster()


@pytest.fixture
def pg_dsn(pg_database: str) -> Iterator[str]:
    """A fresh schema in the session database, for one test."""
    with pg.temp_schema(pg_database) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeProviderThread]:
    with FakeProviderThread() as provider:
        yield provider


@pytest.fixture(scope="module")
def gateway(fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = write_config(tmp_path_factory.mktemp("gw") / "plano_config.yaml", fake.port)
    with GatewayProcess(config) as proc:
        yield proc


@pytest.fixture
def make_gateway(
    fake: FakeProviderThread, tmp_path: Path
) -> Iterator[object]:
    """Start a gateway with extra ``plano_fast:`` settings; stopped after the test."""
    started: list[GatewayProcess] = []

    def start(
        settings: dict[str, object] | None = None, extra_providers: str = "", **kwargs: object
    ) -> GatewayProcess:
        config = write_config(
            tmp_path / f"plano_config_{len(started)}.yaml", fake.port, settings, extra_providers
        )
        proc = GatewayProcess(config, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
