"""A managed hard limit and the service tier the provider picks by itself.

The row is billed at the tier the answer names (plano_fast.pricing, "Service tiers"), and an
OpenAI project whose default tier is priority serves ``service_tier`` ``auto`` (or absent) at
priority: a reservation at the standard prices let such answers overshoot the limit by the
difference (docs/security.md, the former "Known gap (session k)").  So a body that does not
pin its tier is reserved at the dearest tier its price entry lists; one pinned to
``default`` (or ``flex``; Anthropic's ``standard_only``) at the standard prices
(plano_fast.managed.bounds.tiers_it_may_be_billed_at).

Over real sockets: the gateway in managed mode on SQLite, the shipped fake provider told
which tier its answers name (``x-fake-service-tier``), raw urllib clients.  The pure cases
first.  gpt-4o-mini's prices: tests.test_managed.GPT_4O_MINI_PRICES (checked against the
table below); claude-sonnet-4-6 lists no service tier (Anthropic's Priority Tier has no list
price).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.managed.bounds import UnboundedContent, request_bound, tiers_it_may_be_billed_at, token_bound
from plano_fast.pricing import PricingRegistry, output_parts
from plano_fast.store.records import PRICE_STATUS_PARTIAL
from tests.gateway_proc import GatewayProcess
from tests.test_managed import (
    DEFAULT_PIPE, ENV, GPT_4O_MINI_PRICES, REQUEST_BODY, UNPINNED_BODY, Tenant, provision, request_cost, rows,
)  # fmt: skip
from tests.test_managed_missing_usage import MESSAGES_STREAM_BODY, SONNET_RESERVATION


def b(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


TEXT = [{"role": "user", "content": "hi"}]


# -- the bound, pure --------------------------------------------------------------------------


def test_the_tests_prices_are_the_tables() -> None:
    """gpt-4o-mini lists one service tier, priority, dearer than standard: the prices the
    expected bounds here and in tests.test_managed are computed at."""
    price = PricingRegistry().price_for("openai", "gpt-4o-mini", None)
    assert price is not None
    assert (price.input_per_mtok // 10**6, price.output_per_mtok // 10**6) == GPT_4O_MINI_PRICES[None]
    ((name, priority),) = price.service_tiers
    assert name == "priority"
    assert (priority.input_per_mtok // 10**6, priority.output_per_mtok // 10**6) == GPT_4O_MINI_PRICES["priority"]
    sonnet = PricingRegistry().price_for("anthropic", "claude-sonnet-4-6", None)
    assert sonnet is not None and sonnet.service_tiers == ()


@pytest.mark.parametrize(("doc", "pinned"), [
    ({"model": "m", "max_tokens": 5, "messages": TEXT}, None),  # no member: the provider picks
    ({"model": "m", "messages": TEXT, "service_tier": "auto"}, None),  # auto: the provider picks
    ({"model": "m", "messages": TEXT, "service_tier": "default"}, "default"),  # OpenAI: standard
    ({"model": "m", "messages": TEXT, "service_tier": "flex"}, "flex"),  # OpenAI: flex
    ({"model": "m", "messages": TEXT, "service_tier": "standard_only"}, "standard_only"),  # Anthropic
    ({"model": "m", "input": "hi", "service_tier": "default"}, "default"),  # Responses
    ({"model": "m", "messages": TEXT, "service_tier": None}, None),  # null: as absent
], ids=["absent", "auto", "default", "flex", "standard_only", "responses-default", "null"])
def test_request_bound_names_the_pinned_tier(doc: dict[str, Any], pinned: str | None) -> None:
    """The third value is the tier the body pins; the two bounds are token_bound's."""
    body = b(doc)
    assert request_bound(body, 10) == (*token_bound(body, 10), pinned)


def test_a_tier_billed_above_the_table_is_still_refused() -> None:
    """priority asked for in the body stays a 400 under a hard limit (not a bound)."""
    with pytest.raises(UnboundedContent, match="service_tier"):
        request_bound(b({"model": "m", "messages": TEXT, "service_tier": "priority"}), 10)


