"""Faults on the sharded PostgreSQL usage writer (migration 11, ``Store.write_batches_in_flight``
= 3): a few rounds of benchmarks/pg_writer_chaos.py, one of each fault, in the suite.

Two store instances, each with managed mode's synchronous writer, write usage batches that
a transaction holds in flight (three per writer, each on its own counter shard) while
hard-limited requests reserve and settle from both; then, per round: the instances' busy
backends terminated (``pg_terminate_backend``); instance B's PostgreSQL paused (a fault
proxy passing no bytes) and its connections reset; instance A's writer abandoning its
batches in flight (a stop past its bound) and B replaying them while the originals still
wait, the originals then committing -- or killed.  Rows a writer could not write, and
settles that failed, are replayed as the journal replays them.

The run returns no problem when: every request has exactly one usage row (none missing,
none twice), each counter summed across its shards equals the log summed and what was
sent, nothing is left reserved, the hard limit is not overshot.  The faults must have
happened (backends killed, rows abandoned and replayed), else the test proves nothing.
"""

from __future__ import annotations

import asyncio

from benchmarks.pg_writer_chaos import chaos
from plano_fast.store.postgres import WRITE_BATCHES_IN_FLIGHT
from tests import pg
from tests.fault_proxy import FaultProxy, dsn_target, proxied_dsn


def test_kills_pauses_and_abandons_lose_and_double_no_usage_row(pg_database: str) -> None:
    with pg.temp_schema(pg_database) as dsn, FaultProxy(dsn_target(dsn)) as proxy:
        report = asyncio.run(chaos(dsn, rounds=4, seed=5, proxy_dsn=proxied_dsn(dsn, proxy.port), proxy=proxy,
                                   faults=("kill", "pause", "abandon", "abandon+kill"), limit_nano_usd=9_000))
    assert not report.problems, report.line()
    assert report.in_flight_at_fault == WRITE_BATCHES_IN_FLIGHT == 3  # (several batches in flight, struck)
    assert report.backends_killed >= 2 and report.abandoned_rows >= 8 and report.replays >= 2, report.line()
    # the hard limit was reached: some reservations were refused
    assert 4 <= report.reservations_granted < report.reservations_asked, report.line()
