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

What is scanned: only message *text* -- the string values a model reads (OpenAI chat
``messages[].content`` and its text parts, Responses ``instructions`` and ``input``, Anthropic
``system`` and ``messages[].content`` text blocks and tool results, Gemini ``contents[].parts[].text``
and ``systemInstruction``), after JSON decoding (so escapes cannot hide a match); never keys,
model names, tool schemas or image/audio data.

Actions, strongest first: ``block`` -- 403 in the client's format, the detector names in
``x-plano-guardrail``, nothing forwarded; ``redact`` -- each match replaced by
``[REDACTED:<detector>]`` in the string that held it and the body re-encoded (the only case
where the gateway re-encodes a body: compact JSON, the same values otherwise); ``warn`` --
forwarded, the detector names in the ``x-plano-guardrail-warning`` response header;
``log`` -- forwarded, counted.  Every detection is counted in ``/metrics``
(``guardrail_detections_total{detector,action}``) and named in the access log; the matched
text is never logged or stored.

Detectors validate what their pattern finds: card numbers by Luhn (13-19 digits), IBANs by
their ISO 7064 mod-97 checksum, SSNs by the SSA's never-issued ranges, IP addresses by
parsing them; secrets are provider keys by their documented prefixes (``sk-``, ``sk-ant-``,
``sk-proj-``, ``AIza``, ``AKIA``/``ASIA``, ``ghp_``/``gho_``/``ghs_``/``ghu_``/``ghr_``,
``xox?-``), PEM private-key headers and JWTs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from plano_fast.errors import ApiFormat, ClientError

ACTIONS: Final = ("log", "warn", "redact", "block")  # weakest to strongest
_RANK: Final = {a: i for i, a in enumerate(ACTIONS)}


class GuardrailConfigError(ValueError):
    pass


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and _luhn(digits)


def _iban(match: str) -> bool:
    text = match.replace(" ", "").upper()
    if not 15 <= len(text) <= 34:
        return False
    moved = text[4:] + text[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _ip(match: str) -> bool:
    try:
        address = ipaddress.ip_address(match)
    except ValueError:
        return False
    return not (address.version == 6 and "::" not in match and match.count(":") < 7)


def _always(_: str) -> bool:
    return True


#: name -> (pattern, validator)
DETECTORS: Final[dict[str, tuple[re.Pattern[str], Callable[[str], bool]]]] = {
    "email": (re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b"), _always),
    "phone": (
        re.compile(r"(?<![\w+])(?:\+[1-9]\d{0,2}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}\b"
                   r"|(?<![\w+])\+[1-9]\d{7,14}\b"),
        _always,
    ),
    "ssn": (re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), _always),
    "credit_card": (re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card),
    "iban": (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), _iban),
    "ip_address": (
        re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{1,4}(?![\w:])"),
        _ip,
    ),
    "secrets": (
        re.compile(
            r"\bsk-(?:ant-(?:api\d\d-)?|proj-)?[A-Za-z0-9_-]{20,}"
            r"|\bAIza[0-9A-Za-z_-]{35}"
            r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
            r"|\bgh[pousr]_[A-Za-z0-9]{36,}"
            r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
            r"|-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"
            r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
        ),
        _always,
    ),
}


@dataclass(frozen=True, slots=True)
class Finding:
    detector: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Policy:
    """Detector -> action, with per-provider overrides."""

    actions: Mapping[str, str]
    custom: Mapping[str, re.Pattern[str]]
    providers: Mapping[str, Mapping[str, str]]

    def actions_for(self, provider: str | None) -> Mapping[str, str]:
        override = self.providers.get(provider or "")
        return {**self.actions, **override} if override else self.actions


def parse_policy(raw: object) -> Policy | None:
    """``plano_fast.guardrails`` -> a policy; ``GuardrailConfigError`` naming the field."""
    if raw is None:
        return None
    where = "plano_fast.guardrails"
    if not isinstance(raw, dict):
        raise GuardrailConfigError(f"{where}: expected a mapping")
    unknown = set(raw) - {"detectors", "custom", "providers"}
    if unknown:
        raise GuardrailConfigError(f"{where}.{sorted(unknown)[0]}: unknown field (detectors, custom, providers)")
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
    providers: dict[str, dict[str, str]] = {}
    for provider, overrides in (raw.get("providers") or {}).items():
        if not isinstance(overrides, dict):
            raise GuardrailConfigError(f"{where}.providers.{provider}: expected detector: action")
        for name, action in overrides.items():
            if name not in known:
                raise GuardrailConfigError(f"{where}.providers.{provider}.{name}: unknown detector")
            providers.setdefault(str(provider), {})[name] = _action(action, f"{where}.providers.{provider}.{name}")
    return Policy(actions, custom, providers)


