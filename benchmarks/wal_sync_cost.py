"""Fixed cost of one usage write-ahead-log sync (issue 27, concurrency 1): syncs of a few
events each, the case of a gateway answering one request at a time, where a sync every
``usage_wal_sync_interval_s`` carries few events and its fixed cost is paid by few requests.

Run it twice under a counter and take the difference (start-up and imports cancel out):

    for n in 50 450; do valgrind --tool=callgrind --callgrind-out-file=/tmp/ws.$n \\
        .venv/bin/python -m benchmarks.wal_sync_cost $n; done     # (totals 450 - totals 50) / 400
    for n in 50 450; do strace -f -c -o /tmp/st.$n .venv/bin/python -m benchmarks.wal_sync_cost $n; done

Results: benchmarks/results/wal-sync-20261206.md.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import uvloop

from plano_fast.billing.journal import Journal, WriteAheadLog
from plano_fast.usage import UsageEvent

EVENTS_PER_SYNC = 5


def _event(i: int) -> UsageEvent:
    return UsageEvent(f"req-{i}", 1_733_000_000_000_000_000, "openai", "gpt-4o-mini", True, "ok", 200,
                      input_tokens=12, output_tokens=3, has_usage=True, duration_ms=1.25)


async def syncs(n: int, directory: Path) -> None:
    wal = WriteAheadLog(Journal(directory / "usage.journal"), 3600.0)
    wal.start()
    appended = 0
    try:
        for _ in range(n):
            for _ in range(EVENTS_PER_SYNC):
                wal.append(_event(appended))
                appended += 1
            await wal.sync()
        await wal.resolved(appended)
    finally:
        await wal.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 450
    with tempfile.TemporaryDirectory() as tmp:
        uvloop.run(syncs(n, Path(tmp)))


if __name__ == "__main__":
    main()
