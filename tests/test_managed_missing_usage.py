"""Managed hard limits: a 2xx answer whose usage is missing or cut short is charged at the
reservation, never at nothing (the attack battery's open finding, 2026-12-05).

Over real sockets: the real gateway in managed mode, the shipped fake provider told to omit
usage (``x-fake-omit-usage``) or to reset a stream after some events
(``x-fake-reset-after-events``), raw aiohttp clients.  The policy is
plano_fast.billing.rows.row_within_reservation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from plano_fast.billing.metrics import BillingMetrics
from plano_fast.billing.reprice import reprice_row
from plano_fast.billing.rows import row_of_event, row_within_reservation
from plano_fast.pricing import PricingRegistry
from plano_fast.store import CounterKey
from plano_fast.usage import UsageEvent
from tests.gateway_proc import GatewayProcess
from tests.test_billing_faults import hang_up
from tests.test_managed import (
    DEFAULT_PIPE, ENV, REQUEST_BODY, STREAM_BODY, Tenant, provision, request_cost, rows, store_call,
)  # fmt: skip
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


def spent(sqlite_path: str, project_id: str, database_url: str | None = None) -> int:
    """The project's total spend counter, as the reservations are checked against it."""
    key = CounterKey("project", project_id, "total", 0)
    counter = store_call(database_url, sqlite_path, lambda s: s.get_counter(key))
    return 0 if counter is None else int(counter.spent_nano_usd)


def start(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path, limit_nano_usd: int | None,
    database_url: str | None = None, **settings: object,
) -> tuple[GatewayProcess, str, Tenant]:
    sqlite_path = str(tmp_path / "plano_config_0.db")
    if database_url:
        settings["database_url"] = f'"{database_url}"'
    tenants: list[Tenant] = []
    gateway = make_gateway(
        {"managed": "true", "managed_reload_s": 1, "admin_port": 0, "admin_key": ADMIN_KEY, **settings}, env=ENV,
        before_start=lambda: tenants.append(
            provision(database_url, sqlite_path, DEFAULT_PIPE, limit_nano_usd=limit_nano_usd)),
    )
    return gateway, sqlite_path, tenants[0]


