"""The CLI as an operator meets it: first start on a new store, config checks, one-line
errors.  Every command runs as a real subprocess (``python -m plano_fast ...``), so a
traceback would show on its stderr exactly as a user would see it."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from benchmarks.fake_provider import FakeProviderThread
from plano_fast import unimplemented as U
from plano_fast.config import _TopIn, parse_config
from plano_fast.store import REQUIRED_SCHEMA_VERSION, SchemaTooOld
from plano_fast.store.migrate import prepare_schema, sqlite_is_empty
from tests.gateway_proc import ROOT, GatewayProcess, write_config


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plano_fast", *args],
        capture_output=True, text=True, cwd=cwd, timeout=60, env=env,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, no traceback, and the last stderr line is the one error line."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("plano-fast: error: "), result.stderr
    for needle in needles:
        assert needle in last, (needle, last)
    return last


def schema_versions(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        return int(resp.status)


# --------------------------------------------------------------------------- serve and the store


def test_serve_creates_the_schema_on_a_new_embedded_database(fake: FakeProviderThread, tmp_path: Path) -> None:
    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    db = tmp_path / "plano_config.db"
    assert not db.exists()
    with GatewayProcess(config, migrate=False) as gw:
        assert healthz(gw.port) == 200
    assert schema_versions(db) == list(range(1, REQUIRED_SCHEMA_VERSION + 1))


def test_serve_creates_the_schema_on_an_empty_embedded_database(fake: FakeProviderThread, tmp_path: Path) -> None:
    # What a refused start of an earlier version left behind: a WAL-mode file, no tables.
    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    db = tmp_path / "plano_config.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    assert db.stat().st_size > 0 and sqlite_is_empty(str(db))
    with GatewayProcess(config, migrate=False) as gw:
        assert healthz(gw.port) == 200
    assert schema_versions(db) == list(range(1, REQUIRED_SCHEMA_VERSION + 1))


def test_serve_refuses_an_older_schema_in_one_line_and_migrates_with_the_flag(
    fake: FakeProviderThread, tmp_path: Path
) -> None:
    # An older schema: the bookkeeping table is there, the migrations this code needs
    # are not (with one migration so far, "older" is version 0 with tables).
    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    db = tmp_path / "plano_config.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at_ns INTEGER NOT NULL)"
        )
    refused = run_cli("serve", "--config", str(config), "--port", "0")
    assert refused.returncode == 1
    assert_one_line_error(refused, f"plano-fast migrate --config {config}", "--migrate", str(db))
    assert "listening on" not in refused.stdout
    with GatewayProcess(config, migrate=False, extra_args=["--migrate"]) as gw:
        assert healthz(gw.port) == 200
    assert schema_versions(db) == list(range(1, REQUIRED_SCHEMA_VERSION + 1))


def test_serve_names_the_versions_of_an_older_schema(
    fake: FakeProviderThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from plano_fast import cli
    from plano_fast.store import migrate as migrate_module

    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    assert cli.main(["migrate", "--config", str(config)]) == 0
    monkeypatch.setattr(migrate_module, "REQUIRED_SCHEMA_VERSION", REQUIRED_SCHEMA_VERSION + 1)
    capsys.readouterr()
    assert cli.main(["serve", "--config", str(config), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"plano-fast: error: SQLite {tmp_path / 'plano_config.db'} is at schema version "
        f"{REQUIRED_SCHEMA_VERSION}, this plano-fast needs version {REQUIRED_SCHEMA_VERSION + 1}: "
        f"run `plano-fast migrate --config {config}` (or serve with --migrate)"
    )


def test_serve_leaves_a_database_with_other_tables_alone(fake: FakeProviderThread, tmp_path: Path) -> None:
    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    db = tmp_path / "plano_config.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE someone_elses (x INTEGER)")
    refused = run_cli("serve", "--config", str(config), "--port", "0")
    assert_one_line_error(refused, "has no plano_fast schema", "plano-fast migrate")
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"someone_elses"}


def test_prepare_schema_rules(tmp_path: Path) -> None:
    fresh = str(tmp_path / "new.db")
    assert asyncio.run(prepare_schema(None, fresh)) == list(range(1, REQUIRED_SCHEMA_VERSION + 1))
    assert asyncio.run(prepare_schema(None, fresh)) == []  # current: nothing to do
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(SchemaTooOld) as info:
        asyncio.run(prepare_schema(None, str(foreign)))
    assert info.value.current == 0
    assert asyncio.run(prepare_schema(None, str(foreign), allow_migrate=True)) == list(
        range(1, REQUIRED_SCHEMA_VERSION + 1)
    )


def test_prepare_schema_on_postgres_needs_the_flag(pg_dsn: str) -> None:
    # An empty PostgreSQL database is not created implicitly: production stores are
    # migrated on purpose (`plano-fast migrate` or `serve --migrate`).
    with pytest.raises(SchemaTooOld):
        asyncio.run(prepare_schema(pg_dsn, "unused.db"))
    assert asyncio.run(prepare_schema(pg_dsn, "unused.db", allow_migrate=True)) == list(
        range(1, REQUIRED_SCHEMA_VERSION + 1)
    )
    assert asyncio.run(prepare_schema(pg_dsn, "unused.db")) == []


def _run_refused_serve(*args: str) -> subprocess.CompletedProcess[str]:
    """``serve`` expected to exit at once; one that listens instead is killed and fails the test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "plano_fast", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"serve did not refuse the database: it kept running\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