@pytest.mark.parametrize(("pinned", "listed", "tiers"), [
    (None, ("flex", "priority"), (None, "flex", "priority")),  # the provider picks: every listed one
    (None, ("priority",), (None, "priority")),
    (None, (), (None,)),  # Anthropic: no listed tier (Priority Tier is billed at standard, partial)
    ("default", ("flex", "priority"), (None,)),
    ("standard_only", ("priority",), (None,)),
    ("flex", ("flex", "priority"), (None, "flex")),  # flex, or standard when served at it
    ("flex", ("priority",), (None,)),  # flex not listed: billed at standard (partial)
])
def test_the_tiers_a_request_may_be_billed_at(
    pinned: str | None, listed: tuple[str, ...], tiers: tuple[str | None, ...]
) -> None:
    assert tiers_it_may_be_billed_at(pinned, tuple((name, None) for name in listed)) == tiers


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture
def tenants(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> Callable[[list[int]], tuple[GatewayProcess, list[Tenant], str]]:
    """A managed gateway on SQLite with one tenant (project) per hard limit given."""
    def start(limits: list[int]) -> tuple[GatewayProcess, list[Tenant], str]:
        sqlite_path = str(tmp_path / "plano_config_0.db")
        made: list[Tenant] = []
        gateway = make_gateway({"managed": "true", "managed_reload_s": 1}, env=ENV, before_start=lambda: made.extend(
            provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=limit) for limit in limits))
        return gateway, made, sqlite_path
    return start


