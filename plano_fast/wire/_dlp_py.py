"""The DLP floor's detectors over decoded message text, pure Python (the twin of ``_dlp.pyx``).

``scan_text(text, mask)`` -> ``[(detector_id, start, end), ...]``: the validated matches of the
built-in detectors whose bit is set in ``mask`` (ids and patterns in ``_dlp_shared``), grouped
by detector id, each group in text order -- exactly what ``pattern.finditer(text)`` finds over
the whole string, the validators applied.  Overlaps between detectors are the caller's
(``plano_fast.guardrails``).

As in the compiled twin, a pattern is not run over the text: it is tried (``match``) only at
the positions where one of its matches can start, found with ``str.find`` and small regular
expressions -- a digit run's start (and the '+' or '(' before it, the two letters of an IBAN's
country), the hex group before a ':' followed by another group and ':' (IPv6), the start of an
e-mail's local part before an '@' followed by a domain label and '.', a key prefix.  Every possible start is tried, in order, skipping those inside the
previous match, so the result is finditer's.  The compiled twin also reads a request body
without decoding it (``scan_body``).  Without it the gateway decodes the body and scans each
text string with ``scan_text``; this module's ``scan_body`` (the same walk, in Python) is
asked only when something was redacted, to write the body as the compiled build does.
"""

from __future__ import annotations

import json
import re
from typing import Final

from plano_fast.wire._dlp_shared import EMAIL, IBAN, IP, NAMES, PHONE, SECRETS, TEXT_PATTERNS, VALIDATORS

_DIGIT_RUN: Final = re.compile(r"[0-9]+")
_LOCAL_TAIL: Final = re.compile(r"[A-Za-z0-9._%+-]{1,64}\Z")
_DOMAIN_HEAD: Final = re.compile(r"[A-Za-z0-9-]{1,63}\.[A-Za-z0-9-]")  # what follows an e-mail's '@'
_HEX_TAIL: Final = re.compile(r"[0-9A-Fa-f]{0,4}\Z")  # an IPv6 address's first group, before its ':'
_V6_NEXT: Final = re.compile(r"[0-9A-Fa-f]{0,4}:")  # ... and its second
_SECRET_PREFIXES: Final = ("sk-", "AIza", "AKIA", "ASIA", "gh", "xox", "-----BEGIN ", "eyJ")
_DIGIT_DETECTORS: Final = (1 << PHONE) | (1 << 2) | (1 << 3) | (1 << IBAN) | (1 << IP)


def _all(text: str, needle: str) -> list[int]:
    found = []
    i = text.find(needle)
    while i >= 0:
        found.append(i)
        i = text.find(needle, i + 1)
    return found


def _starts(text: str, mask: int) -> dict[int, set[int]]:
    """detector -> the positions its matches can start at (a superset)."""
    starts: dict[int, set[int]] = {d: set() for d in range(len(NAMES)) if mask >> d & 1}
    if mask & _DIGIT_DETECTORS:
        runs = [m.start() for m in _DIGIT_RUN.finditer(text)]
        for d in starts:
            if d == PHONE:
                starts[d].update(p for r in runs for p in (r - 1, r) if p >= 0)
            elif d == IBAN:
                starts[d].update(r - 2 for r in runs if r >= 2)
            elif d not in (EMAIL, SECRETS):
                starts[d].update(runs)
    if IP in starts:
        for c in _all(text, ":"):
            if _V6_NEXT.match(text, c + 1):
                m = _HEX_TAIL.search(text, max(0, c - 4), c)
                starts[IP].add(c if m is None else m.start())
    if EMAIL in starts:
        for at in _all(text, "@"):
            if _DOMAIN_HEAD.match(text, at + 1):
                m = _LOCAL_TAIL.search(text, max(0, at - 64), at)
                if m is not None:
                    starts[EMAIL].add(m.start())
    if SECRETS in starts:
        starts[SECRETS].update(p for prefix in _SECRET_PREFIXES for p in _all(text, prefix))
    return starts


def scan_text(text: str, mask: int) -> list[tuple[int, int, int]]:
    found: list[tuple[int, int, int]] = []
    for detector, positions in sorted(_starts(text, mask).items()):
        pattern, valid = TEXT_PATTERNS[detector], VALIDATORS.get(detector)
        after = 0
        for start in sorted(positions):
            if start < after:
                continue
            m = pattern.match(text, start)
            if m is None:
                continue
            after = m.end()
            if valid is None or valid(m.group()):
                found.append((detector, start, after))
    return found


# -- the request body's message-text slots, found without decoding (the twin of _dlp.pyx's
# walker; guardrails.apply_body asks for it only to rewrite a redacted body as the compiled
# walker does: the redacted string literals replaced, every other byte kept)

