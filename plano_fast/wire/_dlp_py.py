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
without decoding it (``scan_body``); this module has none: without the compiled scanner the
gateway decodes the body and scans each text string with ``scan_text``.
"""

from __future__ import annotations

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