def _action(value: object, loc: str) -> str:
    if value not in ACTIONS:
        raise GuardrailConfigError(f"{loc}: one of {', '.join(ACTIONS)} (got {value!r})")
    return str(value)


#: what a detector's match must contain: scanning happens only in windows around these
#: (str.find runs at GB/s; Python's re engine at 5-40 MB/s when it must try every position)
_DIGIT_DETECTORS: Final = frozenset({"phone", "ssn", "credit_card", "iban", "ip_address"})
_SECRET_PREFIXES: Final = ("sk-", "AIza", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
                           "xox", "-----BEGIN", "eyJ")  # fmt: skip
_DIGITS_TO_ZERO: Final = str.maketrans("123456789", "000000000")
#: characters around an anchor a match may span (a 34-character IBAN, a 19-digit card
#: with separators, a phone number in parentheses; a key after its prefix)
_DIGIT_MARGIN: Final = 48
_MAIL_MARGIN: Final = 320
_SECRET_SPAN: Final = 4096


def _windows(positions: list[int], before: int, after: int, size: int) -> list[tuple[int, int]]:
    """Merged [start, end) windows around anchor positions (sorted)."""
    out: list[tuple[int, int]] = []
    for p in positions:
        start, end = max(0, p - before), min(size, p + after)
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _all(text: str, needle: str) -> list[int]:
    found = []
    i = text.find(needle)
    while i >= 0:
        found.append(i)
        i = text.find(needle, i + 1)
    return found


def scan_text(text: str, enabled: Mapping[str, str], custom: Mapping[str, re.Pattern[str]]) -> list[Finding]:
    """Validated matches of the enabled detectors in ``text``, in order, non-overlapping
    (the longest wins an overlap).  Each built-in detector runs only in windows around
    the characters its matches must contain (digits, "@", a key prefix)."""
    found: list[Finding] = []
    size = len(text)
    digit_windows: list[tuple[int, int]] | None = None
    valid: Callable[[str], bool]
    for name in enabled:
        entry = DETECTORS.get(name)
        if entry is None:
            windows = [(0, size)]
            pattern, valid = custom[name], _always
        else:
            pattern, valid = entry
            if name in _DIGIT_DETECTORS:
                if digit_windows is None:
                    zeros = text.translate(_DIGITS_TO_ZERO)
                    digit_windows = _windows(_all(zeros, "0"), _DIGIT_MARGIN, _DIGIT_MARGIN, size)
                windows = digit_windows
            elif name == "email":
                windows = _windows(_all(text, "@"), _MAIL_MARGIN, _MAIL_MARGIN, size)
            else:  # secrets
                starts = sorted(i for prefix in _SECRET_PREFIXES for i in _all(text, prefix))
                windows = _windows(starts, 1, _SECRET_SPAN, size)
        seen: set[tuple[int, int]] = set()
        for start, end in windows:
            for m in pattern.finditer(text, start, end):
                span = m.span()
                if span not in seen and valid(m.group()):
                    seen.add(span)
                    found.append(Finding(name, span[0], span[1]))
    if len(found) < 2:
        return found
    found.sort(key=lambda f: (f.start, -f.end))
    kept = [found[0]]
    for f in found[1:]:
        if f.start >= kept[-1].end:
            kept.append(f)
    return kept


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

    detections: list[tuple[str, str]]  # (detector, action)
    body: bytes | None  # the redacted body, when one was rewritten
    warn: list[str]


def apply(policy: Policy, doc: Any, fmt: str, provider: str | None) -> Outcome:
    """Scan ``doc``'s message text; raises GuardrailBlocked, or returns what was found and
    the redacted document's bytes when something was redacted (``doc`` is changed)."""
    import json

    enabled = policy.actions_for(provider)
    detections: list[tuple[str, str]] = []
    block: list[str] = []
    warn: list[str] = []
    redacted = False
    for container, key in list(text_slots(doc, fmt)):
        text = container[key]
        findings = scan_text(text, enabled, policy.custom)
        if not findings:
            continue
        pieces: list[str] = []
        pos = 0
        for f in findings:
            action = enabled[f.detector]
            detections.append((f.detector, action))
            if action == "block" and f.detector not in block:
                block.append(f.detector)
            elif action == "warn" and f.detector not in warn:
                warn.append(f.detector)
            elif action == "redact":
                pieces += [text[pos : f.start], f"[REDACTED:{f.detector}]"]
                pos = f.end
        if pieces:
            container[key] = "".join(pieces) + text[pos:]
            redacted = True
    if block:
        raise GuardrailBlocked(block, detections)
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() if redacted else None
    return Outcome(detections, body, warn)
