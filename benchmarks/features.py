"""Feature-cost A/B rows of ``benchmarks/run.py`` (``--features LIST`` or ``--with-features``).

Each feature is a pair of one-worker gateways in the same run, against the same fake
provider: A is the feature's base mode (config or firewall) as the harness runs it
(request metrics and the JSON access log on), B the same config plus the feature.  Per
repeat, for each feature, the saturation and the concurrency-1 scenarios of the main
table run against A then B (B then A on odd repeats, so drift hits both sides alike);
the row gives B's requests/s over A's, both sides' proxy CPU µs per request at
saturation, and B - A at concurrency 1 (p50 and p99, the median of the per-repeat
differences).  The B configs reuse the per-feature scripts' snippets:

* ``rate_limit`` (firewall): ``redis_url`` of a private ``redis-server``
  (``benchmarks/private_redis.py``) and ``benchmarks/ratelimit_ab.py``'s limit that every
  request falls in and never reaches;
* ``dlp`` (config: the DLP floor applies to config-mode requests): every detector at
  ``log`` (``benchmarks/bench_dlp.py``'s ``ALL_LOG``), a request that matches nothing;
* ``tracing0`` / ``tracing100`` (config): Plano's ``tracing: {random_sampling: N}``,
  exporting over OTLP/HTTP to a sink that accepts and drops
  (``benchmarks/ab_settings.py``'s ``OtlpSink``);
* ``routing`` (config): ``routing_preferences`` with a router model
  (``tests/test_preference_routing.py``'s ``routing_yaml`` and ``FakeRouter``), every
  request in one session (``x-model-affinity``) decided before the measurement, so the
  router is not called again; both sides get the same "write code" request;
* ``retries`` (config): ``benchmarks/chaos.py``'s ``retry_policy`` on the provider, which
  never fails (configured, not triggered).

Each B side also gets a probe that shows the feature is really on (a check row): Redis
counts rate-limit script calls -- lease grants, fewer than the requests: each process admits
on a share of the bucket granted ahead of need (redis-server's own CPU per request is shown
beside the gateway's); the DLP floor names the e-mail address of one request sent
before the measurement in the access log; the sink receives spans during the measurement at
100%, none at 0% -- and then at least one for a request with a sampled ``traceparent``
after it (the exporter works); every B request of ``routing`` carries its route in the
access log while the router was called once (for the pin); no ``retries`` request took
more than one attempt.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import statistics
import subprocess
from pathlib import Path
from typing import Any, Callable, Optional

from benchmarks import run as bench

#: name -> (base mode, what B adds)
FEATURES: dict[str, tuple[str, str]] = {
    "rate_limit": ("firewall", "rate limit in Redis (a token bucket every request falls in, never reached)"),
    "dlp": ("config", "DLP floor: every detector at log, request matches nothing"),
    "tracing0": ("config", "tracing, random_sampling 0% (OTLP/HTTP sink)"),
    "tracing100": ("config", "tracing, random_sampling 100% (OTLP/HTTP sink that accepts and drops)"),
    "routing": ("config", "preference routing, pinned session (x-model-affinity decided before)"),
    "retries": ("config", "retry_policy configured, not triggered"),
}
#: the request of the ``routing`` pair (both sides): the fake router routes "code"
ROUTING_BODY = json.dumps({"model": bench.MODEL, "messages": [{"role": "user", "content": "write code"}]},
                          separators=(",", ":"))
SESSION_HEADER = ("x-model-affinity", "bench-pinned")
TRACEPARENT = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")  # sampled
PII_BODY = json.dumps({"model": bench.MODEL, "messages": [{"role": "user", "content": "mail jane.doe@example.com"}]},
                      separators=(",", ":"))


def parse_features(text: str) -> list[str]:
    """``--features``' comma list ("all" for every feature), in FEATURES' order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if "all" in names:
        return list(FEATURES)
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)} (known: {', '.join(FEATURES)}, all)")
    return [n for n in FEATURES if n in names]


