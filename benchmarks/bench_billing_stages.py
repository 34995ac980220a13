"""Instructions per usage event of each deferred billing stage, under callgrind.

    python -m benchmarks.bench_billing_stages                    # every stage, 2,000 events
    python -m benchmarks.bench_billing_stages --stages wal,sqlite --events 4000 --batch 100

Each stage runs in its own process under ``valgrind --tool=callgrind`` with the same set-up
(imports, a migrated SQLite store in a temp dir, ``--events`` events built); a run with
no stage ("none") is subtracted, and the difference divided by the event count is the
stage's cost per event.  Instruction counts are nearly independent of the machine's load
(the 2-core machine is shared), unlike wall-clock timings.

Stages (the flusher's deferred work, in order):

* ``rows``: ``rows_of_events`` (pricing + ``UsageRow.from_event``), a ``DRAIN_SLICE`` at a time;
* ``wal``: the write-ahead log's encoding (``_wal_line`` per ``SYNC_SLICE``: the events' lines);
* ``normalize``: ``normalize_usage`` (the store's validation and in-batch dedupe);
* ``params``: ``_chunk_params`` (the SQLite writer's Python binding work);
* ``sqlite``: ``SqliteStore.write_usage`` of the rows in batches of ``--batch`` (statements,
  counters, commit; includes ``normalize`` and ``params``);
* ``flush``: the whole path: submit to a ``UsageFlusher`` with its write-ahead log, then
  ``flush_now`` + one WAL sync per ``--batch`` events.

Rows are built outside the measured part for the stages after ``rows``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import subprocess
import sys
import tempfile

STAGES = ("rows", "wal", "normalize", "params", "sqlite", "flush")


def _stage(stage: str, n: int, batch: int) -> None:
    """The measured run (inside callgrind)."""
    from benchmarks.bench_billing import make_events
    from plano_fast.billing import journal as journal_mod
    from plano_fast.billing.flusher import DRAIN_SLICE, UsageFlusher
    from plano_fast.billing.metrics import BillingMetrics
    from plano_fast.billing.rows import rows_of_events
    from plano_fast.pricing import PricingRegistry
    from plano_fast.store import Store, UsageRow, normalize_usage, open_store
    from plano_fast.store import sqlite as sqlite_store
    from plano_fast.store.migrate import migrate

    events = make_events(n, "stage")
    pricing = PricingRegistry()
    tmp = tempfile.mkdtemp(prefix="billing-stages-")

    async def setup_store() -> Store:
        store = open_store(None, os.path.join(tmp, "usage.db"))
        await store.open()
        await migrate(store)
        return store

    rows: collections.deque[UsageRow] = collections.deque()
    if stage in ("normalize", "params", "sqlite", "none-sqlite", "none"):
        # built outside the measured part; a baseline holds them too (a heap of 3,000
        # more objects makes the cyclic GC's collections dearer: it must cancel out)
        rows_of_events(pricing, events, rows)
    # warm the pricing cache and statement shapes outside the measurement
    rows_of_events(pricing, make_events(8, "warm"), collections.deque())
    row_list = list(rows)

    if stage == "rows":
        out: collections.deque[UsageRow] = collections.deque()
        for start in range(0, n, DRAIN_SLICE):
            rows_of_events(pricing, events[start : start + DRAIN_SLICE], out)
    elif stage == "wal":
        line = journal_mod._wal_line
        for start in range(0, n, journal_mod.SYNC_SLICE):
            line(events, start, min(start + journal_mod.SYNC_SLICE, n))
    elif stage == "normalize":
        for start in range(0, n, batch):
            normalize_usage(row_list[start : start + batch])
    elif stage == "params":
        for start in range(0, n, sqlite_store._INSERT_CHUNK):
            sqlite_store._chunk_params(row_list[start : start + sqlite_store._INSERT_CHUNK])
    elif stage in ("sqlite", "none-sqlite"):

        async def write() -> None:
            store = await setup_store()
            # one warm-up write (statement shapes prepared) outside the count is not
            # possible in one process; it is the same in every run, so it cancels out
            if stage == "sqlite":
                for start in range(0, n, batch):
                    await store.write_usage(row_list[start : start + batch])
            await store.close()

        asyncio.run(write())
    elif stage in ("flush", "none-flush"):

        async def flush() -> None:
            store = await setup_store()
            journal = journal_mod.Journal(os.path.join(tmp, "usage.journal"))
            wal = journal_mod.WriteAheadLog(journal, 3600.0)
            flusher = UsageFlusher(store, pricing, journal, BillingMetrics(), interval_s=3600.0,
                                   batch_size=batch, wal=wal)  # fmt: skip
            await flusher.start()
            if stage == "flush":
                for start in range(0, n, batch):
                    for e in events[start : start + batch]:
                        flusher.submit(e)
                    await wal.sync()
                    await flusher.flush_now()
            await flusher.stop()
            await store.close()

        asyncio.run(flush())


def _instructions(stage: str, n: int, batch: int) -> int:
    cmd = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "benchmarks.bench_billing_stages", "--run", stage,
        "--events", str(n), "--batch", str(batch),
    ]  # fmt: skip
    # one hash seed for every run: set and dict layouts (and so a few hundred
    # instructions an event) otherwise differ from run to run
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if found is None:
        raise RuntimeError(done.stderr[-2000:])
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100, help="rows per write_usage / flush")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        _stage(args.run, args.events, args.batch)
        return 0
    stages = [s for s in args.stages.split(",") if s]
    baselines: dict[str, int] = {}
    print(f"events={args.events} batch={args.batch} load={os.getloadavg()[0]:.2f}")
    for stage in stages:
        base_name = {"sqlite": "none-sqlite", "flush": "none-flush", "rows": "none-bare", "wal": "none-bare"}.get(
            stage, "none")
        if base_name not in baselines:
            baselines[base_name] = _instructions(base_name, args.events, args.batch)
        total = _instructions(stage, args.events, args.batch)
        print(f"{stage:10s} {(total - baselines[base_name]) / args.events:10.0f} instructions/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
