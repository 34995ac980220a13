"""The benchmark's verdicts use issue 27's targets per mode (pure code: a synthetic report)."""

from __future__ import annotations

from typing import Any

from benchmarks.portkey_setup import portkey_headers
from benchmarks.run import evaluate, parse_args


def _report(rps: dict[str, float], c1_p50: dict[str, float]) -> dict[str, Any]:
    sat = {n: {"rps": v, "rps_runs": [v]} for n, v in rps.items()}
    c1 = {n: {"lat_p50": v, "lat_p99": v + 0.5} for n, v in c1_p50.items()}
    return {"summary": {"ns_sat": sat, "ns_c1": c1}, "target_names": list(rps), "usage": {}}


def _check(checks: list[dict[str, str]], target: str, what: str) -> dict[str, str]:
    [found] = [c for c in checks if c["target"] == target and c["check"].startswith(what)]
    return found


def test_throughput_threshold_is_the_modes_own() -> None:
    # 70% of nginx: enough for nothing but managed (60%); config needs 75%, firewall 80%.
    names = {"nginx": 1000.0, "direct": 2000.0, "plano_fast config w1": 700.0,
             "plano_fast firewall w1": 700.0, "plano_fast managed w1": 700.0}
    checks = evaluate(_report(names, {"direct": 0.10, "plano_fast config w1": 0.27,
                                      "plano_fast firewall w1": 0.20, "plano_fast managed w1": 0.40}))
    assert _check(checks, "plano_fast config w1", "req/s at saturation")["result"] == "FAIL"
    assert _check(checks, "plano_fast firewall w1", "req/s at saturation")["threshold"] == ">= 80% both ways"
    assert _check(checks, "plano_fast managed w1", "req/s at saturation")["result"] == "PASS"
    # added p50 over direct: config 0.17 ms fails its 0.15 ms, firewall 0.10 ms passes it,
    # managed 0.30 ms passes managed's own 0.35 ms
    assert _check(checks, "plano_fast config w1", "added latency p50")["result"] == "FAIL"
    assert _check(checks, "plano_fast firewall w1", "added latency p50")["result"] == "PASS"
    assert _check(checks, "plano_fast managed w1", "added latency p50")["result"] == "PASS"


def test_two_workers_are_compared_with_one() -> None:
    names = {"nginx": 1000.0, "plano_fast config w1": 800.0, "plano_fast config w2": 1200.0}
    checks = evaluate(_report(names, {}))
    assert _check(checks, "plano_fast config w2", "req/s over one worker's")["measured"].startswith("1.50x")


def test_portkey_is_an_opt_in_baseline() -> None:
    assert parse_args(["--with-portkey"]).with_portkey and not parse_args([]).with_portkey
    assert ("x-portkey-custom-host", "http://127.0.0.1:9/v1") in portkey_headers(9)
