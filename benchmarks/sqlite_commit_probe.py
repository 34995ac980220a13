"""A managed group commit on SQLite under schema variants: instructions and WAL frames a commit.

    python -m benchmarks.sqlite_commit_probe --variants base,no_project_time,time_only --rows 13
    python -m benchmarks.sqlite_commit_probe --variants base,page2048 --rows 13 --callgrind

Each commit is what ``GroupWriter`` runs under load: ``write_usage_now`` of ``--rows`` rows of
one token (request ids shaped as the gateway's, ``<32 hex>-<counter in hex>``; uuid project,
user and token ids), after 200 commits of warm-up.  Variants (probes, not proposals):

* ``base``: the schema the migrations make;
* ``no_project_time``: ``usage_log_project_time`` dropped (what the index costs);
* ``time_only``: it replaced by an index on ``time_ns`` alone;
* ``page1024`` / ``page2048`` / ``page8192``: a new database with that page size;
* ``build``: the rows built and not written (the part of a figure that is the probe's).

Reported: WAL frames a commit (the WAL is never checkpointed during the run) and, with
``--callgrind``, instructions a commit: two runs under valgrind's callgrind, with
``--commits`` and ``--commits`` + 1000, the difference / 1000 (start-up and warm-up cancel).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plano_fast.store import UsageRow
from plano_fast.store.migrate import migrate
from plano_fast.store.sqlite import SqliteStore

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "build": [],
    "no_project_time": ["DROP INDEX usage_log_project_time"],
    "time_only": ["DROP INDEX usage_log_project_time", "CREATE INDEX usage_log_time ON usage_log (time_ns)"],
    "page1024": [],
    "page2048": [],
    "page8192": [],
}
WARMUP_COMMITS = 200
PREFIX = os.urandom(16).hex()


def make_row(i: int) -> UsageRow:
    return UsageRow(
        request_id=f"{PREFIX}-{i:x}", time_ns=time.time_ns(), project_id="0f5a4e7c-3b1d-4a8e-9c2f-7d6b5a4c3e2f",
        user_id="1e2d3c4b-5a69-4788-96a5-b4c3d2e1f0a9", key_hash=None,
        token_id="2a3b4c5d-6e7f-4091-a2b3-c4d5e6f7a8b9", provider="openai", model="gpt-4o-mini",
        input_tokens=12, output_tokens=9, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
        streaming=False, status="ok", http_status=200, priced=True, cost_nano_usd=16_000, duration_us=900,
    )  # fmt: skip


async def run(variant: str, commits: int, rows: int) -> float:
    """WAL frames a commit (0 for ``build``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.db")
        if variant.startswith("page"):
            conn = sqlite3.connect(path)
            conn.execute(f"PRAGMA page_size = {int(variant[4:])}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE _x (a)")
            conn.execute("DROP TABLE _x")
            conn.close()
        store = SqliteStore(path)
        async with store:
            await migrate(store)
            for stmt in VARIANTS[variant]:
                await store._execute(stmt)
            page_size = int((await store._fetch("PRAGMA page_size"))[0][0])
            i = 0
            for _ in range(WARMUP_COMMITS + commits):
                batch = [make_row(i + j) for j in range(rows)]
                i += rows
                if variant == "build":
                    continue
                if store.write_usage_now(batch) != rows:
                    raise RuntimeError("the commit did not write every row")
            if variant == "build":
                return 0.0
            return os.path.getsize(path + "-wal") / (24 + page_size) / (WARMUP_COMMITS + commits)


def callgrind_ir(variant: str, commits: int, rows: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
             "benchmarks.sqlite_commit_probe", "--variants", variant, "--commits", str(commits),
             "--rows", str(rows), "--quiet"],
            check=True, capture_output=True, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        found = re.search(r"^(?:totals|summary): (\d+)", out.read_text(errors="replace"), re.M)
    if found is None:
        raise RuntimeError("no totals in the callgrind output")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="base")
    ap.add_argument("--rows", type=int, default=13, help="rows a commit")
    ap.add_argument("--commits", type=int, default=200, help="commits after the warm-up")
    ap.add_argument("--callgrind", action="store_true", help="instructions a commit")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    for variant in [v for v in args.variants.split(",") if v]:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
        frames = asyncio.run(run(variant, args.commits, args.rows))
        if args.quiet:
            continue
        line = f"{variant:16s} rows={args.rows} wal_frames_a_commit={frames:.2f}"
        if args.callgrind:
            base = callgrind_ir(variant, args.commits, args.rows)
            more = callgrind_ir(variant, args.commits + 1000, args.rows)
            line += f" instructions_a_commit={(more - base) / 1000:,.0f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
