"""Forward-only schema migrations: ``migrations/<backend>/NNNN_name.sql``.

Each missing migration runs in its own transaction together with the row that records it in
``schema_migrations``; a failed one leaves the database as it was.  Versions are numbered
1, 2, 3... with no gaps, per backend, and both backends always have the same versions.

Where the files come from: in a source checkout, the repository's ``migrations/``
directory (the canonical copy); in an installed package, the copy shipped as package data
under ``plano_fast/migrations/`` (a symlink to ``migrations/`` in the repository, so
there is one copy; setuptools follows it when it builds a wheel).
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

from plano_fast.store import REQUIRED_SCHEMA_VERSION, Store, StoreError, open_store

_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def _source_files(kind: str) -> dict[str, str]:
    checkout = _REPO_ROOT / "migrations" / kind
    if (_REPO_ROOT / "pyproject.toml").is_file() and checkout.is_dir():
        return {p.name: p.read_text(encoding="utf-8") for p in checkout.iterdir() if p.is_file()}
    packaged = importlib.resources.files("plano_fast").joinpath("migrations", kind)
    if not packaged.is_dir():
        raise StoreError(f"no migrations found for {kind!r} (looked in {checkout} and the package)")
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


async def schema_version(store: Store) -> int:
    """The highest applied version, 0 for an empty database."""
    return await store.schema_version()


async def migrate(store: Store) -> list[int]:
    """Apply every missing migration, each in its own transaction; returns their versions."""
    applied = set(await store.applied_migrations())
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
