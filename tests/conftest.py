"""Shared fixtures: the shipped fake provider and the real gateway as a subprocess.

Skips: a test skips only for a documented opt-in (``OPT_IN_SKIPS``) or because something
it needs is absent from this machine (PostgreSQL, a compiler for the Cython modules).
With ``PLANO_FAST_TEST_REQUIRE_ALL=1`` (set by ``.ci/run``) any other skip is a failure,
so CI never passes a suite that did not run.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The request path imported in a gateway's own order before any test module, so the suite's
# processes import as a gateway does.  (A test that imports a compiled module first --
# ``gateway._settle``, an ``importorskip`` of one -- no longer leaves its methods
# uninstalled: the mode module's ``twins.install_compiled`` finds it half-imported and the
# compiled module makes that install at its end, tests/test_twins.py.)
import plano_fast.app  # noqa: F401,E402 - (imports relay, dispatch and the three modes)
from plano_fast.gateway.modes import config as _config_mode, firewall as _firewall_mode, managed as _managed_mode  # noqa: F401,E501

from benchmarks.fake_provider import FakeProviderThread
from benchmarks.private_redis import PrivateRedis, available
from tests import pg
from tests.gateway_proc import GatewayProcess, write_config


# The skips CI accepts: each one is switched on by a variable someone set on purpose, or
# is a parametrized case the data does not have.  Anything else skipped fails under
# PLANO_FAST_TEST_REQUIRE_ALL=1.
OPT_IN_SKIPS = (
    "set PLANO_FAST_RUN_BENCH_SMOKE=1",  # the benchmark harness smoke test (make bench-smoke)
    "pure scanner forced by the environment",  # PLANO_FAST_PURE_SCANNER=1
    "no JSON request body",  # a recorded request with nothing to scan
)


def _share_the_default_client_tls_context() -> None:
    """Build the SDK clients' default TLS context once per test process, not once per client.

    Every ``openai.OpenAI()`` / ``anthropic.Anthropic()`` makes an httpx client, whose
    transport loads the system CA bundle into a new ``SSLContext``: ~23 ms of CPU, 97% of
    a client's construction, for clients that talk plain HTTP to the gateway and the fake
    provider (some tests make one per request: hundreds).  Only the default call
    (``verify=True``, no client certificate, same ``SSL_CERT_*`` environment) is shared;
    any other call builds its own context as before.  Gateways run in subprocesses and are
    not affected.  If the SDK's HTTP library changes shape, nothing is patched.
    """
    try:
        from httpx2._transports import default as transport  # the HTTP library of these SDKs
    except ImportError:
        return
    original = getattr(transport, "create_ssl_context", None)
    if original is None or getattr(original, "_plano_fast_shared", False):
        return
    shared: dict[tuple[bool, str | None, str | None], object] = {}

    def create_ssl_context(verify: object = True, cert: object = None, trust_env: bool = True) -> object:
        if verify is not True or cert is not None:
            return original(verify=verify, cert=cert, trust_env=trust_env)
        key = (trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if key not in shared:
            shared[key] = original(verify=verify, cert=cert, trust_env=trust_env)
        return shared[key]

    create_ssl_context._plano_fast_shared = True  # type: ignore[attr-defined]
    transport.create_ssl_context = create_ssl_context


_share_the_default_client_tls_context()


def _let_subprocesses_cache_bytecode() -> None:
    """Give the suite's Python subprocesses a bytecode cache when the environment forbids one.

    With ``PYTHONDONTWRITEBYTECODE`` set (as on the project's machines), no ``.pyc`` of
    ``plano_fast`` is ever written, so each of the hundreds of gateways, ``migrate`` runs
    and CLI calls the suite starts compiled ~100 of the package's modules from source
    again: ~180 ms of CPU in a ~700 ms start.  For the subprocesses only, bytecode goes to
    a cache in this session's own temporary folder (``PYTHONPYCACHEPREFIX``), never into
    the source tree, and is removed at exit; the first subprocess fills it (~2-3 s once, the
    installed packages included, as a cache prefix replaces their ``__pycache__``).
    What the subprocesses run is the same source either way.
    """
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    prefix = tempfile.mkdtemp(prefix="plano_fast_test_pycache_")
    atexit.register(shutil.rmtree, prefix, ignore_errors=True)
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    del os.environ["PYTHONDONTWRITEBYTECODE"]


_let_subprocesses_cache_bytecode()


#: the Dockerfile test whose wheel build runs beside the suite (tests/test_docker_build.py)
_IMAGE_TEST = "test_docker_build.py::test_the_image_steps_build_install_and_serve"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Dockerfile test last: its wheel build, started at collection's end at the
    lowest CPU priority (``pytest_collection_finish``), then has the whole suite's idle
    CPU to finish in before the test waits for it."""
    items.sort(key=lambda item: item.nodeid.endswith(_IMAGE_TEST))  # (stable: the rest keep their order)


def _runs_in_workers(config: pytest.Config) -> bool:
    """This process is the controller of a parallel run (pytest-xdist ``-n N``, N > 0):
    it collects nothing and runs no test; its workers, started after ``pytest_configure``,
    do (each collects the whole suite and runs its share)."""
    if hasattr(config, "workerinput"):
        return False
    return bool(config.getoption("numprocesses", None)) and config.getoption("dist", "no") != "no"


def pytest_configure(config: pytest.Config) -> None:
    if _runs_in_workers(config):
        from tests import test_docker_build

        test_docker_build.share_a_build_folder()  # (named in the environment its workers inherit)


def pytest_collection_finish(session: pytest.Session) -> None:
    # (In a worker of a parallel run, which may not be the one that runs the test, the
    # controller starts the one build instead: pytest_xdist_node_collection_finished.)
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):
        return
    if any(item.nodeid.endswith(_IMAGE_TEST) for item in session.items):
        from tests import test_docker_build

        test_docker_build.start_ahead()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """In the controller of a parallel run, when a worker has collected: the Dockerfile
    test's wheel build, once for the run (whichever worker runs the test waits for it)."""
    config = getattr(node, "config", None)
    if config is not None and config.option.collectonly:
        return
    if any(nodeid.endswith(_IMAGE_TEST) for nodeid in ids):
        from tests import test_docker_build

        test_docker_build.start_shared()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not os.environ.get("PLANO_FAST_TEST_REQUIRE_ALL"):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(allowed in reason for allowed in OPT_IN_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under PLANO_FAST_TEST_REQUIRE_ALL=1 (not a documented opt-in): {reason}"
    )


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database of this session on a reachable or private PostgreSQL.

    Skipped only when no PostgreSQL can be found or started and
    PLANO_FAST_TEST_REQUIRE_PG is unset (CI sets it: there, no PostgreSQL is a failure).
    """
    try:
        pg.server_dsn()
    except pg.PostgresUnavailable as exc:
        if os.environ.get("PLANO_FAST_TEST_REQUIRE_PG") or os.environ.get("PLANO_FAST_TEST_REQUIRE_ALL"):
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


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server for one test (its own port and directory)."""
    if not available():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with PrivateRedis(tmp_path) as server:
        yield server
