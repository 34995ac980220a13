"""Managed hard limits: a 2xx answer whose usage is missing or cut short is charged at the
reservation, never at nothing (the attack battery's open finding, 2026-12-05).

Over real sockets: the real gateway in managed mode, the shipped fake provider told to omit
usage (``x-fake-omit-usage``) or to reset a stream after some events
(``x-fake-reset-after-events``), raw aiohttp clients.  The policy is
plano_fast.billing.rows.row_within_reservation.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from plano_fast.billing.journal import Journal, WriteAheadLog
from plano_fast.billing.metrics import BillingMetrics
from plano_fast.billing.reprice import reprice_row
from plano_fast.billing.rows import row_of_event, row_within_reservation, rows_of_events
from plano_fast.pricing import PricingRegistry
from plano_fast.store import UsageRow
from plano_fast.usage import UsageEvent
from tests.gateway_proc import GatewayProcess
from tests.test_managed import DEFAULT_PIPE, ENV, REQUEST_BODY, STREAM_BODY, Tenant, provision, request_cost, rows
from tests.test_metrics import ADMIN_KEY
from tests.test_reservation_overrun import metric

MESSAGES_STREAM_BODY = json.dumps(
    {"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": True,
     "messages": [{"role": "user", "content": "hi"}]},
    separators=(",", ":"),
).encode()
# claude-sonnet-4-6: 3,000 nano-USD per input token, 15,000 per output token; the dearest
# input variant reserved is the 1-hour cache write (2x input): 6,000 per byte of body.
SONNET_RESERVATION = len(MESSAGES_STREAM_BODY) * 6_000 + 50 * 15_000


async def send(url: str, token: str, body: bytes, extra: dict[str, str], path: str = "/v1/chat/completions") -> int:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json",
               "anthropic-version": "2023-06-01", **extra}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + path, data=body, headers=headers) as resp:
            try:
                await resp.read()
            except aiohttp.ClientPayloadError:
                pass  # a stream cut by the provider's reset: cut for the client too
            return resp.status


def spent(sqlite_path: str, project_id: str) -> int:
    with sqlite3.connect(sqlite_path) as db:
        row = db.execute(
            "SELECT spent_nano_usd FROM spending_counters WHERE scope_kind='project' AND scope_id=? "
            "AND period='total'", (project_id,),
        ).fetchone()
    return int(row[0]) if row else 0


def start(make_gateway: Callable[..., GatewayProcess], tmp_path: Path, limit_nano_usd: int | None) -> tuple[GatewayProcess, str, Tenant]:
    sqlite_path = str(tmp_path / "plano_config_0.db")
    tenants: list[Tenant] = []
    gateway = make_gateway(
        {"managed": "true", "managed_reload_s": 1, "admin_port": 0, "admin_key": ADMIN_KEY}, env=ENV,
        before_start=lambda: tenants.append(provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=limit_nano_usd)),
    )
    return gateway, sqlite_path, tenants[0]


def settled_rows(sqlite_path: str, count: int) -> list[Any]:
    """The usage rows, once ``count`` are written (a cut stream's settle runs in the
    background: the client has its error first)."""
    for _ in range(100):
        found = rows(sqlite_path)
        if len(found) >= count:
            return sorted(found, key=lambda r: r.time_ns)
        asyncio.run(asyncio.sleep(0.05))
    raise AssertionError(f"{count} usage rows expected, {len(rows(sqlite_path))} written")


@pytest.mark.parametrize("body", [REQUEST_BODY, STREAM_BODY], ids=["json", "stream"])
def test_an_answer_without_usage_is_charged_its_reservation_and_the_limit_holds(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path, body: bytes
) -> None:
    reservation = request_cost(body)  # input bound = the body's bytes, output = max_tokens
    gateway, sqlite_path, tenant = start(make_gateway, tmp_path, limit_nano_usd=2 * reservation + reservation // 2)
    omit = {"x-fake-omit-usage": "1"}
    assert asyncio.run(send(gateway.url, tenant.token, body, omit)) == 200
    assert spent(sqlite_path, tenant.project_id) == reservation
    assert asyncio.run(send(gateway.url, tenant.token, body, omit)) == 200
    assert spent(sqlite_path, tenant.project_id) == 2 * reservation
    # Half a reservation left: the third is refused, as it would be after two priced answers.
    assert asyncio.run(send(gateway.url, tenant.token, body, omit)) == 402
    billed = settled_rows(sqlite_path, 2)
    assert [(r.status, r.priced, r.cost_nano_usd, r.price_entry) for r in billed] == [
        ("usage_missing", True, reservation, "reservation")] * 2
    assert all(r.reservation_overrun_nano_usd is None for r in billed)
    assert metric(gateway, "plano_fast_reservations_charged_in_full") == 2
    assert metric(gateway, "plano_fast_reservations_charged_in_full_nano_usd") == 2 * reservation
    assert f"request {billed[0].request_id}: a 200 answer with no usage (usage_missing); charged {reservation}" \
        in gateway.log_text()
    assert tenant.token not in gateway.log_text()


def test_a_stream_cut_after_its_head_is_charged_its_reservation(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    reservation = request_cost(STREAM_BODY)
    gateway, sqlite_path, tenant = start(make_gateway, tmp_path, limit_nano_usd=10 * reservation)
    asyncio.run(send(gateway.url, tenant.token, STREAM_BODY, {"x-fake-reset-after-events": "3"}))
    (row,) = settled_rows(sqlite_path, 1)
    assert (row.status, row.http_status, row.cost_nano_usd, row.price_entry) == (
        "upstream_failed", 200, reservation, "reservation")
    assert spent(sqlite_path, tenant.project_id) == reservation
    assert metric(gateway, "plano_fast_reservations_charged_in_full") == 1


@pytest.mark.parametrize(("input_tokens", "overrun"), [(40, False), (10_000, True)], ids=["below", "above"])
def test_a_cut_stream_with_partial_usage_is_charged_the_larger_of_it_and_the_reservation(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path, input_tokens: int, overrun: bool
) -> None:
    """An Anthropic stream cut after message_start: its input tokens were seen, the output
    generated after the cut was not (only max_tokens bounds it).  Charged the reservation,
    unless the seen usage alone prices above it (then that, flagged as an overrun)."""
    gateway, sqlite_path, tenant = start(make_gateway, tmp_path, limit_nano_usd=10**12)
    extra = {"x-fake-reset-after-events": "2", "x-fake-input-tokens": str(input_tokens)}
    asyncio.run(send(gateway.url, tenant.token, MESSAGES_STREAM_BODY, extra, "/v1/messages"))
    (row,) = settled_rows(sqlite_path, 1)
    assert (row.status, row.input_tokens) == ("upstream_failed", input_tokens)
    seen_nano_usd = input_tokens * 3_000 + row.output_tokens * 15_000
    assert row.cost_nano_usd == max(seen_nano_usd, SONNET_RESERVATION)
    assert (row.reservation_overrun_nano_usd is not None) is overrun
    assert spent(sqlite_path, tenant.project_id) == row.cost_nano_usd


def test_without_a_hard_limit_an_answer_without_usage_stays_unpriced(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gateway, sqlite_path, tenant = start(make_gateway, tmp_path, limit_nano_usd=None)
    assert asyncio.run(send(gateway.url, tenant.token, REQUEST_BODY, {"x-fake-omit-usage": "1"})) == 200
    (row,) = settled_rows(sqlite_path, 1)
    assert (row.status, row.priced, row.cost_nano_usd, row.price_entry) == ("usage_missing", False, None, None)
    assert metric(gateway, "plano_fast_reservations_charged_in_full") == 0


# -- the policy in pure code (plano_fast.billing.rows) --------------------------------------
def _event(status: str, http_status: int, reserved: int, **counts: int) -> UsageEvent:
    return UsageEvent("req-1", 1, "openai", "gpt-4o-mini", True, status, http_status, project_id="p",
                      reserved_nano_usd=reserved, has_usage=status == "ok", **counts)


@pytest.mark.parametrize(("status", "http_status", "counts", "cost", "entry"), [
    ("usage_missing", 200, {}, 90_000, "reservation"),  # no usage: the reservation
    ("upstream_failed", 200, {"input_tokens": 100}, 90_000, "reservation"),  # cut, seen 15,000
    ("upstream_failed", 200, {"input_tokens": 1_000}, 150_000, "reservation"),  # seen above it
    ("upstream_failed", 502, {}, 0, None),  # no answer: a provider bills nothing
    ("upstream_error", 429, {}, 0, None),
    ("ok", 200, {"input_tokens": 100, "output_tokens": 10}, 21_000, "openai/gpt-4o-mini"),  # usage read
])  # fmt: skip
def test_the_charge_of_an_event_under_a_reservation(
    status: str, http_status: int, counts: dict[str, int], cost: int, entry: str | None
) -> None:
    row = row_of_event(PricingRegistry(), _event(status, http_status, 90_000, **counts))
    assert (row.cost_nano_usd, row.price_entry) == (cost, entry)


def test_without_a_reservation_nothing_changes() -> None:
    pricing = PricingRegistry()
    row = row_of_event(pricing, _event("usage_missing", 200, 0))
    assert (row.priced, row.cost_nano_usd) == (False, None)
    plain = row_of_event(pricing, _event("usage_missing", 200, 0))
    metrics = BillingMetrics()
    assert row_within_reservation(pricing, plain, _event("ok", 200, 0, input_tokens=5), 90_000, metrics) is plain
    assert metrics.reservations_charged_in_full == 0


def test_reprice_leaves_a_row_charged_at_its_reservation() -> None:
    pricing = PricingRegistry()
    row = row_of_event(pricing, _event("upstream_failed", 200, 90_000, input_tokens=100))
    assert reprice_row(pricing, row) == (row, False)  # not re-priced down to its 100 tokens


def test_the_charge_survives_the_journal(tmp_path: Path) -> None:
    """A settle that fails hands the event to the journaled path: the amount reserved goes
    with it, so the flusher's row is charged the same."""
    journal = Journal(tmp_path / "usage.journal")

    async def go() -> None:
        wal = WriteAheadLog(journal, 0.01)
        wal.start()
        wal.append(_event("usage_missing", 200, 90_000))
        await wal.sync()
        await wal.stop()

    asyncio.run(go())
    replayed = [e for f in sorted(tmp_path.glob("usage.journal.*")) for b in Journal.read_events(f, 10) for e in b]
    out: collections.deque[UsageRow] = collections.deque()
    assert rows_of_events(PricingRegistry(), replayed, out) == 0
    assert [(r.cost_nano_usd, r.price_entry) for r in out] == [(90_000, "reservation")]
