"""The response side of the guardrails: DLP ``log``/``warn`` on answers, output filters.

Config::

    plano_fast:
      response_guardrails:
        detectors: {email: warn, secrets: log}   # plano_fast.guardrails' detectors; log | warn
        streams: true                            # scan streamed answers too (log only)

Non-streamed answers (2xx, in the client's format -- not converted -- and not compressed)
are held until complete when response detectors or output filters are configured: output
filters run first (plano_fast.filter_chain), then the detectors scan the text of the final
body (string values of ``content``, ``text``, ``output_text``, ``refusal``,
``arguments``, after JSON decoding); a ``warn`` detection adds
``x-plano-guardrail-warning`` to the answer's head; every detection is counted
(``guardrail_detections_total{detector="response:<name>"}``) and named in the access log,
the matched text never.

Streamed answers (``streams: true``) are relayed as they come and scanned as they pass:
each SSE ``data:`` line is decoded and its text deltas appended to a window that is scanned
every 4 KiB of text, keeping the last 256 characters for the next scan so a match split
across events is still seen.  Limits: a match longer than 256 characters split across
two scans can be missed; ``warn`` cannot add a header once the head has left, so streamed
detections are counted as ``log``; a match found twice in the overlap is counted once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from plano_fast import guardrails
from plano_fast.guard_models import GuardConfigError

if TYPE_CHECKING:
    from plano_fast.filter_chain import FilterChains
    from plano_fast.http_server import Responder
    from plano_fast.metrics import RequestMetrics
    from plano_fast.upstream import Header

#: the members whose string values are text a model wrote
TEXT_KEYS: Final = frozenset({"content", "text", "output_text", "refusal", "arguments", "delta", "partial_json"})
STREAM_SCAN_CHARS: Final = 4096
STREAM_OVERLAP_CHARS: Final = 256


#: what a built-in detector's match must contain (None: digits, which every answer has)
_ANCHORS: Final[dict[str, tuple[bytes, ...] | None]] = {
    "email": (b"@",),
    "secrets": (b"sk-", b"AIza", b"AKIA", b"ASIA", b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_",
                b"xox", b"-----BEGIN", b"eyJ"),  # (plano_fast.guardrails' key prefixes)
}


@dataclass(frozen=True, slots=True)
class ResponsePolicy:
    actions: Mapping[str, str]  # detector -> log | warn
    custom: Mapping[str, re.Pattern[str]]
    streams: bool
    #: bytes one of which an answer must contain for any detector to match (None: scan all)
    anchors: tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True)
class ResponseChecks:
    """What the response side does (None in the context: nothing, no hold)."""

    policy: ResponsePolicy | None
    chains: FilterChains | None  # with output filters

    @property
    def streams(self) -> bool:
        return self.policy is not None and self.policy.streams


def parse_response_policy(raw: object, request_policy: guardrails.Policy | None) -> ResponsePolicy | None:
    """``plano_fast.response_guardrails`` -> a policy; GuardConfigError naming the field.
    Custom detectors are those of ``plano_fast.guardrails.custom``."""
    if raw is None:
        return None
    where = "plano_fast.response_guardrails"
    if not isinstance(raw, dict):
        raise GuardConfigError(f"{where}: expected a mapping (detectors, streams)")
    unknown = sorted(set(raw) - {"detectors", "streams"})
    if unknown:
        raise GuardConfigError(f"{where}.{unknown[0]}: unknown field (detectors, streams)")
    custom = dict(request_policy.custom) if request_policy is not None else {}
    known = set(guardrails.DETECTORS) | set(custom)
    actions: dict[str, str] = {}
    detectors = raw.get("detectors") or {}
    if not isinstance(detectors, dict):
        raise GuardConfigError(f"{where}.detectors: expected detector: action")
    for name, action in detectors.items():
        if name not in known:
            raise GuardConfigError(f"{where}.detectors.{name}: unknown detector (one of {', '.join(sorted(known))})")
        if action not in ("log", "warn"):
            raise GuardConfigError(
                f"{where}.detectors.{name}: log or warn (got {action!r}; an answer already "
                "generated is counted and flagged, not blocked or rewritten)"
            )
        actions[name] = str(action)
    streams = raw.get("streams", False)
    if not isinstance(streams, bool):
        raise GuardConfigError(f"{where}.streams: true or false")
    if not actions:
        raise GuardConfigError(f"{where}.detectors: name at least one detector")
    anchors: list[bytes] | None = []
    for name in actions:
        found = _ANCHORS.get(name)
        if found is None or anchors is None:
            anchors = None
        else:
            anchors += found
    return ResponsePolicy(
        actions, {k: v for k, v in custom.items() if k in actions}, streams,
        tuple(anchors) if anchors is not None else None,
    )  # fmt: skip


def response_texts(doc: Any) -> list[str]:
    """The text values of an answer document (any client format), in document order."""
    out: list[str] = []
    _walk(doc, out)
    return out


def _walk(node: Any, out: list[str]) -> None:
    # (recursion: the document was parsed by json.loads, whose own depth bound holds here)
    kind = type(node)
    if kind is dict:
        for key, value in node.items():
            vkind = type(value)
            if vkind is str:
                if key in TEXT_KEYS:
                    out.append(value)
            elif vkind is dict or vkind is list:
                _walk(value, out)
    elif kind is list:
        for item in node:
            ikind = type(item)
            if ikind is dict or ikind is list:
                _walk(item, out)


def may_match(policy: ResponsePolicy, body: bytes) -> bool:
    """False when no enabled detector can match anywhere in ``body`` (raw JSON): none has
    its anchor in it ("@" for e-mail, a key prefix for secrets) and no escape could spell
    one.  Digit detectors and custom patterns always need the scan (every answer carries
    digits)."""
    if policy.anchors is None or body.find(b"\\u") >= 0:
        return True
    return any(body.find(anchor) >= 0 for anchor in policy.anchors)


def scan_texts(policy: ResponsePolicy, texts: Iterable[str]) -> list[str]:
    """Detector names found in ``texts`` (one per finding)."""
    found: list[str] = []
    for text in texts:
        for finding in guardrails.scan_text(text, policy.actions, policy.custom):
            found.append(finding.detector)
    return found


def count(metrics: RequestMetrics, policy: ResponsePolicy, names: list[str], streamed: bool) -> None:
    metrics.detected(
        (f"response:{name}", "log" if streamed else policy.actions[name]) for name in names
    )


class ResponseHold:
    """BodyFilter that holds a non-streamed answer until it is complete; the exchange then
    runs the output filters and the detectors and sends it (RoutedExchange._finish)."""

    __slots__ = ("status", "headers", "parts")
    rebuilds_head = True

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[Header] = []
        self.parts: list[bytes] = []

    def head(self, responder: Responder, status: int, headers: list[Header]) -> None:
        self.status = status
        self.headers = headers

    def relay(self, data: bytes, responder: Responder) -> None:
        self.parts.append(data)

    def read_done(self, responder: Responder) -> None:
        pass

    def finish(self, responder: Responder, tail: bytes) -> None:
        self.parts.append(tail)

    def checkable(self) -> bool:
        """A 2xx JSON answer the gateway can read (not compressed)."""
        if not 200 <= self.status < 300:
            return False
        return not any(n == b"content-encoding" and v.strip().lower() != b"identity" for n, v in self.headers)

    def send(self, responder: Responder, body: bytes, warn: list[str]) -> None:
        headers = self.headers
        if warn:
            headers = headers + [(b"x-plano-guardrail-warning", ",".join(sorted(set(warn))).encode())]
        responder.send_head(self.status, headers, len(body))
        responder.send_body(body)


class StreamScan:
    """BodyFilter that relays a streamed answer unchanged and scans its text as it passes."""

    __slots__ = ("policy", "metrics", "pending", "window", "scanned_to", "found", "seen")
    rebuilds_head = False

    def __init__(self, policy: ResponsePolicy, metrics: RequestMetrics) -> None:
        self.policy = policy
        self.metrics = metrics
        self.pending = b""  # an incomplete SSE line
        self.window = ""  # text not yet scanned, after the overlap kept from the last scan
        self.scanned_to = 0  # absolute offset of window[0] in the stream's text
        self.found: list[str] = []
        self.seen: set[tuple[str, int]] = set()  # (detector, absolute start): counted once

    def head(self, responder: Responder, status: int, headers: list[Header]) -> None:
        raise AssertionError("StreamScan does not rebuild the head")

    def relay(self, data: bytes, responder: Responder) -> None:
        responder.send_body(data)
        self._feed(data)

    def read_done(self, responder: Responder) -> None:
        responder.flush()

    def finish(self, responder: Responder, tail: bytes) -> None:
        if tail:
            responder.send_body(tail)
            self._feed(tail)
        self._lines(self.pending + b"\n")
        self._scan(final=True)
        if self.found:
            count(self.metrics, self.policy, self.found, streamed=True)

    def _feed(self, data: bytes) -> None:
        buf = self.pending + data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self.pending = buf if len(buf) < (1 << 20) else b""  # a line past 1 MiB: not scanned
            return
        self.pending = buf[cut + 1 :]
        self._lines(buf[: cut + 1])
        if len(self.window) >= STREAM_SCAN_CHARS:
            self._scan(final=False)

    def _lines(self, chunk: bytes) -> None:
        for line in chunk.split(b"\n"):
            line = line.strip()
            if line.startswith(b"\xef\xbb\xbf"):
                # a stream's leading UTF-8 BOM (WHATWG SSE skips it): its first event is
                # read, not passed unscanned (a BOM on a later line is read past too: the
                # floor errs on the side of reading)
                line = line[3:]
            if not line.startswith(b"data:") and not line.startswith(b"{"):
                continue
            payload = line[5:] if line.startswith(b"data:") else line
            try:
                doc = json.loads(payload)
            except ValueError:
                continue
            for text in response_texts(doc):
                self.window += text

    def _scan(self, final: bool) -> None:
        window = self.window
        base = self.scanned_to
        for f in guardrails.scan_text(window, self.policy.actions, self.policy.custom):
            key = (f.detector, base + f.start)
            if key not in self.seen:
                self.seen.add(key)
                self.found.append(f.detector)
        if not final and len(window) > STREAM_OVERLAP_CHARS:
            keep = len(window) - STREAM_OVERLAP_CHARS
            self.window = window[keep:]
            self.scanned_to = base + keep
            if len(self.seen) > 4096:
                self.seen = {k for k in self.seen if k[1] >= self.scanned_to}