MAX_DEPTH: Final = 96
FORMATS: Final = {"openai": 0, "anthropic": 1, "responses": 2, "gemini": 3, "embeddings": 4}
_F_OPENAI, _F_ANTHROPIC, _F_RESPONSES, _F_GEMINI, _F_EMBEDDINGS = range(5)
# what a value is to the walker (the compiled twin's R_* numbers)
(_R_SKIP, _R_TEXT, _R_ROOT, _R_MESSAGES, _R_MESSAGE, _R_CONTENT, _R_PART, _R_SYSTEM, _R_TEXTOBJ, _R_INPUT, _R_ITEM,
 _R_GCONTENTS, _R_GCONTENT, _R_GPARTS, _R_EINPUT) = range(15)  # fmt: skip
_R_TYPE: Final = 256  # a part's "type"
_TEXT_ROLES: Final = frozenset((_R_TEXT, _R_CONTENT, _R_SYSTEM, _R_INPUT, _R_EINPUT))
_OBJECT_ROLES: Final = frozenset((_R_ROOT, _R_MESSAGE, _R_ITEM, _R_PART, _R_TEXTOBJ, _R_GCONTENT))
_ELEMENT_ROLE: Final = {_R_MESSAGES: _R_MESSAGE, _R_CONTENT: _R_PART, _R_SYSTEM: _R_TEXTOBJ, _R_GPARTS: _R_TEXTOBJ,
                        _R_INPUT: _R_ITEM, _R_GCONTENTS: _R_GCONTENT, _R_EINPUT: _R_TEXT}  # fmt: skip
_ROOT_KEYS: Final = {
    _F_OPENAI: {b"messages": _R_MESSAGES},
    _F_ANTHROPIC: {b"messages": _R_MESSAGES, b"system": _R_SYSTEM},
    _F_RESPONSES: {b"instructions": _R_TEXT, b"input": _R_INPUT},
    _F_GEMINI: {b"contents": _R_GCONTENTS, b"systemInstruction": _R_GCONTENT},
    _F_EMBEDDINGS: {b"input": _R_EINPUT},
}
_ROLE_KEYS: Final = {
    _R_MESSAGE: {b"content": _R_CONTENT},
    _R_ITEM: {b"content": _R_CONTENT, b"output": _R_TEXT},
    _R_PART: {b"text": _R_TEXT, b"content": _R_CONTENT, b"type": _R_TYPE},
    _R_TEXTOBJ: {b"text": _R_TEXT},
    _R_GCONTENT: {b"parts": _R_GPARTS},
}
_WS: Final = re.compile(rb"[ \t\n\r]*")
_CONTROLS: Final = bytes(range(32))  # (in a string: not JSON; bytes >= 0x80 pass, as in the compiled walk)
_ESCAPE: Final = re.compile(rb'\\(?:u[0-9A-Fa-f]{4}|["\\/bfnrt])')
_NUMBER: Final = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class _Leave(Exception):
    """The body is left to json.loads (the compiled walker's LEAVE)."""


