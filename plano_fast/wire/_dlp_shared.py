"""What both DLP scanners share (the compiled ``_dlp.pyx`` and its pure twin ``_dlp_py.py``):
the built-in detectors' patterns, their ids, and the validators.

The patterns are ASCII-only (``re.ASCII``): ``\\d`` is ``[0-9]``, ``\\w`` is ``[A-Za-z0-9_]``,
and a non-ASCII character is a separator (never a digit, a letter or part of a key).  This is
what lets the compiled scanner read message text as bytes (each non-ASCII code point standing
as one 0x80 byte) and report spans that are exactly the character offsets of the decoded
string.  No pattern has ``.`` or a negated class, so a non-ASCII character can only ever end or
separate a match.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Final

#: built-in detector names, in id order (bit ``1 << id`` of a detector mask)
NAMES: Final = ("email", "phone", "ssn", "credit_card", "iban", "ip_address", "secrets")
EMAIL, PHONE, SSN, CARD, IBAN, IP, SECRETS = range(7)
ALL_MASK: Final = (1 << len(NAMES)) - 1

SOURCES: Final = (
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b",
    r"(?<![\w+])(?:\+[1-9]\d{0,2}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}\b"
    r"|(?<![\w+])\+[1-9]\d{7,14}\b",
    r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b",
    r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])",
    r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
    r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{1,4}(?![\w:])",
    r"\bsk-(?:ant-(?:api\d\d-)?|proj-)?[A-Za-z0-9_-]{20,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
)
#: over decoded text (the pure scanner, and guardrails.DETECTORS)
TEXT_PATTERNS: Final = tuple(re.compile(s, re.ASCII) for s in SOURCES)
#: over the compiled scanner's byte view of the text (bytes patterns are ASCII already)
BYTE_PATTERNS: Final = tuple(re.compile(s.encode()) for s in SOURCES)


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_ok(match: str) -> bool:
    """13-19 digits (spaces and dashes between them dropped), not all one digit, Luhn."""
    digits = match.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn(digits)


def iban_ok(match: str) -> bool:
    """The ISO 7064 mod-97 checksum over 15-34 characters (spaces dropped)."""
    text = match.replace(" ", "").upper()
    if not 15 <= len(text) <= 34:
        return False
    moved = text[4:] + text[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def ip_ok(match: str) -> bool:
    """A real IPv4/IPv6 address; an IPv6 one either full (8 groups) or with '::'."""
    try:
        address = ipaddress.ip_address(match)
    except ValueError:
        return False
    return not (address.version == 6 and "::" not in match and match.count(":") < 7)


#: detector id -> what a match must also pass
VALIDATORS: Final[dict[int, Callable[[str], bool]]] = {CARD: card_ok, IBAN: iban_ok, IP: ip_ok}
