"""What a provider's answer may not pass on when the upstream key is the operator's.

In config mode with an ``access_key`` (not ``passthrough_auth``) and in managed mode the
request goes upstream with the gateway's own key.  Then (docs/security.md, "The operator's
provider account"):

* the client's account-selecting headers are cut from what goes up (``ClientHeaders.operator_block``,
  cut in the parsers' pass over the head) and the provider's account headers from what comes
  back (``wire.without_account_headers``);
* a 401/403 answer is replaced by the gateway's 502 (``ProviderCredentialRejected``), logged
  for the operator without the key;
* any other error body has the key's bytes masked, byte for byte (same length: the
  Content-Length the head announced still holds), also where the key is split across
  reads of the body (``Redaction``).

``auth`` below is what the exchange keeps of its upstream credential (``Exchange.operator_auth``):
the joined header lines (``ModelProvider.auth_lines``) or the header pairs; once an error
body is being relayed, the ``Redaction`` that masks it (``redact``).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Final, TypeAlias

from plano_fast.wire import SECRET_HEADERS

if TYPE_CHECKING:
    from plano_fast.upstream import Header

log = logging.getLogger("plano_fast.gateway")

#: shorter values are not masked (a few bytes would match unrelated text)
_MIN_SECRET: Final = 8
#: a read that ends with this many or more of a key's first bytes has them masked at once
#: (they may be the key's start; masking text that merely looks like it is harmless).  A
#: shorter tail is left as it is -- at most the key's first 3 bytes, its public format
#: marker (``sk-``), reach the client -- rather than star ordinary text at every read's end;
#: the rest of such a key is masked in the next read all the same.
_MIN_EAGER: Final = 4


@functools.lru_cache(maxsize=256)
def secrets_of(auth: bytes | tuple[Header, ...]) -> tuple[bytes, ...]:
    """The key bytes in the gateway's credential headers (any of ``wire.SECRET_HEADERS``),
    parsed once per credential (the config's lines and pairs are long-lived objects)."""
    pairs = auth if isinstance(auth, tuple) else [
        (name.strip(), value) for name, _, value in (line.partition(b":") for line in auth.split(b"\r\n"))
    ]
    out: list[bytes] = []
    for name, value in pairs:
        if name.lower() in SECRET_HEADERS:
            value = value.strip()
            if value[:7].lower() == b"bearer ":
                value = value[7:].strip()
            if len(value) >= _MIN_SECRET:
                out.append(value)
    return tuple(out)


class Redaction:
    """The masking of one error body, read by read: the gateway's keys, and which of them
    the last read ended partway into (a key split across two reads is masked too)."""

    __slots__ = ("secrets", "open")

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        self.secrets = secrets
        #: (key, how many of its first bytes the last read ended with)
        self.open: list[tuple[bytes, int]] = []

    def feed(self, data: bytes) -> bytes:
        """``data`` with every byte of a gateway key in it replaced by ``*``."""
        if not data or not self.secrets:
            return data
        out: bytearray | None = None
        n = len(data)
        still_open: list[tuple[bytes, int]] = []
        for secret, done in self.open:  # a key begun at the last read's end, continued?
            rest = secret[done:]
            k = min(len(rest), n)
            if data[:k] == rest[:k]:
                out = _mask(out, data, 0, k)
                if k < len(rest):
                    still_open.append((secret, done + k))  # (and the read is all key)
        for secret in self.secrets:
            size = len(secret)
            i = data.find(secret)
            while i >= 0:  # whole keys
                out = _mask(out, data, i, i + size)
                i = data.find(secret, i + 1)
            eager = 0
            for k in range(min(size - 1, n), 0, -1):  # a key begun at this read's end
                if data.endswith(secret[:k]):
                    still_open.append((secret, k))
                    eager = max(eager, k if k >= _MIN_EAGER else 0)
            if eager:
                out = _mask(out, data, n - eager, n)
        self.open = still_open
        return data if out is None else bytes(out)


def _mask(out: bytearray | None, data: bytes, start: int, end: int) -> bytearray:
    if out is None:
        out = bytearray(data)
    out[start:end] = b"*" * (end - start)
    return out


#: what an exchange holds of its operator credential (see the module docstring)
OperatorAuth: TypeAlias = "bytes | tuple[Header, ...] | Redaction"


def redact(data: bytes, auth: OperatorAuth) -> tuple[bytes, Redaction]:
    """``data`` (a read of an error body) with each of the gateway's keys in it replaced by
    as many ``*``, and the ``Redaction`` the exchange keeps for the body's next read in
    place of ``auth``."""
    redaction = auth if isinstance(auth, Redaction) else Redaction(secrets_of(auth))
    return redaction.feed(data), redaction


def log_rejected(provider_id: str, status: int, request_id: str) -> None:
    log.warning(
        "provider %s answered %d to the gateway's credential (request %s): check its access_key; "
        "the client got a 502", provider_id, status, request_id,
    )


def log_coded(provider_id: str, status: int, request_id: str) -> None:
    log.warning(
        "provider %s answered %d in a content coding the gateway did not ask for and cannot mask its key in "
        "(request %s): the client got a 502", provider_id, status, request_id,
    )