async def _pg_snapshot(dsn: str) -> list[object]:
    """Every table of the test's schema, its columns and its rows (as text, sorted)."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(dsn)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY 1, 2"
        )
        snapshot: list[object] = [tuple(r) for r in columns]
        for table in sorted({r[0] for r in columns}):
            rows = await conn.fetch(f'SELECT t::text FROM "{table}" t')
            snapshot.append((table, sorted(r[0] for r in rows)))
        return snapshot
    finally:
        await conn.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_serve_and_migrate_refuse_a_newer_schema(
    kind: str, fake: FakeProviderThread, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A database migrated by a newer release (here: every migration this code ships plus a
    row for version N+1 in schema_migrations): ``migrate``, ``serve`` and ``serve --migrate``
    each exit 1 with one line naming the database's version (N+1), the newest this code knows
    (N) and what to do; serve never listens, and the database is byte-for-byte (SQLite dump)
    or row-for-row (PostgreSQL tables, columns, rows) what it was.  On main: ``migrate`` said
    "schema up to date" (exit 0) and ``serve`` listened."""
    settings: dict[str, object] = {}
    if kind == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        settings["database_url"] = f'"{dsn}"'
    config = write_config(tmp_path / "plano_config.yaml", fake.port, settings)
    assert run_cli("migrate", "--config", str(config)).returncode == 0
    newer = REQUIRED_SCHEMA_VERSION + 1
    db = tmp_path / "plano_config.db"
    if kind == "sqlite":
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (?, 'from_a_newer_release', 1)", (newer,))

        def snapshot() -> list[object]:
            with sqlite3.connect(db) as conn:
                return list(conn.iterdump())
    else:
        async def mark() -> None:
            import asyncpg

            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 'from_a_newer_release', 1)", newer)
            finally:
                await conn.close()

        asyncio.run(mark())

        def snapshot() -> list[object]:
            return asyncio.run(_pg_snapshot(dsn))

    before = snapshot()
    needles = (f"schema version {newer}", f"newest migration is {REQUIRED_SCHEMA_VERSION}",
               "newer release", "nothing was written")  # fmt: skip
    migrated = run_cli("migrate", "--config", str(config))
    assert migrated.returncode == 1 and migrated.stdout == ""
    assert_one_line_error(migrated, *needles)
    for extra in ([], ["--migrate"]):
        served = _run_refused_serve("--config", str(config), "--port", "0", *extra)
        assert served.returncode == 1
        assert_one_line_error(served, *needles)
        assert "listening on" not in served.stdout
    assert snapshot() == before