class _Walk:
    __slots__ = ("b", "n", "i", "fmt", "mask", "every", "out")

    def __init__(self, body: bytes, fmt: int, mask: int, every: bool) -> None:
        self.b = body
        self.n = len(body)
        self.i = 0
        self.fmt = fmt
        self.mask = mask
        self.every = every
        self.out: list[tuple[int, int, bool, list[tuple[int, int, int]]]] = []

    def ws(self) -> None:
        self.i = _WS.match(self.b, self.i).end()  # type: ignore[union-attr]

    def string_end(self) -> tuple[int, bool]:
        """self.i is at an opening quote: the closing one's index (strict JSON) and whether
        the string has no escape.  ``bytes.find`` for the quote and the backslashes (C speed:
        ``re`` searches were ~10 ns a byte), each byte looked at a bounded number of times."""
        b = self.b
        i = self.i + 1
        plain = True
        q = b.find(b'"', i)
        while True:
            if q < 0:
                raise _Leave
            bs = b.find(b"\\", i, q)
            stop = q if bs < 0 else bs
            if stop > i and len(b[i:stop].translate(None, _CONTROLS)) != stop - i:
                raise _Leave  # a control byte
            if bs < 0:
                return q, plain
            plain = False
            escape = _ESCAPE.match(b, bs)
            if escape is None:
                raise _Leave
            i = escape.end()
            if i > q:  # the quote found was the escaped one
                q = b.find(b'"', i)

    def text_string(self) -> None:
        s = self.i + 1
        e, plain = self.string_end()
        self.i = e + 1
        if plain:
            plain = self.b[s:e].isascii()
        if not self.mask:
            found: list[tuple[int, int, int]] = []
        else:
            literal = self.b[s - 1 : e + 1]
            text = literal[1:-1].decode("ascii") if plain else json.loads(literal)
            found = scan_text(text, self.mask)
        if found or self.every:
            self.out.append((s, e, plain, found))

    def skip_scalar(self) -> None:
        b, i = self.b, self.i
        if b.startswith(b"true", i) or b.startswith(b"null", i):
            self.i = i + 4
        elif b.startswith(b"false", i):
            self.i = i + 5
        else:
            number = _NUMBER.match(b, i)
            if number is None:
                raise _Leave
            self.i = number.end()

    def value(self, role: int, depth: int) -> None:
        self.ws()
        if self.i >= self.n:
            raise _Leave
        c = self.b[self.i]
        if c == 34:
            if role in _TEXT_ROLES:
                self.text_string()
            else:
                self.i = self.string_end()[0] + 1
            return
        if c == 123:
            self.obj(role if role in _OBJECT_ROLES else _R_SKIP, depth + 1)
            return
        if c == 91:
            if depth + 1 > MAX_DEPTH:
                raise _Leave
            self.i += 1
            self.ws()
            if self.i < self.n and self.b[self.i] == 93:
                self.i += 1
                return
            role = _ELEMENT_ROLE.get(role, _R_SKIP)
            while True:
                self.value(role, depth + 1)
                self.ws()
                if self.i >= self.n:
                    raise _Leave
                c = self.b[self.i]
                self.i += 1
                if c == 93:
                    return
                if c != 44:
                    raise _Leave
        self.skip_scalar()

    def key_role(self, role: int, key: bytes) -> int:
        keys = _ROOT_KEYS.get(self.fmt, _ROOT_KEYS[_F_OPENAI]) if role == _R_ROOT else _ROLE_KEYS.get(role)
        return keys.get(key, _R_SKIP) if keys is not None else _R_SKIP

    def obj(self, role: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _Leave
        b = self.b
        self.i += 1
        self.ws()
        if self.i < self.n and b[self.i] == 125:
            self.i += 1
            return
        seen: set[int] = set()
        tool_result = False
        content_from = content_to = -1
        while True:
            self.ws()
            if self.i >= self.n or b[self.i] != 34:
                raise _Leave
            ks = self.i + 1
            ke, plain = self.string_end()
            self.i = ke + 1
            kr = _R_SKIP
            if role != _R_SKIP:
                if not plain:
                    raise _Leave  # an escaped key could spell a slot's name
                kr = self.key_role(role, b[ks:ke])
                if kr != _R_SKIP:
                    if kr in seen:
                        raise _Leave  # a repeated member: json.loads keeps the last
                    seen.add(kr)
            self.ws()
            if self.i >= self.n or b[self.i] != 58:
                raise _Leave
            self.i += 1
            if kr == _R_TYPE:  # a part's type: is it a tool result?
                self.ws()
                if self.i < self.n and b[self.i] == 34:
                    vs = self.i + 1
                    ve, plain = self.string_end()
                    if not plain:
                        raise _Leave
                    tool_result = b[vs:ve] == b"tool_result"
                    self.i = ve + 1
                else:
                    self.value(_R_SKIP, depth)
            elif kr == _R_CONTENT and role == _R_PART:
                content_from = len(self.out)
                self.value(kr, depth)
                content_to = len(self.out)
            else:
                self.value(kr, depth)
            self.ws()
            if self.i >= self.n:
                raise _Leave
            c = b[self.i]
            self.i += 1
            if c == 125:
                break
            if c != 44:
                raise _Leave
        if content_from >= 0 and not tool_result:
            del self.out[content_from:content_to]  # a part's content is text only in a tool result


def scan_body(body: bytes, fmt: str, mask: int, every: bool) -> list[tuple[int, int, bool, list[tuple[int, int, int]]]] | None:
    """The message text of the request ``body`` in client format ``fmt``, as the compiled
    ``scan_body`` finds it: [(start, end, plain, findings), ...], or None to leave the body
    to json.loads.  The body must be valid UTF-8."""
    walk = _Walk(body, FORMATS.get(fmt, _F_OPENAI), mask, every)
    try:
        walk.ws()
        if walk.i < walk.n and body[walk.i] == 123:
            walk.obj(_R_ROOT, 1)
        else:
            walk.value(_R_SKIP, 0)
    except (_Leave, RecursionError):
        return None
    walk.ws()
    return walk.out if walk.i == walk.n else None
