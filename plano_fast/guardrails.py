"""The DLP floor: PII and secret detectors over a request's message text, with actions.

Config (``plano_fast.guardrails``)::

    plano_fast:
      guardrails:
        detectors:                 # detector -> block | redact | warn | log (absent: off)
          email: log
          phone: log
          ssn: block
          credit_card: redact
          iban: redact
          ip_address: log
          secrets: block
        custom:                    # operator patterns (Python regular expressions)
          - {name: codename, pattern: 'Project\\s+Falcon', action: redact}
        providers:                 # per-provider overrides of the actions
          openai: {email: redact}
        projects:                  # per firewall/managed project (its id), over the above
          3f2b9c04-...: {email: block}

What is scanned: only message *text* -- the string values a model reads (OpenAI chat
``messages[].content`` and its text parts, Responses ``instructions`` and ``input``, Anthropic
``system`` and ``messages[].content`` text blocks and tool results, Gemini ``contents[].parts[].text``
and ``systemInstruction``), after JSON decoding (so escapes cannot hide a match); never keys,
model names, tool schemas or image/audio data.

Actions, strongest first: ``block`` -- 403 in the client's format, the detector names in
``x-plano-guardrail`` (alphabetical), nothing forwarded; ``redact`` -- each match replaced by
``[REDACTED:<detector>]`` in the string that held it, and only that string's JSON literal
rewritten in the body (the only case where the gateway changes a body; the compiled scanner
and its pure twin write the same bytes; a body the walker leaves to ``json.loads`` -- an
escaped key, a repeated member -- is re-encoded as compact JSON, in both); ``warn`` --
forwarded, the detector names in the ``x-plano-guardrail-warning`` response header;
``log`` -- forwarded, counted.  Every detection is counted in ``/metrics``
(``guardrail_detections_total{detector,action}``) and named in the access log; the matched
text is never logged or stored.

Detectors validate what their pattern finds: card numbers by Luhn (13-19 digits), IBANs by
their ISO 7064 mod-97 checksum, SSNs by the SSA's never-issued ranges, IP addresses by
parsing them; secrets are provider keys by their documented prefixes (``sk-``, ``sk-ant-``,
``sk-proj-``, ``AIza``, ``AKIA``/``ASIA``, ``ghp_``/``gho_``/``ghs_``/``ghu_``/``ghr_``,
``xox?-``), PEM private-key headers and JWTs.  The built-in patterns are ASCII-only: a digit
is 0-9 and a non-ASCII character separates words (a card number in Arabic-Indic digits is not
one).

Speed: the built-in detectors run in the wire scanner (``plano_fast/wire/_dlp.pyx``, pure twin
``_dlp_py.py``), which reads the request body without decoding it, finds where a match can
start in one byte pass (a digit run, '@', ':', a key prefix) and tries the patterns only
there (``python -m benchmarks.bench_dlp``; figures in benchmarks/results/dlp-20261205.md).
Operator patterns (``custom``) run in Python ``re`` over every text string, decoded: their
cost is the pattern's, commonly 10-100 MB/s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from plano_fast import wire
from plano_fast.wire._dlp_py import scan_body as _scan_body_py
from plano_fast.errors import ApiFormat, ClientError

ACTIONS: Final = ("log", "warn", "redact", "block")  # weakest to strongest
_RANK: Final = {a: i for i, a in enumerate(ACTIONS)}


class GuardrailConfigError(ValueError):
    pass


def _always(_: str) -> bool:
    return True


#: name -> (pattern, validator); the patterns are ASCII-only (plano_fast/wire/_dlp_shared.py)
DETECTORS: Final[dict[str, tuple[re.Pattern[str], Callable[[str], bool]]]] = {
    name: (wire.DLP_PATTERNS[i], wire.DLP_VALIDATORS.get(i, _always)) for i, name in enumerate(wire.DLP_DETECTORS)
}
_IDS: Final = {name: i for i, name in enumerate(wire.DLP_DETECTORS)}


@dataclass(frozen=True, slots=True)
class Finding:
    detector: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Policy:
    """Detector -> action, with per-provider and per-project overrides (a project's, the
    most specific, win over its provider's, which win over the global actions)."""

    actions: Mapping[str, str]
    custom: Mapping[str, re.Pattern[str]]
    providers: Mapping[str, Mapping[str, str]]
    #: firewall / managed project id -> its overrides
    projects: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: (provider, project) -> (its actions, the wire scanner's mask of them), filled on first use
    _resolved: dict[tuple[str | None, str | None], tuple[Mapping[str, str], int]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def actions_for(self, provider: str | None, project: str | None = None) -> Mapping[str, str]:
        return self.resolved(provider, project)[0]

    def resolved(self, provider: str | None, project: str | None = None) -> tuple[Mapping[str, str], int]:
        key = (provider, project if project in self.projects else None)
        found = self._resolved.get(key)
        if found is None:
            actions = {**self.actions, **self.providers.get(provider or "", {}),
                       **self.projects.get(project or "", {})}
            found = self._resolved[key] = (actions, _mask(actions))
        return found


def parse_policy(raw: object) -> Policy | None:
    """``plano_fast.guardrails`` -> a policy; ``GuardrailConfigError`` naming the field."""
    if raw is None:
        return None
    where = "plano_fast.guardrails"
    if not isinstance(raw, dict):
        raise GuardrailConfigError(f"{where}: expected a mapping")
    unknown = set(raw) - {"detectors", "custom", "providers", "projects"}
    if unknown:
        raise GuardrailConfigError(
            f"{where}.{sorted(unknown)[0]}: unknown field (detectors, custom, providers, projects)"
        )
    custom: dict[str, re.Pattern[str]] = {}
    actions: dict[str, str] = {}
    for i, item in enumerate(raw.get("custom") or []):
        loc = f"{where}.custom[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise GuardrailConfigError(f"{loc}.name: a name is required")
        if item["name"] in DETECTORS or item["name"] in custom:
            raise GuardrailConfigError(f"{loc}.name: '{item['name']}' is already a detector")
        try:
            custom[item["name"]] = re.compile(str(item.get("pattern", "")))
        except re.error as exc:
            raise GuardrailConfigError(f"{loc}.pattern: not a valid regular expression ({exc})") from None
        if not item.get("pattern"):
            raise GuardrailConfigError(f"{loc}.pattern: a pattern is required")
        actions[item["name"]] = _action(item.get("action", "log"), f"{loc}.action")
    known = set(DETECTORS) | set(custom)
    for name, action in (raw.get("detectors") or {}).items():
        if name not in known:
            raise GuardrailConfigError(f"{where}.detectors.{name}: unknown detector (one of {', '.join(sorted(known))})")
        actions[name] = _action(action, f"{where}.detectors.{name}")
    scoped: dict[str, dict[str, dict[str, str]]] = {"providers": {}, "projects": {}}
    for scope, found in scoped.items():
        for owner, overrides in (raw.get(scope) or {}).items():
            if not isinstance(overrides, dict):
                raise GuardrailConfigError(f"{where}.{scope}.{owner}: expected detector: action")
            for name, action in overrides.items():
                if name not in known:
                    raise GuardrailConfigError(f"{where}.{scope}.{owner}.{name}: unknown detector")
                found.setdefault(str(owner), {})[name] = _action(action, f"{where}.{scope}.{owner}.{name}")
    return Policy(actions, custom, scoped["providers"], scoped["projects"])


def _action(value: object, loc: str) -> str:
    if value not in ACTIONS:
        raise GuardrailConfigError(f"{loc}: one of {', '.join(ACTIONS)} (got {value!r})")
    return str(value)


def _mask(enabled: Mapping[str, str]) -> int:
    """The built-in detectors of ``enabled`` as the wire scanner's bit mask."""
    mask = 0
    for name in enabled:
        i = _IDS.get(name)
        if i is not None:
            mask |= 1 << i
    return mask


def _resolve(
    raw: list[tuple[int, int, int]], text: str, enabled: Mapping[str, str], custom: Mapping[str, re.Pattern[str]]
) -> list[Finding]:
    """The wire scanner's findings plus the operator patterns', in order, non-overlapping
    (the longest wins an overlap; on a tie, the detector named first in ``enabled``)."""
    found: list[Finding] = []
    for name in enabled:
        i = _IDS.get(name)
        if i is None:
            found += [Finding(name, m.start(), m.end()) for m in custom[name].finditer(text)]
        else:
            found += [Finding(name, s, e) for d, s, e in raw if d == i]
    if len(found) < 2:
        return found
    found.sort(key=lambda f: (f.start, -f.end))
    kept = [found[0]]
    for f in found[1:]:
        if f.start >= kept[-1].end:
            kept.append(f)
    return kept


def scan_text(text: str, enabled: Mapping[str, str], custom: Mapping[str, re.Pattern[str]]) -> list[Finding]:
    """Validated matches of the enabled detectors in ``text``, in order, non-overlapping
    (the longest wins an overlap).  The built-in detectors run in the wire scanner
    (``wire.dlp_scan_text``: compiled, or its pure twin); operator patterns here, over the
    whole text (Python ``re``: their cost is the operator's)."""
    mask = _mask(enabled)
    return _resolve(wire.dlp_scan_text(text, mask) if mask else [], text, enabled, custom)


# -- message text of each client format -----------------------------------------------------

Slot = tuple[Any, Any]  # (container, key or index): where a text string lives


def text_slots(doc: Any, fmt: str) -> Iterator[Slot]:
    """Where the message text is in a request document of client format ``fmt``
    ("openai", "responses", "anthropic", "gemini")."""
    if not isinstance(doc, dict):
        return
    if fmt == "embeddings":
        if isinstance(doc.get("input"), str):
            yield doc, "input"
        for i, item in enumerate(_list(doc.get("input"))):
            if isinstance(item, str):
                yield doc["input"], i
        return
    if fmt == "gemini":
        for content in _list(doc.get("contents")) + [doc.get("systemInstruction")]:
            if isinstance(content, dict):
                for part in _list(content.get("parts")):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        yield part, "text"
        return
    if fmt == "responses":
        if isinstance(doc.get("instructions"), str):
            yield doc, "instructions"
        if isinstance(doc.get("input"), str):
            yield doc, "input"
        for item in _list(doc.get("input")):
            yield from _content_slots(item)
            if isinstance(item, dict) and isinstance(item.get("output"), str):
                yield item, "output"  # function_call_output
        return
    if fmt == "anthropic":
        if isinstance(doc.get("system"), str):
            yield doc, "system"
        for block in _list(doc.get("system")):
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                yield block, "text"
    for message in _list(doc.get("messages")):
        yield from _content_slots(message)


def _content_slots(message: Any) -> Iterator[Slot]:
    if not isinstance(message, dict):
        return
    content = message.get("content")
    if isinstance(content, str):
        yield message, "content"
        return
    for part in _list(content):
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            yield part, "text"
        if part.get("type") == "tool_result":
            yield from _content_slots(part)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


class GuardrailBlocked(ClientError):
    status = 403
    code = "guardrail_blocked"
    openai_type = "permission_error"

    def __init__(self, detectors: list[str], detections: list[tuple[str, str]] | None = None) -> None:
        self.detectors = detectors
        #: every (detector, action) found, for the counters
        self.detections = detections or []
        super().__init__(
            f"the request was blocked by the gateway's data-loss guardrails ({', '.join(detectors)})"
        )

    def headers(self, fmt: ApiFormat) -> tuple[tuple[bytes, bytes], ...]:
        return ((b"x-plano-guardrail", ",".join(self.detectors).encode()),)


@dataclass(slots=True)
class Outcome:
    """What the guardrails did to one request."""

    detections: list[tuple[str, str]]  # (detector, action), sorted
    body: bytes | None  # the redacted body, when one was rewritten
    warn: list[str]  # sorted


class _Verdict:
    """The findings of one request, gathered string by string."""

    __slots__ = ("enabled", "detections", "block", "warn")

    def __init__(self, enabled: Mapping[str, str]) -> None:
        self.enabled = enabled
        self.detections: list[tuple[str, str]] = []
        self.block: set[str] = set()
        self.warn: set[str] = set()

    def redacted(self, text: str, findings: list[Finding]) -> str | None:
        """Count ``findings`` (of ``text``); the text with the redacted spans replaced, or
        None when nothing in it is to be redacted."""
        pieces: list[str] = []
        pos = 0
        for f in findings:
            action = self.enabled[f.detector]
            self.detections.append((f.detector, action))
            if action == "block":
                self.block.add(f.detector)
            elif action == "warn":
                self.warn.add(f.detector)
            elif action == "redact":
                pieces += [text[pos : f.start], f"[REDACTED:{f.detector}]"]
                pos = f.end
        return "".join(pieces) + text[pos:] if pieces else None

    def outcome(self, body: bytes | None) -> Outcome:
        detections = sorted(self.detections)
        if self.block:
            raise GuardrailBlocked(sorted(self.block), detections)
        return Outcome(detections, body, sorted(self.warn))


def apply(
    policy: Policy, doc: Any, fmt: str, provider: str | None, project: str | None = None,
    redactions: dict[str, str] | None = None,
) -> Outcome:
    """Scan the decoded request ``doc``'s message text; raises GuardrailBlocked, or returns
    what was found and the redacted document's bytes (compact JSON) when something was
    redacted (``doc`` is changed).  ``redactions``, when given, gets each redacted string's
    original text -> its redacted text."""
    enabled = policy.actions_for(provider, project)
    verdict = _Verdict(enabled)
    redacted = False
    for container, key in list(text_slots(doc, fmt)):
        text = container[key]
        findings = scan_text(text, enabled, policy.custom)
        if findings:
            new = verdict.redacted(text, findings)
            if new is not None:
                container[key] = new
                redacted = True
                if redactions is not None:
                    redactions[text] = new
    if not redacted or verdict.block:
        return verdict.outcome(None)
    return verdict.outcome(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())


def apply_body(
    policy: Policy, body: bytes, fmt: str, provider: str | None, project: str | None = None
) -> Outcome:
    """The guardrails over a request body as received: the same verdict as
    ``apply(policy, json.loads(body), ...)`` (a body that is not JSON: nothing found).

    With the compiled scanner the body is not decoded: ``wire.dlp_scan_body`` reads the
    message-text strings in place, and only a string with a finding to redact (or every
    text string, when operator patterns are configured) is decoded; a redaction replaces
    that string's JSON literal and nothing else in the body.  Without it (or for a body it
    leaves to ``json.loads``) the body is decoded and ``apply`` runs; without it, a redacted
    body is then written as the compiled path writes it (``_respliced``: the same bytes)."""
    enabled, mask = policy.resolved(provider, project)
    slots = None
    walkable = body.isascii() or _utf8(body)
    if wire.dlp_scan_body is not None and walkable:
        slots = wire.dlp_scan_body(body, fmt, mask, bool(policy.custom))
        if not slots and slots is not None:
            return Outcome([], None, [])  # the common case: nothing found
    if slots is None:
        try:
            doc = json.loads(body)
        except ValueError:
            return Outcome([], None, [])  # refused by the scanner with a precise message
        if wire.dlp_scan_body is not None or not walkable:
            return apply(policy, doc, fmt, provider, project)
        redactions: dict[str, str] = {}
        decoded = apply(policy, doc, fmt, provider, project, redactions)
        if decoded.body is None:
            return decoded
        return _respliced(body, fmt, decoded, redactions)
    verdict = _Verdict(enabled)
    edits: list[tuple[int, int, bytes]] = []
    for start, end, plain, raw in slots:
        text = body[start:end].decode("ascii") if plain else json.loads(body[start - 1 : end + 1])
        findings = _resolve(raw, text, enabled, policy.custom)
        if findings:
            new = verdict.redacted(text, findings)
            if new is not None:
                edits.append((start - 1, end + 1, json.dumps(new, ensure_ascii=False).encode()))
    if not edits or verdict.block:
        return verdict.outcome(None)
    pieces: list[bytes] = []
    pos = 0
    for start, end, literal in edits:
        pieces += [body[pos:start], literal]
        pos = end
    pieces.append(body[pos:])
    return verdict.outcome(b"".join(pieces))


def _respliced(body: bytes, fmt: str, decoded: Outcome, redactions: dict[str, str]) -> Outcome:
    """Without the compiled scanner, a redacted body written as the compiled walker writes
    it: the redacted strings' literals replaced, every other byte as the client sent it (the
    twins' bytes are the same).  The pure walk (``_dlp_py.scan_body``, no detector run: the
    texts were scanned by ``apply``) runs only here, on a redaction.  Where the walker leaves
    a body to json (an escaped key, a repeated member), both builds send ``apply``'s compact
    re-encoding."""
    slots = _scan_body_py(body, fmt, 0, True)
    if slots is None:
        return decoded
    pieces: list[bytes] = []
    pos = 0
    for start, end, plain, _ in slots:
        text = body[start:end].decode("ascii") if plain else json.loads(body[start - 1 : end + 1])
        new = redactions.get(text)
        if new is not None:
            pieces += [body[pos : start - 1], json.dumps(new, ensure_ascii=False).encode()]
            pos = end + 1
    pieces.append(body[pos:])
    return Outcome(decoded.detections, b"".join(pieces), decoded.warn)


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
