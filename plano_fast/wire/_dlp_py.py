"""The DLP floor's detectors over decoded message text, pure Python (the twin of ``_dlp.pyx``).

``scan_text(text, mask)`` -> ``[(detector_id, start, end), ...]``: the validated matches of the
built-in detectors whose bit is set in ``mask`` (ids and patterns in ``_dlp_shared``), grouped
by detector id, each group in text order -- exactly what ``pattern.finditer(text)`` finds over
the whole string, the validators applied.  Overlaps between detectors are the caller's
(``plano_fast.guardrails``).

The speed here is the prefilter: a detector's pattern runs only when the text holds what its
every match must contain (a digit, or a ':' for an IPv6 address; '@'; a key prefix), so prose
costs a few ``str.find``-speed probes per detector.  The compiled twin goes further (one byte
pass, the patterns tried only where a match can start) and also reads a request body without
decoding it (``scan_body``); this module has no ``scan_body``: without the compiled scanner the
gateway decodes the body and scans each text string with ``scan_text``.
"""

from __future__ import annotations

import re
from typing import Final

from plano_fast.wire._dlp_shared import EMAIL, IP, NAMES, SECRETS, TEXT_PATTERNS, VALIDATORS

_DIGIT: Final = re.compile(r"[0-9]")
_SECRET_PREFIXES: Final = ("sk-", "AIza", "AKIA", "ASIA", "gh", "xox", "-----BEGIN", "eyJ")


def _may_match(detector: int, text: str, has_digit: bool) -> bool:
    if detector == EMAIL:
        return "@" in text
    if detector == SECRETS:
        return any(prefix in text for prefix in _SECRET_PREFIXES)
    if detector == IP:
        return has_digit or ":" in text
    return has_digit


def scan_text(text: str, mask: int) -> list[tuple[int, int, int]]:
    found: list[tuple[int, int, int]] = []
    has_digit = _DIGIT.search(text) is not None
    for detector in range(len(NAMES)):
        if not mask >> detector & 1 or not _may_match(detector, text, has_digit):
            continue
        valid = VALIDATORS.get(detector)
        for m in TEXT_PATTERNS[detector].finditer(text):
            if valid is None or valid(m.group()):
                found.append((detector, m.start(), m.end()))
    return found
