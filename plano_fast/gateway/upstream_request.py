"""The bytes of one upstream HTTP/1.1 request: wire level, no policy.

A mode decides *what* goes upstream (path, credentials, body); this module writes it: the
request line, the client's forwardable headers as read once (plano_fast.credentials), the
credentials, the provider's configured headers, our request id, host and length.  The
result is the ``[head, body]`` pair the upstream connection writes with one ``writelines``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing import Final

from plano_fast.credentials import refuse_subscription_key
from plano_fast.errors import Unauthorized
from plano_fast.wire import content_length_line, header_line

#: The longest client x-request-id kept (a UUID is 36, a W3C trace id 32; Envoy's own
#: request ids are UUIDs): anything longer is replaced by the gateway's id.
MAX_CLIENT_REQUEST_ID_BYTES: Final = 128
#: The bytes a kept client x-request-id may hold (visible ASCII).  Compiled with
#: ``finish_head``'s rule: ``_forward.request_id_line_c`` (tests/test_header_tables.py
#: checks the two on every kind of id).
VISIBLE_ASCII: Final = bytes(range(0x21, 0x7F))

if TYPE_CHECKING:
    from plano_fast.config import ModelProvider
    from plano_fast.credentials import ClientHeaders
    from plano_fast.upstream import Header, Origin


def upstream_request(
    client: ClientHeaders,
    request_id: str,
    request_line: list[bytes],
    provider: ModelProvider,
    auth: tuple[Header, ...] | None,
    body: bytes,
    *,
    anthropic_version: bool = False,
) -> list[bytes]:
    """The bytes to send upstream: request line, the client's forwardable headers, the
    credentials (``auth``: the gateway's own; None = the client's one verified credential,
    passed through), the provider's configured headers, host and length.  A client's own
    anthropic-version wins.  ``request_line``: its pieces before the version (method, SP,
    target), a fresh list the head is built in (pieces joined once: no intermediate bytes)."""
    head = request_line
    head.append(b" HTTP/1.1\r\n")
    seen_version = client.seen_version
    if auth is None:
        head.append(client.block)
        _passed_through(head, client)
    else:
        head.append(client.operator_block)  # (cut by the parser's pass: wire.forward_request_headers)
    for name, value in auth or ():
        if name == b"anthropic-version":
            if seen_version:
                continue
            seen_version = True
        head.append(name + b": " + value + b"\r\n")
    if anthropic_version and not seen_version:
        head.append(b"anthropic-version: 2023-06-01\r\n")
    for name, value in provider.extra_headers:
        head.append(name + b": " + value + b"\r\n")
    return finish_head(head, provider.host_line, body, client.request_id, request_id)


def provider_request(
    client: ClientHeaders,
    request_id: str,
    request_line: list[bytes],
    provider: ModelProvider,
    auth_lines: tuple[bytes, bytes] | None,
    body: bytes,
) -> list[bytes]:
    """``upstream_request`` for a provider's own headers, with the lines the config
    joined once (``auth_lines``: ``ModelProvider.auth_lines`` or ``chat_auth_lines``, None
    = the client's credential passed through): the same bytes, no line built per request."""
    head = request_line
    head.append(b" HTTP/1.1\r\n")
    if auth_lines is None:
        head.append(client.block)
        _passed_through(head, client)
        head.append(provider.extra_lines)
    else:
        head.append(client.operator_block)  # (cut by the parser's pass: wire.forward_request_headers)
        head.append(auth_lines[1] if client.seen_version else auth_lines[0])
    return finish_head(head, provider.host_line, body, client.request_id, request_id)


def _passed_through(head: list[bytes], client: ClientHeaders) -> None:
    """The client's one verified credential, written back (when it sent one); no second
    one beside it (an Azure subscription key: 401)."""
    if client.operator_block is not client.block:  # (a provider-account header was sent)
        refuse_subscription_key(client)
    credential = client.credential
    if credential is not None:
        if credential.secret.startswith(b"xproxy_"):
            # A gateway token is never a provider's key: it must not leave the gateway.
            raise Unauthorized("an xproxy_ token is only accepted on the managed endpoints")
        head.append(credential.line)


def finish_head(
    head: list[bytes], host_line: bytes, body: bytes, client_request_id: bytes | None, request_id: str
) -> list[bytes]:
    """Close the upstream head: one x-request-id, the Host line (``host_line``: built once
    per target), length (the two computed lines formatted in C, plano_fast.wire: ~1.7k
    instructions fewer than concatenation and %d).

    The x-request-id is the client's (``client_request_id``: ``ClientHeaders.request_id``)
    when it sent exactly one of 1 to 128 visible ASCII bytes -- a front proxy's or the
    application's id, kept for its own correlation, as Envoy keeps a valid one from a
    trusted hop -- else the gateway's own ``request_id`` (the one on the usage row, the
    access-log line and ``x-plano-request-id``): two sent, non-ASCII, spaces, an empty or an
    over-long value are never forwarded."""
    if (
        client_request_id
        and len(client_request_id) <= MAX_CLIENT_REQUEST_ID_BYTES
        and not client_request_id.translate(None, VISIBLE_ASCII)
    ):
        head.append(b"x-request-id: " + client_request_id + b"\r\n")
    else:
        head.append(header_line(b"x-request-id: ", request_id))
    head.append(host_line)
    head.append(content_length_line(len(body), True))
    return [b"".join(head), body]


def origin_of(provider: ModelProvider, egress: str | None = None) -> Origin:
    """The pool's key for ``provider``: scheme, host, port, egress address."""
    if egress is None:
        return provider.origin  # (built once per provider)
    return ("https" if provider.tls else "http", provider.host, provider.port, egress)