# --------------------------------------------------------------------------- one-line errors


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_errors_are_one_line_never_a_traceback(fake: FakeProviderThread, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    for args in (("validate", missing), ("serve", "-c", missing), ("migrate", "-c", missing)):
        assert_one_line_error(run_cli(*args), "missing.yaml", "invalid config")

    # A store path that cannot be created (its parent is a file).
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad_store = write_config(tmp_path / "bad_store.yaml", fake.port, {"sqlite_path": blocker / "gw.db"})
    assert_one_line_error(run_cli("migrate", "-c", str(bad_store)), "migration failed")
    # serve does not exit on it: it answers 503 until the store opens (issues 17 and 26)
    with GatewayProcess(bad_store, migrate=False) as gw:
        req = urllib.request.Request(gw.url + "/v1/chat/completions", data=b'{"model":"gpt-4o-mini"}',
                                     headers={"content-type": "application/json"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        refused.value.close()
        assert refused.value.code == 503
        assert healthz(gw.port) == 200
        blocker.unlink()
        blocker.mkdir()  # the path becomes usable: the retry loop opens it and serves
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(
                    gw.url + "/v1/chat/completions",
                    data=b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}',
                    headers={"content-type": "application/json"}), timeout=10) as served:  # fmt: skip
                    assert served.status == 200
                break
            except urllib.error.HTTPError as exc:
                exc.close()
                assert exc.code == 503 and time.monotonic() < deadline
                time.sleep(0.3)
        assert "Traceback" not in gw.log_text()

    # PostgreSQL is not there (serve's answer to that belongs to the gateway's start).
    away = write_config(tmp_path / "away.yaml", fake.port, {"database_url": '"postgresql://u:p@127.0.0.1:9/db"'})
    assert_one_line_error(run_cli("migrate", "-c", str(away)), "PostgreSQL: migration failed", "ConnectionRefused")

    # The port is taken.
    ok = write_config(tmp_path / "ok.yaml", fake.port)
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        last = assert_one_line_error(run_cli("serve", "-c", str(ok), "--port", str(port)), "cannot start")
        assert "address already in use" in last.lower()
        assert_one_line_error(run_cli("serve", "-c", str(ok), "--port", str(port), "--workers", "2"), "in use")

    # The admin API is not there (the port is closed now).
    assert_one_line_error(
        run_cli("usage", "--admin-url", f"http://127.0.0.1:{port}", "--admin-key", "k" * 32), "cannot reach"
    )


def test_usage_errors_are_one_line_too() -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "PLANO_FAST_CONFIG"}
    for args, prog in ((("serve",), "plano-fast serve"), (("limits", "set", "--scope-id", "x"), "plano-fast limits set"),
                       (("bogus",), "plano-fast")):  # fmt: skip
        result = run_cli(*args, env=env)
        assert result.returncode == 2 and result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"{prog}: error: ") and line.endswith(f"(see {prog} --help)"), line


