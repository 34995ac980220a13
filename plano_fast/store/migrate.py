"""Forward-only schema migrations: ``plano_fast/migrations/<backend>/NNNN_name.sql``.

Each missing migration runs in its own transaction together with the row that records it in
``schema_migrations``; a failed one leaves the database as it was.  Versions are numbered
1, 2, 3... with no gaps, per backend, and both backends always have the same versions.

Where the files come from: package data, ``plano_fast/migrations/`` (real files, read with
``importlib.resources``), so a source checkout, an installed wheel and the Docker image
read the same copy the same way.  The repository's top-level ``migrations`` (the path the
design card names, and the one to hand to ``psql -f``) is a symlink to it.

``prepare_schema`` is what ``plano-fast serve`` does before it listens: nothing when the
schema is current; create it on a new or empty embedded SQLite database; otherwise (an
older schema, or an empty PostgreSQL database) migrate only when asked (``--migrate``) and
refuse with :class:`SchemaTooOld` when not.

Both ``serve`` and ``migrate`` refuse a database that records a migration newer than the
newest this code ships (:class:`SchemaTooNew`), before writing anything: a newer release
migrated it, and this code's statements may name what that migration changed (an older
instance against schema 11 on PostgreSQL names the old counter primary key in ``ON
CONFLICT``).
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import re
import sqlite3
from dataclasses import dataclass

from plano_fast.store import (
    REQUIRED_SCHEMA_VERSION,
    SchemaTooNew,
    SchemaTooOld,
    Store,
    StoreError,
    open_store,
)

_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def _source_files(kind: str) -> dict[str, str]:
    packaged = importlib.resources.files("plano_fast").joinpath("migrations", kind)
    if not packaged.is_dir():
        raise StoreError(
            f"no migrations found for {kind!r}: plano_fast/migrations/{kind}/ is missing from "
            "this installation (a wheel built without its package data?)"
        )
    return {p.name: p.read_text(encoding="utf-8") for p in packaged.iterdir() if p.is_file()}


def load_migrations(kind: str) -> list[Migration]:
    """The migrations for backend ``kind`` ("sqlite" | "postgres"), in version order."""
    found: list[Migration] = []
    for filename, sql in _source_files(kind).items():
        m = _FILE.fullmatch(filename)
        if m is None:
            if filename.endswith(".sql"):
                raise StoreError(f"migration file {filename!r} is not named NNNN_name.sql")
            continue
        found.append(Migration(int(m.group(1)), m.group(2), sql))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise StoreError(f"{kind} migrations must be numbered 1..N without gaps, found {versions}")
    if versions and versions[-1] < REQUIRED_SCHEMA_VERSION:
        raise StoreError(
            f"{kind} migrations stop at {versions[-1]} but the code requires {REQUIRED_SCHEMA_VERSION}"
        )
    return found


@functools.cache
def newest_known_version(kind: str) -> int:
    """The newest migration this code ships for backend ``kind``: a database at a higher
    version was migrated by a newer release."""
    return load_migrations(kind)[-1].version


def refuse_newer(applied: list[int], kind: str) -> None:
    """``SchemaTooNew`` when ``applied`` (the versions ``schema_migrations`` records)
    holds one newer than this code ships."""
    current = max(applied, default=0)
    known = newest_known_version(kind)
    if current > known:
        raise SchemaTooNew(current, known, kind)


async def schema_version(store: Store) -> int:
    """The highest applied version, 0 for an empty database."""
    return await store.schema_version()


async def migrate(store: Store) -> list[int]:
    """Apply every missing migration, each in its own transaction; returns their versions.
    ``SchemaTooNew`` before anything is applied when the database is newer than this code."""
    recorded = await store.applied_migrations()
    refuse_newer(recorded, store.kind)
    applied = set(recorded)
    done: list[int] = []
    for m in load_migrations(store.kind):
        if m.version in applied:
            continue
        if await store.apply_migration(m.version, m.name, m.sql):
            done.append(m.version)
    return done


async def run_migrate(database_url: str | None, sqlite_path: str) -> list[int]:
    """What ``plano-fast migrate`` does: open the configured store, migrate, close."""
    store = open_store(database_url, sqlite_path)
    await store.open()
    try:
        return await migrate(store)
    finally:
        await store.close()


def sqlite_is_empty(path: str) -> bool:
    """True for a SQLite database that does not exist yet or holds no table at all (what
    a first start, or an earlier refused start, leaves behind): safe to create the schema
    in.  A file with any table in it, ours or not, is not empty."""
    if path == ":memory:" or not os.path.exists(path) or os.path.getsize(path) == 0:
        return True
    uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        row = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        conn.close()
    return int(row[0]) == 0


async def prepare_schema(
    database_url: str | None, sqlite_path: str, *, allow_migrate: bool = False
) -> list[int]:
    """Bring the configured store to a schema this code can serve, or refuse.

    * a schema newer than this code ships: refused with ``SchemaTooNew``, nothing written;
    * current schema: nothing to do;
    * embedded SQLite that is new or empty (``sqlite_is_empty``): the schema is created;
    * otherwise, an older or absent schema is migrated only with ``allow_migrate``
      (``serve --migrate``) and refused with ``SchemaTooOld`` without it.

    Returns the versions applied.
    """
    fresh = database_url is None and sqlite_is_empty(sqlite_path)
    store = open_store(database_url, sqlite_path)
    await store.open()
    try:
        recorded = await store.applied_migrations()
        refuse_newer(recorded, store.kind)
        current = max(recorded, default=0)
        if current >= REQUIRED_SCHEMA_VERSION:
            return []
        if allow_migrate or (fresh and current == 0):
            return await migrate(store)
        raise SchemaTooOld(current, REQUIRED_SCHEMA_VERSION, store.kind)
    finally:
        await store.close()
