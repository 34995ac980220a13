"""Request metrics that add up across workers: per-model counters and latency histograms.

The hot path only adds numbers to C arrays of this process (``RequestMetrics.observe_ns``,
one call per finished request: a dict lookup and up to four bucket searches over int64 ns,
in plano_fast/wire/_obs.pyx; a pure-Python twin where it is not built).  Everything
else happens off it:

* every ``publish_interval_s`` each worker of a ``--workers N`` instance writes a snapshot
  of its numbers to ``<metrics_dir>/<pid>.json`` (write to a temporary name, then rename:
  a reader never sees half a file);
* a scrape of the admin port, which lands on any one worker, adds up every worker's
  last snapshot, its own included: one scrape gives the whole instance, at most one
  publish interval stale.  Not the answering worker's live numbers: with those, a scrape
  answered by worker A (A live + B's snapshot) then one answered by B (B live + A's
  older snapshot) could see a counter go down, which Prometheus takes for a reset.  Snapshots of workers that died stay (their counters
  must not go backwards; the parent keeps their counters and drops their gauges, see
  :func:`retire_snapshot`); the parent empties the directory when the instance starts.

Why not prometheus_client's multiprocess mode: it writes an mmap'd value under a lock for
every increment -- about ten per request here -- where a dict increment costs ~40 ns.

Series (prefix ``plano_fast_``; labels ``mode``, ``provider``, ``model`` (as routed),
``endpoint``, ``status`` (HTTP status class) where they apply):

* ``requests_total``
* ``request_duration_seconds``, ``upstream_duration_seconds`` (request sent to last byte),
  ``time_to_first_token_seconds`` (request received to the response head, streams only),
  ``gateway_overhead_seconds`` (duration minus upstream time): histograms with buckets
  from 50 µs, fit for a gateway whose own cost is well under a millisecond
* ``tokens_total{kind=input|output|cache_read|cache_write|reasoning}``
* ``errors_total{type=client|auth|budget|upstream|timeout|gateway}``

Cardinality: ``model`` takes at most :data:`MAX_MODELS` distinct values per process (a
wildcard provider forwards client-chosen names); later ones are counted as ``other``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from functools import cache
from typing import TYPE_CHECKING, Any, Final

from plano_fast.billing.metrics import FLUSH_BUCKETS_S
from plano_fast.wire import LATENCY_BUCKETS_S, RouteTable

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

MAX_MODELS: Final = 200
HISTOGRAMS: Final = (
    ("request_duration_seconds", "Time from the request's arrival to its last byte sent"),
    ("upstream_duration_seconds", "Time from the upstream request sent to its last byte"),
    ("time_to_first_token_seconds", "Time from the request's arrival to the upstream response head (streams)"),
    ("gateway_overhead_seconds", "Request duration minus upstream time: the gateway's own share"),
)  # fmt: skip
TOKEN_KINDS: Final = ("input", "output", "cache_read", "cache_write", "reasoning")

Labels = tuple[str, str, str, str]  # mode, provider, model, endpoint


class RequestMetrics(RouteTable):
    """This process's request numbers (see the module docstring).  The per-route numbers
    (``routes``: labels -> RouteStats, whose ``statuses``, ``hists`` and ``tokens`` give
    them in snapshot form) are kept by plano_fast.wire's RouteTable: C arrays in the
    compiled build, ``observe_ns`` a few hundred instructions."""

    __slots__ = ("errors", "detections", "known_models")

    def __init__(self) -> None:
        super().__init__()
        #: error type -> count
        self.errors: dict[str, int] = {}
        #: (guardrail detector, action) -> count
        self.detections: dict[tuple[str, str], int] = {}
        #: the model label values given so far (``model in known_models``: the label is the
        #: model itself, no call needed)
        self.known_models: set[str] = set()

    def model_label(self, model: str | None) -> str:
        if not model:
            return ""
        models = self.known_models
        if model in models:
            return model
        if len(models) >= MAX_MODELS:
            return "other"
        models.add(model)
        return model

    def observe(
        self,
        labels: Labels,
        status: int,
        duration_s: float,
        upstream_s: float | None,
        ttft_s: float | None,
        tokens: tuple[int, int, int, int, int] | None,
    ) -> None:
        """One finished request in seconds (the request path calls ``observe_ns`` with its
        clock readings; this is for callers that hold durations)."""
        ended_ns = _ORIGIN_NS + round(duration_s * 1e9)
        sent_ns = ended_ns - round(upstream_s * 1e9) if upstream_s is not None else 0
        head_ns = _ORIGIN_NS + round(ttft_s * 1e9) if ttft_s is not None else 0
        self.observe_ns(labels, status, _ORIGIN_NS, ended_ns, sent_ns, head_ns, tokens)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def detected(self, detections: Iterable[tuple[str, str]]) -> None:
        for key in detections:
            self.detections[key] = self.detections.get(key, 0) + 1

    # -- snapshots ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-able: what another worker needs to add these numbers to its own."""
        requests = []
        histograms: list[list[Any]] = [[] for _ in HISTOGRAMS]
        tokens = []
        for labels, stats in self.routes.items():
            for i, count in enumerate(stats.statuses):
                if count:
                    requests.append([[*labels, _STATUS_CLASS[i]], count])
            for i, row in enumerate(stats.hists):
                if row is not None:
                    histograms[i].append([list(labels), row])
            if any(stats.tokens):
                tokens.append([list(labels), stats.tokens])
        return {
            "requests": requests,
            "histograms": histograms,
            "tokens": tokens,
            "errors": self.errors,
            "detections": [[list(k), v] for k, v in self.detections.items()],
        }


