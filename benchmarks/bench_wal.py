"""CPU cost of the usage write-ahead log per event (plano_fast.billing.journal.WriteAheadLog).

    python -m benchmarks.bench_wal                   # 200k events, groups of 100 / 1000 / 2000
    python -m benchmarks.bench_wal --events 500000 --repeat 5

Per event: ``append`` (what the request path pays), and the whole cost of a sync group —
JSON encoding on the loop plus the write and fsync on the log's thread — as process CPU
(``time.process_time``, all threads) divided by the events, for group sizes that match
request rates at the 0.1 s default sync interval (1k, 10k, 20k requests/s).  Best of
``--repeat``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.bench_billing import make_events
from plano_fast.billing.journal import Journal, WriteAheadLog


async def one(events: list, group: int, directory: Path) -> tuple[float, float]:
    wal = WriteAheadLog(Journal(directory / "usage.journal"), 3600.0)
    wal.start()
    try:
        t0 = time.process_time()
        for e in events:
            wal.append(e)
        t1 = time.process_time()
        append_us = (t1 - t0) / len(events) * 1e6
        wal._buffer.clear()
        t0 = time.process_time()
        for start in range(0, len(events), group):
            for e in events[start : start + group]:
                wal.append(e)
            await wal.sync()
        total_us = (time.process_time() - t0) / len(events) * 1e6
        await wal.resolved(len(events))
    finally:
        await wal.stop()
    return append_us, total_us


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    events = make_events(args.events, "wal")
    import uvloop

    for group in (100, 1000, 2000):
        best: tuple[float, float] | None = None
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as d:
                r = uvloop.run(one(events, group, Path(d)))
            best = r if best is None or r[1] < best[1] else best
        assert best is not None
        print(f"group {group:>5}: append {best[0]:.3f} µs/event; append + encode + write + fsync "
              f"{best[1]:.2f} CPU µs/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
