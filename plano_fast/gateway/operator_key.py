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
  Content-Length the head announced still holds).

``auth`` below is what the exchange keeps of its upstream credential (``Exchange.operator_auth``):
the joined header lines (``ModelProvider.auth_lines``) or the header pairs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plano_fast.upstream import Header

log = logging.getLogger("plano_fast.gateway")

#: header names whose value carries a key ("authorization" as "Bearer <key>")
_KEY_HEADERS = frozenset({b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key"})
#: shorter values are not masked (a few bytes would match unrelated text)
_MIN_SECRET = 8


def secrets_of(auth: bytes | tuple[Header, ...]) -> list[bytes]:
    """The key bytes in the gateway's credential headers."""
    pairs = auth if isinstance(auth, tuple) else [
        (name.strip().lower(), value) for name, _, value in (line.partition(b":") for line in auth.split(b"\r\n"))
    ]
    out: list[bytes] = []
    for name, value in pairs:
        if name.lower() in _KEY_HEADERS:
            value = value.strip()
            if value[:7].lower() == b"bearer ":
                value = value[7:].strip()
            if len(value) >= _MIN_SECRET:
                out.append(value)
    return out


def redact(data: bytes, auth: bytes | tuple[Header, ...]) -> bytes:
    """``data`` with each of the gateway's keys in it replaced by as many ``*``."""
    for secret in secrets_of(auth):
        if data.find(secret) >= 0:
            data = data.replace(secret, b"*" * len(secret))
    return data


def log_rejected(provider_id: str, status: int, request_id: str) -> None:
    log.warning(
        "provider %s answered %d to the gateway's credential (request %s): check its access_key; "
        "the client got a 502", provider_id, status, request_id,
    )