def test_the_package_entry_point_prints_one_line_for_an_unexpected_error(tmp_path: Path) -> None:
    # Anything not foreseen still ends as one line (PLANO_FAST_DEBUG=1 for the traceback).
    code = (
        "import sys, plano_fast.cli as c\n"
        "def boom(args): raise RuntimeError('something\\nunforeseen')\n"
        "c._validate = boom\n"
        "sys.exit(c.main(['validate', 'x.yaml']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    last = assert_one_line_error(result, "RuntimeError: something unforeseen", "PLANO_FAST_DEBUG=1")
    assert result.stderr.strip() == last


# --------------------------------------------------------------------------- listeners


AGENT_ONLY = """\
version: v0.4.0
listeners:
  - type: agent
    name: agents
    port: 8001
model_providers:
  - model: openai/gpt-4o
    access_key: sk-server-key
"""


def test_a_config_without_a_model_listener_is_not_served(tmp_path: Path) -> None:
    config = tmp_path / "agents.yaml"
    config.write_text(AGENT_ONLY)
    for args in (("validate", str(config)), ("serve", "-c", str(config))):
        result = run_cli(*args)
        assert_one_line_error(result, "invalid config")
        assert "listeners: no type: model listener" in result.stderr
        assert "listeners[0] 'agents' (agent, port 8001)" in result.stderr
        assert "listening on" not in result.stdout


def test_validate_names_the_listener_it_would_serve(tmp_path: Path) -> None:
    config = tmp_path / "mixed.yaml"
    config.write_text(
        AGENT_ONLY + "  - model: openai/gpt-4o-mini\n    access_key: sk-2\n"
    )
    config.write_text(config.read_text().replace(
        "    port: 8001\n", "    port: 8001\n  - {type: model, name: llm, address: 127.0.0.1, port: 12000}\n"
    ))  # fmt: skip
    result = run_cli("validate", str(config))
    assert result.returncode == 0, result.stderr
    assert "serves model listener 'llm' on 127.0.0.1:12000" in result.stdout
    assert (
        f"warning: {config}: listeners[0]: not implemented by plano_fast: agent listeners "
        "(agent orchestration); not served (plano_fast serves listeners[1] 'llm' on 127.0.0.1:12000)"
    ) in result.stderr.splitlines()


# --------------------------------------------------------------------------- unimplemented fields


def _concrete(pattern: str) -> str:
    """The field path a config written by ``_full_config`` has for a table row."""
    path = pattern.replace("[]", "[0]").replace("*", "optimize_context_window")
    return path.partition("=")[0]


FULL_CONFIG = """\
version: v0.4.0
listeners:
  - type: model
    name: model_listener
    address: 127.0.0.1
    port: 12000
    max_retries: 2
    router: plano_orchestrator_v1
    agents: [{id: a, description: an agent}]
    input_filters: [f]
    output_filters: [f]
  - {type: prompt, name: prompt_listener, port: 10000}
  - {type: agent, name: agent_listener, port: 8001, max_retries: 1}
  - {type: model, name: second, port: 12001}
model_providers:
  - model: openai/gpt-4o
    access_key: sk-1
    routing_preferences: [{name: code, description: writes code}]
    usage: fast answers
    stream: true
  - model: amazon_bedrock/us.amazon.nova-pro-v1:0
    base_url: https://bedrock-runtime.us-west-2.amazonaws.com
prompt_targets: [{name: weather}]
endpoints: {api: {endpoint: "127.0.0.1:80"}}
system_prompt: be brief
agents: [{id: a, url: "http://127.0.0.1:1"}]
filters: [{id: f, url: "http://127.0.0.1:2", type: http}]
prompt_guards: {input_guards: {jailbreak: {on_exception: {message: no}}}}
plano_fast: {guard_models: {jailbreak: {url: "http://127.0.0.1:3/guard"}}}
ratelimits: [{model: openai/gpt-4o, selector: {key: x, value: "*"}, limit: {tokens: 1, unit: minute}}]
tracing: {random_sampling: 100}
state_storage: {type: memory}
state_storage_v1_responses: {type: memory}
routing_preferences: [{name: code, description: writes code, models: [openai/gpt-4o]}]
routing: {model: Arch-Router, session_cache: {type: redis, url: "redis://127.0.0.1:6379"}, routing_budget: {max_switch_spend_pct: 5}}
model_metrics_sources: [{type: cost, provider: models.dev}]
prompt_caching: {enabled: true}
overrides: {optimize_context_window: true, upstream_connect_timeout: 2s}
mode: prompt
"""


def test_every_unimplemented_field_is_reported_once_by_path() -> None:
    cfg = parse_config(FULL_CONFIG, source="full.yaml", env={})
    paths = [line.split(": ")[1] for line in cfg.unimplemented]
    assert len(paths) == len(set(paths)), paths
    expected = {_concrete(p) for p, _ in U.FIELDS}
    # The agent listener's max_retries sits under a listener reported whole.
    expected |= {"listeners[1]", "listeners[2]", "listeners[3]", "model_providers[1]"}
    expected -= {"llm_providers[0].stream"}
    assert set(paths) == expected
    assert "overrides.upstream_connect_timeout" not in paths  # implemented
    # preference routing is implemented (issue 23): its sections are not reported
    assert not {"routing_preferences", "routing", "model_providers[0].routing_preferences",
                "model_providers[0].usage"} & set(paths)
    # guard models and filter chains are implemented (issue 24)
    assert not {"filters", "prompt_guards", "listeners[0].input_filters",
                "listeners[0].output_filters"} & set(paths)
    # conversation state is implemented (issue 28: memory, sqlite, postgres, store)
    assert not {"state_storage", "state_storage_v1_responses"} & set(paths)
    assert all(": not implemented by plano_fast: " in line for line in cfg.unimplemented)
    # The deprecated section name is covered by the same rows.
    legacy = parse_config(
        FULL_CONFIG.replace("model_providers:", "llm_providers:"), source="full.yaml", env={}
    )
    assert "llm_providers[0].stream" in "\n".join(legacy.unimplemented)
    # mode: llm is what plano_fast does.
    llm = parse_config(FULL_CONFIG.replace("mode: prompt", "mode: llm"), env={})
    assert not any(": mode:" in line for line in llm.unimplemented)


def test_every_plano_top_level_key_is_implemented_or_listed() -> None:
    """Keep the list honest: a Plano key accepted by the schema is either implemented
    here or reported as not implemented."""
    implemented = {"version", "listeners", "listener", "model_providers", "llm_providers",
                   "model_aliases", "plano_fast", "overrides", "mode", "ratelimits", "tracing",
                   "routing_preferences", "state_storage", "state_storage_v1_responses",
                   "filters", "prompt_guards", "model_metrics_sources"}  # fmt: skip
    listed = {p.split(".")[0].split("[")[0].split("=")[0] for p, _ in U.FIELDS}
    assert set(_TopIn.model_fields) <= implemented | listed, set(_TopIn.model_fields) - implemented - listed


def test_strict_makes_unimplemented_fields_errors(fake: FakeProviderThread, tmp_path: Path) -> None:
    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    config.write_text(config.read_text() + "system_prompt: be brief\n")
    lax = run_cli("validate", str(config))
    assert lax.returncode == 0
    assert f"warning: {config}: system_prompt: not implemented by plano_fast" in lax.stderr
    strict = run_cli("validate", "--strict", str(config))
    assert_one_line_error(strict, "1 field not implemented (--strict)")
    assert f"error: {config}: system_prompt: not implemented by plano_fast" in strict.stderr
    assert "(ignored)" in lax.stderr and "(ignored)" not in strict.stderr
    served = run_cli("serve", "--strict", "-c", str(config), "--port", "0")
    assert_one_line_error(served, "1 field not implemented (--strict)")
    assert "listening on" not in served.stdout
    # Without --strict the gateway starts and logs the line.
    with GatewayProcess(config) as gw:
        assert healthz(gw.port) == 200
        assert "system_prompt: not implemented by plano_fast" in gw.log_text()


# --------------------------------------------------------------------------- --allow-missing-env


def test_validate_without_the_secrets(tmp_path: Path) -> None:
    config = tmp_path / "secrets.yaml"
    config.write_text(
        "version: v0.4.0\n"
        "listeners: [{type: model, name: m, port: 12000}]\n"
        "model_providers:\n"
        "  - {model: openai/gpt-4o, access_key: $PF_TEST_UNSET_KEY}\n"
        "  - {model: vllm/llama, base_url: $PF_TEST_UNSET_URL, provider_interface: openai}\n"
        "  - {model: ollama/llama3, base_url: 'http://${PF_TEST_UNSET_HOST}:11434'}\n"
        "plano_fast: {database_url: $PF_TEST_UNSET_DSN, admin_key: $PF_TEST_UNSET_ADMIN}\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PF_TEST_")}
    strict = run_cli("validate", str(config), env=env)
    assert_one_line_error(strict, "invalid config (5 errors)")
    relaxed = run_cli("validate", "--allow-missing-env", str(config), env=env)
    assert relaxed.returncode == 0, relaxed.stderr
    for var in ("KEY", "URL", "HOST", "DSN", "ADMIN"):
        assert f"$PF_TEST_UNSET_{var}, which is not set (checked with a placeholder)" in relaxed.stderr
    # A real problem is still one, placeholders or not.
    config.write_text(config.read_text().replace("provider_interface: openai", "provider_interface: nope"))
    assert_one_line_error(run_cli("validate", "--allow-missing-env", str(config), env=env), "invalid config")
    # The placeholders exist only for checking: serve has no such option.
    assert run_cli("serve", "--allow-missing-env", "-c", str(config), env=env).returncode == 2


