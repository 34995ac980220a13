"""Server-side fault injection for the fake provider (issue 20: retries, failover, chaos).

Per-request ``x-fake-*`` headers reach every target a gateway tries, so they cannot make the
*first* target fail and the fallback answer.  These faults live in the fake provider itself
(one state per server), so two fake providers behind one gateway can behave differently:

* **rules**, consumed in order: "the next N requests (optionally only for model M) get
  this fault", with the faults

  - ``status``: the provider-shaped error answer with that status (429 optionally with
    ``retry-after`` and/or ``retry-after-ms``);
  - ``reset``: the TCP connection is reset before any response byte (RST);
  - ``stall``: no response head for ``stall_ms``, then the normal answer (a gateway with a
    shorter first-byte timeout has given up by then);
  - ``stream_reset``: a stream sends its head and ``after_events`` SSE events, then the
    connection is reset (a non-stream request is reset before the head);

* a **random** failure rate (seeded, so a run is repeatable) applying one fault to that
  fraction of the requests (optionally only for some models): the chaos benchmark.

Control: ``POST /_fake/faults`` with ``{"rules": [{"count": 2, "status": 503, "model":
"gpt-4o"}, ...], "random": {"rate": 0.2, "seed": 1, "status": 503}}`` (rules are appended;
``random`` replaces the random fault; ``null`` removes it), ``GET /_fake/faults`` (the rules
left and the counters), ``DELETE /_fake/faults`` (clear both and the counters).  The same
from Python: ``FakeProvider.faults`` (:class:`Faults`), and from the command line
(``--fail-rate``, ``--fail-seed``, ``--fail-status``, ``--fail-action``, ``--fail-model``).
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections import Counter
from typing import Any, Optional

ACTIONS = ("status", "reset", "stall", "stream_reset")


@dataclasses.dataclass(slots=True)
class Fault:
    """One injected fault (what a matched request gets)."""

    action: str = "status"
    status: int = 503
    #: ``retry-after`` value (seconds or an HTTP date); "" sends none
    retry_after: str = ""
    #: ``retry-after-ms`` value; "" sends none
    retry_after_ms: str = ""
    stall_ms: float = 0.0
    after_events: int = 0

    @property
    def label(self) -> str:
        return "status_%d" % self.status if self.action == "status" else self.action


@dataclasses.dataclass(slots=True)
class Rule:
    fault: Fault
    remaining: int
    model: Optional[str] = None  # None: any model


class Faults:
    """The fault state of one fake provider; every method is thread-safe (tests call them
    from their own thread while the server's loop consumes rules)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rules: list[Rule] = []
        self.random_rate = 0.0
        self.random_fault: Optional[Fault] = None
        self.random_models: Optional[frozenset[str]] = None
        self._rng = random.Random(0)
        #: injected faults by label ("status_503", "reset", ...), and "passed": the requests
        #: served normally while some fault was configured (none counts nothing)
        self.counts: Counter[str] = Counter()
        #: whether any rule filters by model (then the request's model is read first)
        self.by_model = False
        #: whether any fault is configured: the one attribute the request path checks
        self.on = False

    def _update(self) -> None:  # under the lock
        self.on = bool(self.rules) or self.random_fault is not None
        self.by_model = any(r.model is not None for r in self.rules) or bool(self.random_models)

    def add(self, fault: Fault, count: int = 1, model: Optional[str] = None) -> None:
        if fault.action not in ACTIONS:
            raise ValueError("unknown fault action %r (one of %s)" % (fault.action, ", ".join(ACTIONS)))
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self.rules.append(Rule(fault, count, model))
            self._update()

    def set_random(self, rate: float, fault: Optional[Fault] = None, seed: int = 0,
                   models: Optional[list[str]] = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        fault = fault or Fault()
        if fault.action not in ACTIONS:
            raise ValueError("unknown fault action %r (one of %s)" % (fault.action, ", ".join(ACTIONS)))
        with self._lock:
            self.random_rate = rate
            self.random_fault = fault if rate > 0 else None
            self.random_models = frozenset(models) if models else None
            self._rng = random.Random(seed)
            self._update()

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.random_fault = None
            self.random_rate = 0.0
            self.random_models = None
            self.counts.clear()
            self._update()

    def take(self, model: Optional[str]) -> Optional[Fault]:
        """The fault for the next request (of ``model``), consuming a rule; None: serve it."""
        with self._lock:
            for i, rule in enumerate(self.rules):
                if rule.model is not None and rule.model != model:
                    continue
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del self.rules[i]
                    self._update()
                self.counts[rule.fault.label] += 1
                return rule.fault
            fault = self.random_fault
            if fault is not None and (self.random_models is None or model in self.random_models):
                if self._rng.random() < self.random_rate:
                    self.counts[fault.label] += 1
                    return fault
            self.counts["passed"] += 1
            return None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rules": [{"count": r.remaining, "model": r.model, **dataclasses.asdict(r.fault)} for r in self.rules],
                "random": None if self.random_fault is None else {
                    "rate": self.random_rate, "models": sorted(self.random_models or ()),
                    **dataclasses.asdict(self.random_fault)},
                "counts": dict(self.counts),
            }

    def configure(self, doc: Any) -> None:
        """Apply a ``POST /_fake/faults`` document (ValueError when malformed)."""
        if not isinstance(doc, dict) or set(doc) - {"rules", "random"}:
            raise ValueError('expected {"rules": [...], "random": {...}}')
        rules = doc.get("rules") or []
        if not isinstance(rules, list):
            raise ValueError("rules must be a list")
        parsed = []
        for r in rules:
            if not isinstance(r, dict):
                raise ValueError("a rule must be an object")
            r = dict(r)
            count = int(r.pop("count", 1))
            model = r.pop("model", None)
            parsed.append((fault_from(r), count, model))
        if "random" in doc:
            rnd = doc["random"]
            if rnd is None:
                self.set_random(0.0)
            elif isinstance(rnd, dict):
                rnd = dict(rnd)
                rate = float(rnd.pop("rate"))
                seed = int(rnd.pop("seed", 0))
                models = rnd.pop("models", None)
                self.set_random(rate, fault_from(rnd), seed, models)
            else:
                raise ValueError("random must be an object or null")
        for fault, count, model in parsed:
            self.add(fault, count, model)


def fault_from(doc: dict[str, Any]) -> Fault:
    names = {f.name for f in dataclasses.fields(Fault)}
    unknown = set(doc) - names
    if unknown:
        raise ValueError("unknown fault field(s): %s" % ", ".join(sorted(unknown)))
    fault = Fault(**{k: (str(v) if k.startswith("retry_after") else v) for k, v in doc.items()})
    if fault.action not in ACTIONS:
        raise ValueError("unknown fault action %r (one of %s)" % (fault.action, ", ".join(ACTIONS)))
    return fault
