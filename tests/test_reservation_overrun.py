"""A provider billing more than the managed reservation held (the bound was wrong): the
difference is on the usage row (``reservation_overrun_nano_usd``, migration 0004), in
/metrics and in the log (issue 26).  The fake provider is told to report more output tokens
than ``max_tokens`` allows (``x-fake-output-tokens``), which no real provider should do.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from plano_fast.billing.journal import Journal, WriteAheadLog
from plano_fast.store import usage_row_from_event
from plano_fast.usage import UsageEvent
from tests.gateway_proc import GatewayProcess
from tests.test_managed import (
    DEFAULT_PIPE, ENV, REQUEST_BODY, STREAM_BODY, Tenant, provision, request_cost, rows,
)  # fmt: skip
from tests.test_metrics import ADMIN_KEY, families

OUTPUT_PRICE = 600  # gpt-4o-mini, nano-USD per output token (tests.test_managed.request_cost)


async def send(url: str, token: str, body: bytes, output_tokens: int) -> int:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json",
               "x-fake-input-tokens": str(len(body)), "x-fake-output-tokens": str(output_tokens)}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
            await resp.read()
            return resp.status


def metric(gateway: GatewayProcess, name: str) -> float:
    req = urllib.request.Request(f"http://127.0.0.1:{gateway.admin_port}/metrics",
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        fams = families(resp.read().decode())
    return float(fams[name].samples[0].value)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_an_overrun_is_flagged_on_the_row_and_counted(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path, request: Any, store: str
) -> None:
    database_url = request.getfixturevalue("pg_dsn") if store == "postgres" else None
    sqlite_path = str(tmp_path / "plano_config_0.db")
    settings: dict[str, object] = {"managed": "true", "managed_reload_s": 1, "admin_port": 0,
                                   "admin_key": ADMIN_KEY}
    if database_url:
        settings["database_url"] = f'"{database_url}"'
    tenants: list[Tenant] = []
    gateway = make_gateway(settings, env=ENV, before_start=lambda: tenants.append(
        provision(database_url, sqlite_path, DEFAULT_PIPE, limit_nano_usd=10**12)))
    token = tenants[0].token
    # Within the bound (max_tokens 50, 50 reported): no flag.  Then 500 and 80 output
    # tokens reported against a reservation for 50: overruns of 450 and 30 tokens.
    assert asyncio.run(send(gateway.url, token, REQUEST_BODY, 50)) == 200
    assert asyncio.run(send(gateway.url, token, REQUEST_BODY, 500)) == 200
    assert asyncio.run(send(gateway.url, token, STREAM_BODY, 80)) == 200
    billed = sorted(rows(sqlite_path, database_url), key=lambda r: r.time_ns)
    assert [r.output_tokens for r in billed] == [50, 500, 80]
    assert [r.reservation_overrun_nano_usd for r in billed] == [None, 450 * OUTPUT_PRICE, 30 * OUTPUT_PRICE]
    assert billed[1].cost_nano_usd == request_cost(REQUEST_BODY) + 450 * OUTPUT_PRICE  # counted in full
    assert billed[2].streaming
    assert metric(gateway, "plano_fast_reservation_overruns") == 2
    assert metric(gateway, "plano_fast_reservation_overrun_nano_usd") == 480 * OUTPUT_PRICE
    log = gateway.log_text()
    assert f"request {billed[1].request_id} cost {billed[1].cost_nano_usd} nano-USD, more than the" in log


def test_the_overrun_survives_the_journal(tmp_path: Path) -> None:
    """A settle that fails takes the event path (journaled, then written by the flusher):
    the overrun goes with the event into the write-ahead log and back into the row."""
    event = UsageEvent("req-1", 1, "openai", "gpt-4o-mini", False, "ok", 200, input_tokens=3,
                       output_tokens=500, has_usage=True, project_id="p", reservation_overrun_nano_usd=270_000)
    plain = UsageEvent("req-2", 2, "openai", "gpt-4o-mini", False, "ok", 200)
    journal = Journal(tmp_path / "usage.journal")

    async def go() -> None:
        wal = WriteAheadLog(journal, 0.01)
        wal.start()
        wal.append(event)
        wal.append(plain)
        await wal.sync()
        await wal.stop()

    asyncio.run(go())
    files = sorted(tmp_path.glob("usage.journal.*"))
    assert files, "the events were journaled"
    replayed = [e for f in files for batch in Journal.read_events(f, 100) for e in batch]
    assert [(e.request_id, e.reservation_overrun_nano_usd) for e in replayed] == [("req-1", 270_000), ("req-2", 0)]
    assert [usage_row_from_event(e).reservation_overrun_nano_usd for e in replayed] == [270_000, None]
    # The row goes through the spill journal (overflow, stop) as well.
    journal.spill([usage_row_from_event(e) for e in replayed])
    back = [r for batch in Journal.read_batches(journal.path, 10) for r in batch]
    assert [r.reservation_overrun_nano_usd for r in back] == [270_000, None]
    assert json.loads(journal.path.read_text().splitlines()[0])["reservation_overrun_nano_usd"] == 270_000