def settled_rows(sqlite_path: str, count: int, database_url: str | None = None) -> list[Any]:
    """The usage rows, once ``count`` are written (a cut stream's settle runs in the
    background: the client has its error first)."""
    for _ in range(100):
        found = rows(sqlite_path, database_url)
        if len(found) >= count:
            return sorted(found, key=lambda r: r.time_ns)
        asyncio.run(asyncio.sleep(0.05))
    raise AssertionError(f"{count} usage rows expected, {len(rows(sqlite_path, database_url))} written")


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
@pytest.mark.parametrize("body", [REQUEST_BODY, STREAM_BODY], ids=["json", "stream"])
def test_an_answer_without_usage_is_charged_its_reservation_and_the_limit_holds(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path, request: Any, body: bytes, store: str
) -> None:
    database_url = request.getfixturevalue("pg_dsn") if store == "postgres" else None
    reservation = request_cost(body)  # input bound = the body's bytes, output = max_tokens
    gateway, sqlite_path, tenant = start(make_gateway, tmp_path, 2 * reservation + reservation // 2, database_url)
    omit = {"x-fake-omit-usage": "1"}
    assert asyncio.run(send(gateway.url, tenant.token, body, omit)) == 200
    assert spent(sqlite_path, tenant.project_id, database_url) == reservation
    assert asyncio.run(send(gateway.url, tenant.token, body, omit)) == 200
    assert spent(sqlite_path, tenant.project_id, database_url) == 2 * reservation
    # Half a reservation left: the third is refused, as it would be after two priced answers.
    assert asyncio.run(send(gateway.url, tenant.token, body, omit)) == 402
    billed = settled_rows(sqlite_path, 2, database_url)
    assert [(r.status, r.priced, r.cost_nano_usd, r.price_entry) for r in billed] == [
        ("usage_missing", True, reservation, "hard_limit_bound")] * 2
    assert all(r.reservation_overrun_nano_usd is None for r in billed)
    assert metric(gateway, "plano_fast_rows_charged_at_bound") == 2
    assert metric(gateway, "plano_fast_rows_charged_at_bound_nano_usd") == 2 * reservation
    assert (f"request {billed[0].request_id}: a 200 answer with no usage (usage_missing); charged {reservation} "
            f"nano-USD, the bound of its {reservation} nano-USD reservation") in gateway.log_text()
    assert tenant.token not in gateway.log_text()


def test_a_stream_cut_after_its_head_is_charged_its_reservation(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    reservation = request_cost(STREAM_BODY)
    gateway, sqlite_path, tenant = start(make_gateway, tmp_path, limit_nano_usd=10 * reservation)
    asyncio.run(send(gateway.url, tenant.token, STREAM_BODY, {"x-fake-reset-after-events": "3"}))
    (row,) = settled_rows(sqlite_path, 1)
    assert (row.status, row.http_status, row.cost_nano_usd, row.price_entry) == (
        "upstream_failed", 200, reservation, "hard_limit_bound")
    assert spent(sqlite_path, tenant.project_id) == reservation
    assert metric(gateway, "plano_fast_rows_charged_at_bound") == 1


@pytest.mark.parametrize(("input_tokens", "charge"), [
    (40, 40 * 3_000 + 50 * 15_000),  # the seen input with max_tokens of output
    (400, SONNET_RESERVATION),  # that would be more than the reservation: capped
    # the seen usage alone is more: never less than it (the input: message_start's output
    # count is a placeholder, no output seen; it charged one output token more)
    (10_000, 10_000 * 3_000),
], ids=["seen-input-and-max-output", "capped-at-reservation", "seen-above-reservation"])  # fmt: skip
def test_a_cut_stream_with_partial_usage_is_charged_at_its_bound(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path, input_tokens: int, charge: int
) -> None:
    """An Anthropic stream cut after message_start: its input tokens (final in that event)
    were seen, the output generated after the cut was not (only max_tokens bounds it)."""
    gateway, sqlite_path, tenant = start(make_gateway, tmp_path, limit_nano_usd=10**12)
    extra = {"x-fake-reset-after-events": "2", "x-fake-input-tokens": str(input_tokens)}
    asyncio.run(send(gateway.url, tenant.token, MESSAGES_STREAM_BODY, extra, "/v1/messages"))
    (row,) = settled_rows(sqlite_path, 1)
    assert (row.status, row.input_tokens) == ("upstream_failed", input_tokens)
    assert row.output_tokens == 0  # (message_start's 1 is a placeholder, no output seen)
    assert (row.cost_nano_usd, row.price_entry) == (charge, "hard_limit_bound")
    assert (row.reservation_overrun_nano_usd is not None) is (charge > SONNET_RESERVATION)
    assert spent(sqlite_path, tenant.project_id) == row.cost_nano_usd


def test_without_a_hard_limit_an_answer_without_usage_stays_unpriced(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gateway, sqlite_path, tenant = start(make_gateway, tmp_path, limit_nano_usd=None, price_interval_s=0.2)
    assert asyncio.run(send(gateway.url, tenant.token, REQUEST_BODY, {"x-fake-omit-usage": "1"})) == 200
    (row,) = settled_rows(sqlite_path, 1)
    assert (row.status, row.priced, row.cost_nano_usd, row.price_entry) == ("usage_missing", False, None, None)
    assert metric(gateway, "plano_fast_rows_charged_at_bound") == 0
    # Visible: the late pricer finds no price for it and counts it (never priced at zero).
    for _ in range(100):
        if metric(gateway, "plano_fast_rows_unpriced_unknown") >= 1:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert metric(gateway, "plano_fast_rows_unpriced_unknown") == 1
    assert [(r.priced, r.price_status) for r in rows(sqlite_path)] == [(False, "unpriced_unknown")]


# -- the policy in pure code (plano_fast.billing.rows) --------------------------------------
# gpt-4o-mini: 150 nano-USD per input token, 600 per output token; a reservation of 90,000
def _event(status: str, http_status: int, **counts: Any) -> UsageEvent:
    return UsageEvent("req-1", 1, "openai", "gpt-4o-mini", True, status, http_status, project_id="p",
                      has_usage=status == "ok", **counts)


@pytest.mark.parametrize(("status", "http_status", "counts", "output_bound", "cost", "entry"), [
    ("usage_missing", 200, {}, 50, 90_000, "hard_limit_bound"),  # nothing seen: the reservation
    ("upstream_failed", 200, {}, 50, 90_000, "hard_limit_bound"),  # cut before any usage
    # a complete stream without its final usage (an Anthropic message_delta without usage, a
    # last Gemini chunk without usageMetadata): the input seen with the output bound
    ("usage_missing", 200, {"input_tokens": 100, "output_tokens": 1}, 50, 45_000, "hard_limit_bound"),
    # the input seen (100: 15,000) with the output bound (50: 30,000), below the reservation
    ("upstream_failed", 200, {"input_tokens": 100, "output_tokens": 3}, 50, 45_000, "hard_limit_bound"),
    # ... above it (200 output: 120,000): capped at the reservation
    ("upstream_failed", 200, {"input_tokens": 100}, 200, 90_000, "hard_limit_bound"),
    # the seen usage alone above the reservation (1,000 input: 150,000): never less than it
    ("upstream_failed", 200, {"input_tokens": 1_000}, 50, 150_000, "hard_limit_bound"),
    # the client left, its answer unread: an estimate (here above the reservation) is no bound
    ("client_disconnected_estimated", 200, {"input_tokens": 30, "output_tokens": 900}, 50, 90_000,
     "hard_limit_bound"),
    ("upstream_failed", 502, {}, 50, 0, None),  # no answer: a provider bills nothing
    ("upstream_error", 429, {}, 50, 0, None),
    ("ok", 200, {"input_tokens": 100, "output_tokens": 10}, 50, 21_000, "openai/gpt-4o-mini"),  # usage read
])  # fmt: skip
def test_the_charge_of_an_answer_under_a_reservation(
    status: str, http_status: int, counts: dict[str, int], output_bound: int, cost: int, entry: str | None
) -> None:
    pricing = PricingRegistry()
    event = _event(status, http_status, **counts)
    metrics = BillingMetrics()
    row = row_within_reservation(pricing, row_of_event(pricing, event), event, 90_000, lambda: output_bound, metrics)
    assert (row.cost_nano_usd, row.price_entry) == (cost, entry)
    assert metrics.rows_charged_at_bound == (entry == "hard_limit_bound")


def test_without_a_reservation_nothing_changes() -> None:
    row = row_of_event(PricingRegistry(), _event("usage_missing", 200))
    assert (row.priced, row.cost_nano_usd, row.price_entry) == (False, None, None)


def test_reprice_leaves_a_row_charged_at_its_bound() -> None:
    pricing = PricingRegistry()
    event = _event("upstream_failed", 200, input_tokens=100)
    row = row_within_reservation(pricing, row_of_event(pricing, event), event, 90_000, lambda: 50, BillingMetrics())
    assert row.cost_nano_usd == 45_000
    assert reprice_row(pricing, row) == (row, False)  # not re-priced down to its 100 tokens


def test_a_client_gone_whose_answer_cannot_be_read_is_charged_its_reservation(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """The client leaves mid-stream, then the provider resets before its usage: the
    gateway's estimate (bytes / 4) bounds nothing, so under a hard limit the reservation is
    charged (without one: the estimate, tests/test_billing_faults.py)."""
    reservation = request_cost(STREAM_BODY)
    gateway, sqlite_path, tenant = start(make_gateway, tmp_path, limit_nano_usd=10 * reservation)
    got = hang_up(gateway.url, STREAM_BODY, {
        "authorization": f"Bearer {tenant.token}", "x-fake-events": "40", "x-fake-interval-ms": "10",
        "x-fake-reset-after-events": "20"}, wait_first_byte=True)  # fmt: skip
    assert got.startswith(b"HTTP/1.1 200")
    (row,) = settled_rows(sqlite_path, 1)
    assert (row.status, row.cost_nano_usd, row.price_entry) == (
        "client_disconnected_estimated", reservation, "hard_limit_bound")
    assert row.input_tokens == (len(STREAM_BODY) + 3) // 4  # the estimate stays on the row
    assert spent(sqlite_path, tenant.project_id) == reservation


# -- a settle that fails: the journaled path keeps the bound ---------------------------------
def test_a_failed_settle_still_charges_the_bound_after_recovery(
    make_gateway: Callable[..., GatewayProcess], pg_dsn: str
) -> None:
    """An answer without usage under a hard limit whose synchronous settle fails
    (PostgreSQL cut between reserve and settle): the event falls back to the journaled path
    and the row written once the database is back is charged at the bound, as the settle
    would have (formerly it was written unpriced: the charge was lost)."""
    from tests.fault_proxy import FaultProxy, dsn_target, proxied_dsn
    from tests.test_billing_faults import ledger, start_slow_stream, wait_until

    reservation = request_cost(json.dumps(
        {"model": "gpt-4o-mini", "max_tokens": 50, "stream": True,
         "messages": [{"role": "user", "content": "slow"}]}).encode(),
        "priority")  # start_slow_stream's body: no service_tier, reserved at the dearest listed tier
    with FaultProxy(dsn_target(pg_dsn)) as proxy:
        database_url = proxied_dsn(pg_dsn, proxy.port)
        tenants: list[Tenant] = []
        gateway = make_gateway(
            {"managed": "true", "managed_reload_s": 1, "database_url": f'"{database_url}"',
             "reservation_sweep_interval_s": 60},
            env=ENV, before_start=lambda: tenants.append(provision(pg_dsn, "", DEFAULT_PIPE, limit_nano_usd=10**9)))
        thread, outcome = start_slow_stream(gateway.url, tenants[0].token, events=8, interval_ms=50,
                                            extra={"x-fake-omit-usage": "1"})
        wait_until(lambda: ledger(pg_dsn, "")["open"] == 1, 10, "a reservation")
        proxy.cut()
        thread.join(20)
        assert outcome.get("status") == 200, outcome
        proxy.restore()
        healed = wait_until(
            lambda: (lambda s: s if s["open"] == 0 and len(s["rows"]) == 1 else None)(ledger(pg_dsn, "")),
            20, "the release and the row")  # (ledger also checks spent == the log)
    (row,) = healed["rows"]
    assert (row.status, row.http_status) == ("usage_missing", 200)
    assert (row.priced, row.cost_nano_usd, row.price_entry) == (True, reservation, "hard_limit_bound")
    assert healed["reserved"] == 0
    assert spent("", tenants[0].project_id, pg_dsn) == reservation
    assert "synchronous billing failed" in gateway.log_text()  # (the fault did hit the settle)