EXAMPLES = {
    # file: (the mode it shows, a credential it does not know: refused with 401)
    "plano_config.yaml": ("config", None),
    "firewall.yaml": ("firewall", "sk-not-registered"),
    "managed.yaml": ("managed", "xproxy_" + "A" * 43),
    "compose.yaml": ("firewall", "sk-not-registered"),
}


def test_every_example_is_listed_and_validates_strictly_without_its_secrets() -> None:
    assert sorted(p.name for p in (ROOT / "examples").glob("*.yaml")) == sorted(EXAMPLES)
    for name in EXAMPLES:
        result = run_cli("validate", "--allow-missing-env", "--strict", str(ROOT / "examples" / name))
        assert result.returncode == 0, (name, result.stderr)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_runs(name: str, tmp_path: Path) -> None:
    """Each example starts as its comments say (in an empty directory: the store is
    created there), answers /healthz, and its mode shows: firewall and managed refuse a
    key they do not know.  Only the ports are changed (free ones) and PostgreSQL is
    swapped for SQLite, so nothing here depends on the machine."""
    mode, unknown_credential = EXAMPLES[name]
    text = (ROOT / "examples" / name).read_text()
    text = text.replace("port: 12000", "port: 0").replace("admin_port: 12002", "admin_port: 0")
    text = text.replace("database_url: $DATABASE_URL", "sqlite_path: plano_fast.db")
    config = tmp_path / name
    config.write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **{k: v for k, v in __import__("os").environ.items() if not k.startswith("PLANO_FAST_")},
        "PLANO_FAST_ADMIN_KEY": "a" * 40,
        "PLANO_FAST_MASTER_KEY": __import__("plano_fast.managed.crypto", fromlist=["x"]).generate_master_key(),
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "plano_fast", "serve", "--config", str(config)],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line + (proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
        port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        assert healthz(port) == 200
        assert ("admin API on" in line) == (mode != "config")
        if unknown_credential is not None:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=b'{"model": "gpt-4o-mini", "messages": []}',
                headers={"authorization": f"Bearer {unknown_credential}", "content-type": "application/json"},
            )
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=10)
            assert info.value.code == 401
            info.value.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert (work / "plano_fast.db").is_file()