_STATUS_CLASS: Final = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
#: ``observe``'s clock origin: any reading far from 0 (0 means "none" to observe_ns)
_ORIGIN_NS: Final = 1 << 60


#: process values that are not amounts: the instance's value is the largest worker's
_MAX_OVER_WORKERS: Final = frozenset({"last_flush_s"})


class Merged:
    """Numbers of several processes added up (this one's live, the others' snapshots)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, ...], float] = {}
        self.histograms: list[dict[tuple[str, ...], list[float]]] = [{} for _ in HISTOGRAMS]
        self.tokens: dict[tuple[str, ...], list[float]] = {}
        self.errors: dict[str, float] = {}
        self.detections: dict[tuple[str, ...], float] = {}
        self.process: dict[str, float] = {}
        self.cost: dict[tuple[str, ...], float] = {}
        self.flush: dict[tuple[str, ...], list[float]] = {}

    def add(self, snap: Mapping[str, Any], process: Mapping[str, float] | None = None) -> None:
        for key, value in snap.get("requests", ()):
            k = tuple(key)
            self.requests[k] = self.requests.get(k, 0) + value
        for i, hist in enumerate(snap.get("histograms", ())[: len(HISTOGRAMS)]):
            for key, row in hist:
                _add_row(self.histograms[i], tuple(key), row)
        for key, row in snap.get("tokens", ()):
            _add_row(self.tokens, tuple(key), row)
        for kind, value in snap.get("errors", {}).items():
            self.errors[kind] = self.errors.get(kind, 0) + value
        for key, value in snap.get("detections", ()):
            k = tuple(key)
            self.detections[k] = self.detections.get(k, 0) + value
        for key, value in snap.get("cost", ()):
            k = tuple(key)
            self.cost[k] = self.cost.get(k, 0) + value
        if snap.get("flush"):
            _add_row(self.flush, (), snap["flush"])
        for name, value in (process or snap.get("process", {})).items():
            have = self.process.get(name)
            if have is None:
                self.process[name] = value
            elif name in _MAX_OVER_WORKERS:
                self.process[name] = max(have, value)
            else:
                self.process[name] = have + value


def provider_error_type(status: int) -> str:
    """The ``type`` label of errors_total for an error answer relayed from the provider
    (the gateway's own refusals: ``plano_fast.app.error_type``)."""
    if status == 429:
        return "provider_rate_limit"
    if status == 401 or status == 403:
        return "provider_auth"
    if status == 402:
        return "provider_budget"
    return "provider_client" if status < 500 else "provider_server"


def billing_snapshot(costs: Mapping[tuple[str, str], int], flush_row: list[float]) -> dict[str, Any]:
    """The billing pipeline's tables (BillingMetrics) in snapshot form."""
    return {"cost": [[list(k), v] for k, v in costs.items()], "flush": flush_row}


def _add_row(table: dict[tuple[str, ...], list[float]], key: tuple[str, ...], row: Iterable[float]) -> None:
    values = list(row)
    have = table.get(key)
    if have is None:
        table[key] = values
    else:
        for i, v in enumerate(values):
            have[i] += v


# -- cross-worker snapshots ---------------------------------------------------------------


def write_snapshot(directory: Path, snapshot: Mapping[str, Any]) -> None:
    """Atomically replace this process's snapshot file."""
    final = directory / f"{os.getpid()}.json"
    temp = directory / f".{os.getpid()}.json.tmp"
    temp.write_text(json.dumps(snapshot, separators=(",", ":")))
    os.replace(temp, final)


def retire_snapshot(directory: Path, pid: int) -> None:
    """Keep a dead worker's counters and drop its gauges (its connections, its backlog are
    gone with it): ``<pid>.json`` becomes ``retired-<pid>.json``, which every worker still
    adds up.  Called by the parent of ``--workers N`` when a worker exits."""
    path = directory / f"{pid}.json"
    try:
        snap = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # never published (or a torn file: the worker was replacing it)
    process = snap.get("process")
    if isinstance(process, dict):
        snap["process"] = {k: v for k, v in process.items() if not k.endswith(_GAUGE_SUFFIXES)}
    temp = directory / f".retired-{pid}.json.tmp"
    temp.write_text(json.dumps(snap, separators=(",", ":")))
    os.replace(temp, directory / f"retired-{pid}.json")
    path.unlink(missing_ok=True)


def read_snapshots(directory: Path) -> Iterator[dict[str, Any]]:
    """Every process's last snapshot, the reader's own included (its published one, not
    its live numbers: see the module docstring), unreadable ones skipped (a worker may be
    replacing its file).  A worker being retired (:func:`retire_snapshot`) is read once:
    from ``retired-<pid>.json`` when both files are there, and from it when
    ``<pid>.json`` went between the listing and the read (counted twice or not at all,
    the instance's counters would jump)."""
    names = {path.name for path in directory.glob("*.json")}
    for name in sorted(names):
        retired = "retired-" + name
        if retired in names:
            continue
        try:
            try:
                text = (directory / name).read_text()
            except FileNotFoundError:
                if name.startswith("retired-"):
                    continue
                text = (directory / retired).read_text()
            yield json.loads(text)
        except (OSError, ValueError):
            continue


# -- exposition ---------------------------------------------------------------------------

_GAUGE_SUFFIXES: Final = ("_s", "_current", "_size", "_backlog", "_connections", "_ready", "_idle")
_LABELS: Final = ("mode", "provider", "model", "endpoint")


@cache
def _merged_collector_type() -> Callable[[Merged], Collector]:
    """The collector class, made at the first scrape: ``prometheus_client`` (~20 ms of
    CPU to import) is loaded only by a process that is scraped, not by every start."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector

    class _MergedCollector(Collector):
        def __init__(self, merged: Merged) -> None:
            self.merged = merged

        def collect(self) -> Iterator[Any]:
            m = self.merged
            requests = CounterMetricFamily(
                "plano_fast_requests", "Requests answered, by route and status class", labels=_LABELS + ("status",)
            )
            for key, value in sorted(m.requests.items()):
                requests.add_metric(list(key), value)
            yield requests
            for (name, doc), table in zip(HISTOGRAMS, m.histograms):
                family = HistogramMetricFamily("plano_fast_" + name, doc, labels=_LABELS)
                for key, row in sorted(table.items()):
                    family.add_metric(list(key), _cumulative(LATENCY_BUCKETS_S, row), row[-1])
                yield family
            tokens = CounterMetricFamily(
                "plano_fast_tokens", "Tokens read off provider responses", labels=_LABELS + ("kind",)
            )
            for key, row in sorted(m.tokens.items()):
                for kind, value in zip(TOKEN_KINDS, row):
                    tokens.add_metric(list(key) + [kind], value)
            yield tokens
            errors = CounterMetricFamily("plano_fast_errors", "Requests that failed, by type", labels=("type",))
            for kind, value in sorted(m.errors.items()):
                errors.add_metric([kind], value)
            yield errors
            detections = CounterMetricFamily(
                "plano_fast_guardrail_detections",
                "Guardrail detections (request and response text; guard models, filters: docs/guardrails.md)",
                labels=("detector", "action"),
            )
            for key, value in sorted(m.detections.items()):
                detections.add_metric(list(key), value)
            yield detections
            cost = CounterMetricFamily(
                "plano_fast_cost_nano_usd", "Cost of the usage rows priced, in nano-USD", labels=("provider", "model")
            )
            for key, value in sorted(m.cost.items()):
                cost.add_metric(list(key), value)
            yield cost
            flush = HistogramMetricFamily("plano_fast_usage_flush_duration_seconds", "Usage batch writes to the store")
            for row in m.flush.values():
                flush.add_metric([], _cumulative(FLUSH_BUCKETS_S, row), row[-1])
            yield flush

    return _MergedCollector


def _cumulative(bounds: tuple[float, ...], row: list[float]) -> list[tuple[str, float]]:
    """Prometheus buckets (cumulative, +Inf last) of a row of per-bucket counts."""
    cumulative, buckets = 0.0, []
    for bound, count in zip(bounds, row):
        cumulative += count
        buckets.append((repr(bound), cumulative))
    buckets.append(("+Inf", cumulative + row[len(bounds)]))
    return buckets


def render(merged: Merged) -> bytes:
    """Prometheus text exposition of the merged numbers: the process counters and gauges
    under their long-standing names (``plano_fast_<name>``, summed over the workers), then
    the request families."""
    lines = []
    for name, value in sorted(merged.process.items()):
        metric = "plano_fast_" + name
        kind = "gauge" if name.endswith(_GAUGE_SUFFIXES) else "counter"
        lines.append(f"# TYPE {metric} {kind}\n{metric} {value:g}\n")
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_merged_collector_type()(merged))
    return "".join(lines).encode() + generate_latest(registry)
