"""A throwaway PostgreSQL for tests and benchmarks.

``server_dsn()`` finds a PostgreSQL to talk to, in this order:

1. ``$PLANO_FAST_TEST_DATABASE_URL`` if set (used as given; never replaced by a fallback);
2. a local server on 127.0.0.1:5432 with trust auth (user ``postgres``, then ``root``;
   database ``test``, then ``postgres``);
3. a private cluster started with the installed ``initdb`` / ``pg_ctl`` (on PATH or under
   /usr/lib/postgresql/*/bin) in a temp dir, listening only on a unix socket in that dir,
   trust auth, fsync off; stopped and deleted at exit.  When running as root (initdb refuses
   root) the cluster runs as the ``postgres`` system user, or ``nobody`` if there is none.

``PLANO_FAST_TEST_FORCE_PRIVATE_PG=1`` skips step 2 (to exercise step 3).

``temp_database()`` then gives each test session its own fresh database
(``plano_fast_test_<random>``, dropped at the end), so parallel runs and leftovers never
interfere; ``temp_schema(dsn)`` gives a fresh schema inside it (cheap isolation per test).
If the server refuses ``CREATE DATABASE``, a fresh schema in the given database is used.

These helpers are synchronous (they run their own event loop): call them from fixtures, not
from inside a running loop.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

ENV_URL = "PLANO_FAST_TEST_DATABASE_URL"
ENV_FORCE_PRIVATE = "PLANO_FAST_TEST_FORCE_PRIVATE_PG"
LOCAL_CANDIDATES = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL reachable and none could be started."""


async def _probe_async(dsn: str, timeout: float) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    return True


def probe(dsn: str, timeout: float = 3.0) -> bool:
    """True if ``dsn`` accepts a connection and a query."""
    return asyncio.run(_probe_async(dsn, timeout))


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def with_query(dsn: str, **params: str) -> str:
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


# --------------------------------------------------------------------------- private cluster


def _find_pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    candidates += glob.glob(f"/usr/pgsql-*/bin/{name}") + glob.glob(f"/usr/local/pgsql/bin/{name}")
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateCluster:
    """A PostgreSQL cluster of our own: temp dir, unix socket only, trust auth, no fsync.

    ``durable=True``: fsync and synchronous commit on (every commit waits for its WAL
    flush, counted in ``pg_stat_wal.wal_sync``), and nothing of the server's own that
    flushes WAL meanwhile (no autovacuum; the WAL writer's 10 s at most between rounds):
    a test that counts flushes counts its own."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise PostgresUnavailable("initdb / pg_ctl not found (PATH, /usr/lib/postgresql/*/bin)")
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.dir = tempfile.mkdtemp(prefix="plano_pg_")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.port = _free_port()
        self.uid: int | None = None
        self.gid: int | None = None
        if os.geteuid() == 0:
            for user in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(user)
                except KeyError:
                    continue
                self.uid, self.gid = entry.pw_uid, entry.pw_gid
                break
            else:
                raise PostgresUnavailable("running as root and no 'postgres' or 'nobody' user to run initdb as")
            os.chown(self.dir, self.uid, self.gid)
        self.started = False
        self._lock = threading.Lock()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.dir}&port={self.port}"

    def _cmd(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        return subprocess.run(
            args,
            cwd=self.dir,
            env=env,
            user=self.uid,
            group=self.gid,
            extra_groups=[] if self.uid is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> str:
        result = self._cmd(
            [self.initdb, "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
             "--locale=C", "--no-sync"]
        )  # fmt: skip
        if result.returncode != 0:
            self.cleanup()
            raise PostgresUnavailable(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        durability = (
            "-c fsync=on -c synchronous_commit=on -c autovacuum=off -c wal_writer_delay=10s"
            if self.durable
            else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses='' {durability} -c max_connections=200 "
            "-c shared_buffers=64MB"
        )
        result = self._cmd([self.pg_ctl, "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options, "start"])
        if result.returncode != 0:
            log = Path(self.log).read_text(errors="replace") if os.path.exists(self.log) else ""
            self.cleanup()
            raise PostgresUnavailable(f"pg_ctl start failed:\n{result.stdout}\n{result.stderr}\n{log}")
        self.started = True
        atexit.register(self.stop)
        return self.dsn

    def stop(self) -> None:
        with self._lock:
            if self.started:
                self.started = False
                self._cmd([self.pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop"], timeout=60)
            self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


_server: str | None = None
_cluster: PrivateCluster | None = None
_server_lock = threading.Lock()


def server_dsn() -> str:
    """A DSN (to a maintenance database) of a reachable PostgreSQL; see the module doc."""
    global _server, _cluster
    with _server_lock:
        if _server is not None:
            return _server
        env = os.environ.get(ENV_URL)
        if env:
            if not probe(env, timeout=10):
                raise PostgresUnavailable(f"${ENV_URL} is set but {env!r} is not reachable")
            _server = env
            return env
        if os.environ.get(ENV_FORCE_PRIVATE) not in ("1", "true", "yes"):
            for dsn in LOCAL_CANDIDATES:
                if probe(dsn, timeout=2):
                    _server = dsn
                    return dsn
        cluster = PrivateCluster()
        dsn = cluster.start()
        if not probe(dsn, timeout=10):
            cluster.stop()
            raise PostgresUnavailable("started a private PostgreSQL cluster but cannot connect to it")
        _cluster = cluster
        _server = dsn
        return dsn


def private_cluster() -> PrivateCluster | None:
    """The cluster ``server_dsn()`` started, if it had to start one."""
    return _cluster


def stop_private_cluster() -> None:
    global _server, _cluster
    with _server_lock:
        if _cluster is not None:
            _cluster.stop()
            _cluster = None
            _server = None


# --------------------------------------------------------------------------- fresh databases


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _drop_database(dsn: str, name: str) -> None:
    try:
        await _admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except asyncpg.PostgresSyntaxError:  # PostgreSQL < 13
        await _admin(dsn, f'DROP DATABASE IF EXISTS "{name}"')


@contextmanager
def temp_database(prefix: str = "plano_fast_test") -> Iterator[str]:
    """A fresh, empty database for the duration of the block; yields its DSN."""
    base = server_dsn()
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    except asyncpg.InsufficientPrivilegeError:
        # No CREATEDB right: isolate with a schema in the given database instead.
        with temp_schema(base, prefix=prefix) as dsn:
            yield dsn
        return
    try:
        yield with_database(base, name)
    finally:
        asyncio.run(_drop_database(base, name))


def create_schema(dsn: str, prefix: str = "t") -> str:
    """Create a fresh schema; returns a DSN whose ``search_path`` is that schema."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    asyncio.run(_admin(dsn, f'CREATE SCHEMA "{name}"'))
    return with_query(dsn, search_path=name)


def drop_schema(schema_dsn: str) -> None:
    query = dict(parse_qsl(urlsplit(schema_dsn).query))
    name = query.pop("search_path")
    base = urlunsplit(urlsplit(schema_dsn)._replace(query=urlencode(query)))
    asyncio.run(_admin(base, f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


@contextmanager
def temp_schema(dsn: str, prefix: str = "t") -> Iterator[str]:
    schema_dsn = create_schema(dsn, prefix)
    try:
        yield schema_dsn
    finally:
        drop_schema(schema_dsn)