def post(
    gateway: GatewayProcess, token: str, body: bytes, tier: str | None = None, path: str = "/v1/chat/completions",
) -> tuple[int, Any]:
    """``body`` as the only input tokens and 50 output tokens, answered at ``tier``."""
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json",
               "anthropic-version": "2023-06-01",
               "x-fake-input-tokens": str(len(body)), "x-fake-output-tokens": "50"}
    if tier is not None:
        headers["x-fake-service-tier"] = tier
    req = urllib.request.Request(gateway.url + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, raw if b"data:" in raw[:200] or b"event:" in raw[:200] else json.loads(raw)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def tenant_rows(sqlite_path: str, tenant: Tenant) -> list[Any]:
    return [r for r in rows(sqlite_path) if r.project_id == tenant.project_id]


def test_a_pinned_body_is_reserved_at_standard_and_an_unpinned_one_at_priority(
    tenants: Callable[[list[int]], tuple[GatewayProcess, list[Tenant], str]], fake: FakeProviderThread,
) -> None:
    """Two projects, the same limit (three pinned requests at the standard prices).  Pinned
    to ``default`` and answered at it: three fit.  Not pinned and answered at priority (a
    project set to priority): each is reserved and billed at priority, so only
    ``limit // priority cost`` (one) fit, and no row is above its reservation.  (Was: the
    unpinned ones were reserved at standard and billed at priority: two served, 2 x 70,750
    = 141,500 spent of a 138,600 limit, each row an overrun of 28,300.)"""
    limit = 3 * request_cost(REQUEST_BODY)
    gateway, (pinned, unpinned), sqlite_path = tenants([limit, limit])
    assert [post(gateway, pinned.token, REQUEST_BODY)[0] for _ in range(4)] == [200, 200, 200, 402]
    at_priority = request_cost(UNPINNED_BODY, "priority")
    fits = limit // at_priority
    assert fits == 1
    statuses = [post(gateway, unpinned.token, UNPINNED_BODY, "priority")[0] for _ in range(3)]
    assert statuses == [200] * fits + [402] * (3 - fits)
    billed = tenant_rows(sqlite_path, unpinned)
    assert [(r.cost_nano_usd, r.price_entry, r.reservation_overrun_nano_usd) for r in billed] == [
        (at_priority, "openai/gpt-4o-mini@priority", None)] * fits
    assert sum(r.cost_nano_usd for r in tenant_rows(sqlite_path, pinned)) == limit


def test_the_refusal_names_the_tier_that_priced_it_and_the_pin(
    tenants: Callable[[list[int]], tuple[GatewayProcess, list[Tenant], str]], fake: FakeProviderThread,
) -> None:
    """A limit between the standard and the priority bound of one request: not pinned, it
    is refused (402, OpenAI's error format) with the bound, the tier that priced it and how
    to pin the standard tier, and reaches no provider; pinned to ``default``, it is served."""
    limit = request_cost(REQUEST_BODY)  # the pinned body's standard bound: it fits, priority's does not
    assert limit < request_cost(UNPINNED_BODY, "priority")
    gateway, (tenant,), _ = tenants([limit])
    fake.clear()
    status, doc = post(gateway, tenant.token, UNPINNED_BODY)
    assert status == 402
    assert doc["error"]["code"] == "budget_exceeded" and doc["error"]["type"] == "insufficient_quota"
    assert doc["error"]["message"] == (
        f"spending limit reached: this request may cost up to ${request_cost(UNPINNED_BODY, 'priority') / 1e9:.6f} "
        "(at the 'priority' service tier, which the provider may serve a request at when its body does not pin "
        "one; 'service_tier': 'default' is reserved at the standard prices), more than the remaining budget"
    )
    assert [r for r in fake.requests if not r.path.startswith("/_fake")] == []
    assert post(gateway, tenant.token, REQUEST_BODY)[0] == 200  # pinned: reserved at standard, fits


RESPONSES_BODY = b({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 50})
RESPONSES_STREAM_BODY = b({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 50, "stream": True})


@pytest.mark.parametrize("body", [RESPONSES_BODY, RESPONSES_STREAM_BODY], ids=["json", "stream"])
def test_an_unpinned_responses_request_is_reserved_at_priority(
    tenants: Callable[[list[int]], tuple[GatewayProcess, list[Tenant], str]], fake: FakeProviderThread,
    body: bytes,
) -> None:
    """The Responses API: a limit of exactly one request at priority; answered at priority
    (``response.service_tier``), it is billed at priority within its reservation, and the
    next one is refused.  (Was: reserved at standard, the row an overrun of the tier's
    difference.)  The same body pinned to ``default`` is reserved at the standard bound."""
    at_priority = request_cost(body, "priority")
    pinned_body = body.replace(b'"input"', b'"service_tier":"default","input"')
    gateway, (tenant, pinned), sqlite_path = tenants([at_priority, request_cost(pinned_body)])
    assert post(gateway, tenant.token, body, "priority", "/v1/responses")[0] == 200
    status, doc = post(gateway, tenant.token, body, "priority", "/v1/responses")
    assert (status, doc["error"]["code"]) == (402, "budget_exceeded")
    assert [(r.cost_nano_usd, r.price_entry, r.reservation_overrun_nano_usd)
            for r in tenant_rows(sqlite_path, tenant)] == [(at_priority, "openai/gpt-4o-mini@priority", None)]
    # a limit of the pinned body's standard bound: unpinned, refused (its bound is priority's);
    # pinned to default, served
    assert post(gateway, pinned.token, body, None, "/v1/responses")[0] == 402
    assert post(gateway, pinned.token, pinned_body, None, "/v1/responses")[0] == 200


@pytest.mark.parametrize("tier_member", [None, "auto", "standard_only"])
def test_anthropic_auto_at_priority_tier_is_billed_within_the_standard_bound(
    tenants: Callable[[list[int]], tuple[GatewayProcess, list[Tenant], str]], fake: FakeProviderThread,
    tier_member: str | None,
) -> None:
    """Anthropic lists no price for Priority Tier (a commitment), so the table lists no tier
    for claude-sonnet-4-6: a request left to ``auto`` (or absent) is reserved at the
    standard bound, and an answer naming ``usage.service_tier: "priority"`` is billed at the
    standard prices, marked priced_partial, within that reservation."""
    doc = json.loads(MESSAGES_STREAM_BODY)
    if tier_member is not None:
        doc["service_tier"] = tier_member
    body = json.dumps(doc, separators=(",", ":")).encode()
    reservation = SONNET_RESERVATION + (len(body) - len(MESSAGES_STREAM_BODY)) * 6_000
    gateway, (tenant,), sqlite_path = tenants([reservation])  # exactly one request's bound
    status, _ = post(gateway, tenant.token, body, "priority", "/v1/messages")
    assert status == 200
    (row,) = tenant_rows(sqlite_path, tenant)
    assert (row.cost_nano_usd, row.price_status, row.reservation_overrun_nano_usd) == (
        len(body) * 3_000 + 50 * 15_000, PRICE_STATUS_PARTIAL, None)


# -- output the model may bill above its text rate ---------------------------------------------


@pytest.mark.parametrize(("provider", "model", "parts"), [
    ("openai", "gpt-4o-mini", ((0, 0),)),  # text only: one way
    ("openai", "gpt-4o-mini-audio-preview", ((0, 0), (100, 0))),  # speaks: $20 per 1M audio out
    ("gemini", "gemini-2.5-flash-image", ((0, 0), (0, 100))),  # draws: $30 per 1M image out
])
def test_the_ways_an_output_bound_may_be_billed(provider: str, model: str, parts: tuple[tuple[int, int], ...]) -> None:
    """``output_parts``: all text, and all audio or all images where the entry prices them."""
    price = PricingRegistry().price_for(provider, model, None)
    assert price is not None
    assert output_parts(price, 100) == parts


AUDIO_MODEL_PRICES = (150, 600, 20_000)  # gpt-4o-mini-audio-preview: in, text out, audio out (nano-USD a token)


def test_a_model_that_may_answer_in_audio_is_reserved_at_the_audio_rate(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path, fake: FakeProviderThread,
) -> None:
    """The bound prices the whole output at the dearest output rate the entry lists, not
    at the one the body's members suggest: Gemini's image models answer with images when
    nothing in the body asks for them (responseModalities defaults to text and image).
    Shown with an OpenAI model the managed tests can provision, gpt-4o-mini-audio-preview
    ($20 per 1M audio output against $0.60 for text; an OpenAI body asking for audio is
    refused already, bounds' ``modalities``): a limit of one request's text bound is refused
    (402, nothing forwarded); a limit of its audio bound is served, the text answer billed
    within it.  (Was: reserved at the text rate: an answer in audio or images overshot the
    limit up to 33-fold.)"""
    sqlite_path = str(tmp_path / "plano_config_0.db")
    body = b({"model": "gpt-4o-mini-audio-preview", "max_tokens": 50, "messages": TEXT})
    in_p, out_p, audio_p = AUDIO_MODEL_PRICES
    text_bound, audio_bound = len(body) * in_p + 50 * out_p, len(body) * in_p + 50 * audio_p
    price = PricingRegistry().price_for("openai", "gpt-4o-mini-audio-preview", None)
    assert price is not None and (price.input_per_mtok, price.output_per_mtok, price.audio_output_per_mtok) == (
        in_p * 10**6, out_p * 10**6, audio_p * 10**6)
    made: list[Tenant] = []
    pipe = [("openai/gpt-4o-mini", "gpt-4o-mini-audio-preview", "gpt-4o-mini-audio*")]  # the config's provider
    gateway = make_gateway({"managed": "true", "managed_reload_s": 1}, env=ENV, before_start=lambda: made.extend(
        provision(None, sqlite_path, pipe, limit_nano_usd=limit) for limit in (text_bound, audio_bound)))
    text_only, audio = made
    fake.clear()
    status, doc = post(gateway, text_only.token, body)
    assert (status, doc["error"]["code"]) == (402, "budget_exceeded"), doc
    assert [r for r in fake.requests if not r.path.startswith("/_fake")] == []
    assert post(gateway, audio.token, body)[0] == 200
    assert [(r.cost_nano_usd, r.reservation_overrun_nano_usd) for r in tenant_rows(sqlite_path, audio)] == [
        (len(body) * in_p + 50 * out_p, None)]