# --------------------------------------------------------------------------- pure: a row


def _med(values: list[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and v == v]
    return statistics.median(vals) if vals else None


def _lat(run: dict[str, Any], key: str) -> Optional[float]:
    value = run.get("latency_ms", {}).get(key)
    return None if value is None else float(value)


def _straddles(values: list[float], pivot: float) -> bool:
    """Repeats on both sides of ``pivot`` (B faster in one, slower in another): the
    machine's noise is larger than the feature's cost, and the row says NOISY."""
    return len(values) > 1 and min(values) < pivot < max(values)


def feature_row(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """One feature's row from its runs: ``runs[scenario]["A"|"B"]`` (repeat r at index r;
    ``ns_sat`` and ``ns_c1``).  Ratios and differences are of medians and of each
    repeat's pair; the concurrency-1 difference is the median of the per-repeat ones."""
    sat = runs.get("ns_sat", {"A": [], "B": []})
    c1 = runs.get("ns_c1", {"A": [], "B": []})
    row: dict[str, Any] = {}
    rps_a = _med([r.get("rps") for r in sat["A"]])
    rps_b = _med([r.get("rps") for r in sat["B"]])
    row["rps_a"], row["rps_b"] = rps_a, rps_b
    row["rps_ratio"] = rps_b / rps_a if rps_a and rps_b is not None else None
    row["rps_ratio_runs"] = [b.get("rps", 0.0) / a["rps"] for a, b in zip(sat["A"], sat["B"]) if a.get("rps")]
    cpu_a = _med([r.get("proxy_cpu_us_per_req") for r in sat["A"]])
    cpu_b = _med([r.get("proxy_cpu_us_per_req") for r in sat["B"]])
    row["cpu_us_a"], row["cpu_us_b"] = cpu_a, cpu_b
    row["cpu_us_added"] = cpu_b - cpu_a if cpu_a is not None and cpu_b is not None else None
    row["service_cpu_us_b"] = _med([r.get("service_cpu_us_per_req") for r in sat["B"]])
    for key in ("p50", "p99"):
        row[f"{key}_a"] = _med([_lat(r, key) for r in c1["A"]])
        row[f"{key}_b"] = _med([_lat(r, key) for r in c1["B"]])
        diffs = [(_lat(b, key) or 0.0) - (_lat(a, key) or 0.0) for a, b in zip(c1["A"], c1["B"])
                 if _lat(a, key) is not None and _lat(b, key) is not None]
        row[f"added_{key}_runs"] = diffs
        row[f"added_{key}"] = statistics.median(diffs) if diffs else None
        row[f"added_{key}_noisy"] = _straddles(diffs, 0.0)
    row["rps_ratio_noisy"] = _straddles(row["rps_ratio_runs"], 1.0)
    row["non2xx_errors"] = sum(r.get("non2xx", 0) + r.get("error_count", 0)
                               for sc in (sat, c1) for side in ("A", "B") for r in sc[side])
    row["failed"] = [r["failed"] for sc in (sat, c1) for side in ("A", "B") for r in sc[side] if r.get("failed")]
    row["completed_b"] = sum(r.get("completed_total", 0) for sc in (sat, c1) for r in sc["B"])
    row["sent_max_b"] = sum(r.get("sent_total_max", 0) for sc in (sat, c1) for r in sc["B"])
    return row


def _noisy(row: dict[str, Any], key: str) -> str:
    return " NOISY" if row.get(f"{key}_noisy") else ""


def render_rows(features: dict[str, Any]) -> list[str]:
    """The markdown table of the feature-cost rows (``report["features"]``)."""
    if not features:
        return []
    f = bench._f
    out = ["## Feature costs (A/B, one worker, same run, interleaved)\n",
           "A: the base mode as the rest of this table runs it; B: the same plus the feature. Req/s at "
           "saturation (64 connections) and proxy CPU µs/request there, medians over the repeats (B/A per "
           "repeat in brackets); added latency at concurrency 1 = B - A, the median of the repeats' "
           "differences; NOISY where the repeats disagree about the sign (B faster in one, slower in another).\n",
           "| feature (B) | base mode | req/s A → B | B/A (per repeat) | proxy CPU µs/req A → B | added CPU µs/req | "
           "p50 ms at c=1 A → B | added p50 ms | added p99 ms | non-2xx + errors | feature on |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, feat in features.items():
        r = feat["row"]
        ratio_runs = " / ".join(f"{x:.0%}" for x in r["rps_ratio_runs"])
        out.append(
            f"| {name}: {feat['title']} | {feat['mode']} | {f(r['rps_a'], '{:.0f}')} → {f(r['rps_b'], '{:.0f}')} | "
            f"{f(r['rps_ratio'], '{:.0%}')} ({ratio_runs or '—'}){_noisy(r, 'rps_ratio')} | "
            f"{f(r['cpu_us_a'], '{:.0f}')} → "
            f"{f(r['cpu_us_b'], '{:.0f}')} | {f(r['cpu_us_added'], '{:+.1f}')}"
            + (f" (+ Redis {r['service_cpu_us_b']:.0f})" if r.get("service_cpu_us_b") is not None else "")
            + f" | {f(r['p50_a'], '{:.3f}')} → "
            f"{f(r['p50_b'], '{:.3f}')} | {f(r['added_p50'], '{:+.3f}')}{_noisy(r, 'added_p50')} | "
            f"{f(r['added_p99'], '{:+.3f}')}{_noisy(r, 'added_p99')} | "
            f"{r['non2xx_errors']} | {feat.get('probe', {}).get('measured', '—')} |")
    out.append("")
    return out


def checks(features: dict[str, Any]) -> list[dict[str, str]]:
    """Check rows: each pair answered everything, and B really had the feature on."""
    out: list[dict[str, str]] = []
    for name, feat in features.items():
        r = feat["row"]
        bad = r["non2xx_errors"] + len(r["failed"])
        out.append({"target": f"feature {name}", "check": "non-2xx + errors (A and B)", "measured": str(bad),
                    "threshold": "0", "result": "PASS" if bad == 0 else "FAIL"})
        probe = feat.get("probe")
        if probe:
            out.append({"target": f"feature {name}", "check": "B has the feature on", "measured": probe["measured"],
                        "threshold": probe["threshold"], "result": "PASS" if probe["ok"] else "FAIL"})
    return out


# --------------------------------------------------------------------------- the pairs


def _post(url: str, body: str, headers: list[tuple[str, str]]) -> int:
    host, port = url.removeprefix("http://").split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        con.request("POST", bench.PATH, body, {"content-type": "application/json", **dict(headers)})
        resp = con.getresponse()
        resp.read()
        return resp.status
    finally:
        con.close()


def _access_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclasses.dataclass
class Side:
    target: bench.Target
    access_log: Path
    gateway: Any


class FeaturePairs:
    """Starts A (one per base mode) and B (one per feature) and the services they need;
    ``measure`` runs the interleaved repeats; ``stop`` stops everything and runs the probes."""

    def __init__(self, names: list[str], work: Path, fake_port: int, observability: Callable[[Path], dict[str, Any]],
                 log: Callable[[str], None]) -> None:
        self.names = names
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.fake_port = fake_port
        self.observability = observability
        self.log = log
        self.a: dict[str, Side] = {}
        self.b: dict[str, Side] = {}
        self.skipped: list[dict[str, str]] = []
        self.services = FeatureServices(work, fake_port)
        self._evals_after = 0
        self._posts_measured: dict[str, int] = {}
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _side(self, label: str, mode: str, settings: list[str], sections: list[str], env: dict[str, str],
              edit: Optional[Callable[[Path], None]] = None, body: Optional[str] = None,
              extra_headers: tuple[tuple[str, str], ...] = ()) -> Side:
        from benchmarks.ab_settings import configure
        from tests.gateway_proc import GatewayProcess

        wd = self.work / f"feature-{label}"
        wd.mkdir()
        obs = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.observability(wd).items()]
        setup = configure(mode, wd, self.fake_port, [*settings, *obs], sections, env)
        if edit is not None:
            edit(setup.config_path)
        gw = GatewayProcess(setup.config_path, log_path=wd / "gateway.log", env=setup.env)
        headers = [*setup.headers_for("ab"), *extra_headers]
        target = bench.Target(f"feature {label}", "plano_fast", gw.url, gw.proc.pid, lambda s: headers,
                              lambda: None,  # FeaturePairs.stop stops it (graceful: the access log)
                              log_path=wd / "gateway.log", body_json=body, info={"mode": mode, "workers": 1})
        access = Path(next((s.split("=", 1)[1] for s in obs if s.startswith("access_log=")), str(wd / "none")))
        return Side(target, access, gw)

    def _start(self) -> None:
        for mode in sorted({FEATURES[n][0] for n in self.names}):
            self.a[mode] = self._side(f"{mode}-A", mode, [], [], {})
        for name in self.names:
            mode = FEATURES[name][0]
            try:
                self.b[name] = self._start_b(name, mode)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                self.skipped.append({"target": f"feature {name}", "reason": f"not measured: {exc}"})
                self.log(f"feature {name}: not measured: {exc}")

    def _start_b(self, name: str, mode: str) -> Side:
        b = self.services.setup(name)
        side = self._side(f"{name}-B", mode, b.settings, b.sections, b.env, edit=b.edit, body=b.body,
                          extra_headers=b.extra_headers)
        if name == "rate_limit":  # the script calls before the measurement (none expected)
            from benchmarks.ratelimit_ab import redis_calls

            calls = redis_calls(self.services.redis.port)
            self.services.evals0 = calls.get("evalsha", 0) + calls.get("eval", 0)
        if name == "dlp":  # one request with a finding, before the measurement: the probe (logged, not blocked)
            status = _post(side.target.url, PII_BODY, [*bench.CLIENT_HEADERS, *side.target.headers_for("")])
            if status != 200:
                raise RuntimeError(f"dlp: the probe request got {status}")
        if name == "routing":  # decide the session now: the measured requests are pinned ones
            status = _post(side.target.url, ROUTING_BODY, [*bench.CLIENT_HEADERS, *side.target.headers_for("")])
            if status != 200:
                raise RuntimeError(f"routing: the session's first request got {status}")
        return side

    def service_pids(self, name: str) -> list[int]:
        """Processes B's feature uses besides the gateway (their CPU is reported apart)."""
        if name == "rate_limit" and self.services.redis is not None and self.services.redis.proc is not None:
            return [self.services.redis.proc.pid]
        return []

    def pids(self) -> list[int]:
        return [p for side in [*self.a.values(), *self.b.values()] for p in side.target.pids()]

    def pair(self, name: str) -> tuple[bench.Target, bench.Target]:
        b = self.b[name].target
        a = self.a[FEATURES[name][0]].target
        if b.body_json is not None:  # the same request on both sides
            a = dataclasses.replace(a, body_json=b.body_json)
        return a, b

    def measure(self, scenarios: list[bench.Scenario], repeats: int,
                one: Callable[[bench.Target, bench.Scenario, str], dict[str, Any]]) -> dict[str, Any]:
        runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
            n: {sc.name: {"A": [], "B": []} for sc in scenarios} for n in self.b}
        for rep in range(repeats):
            for name in self.b:
                a, b = self.pair(name)
                order = [("A", a), ("B", b)] if rep % 2 == 0 else [("B", b), ("A", a)]
                for sc in scenarios:
                    for side, target in order:
                        service = self.service_pids(name)
                        cpu0 = bench.cpu_s(service)
                        r = one(target, sc, f"{name}_{side}_r{rep + 1}")
                        if service and r.get("completed_total"):
                            r["service_cpu_us_per_req"] = (bench.cpu_s(service) - cpu0) / r["completed_total"] * 1e6
                        runs[name][sc.name][side].append(r)
                        self.log(f"feature {name} {sc.name} r{rep + 1} {side}: {r.get('rps', 0):.0f} req/s "
                                 f"p50 {r.get('latency_ms', {}).get('p50', float('nan')):.3f} ms "
                                 f"cpu {r.get('proxy_cpu_us_per_req') or float('nan'):.0f} µs/req")
        return runs

    def probes(self, runs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """After ``stop``: does each B side show its feature at work?  (access logs are
        complete once the gateways stopped gracefully)"""
        out: dict[str, dict[str, Any]] = {}
        for name, side in self.b.items():
            served = sum(r.get("completed_total", 0) for sc in runs.get(name, {}).values() for r in sc["B"])
            lines = _access_lines(side.access_log)
            if name == "rate_limit":
                evals = self._evals_after - self.services.evals0
                # Leases (issue 22): a process admits on a share of the bucket granted and
                # counted by the script ahead of need, so a steady stream makes a few grant
                # calls, not one per request; tests/test_ratelimit_lease.py checks the counts.
                out[name] = {"measured": f"{evals} Redis script calls (lease grants) for {served} requests served",
                             "threshold": ">= 1 grant, < 1 per request (leases)", "ok": 0 < evals < served}
            elif name == "dlp":
                hits = [ln for ln in lines if "email" in (ln.get("guardrails") or [])]
                out[name] = {"measured": f"probe with an e-mail address logged as {hits[0]['guardrails'] if hits else 'no match'}",
                             "threshold": "email named in the access log", "ok": bool(hits)}
            elif name in ("tracing0", "tracing100"):
                during, after = self._posts_measured.get(name, 0), self.services.sinks[name].posts
                if name == "tracing100":
                    out[name] = {"measured": f"{during} OTLP posts during the measurement",
                                 "threshold": "> 0", "ok": during > 0}
                else:  # the sampled probe after the measurement shows the exporter works
                    out[name] = {"measured": f"{during} OTLP posts during the measurement, {after - during} "
                                 "after a probe with a sampled traceparent",
                                 "threshold": "0, then >= 1", "ok": during == 0 and after > during}
            elif name == "routing":
                routed = sum(1 for ln in lines if ln.get("route"))
                calls = len(self.services.router.prompts) if self.services.router is not None else -1
                out[name] = {"measured": f"{routed} of {len(lines)} access-log lines routed, router called {calls}x",
                             "threshold": "every line routed, router called once",
                             "ok": routed == len(lines) >= served > 0 and calls == 1}
            elif name == "retries":
                retried = sum(1 for ln in lines if (ln.get("attempts") or 1) > 1)
                out[name] = {"measured": f"{retried} of {len(lines)} requests retried",
                             "threshold": "0 retried (the provider never fails)",
                             "ok": retried == 0 and len(lines) >= served > 0}
        return out

    def stop(self) -> None:
        for name, sink in self.services.sinks.items():
            self._posts_measured[name] = sink.posts
            if name in self.b:  # a sampled request: exported whatever random_sampling says
                try:
                    _post(self.b[name].target.url, bench.BODY_JSON, [*bench.CLIENT_HEADERS,
                          *self.b[name].target.headers_for(""), TRACEPARENT])  # fmt: skip
                except OSError as exc:  # pragma: no cover - the probe then fails
                    self.log(f"tracing probe: {exc}")
        for side in [*self.b.values(), *self.a.values()]:
            try:
                side.gateway.stop()
            except Exception as exc:  # pragma: no cover - reported, the others still stopped
                self.log(f"stopping {side.target.name}: {exc}")
        self._evals_after = self.services.evals0
        if self.services.redis is not None:
            from benchmarks.ratelimit_ab import redis_calls

            try:
                calls = redis_calls(self.services.redis.port)
                self._evals_after = calls.get("evalsha", 0) + calls.get("eval", 0)
            except OSError:
                pass
        self.services.stop()


@dataclasses.dataclass
class FeatureSetup:
    """What B adds to its base mode's config: ``plano_fast:`` settings, top-level YAML
    sections, environment, an edit of the written config, the request body (None: the
    harness's) and headers every request carries."""

    settings: list[str]
    sections: list[str]
    env: dict[str, str]
    edit: Optional[Callable[[Path], None]] = None
    body: Optional[str] = None
    extra_headers: tuple[tuple[str, str], ...] = ()


class FeatureServices:
    """The services B sides need (a private Redis, the fake router, OTLP sinks) and each
    feature's config (``setup``): shared by the wall-clock pairs here and the callgrind
    count of ``benchmarks.feature_callgrind``."""

    def __init__(self, work: Path, fake_port: int) -> None:
        self.work = work
        self.fake_port = fake_port
        self.redis: Any = None
        self.router: Any = None
        self.sinks: dict[str, Any] = {}
        self.evals0 = 0

    def setup(self, name: str) -> FeatureSetup:
        if name == "rate_limit":
            from benchmarks import private_redis
            from benchmarks.ratelimit_ab import ratelimit_section

            if not private_redis.available():
                raise RuntimeError("redis-server is not installed")
            self.redis = private_redis.PrivateRedis(self.work)
            return FeatureSetup([f"redis_url={self.redis.url}"], [ratelimit_section("tokens")], {})
        if name == "dlp":
            from benchmarks.bench_dlp import ALL_LOG

            return FeatureSetup([f"guardrails={json.dumps(ALL_LOG)}"], [], {})
        if name in ("tracing0", "tracing100"):
            from benchmarks.ab_settings import OtlpSink

            sink = self.sinks[name] = OtlpSink()
            rate = 0 if name == "tracing0" else 100
            return FeatureSetup([], [f"tracing:\n  random_sampling: {rate}"], sink.env)
        if name == "routing":
            from tests.test_preference_routing import FakeRouter, routing_yaml

            self.router = FakeRouter()
            yaml = routing_yaml(self.fake_port, self.router.port, session_ttl_s=3600)
            return FeatureSetup([], [], {}, edit=lambda p: _replace_providers(p, yaml), body=ROUTING_BODY,
                                extra_headers=(SESSION_HEADER,))
        if name == "retries":
            from benchmarks.chaos import FALLBACK_MODEL, retry_policy_yaml

            fallback = f"anthropic/{FALLBACK_MODEL}"
            policy = retry_policy_yaml(fallback)
            extra = (f"  - model: {fallback}\n    base_url: http://127.0.0.1:{self.fake_port}\n"
                     f"    access_key: sk-ant-bench-fallback\n")
            return FeatureSetup([], [], {}, edit=lambda p: _add_retry_policy(p, policy, extra))
        raise ValueError(name)

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.router is not None:
            self.router.stop()
        for sink in self.sinks.values():
            sink.close()


def _replace_providers(config_path: Path, yaml: str) -> None:
    """Swap the harness config's ``model_providers`` section (``run.write_gateway_config``
    writes it between ``model_providers:`` and ``plano_fast:``) for ``yaml``."""
    text = config_path.read_text()
    head, sep, rest = text.partition("model_providers:\n")
    _, sep2, tail = rest.partition("plano_fast:\n")
    assert sep and sep2, "unexpected config layout"
    config_path.write_text(head + yaml + sep2 + tail)


def _add_retry_policy(config_path: Path, policy: str, extra_providers: str) -> None:
    """The first (default) provider gets ``policy``; ``extra_providers`` (its fallback) follow it."""
    text = config_path.read_text()
    anchor = "    default: true\n"
    assert text.count(anchor) == 1, "unexpected config layout"
    config_path.write_text(text.replace(anchor, anchor + policy + extra_providers))
