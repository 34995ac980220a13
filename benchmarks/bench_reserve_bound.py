"""Instructions of a hard-limited request's bound, priced: before and after the service tiers.

    python -m benchmarks.bench_reserve_bound            # callgrind, (N+1000) - N runs / 1000

What ``ManagedExchange._reserve`` computes before it asks the store (plano_fast/gateway/
modes/managed.py), for one gpt-4o-mini target and a short chat body, pinned
(``service_tier: "default"``) and not (gpt-4o-mini lists priority: two tiers quoted):

* ``standard``: session k's computation: ``token_bound`` and three quotes at the standard
  prices (plain input, all 5-minute cache writes, all 1-hour writes);
* ``tiers``: session l's: ``request_bound``, the entry's price (``price_for``) and the same
  three variants at every tier ``tiers_it_may_be_billed_at`` returns, priced by
  ``price_tokens`` on that entry (no TokenCounts, no Quote per variant).

Each shape runs under valgrind's callgrind twice, with N and N + 1000 iterations; the
difference / 1000 is one request's instructions, start-up subtracted (load-independent).
Only requests under a hard limit run this (``if not budget_targets: return None`` first).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from plano_fast.managed.bounds import request_bound, tiers_it_may_be_billed_at, token_bound
from plano_fast.pricing import PricingRegistry, TokenCounts, price_tokens

TEXT = [{"role": "user", "content": "Summarise the attached notes in three bullet points, please."}]
BODIES = {
    "unpinned": json.dumps({"model": "gpt-4o-mini", "max_tokens": 256, "messages": TEXT}).encode(),
    "pinned": json.dumps({"model": "gpt-4o-mini", "max_tokens": 256, "service_tier": "default",
                          "messages": TEXT}).encode(),
}


def standard(pricing: PricingRegistry, body: bytes) -> int:
    input_bound, output_bound = token_bound(body, 256)
    variants = (
        TokenCounts(input_bound, output_bound, 0, 0, 0),
        TokenCounts(input_bound, output_bound, 0, input_bound, 0),
        TokenCounts(input_bound, output_bound, 0, input_bound, 0, cache_write_1h_tokens=input_bound),
    )
    costs = [pricing.cost_nano_usd("openai", "gpt-4o-mini", "p1", t) for t in variants]
    return max(c or 0 for c in costs)


def tiers(pricing: PricingRegistry, body: bytes) -> int:
    input_bound, output_bound, pinned = request_bound(body, 256)
    worst = 0
    price = pricing.price_for("openai", "gpt-4o-mini", "p1")
    assert price is not None
    for tier in tiers_it_may_be_billed_at(pinned, price.service_tiers):
        for cache_write, cache_write_1h in ((0, 0), (input_bound, 0), (input_bound, input_bound)):
            cost = price_tokens(price, input_bound, output_bound, 0, cache_write, cache_write_1h, service_tier=tier)[0]
            if cost > worst:
                worst = cost
    return worst


def child(shape: str, body_name: str, n: int) -> None:
    pricing = PricingRegistry()
    body = BODIES[body_name]
    fn = standard if shape == "standard" else tiers
    fn(pricing, body)  # warm: the resolution cache
    for _ in range(n):
        fn(pricing, body)


def instructions(shape: str, body_name: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
             "benchmarks.bench_reserve_bound", "--child", shape, body_name, str(n)],
            check=True, capture_output=True,
        )
        with open(out) as f:
            text = f.read()
    m = re.search(r"^summary: (\d+)", text, re.M) or re.search(r"^totals: (\d+)", text, re.M)
    assert m is not None
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=3)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    if args.child:
        shape, body_name, n = args.child
        child(shape, body_name, int(n))
        return
    pricing = PricingRegistry()
    for body_name, body in BODIES.items():
        print(f"{body_name}: bound standard {standard(pricing, body)}, with tiers {tiers(pricing, body)} nano-USD")
    for body_name in BODIES:
        for shape in ("standard", "tiers"):
            low = instructions(shape, body_name, args.n)
            high = instructions(shape, body_name, args.n + 1000)
            print(f"{body_name:9s} {shape:9s} {(high - low) / 1000:10.0f} instructions per request")


if __name__ == "__main__":
    main()
