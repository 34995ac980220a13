"""One credential per request: the single decision the data plane and ``/auth/check`` share.

A request may name its caller in five places -- ``Authorization: Bearer``, ``x-api-key``,
``x-goog-api-key``, ``api-key`` (Azure) and Gemini's ``?key=`` query parameter.  If the
gateway verified one of them and forwarded the others, a client could authenticate with a
registered key and have the provider serve (and the project pay for) another one.  So:

* every credential header (underscore spellings included) is counted in the one pass that copies the forwardable headers
  (``plano_fast.wire.forward_request_headers``), whatever ``Connection`` lists, and never
  forwarded as sent;
* zero credentials -> None (the caller decides whether that is allowed); more than one --
  two headers, a header twice, a header plus ``key=`` -- is a 401, never forwarded;
* the one credential must be well formed: ``Authorization`` only as ``Bearer <token>``; a
  token is visible ASCII (so a key that is not valid UTF-8 is a 401 everywhere, never a
  500); a header's optional whitespace around the value is HTTP's, not the key's, while a
  ``key=`` value is percent-decoded and checked as decoded (``KEY%20``, ``+KEY``, ``%zz``:
  401);
* the verified credential is written back, exactly once, in the header the client used
  (a ``key=`` parameter becomes ``x-goog-api-key``, which Gemini documents as equivalent),
  and every ``key`` parameter is removed from the forwarded query.

Query parameter names are split on ``;`` as well as ``&`` and percent-decoded (again while
that changes them: ``%256Bey``), case-folded and stripped of everything but letters and
digits before they are compared: ``key[]``, ``key%00``, ``$key`` (Google's system-parameter
prefix), ``api_key`` (Cloud Endpoints' default), ``access_token`` / ``oauth_token`` /
``bearer_token`` (Google's OAuth spellings), ``api-key`` / ``subscription-key`` /
``ocp-apim-subscription-key`` (Azure), ``x-api-key``, ``api_token``, ``token``,
``access_key`` all count as credentials (exactly: ``pageToken`` does not) -- stricter than
any provider parses them, so no spelling of one can reach a provider unchecked.  Only a name
that decodes (once) to ``key`` in any case is taken as the key; any other credential-like
name is a 401 (a credential the gateway cannot verify is never forwarded, nor quietly
dropped in favour of another), and so is a credential in a ``;``-joined part
(``alt=sse;key=K``: see ``split_query_key``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import unquote_to_bytes

from plano_fast.errors import ClientError, Unauthorized
from plano_fast.wire import PURE_ENV, SUBSCRIPTION_KEYS, forward_request_headers

_PRINTABLE: Final = bytes(range(0x21, 0x7F))
_QUERY_SPLIT: Final = re.compile(rb"[&;]")
_BAD_ESCAPE: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
#: Where the gateway writes a ``key=`` credential back (Gemini's documented header).
QUERY_KEY_HEADER: Final = b"x-goog-api-key"


class Credential:
    """The request's one credential: ``secret`` is what is hashed and looked up, ``line``
    the header line that carries it upstream (CRLF-ended)."""

    __slots__ = ("secret", "line")

    def __init__(self, secret: bytes, line: bytes) -> None:
        self.secret = secret
        self.line = line


class ClientHeaders:
    """What one pass over the request's headers found (see ``read_client_headers``)."""

    __slots__ = ("block", "operator_block", "seen_version", "request_id", "credential", "query")

    def __init__(
        self,
        block: bytes,
        operator_block: bytes,
        seen_version: bool,
        request_id: bytes | None,
        credential: Credential | None,
        query: bytes,
    ) -> None:
        #: the forwardable headers, CRLF-ended lines, no credential among them
        self.block = block
        #: ``block`` without the provider-account headers (``wire.ACCOUNT_HEADERS``), for
        #: a request sent with the operator's key; ``block`` itself when it has none
        self.operator_block = operator_block
        self.seen_version = seen_version
        #: the client's x-request-id: None (none), b"" (more than one), else its value,
        #: unchecked (``upstream_request.finish_head`` keeps it only when valid)
        self.request_id = request_id
        self.credential = credential
        #: the query without any ``key`` parameter (b"" when none is left)
        self.query = query


#: ``ClientHeaders(...)`` and ``Credential(...)``, positional: the request path's
#: constructors.  Compiled where built (``plano_fast/_new_credentials.pyx``: the slots
#: written in one C call, no ``__init__`` frame: ~1.5k instructions fewer each), else the
#: classes themselves (imported at the end of this module: it needs the classes).
new_client_headers: Callable[[bytes, bytes, bool, bytes | None, Credential | None, bytes], ClientHeaders] = ClientHeaders
new_credential: Callable[[bytes, bytes], Credential] = Credential


#: Azure's subscription-key header (``wire.SUBSCRIPTION_KEYS``) as the request parsers
#: write it in ``ClientHeaders.block`` (names lowercased; the underscore spelling is read as
#: it by CGI/WSGI-style servers)
_SUBSCRIPTION_KEY_NAMES: Final = tuple(sorted(name + b":" for name in SUBSCRIPTION_KEYS))


def refuse_subscription_key(client: ClientHeaders) -> None:
    """Where the client's own key goes upstream (firewall mode, ``passthrough_auth``): a
    forwardable ``Ocp-Apim-Subscription-Key`` header is a credential nobody verified --
    Azure AI services authenticate a resource key in it as they do ``api-key``, and an API
    Management front reads its subscription from it -- so it is a 401, as its query form
    is, alone or beside the verified key (where the key is the operator's it is dropped:
    ``wire.ACCOUNT_HEADERS``).  Looked for only when the parsers' pass saw a provider-account
    header (``operator_block`` is then not ``block``): callers on the request path test
    that first, one comparison."""
    block = client.block
    if client.operator_block is block:
        return
    for name in _SUBSCRIPTION_KEY_NAMES:
        if block.startswith(name) or block.find(b"\n" + name) >= 0:
            raise Unauthorized(
                "Ocp-Apim-Subscription-Key is a second credential the gateway does not verify: "
                "send the key in api-key (or Authorization) only"
            )


def read_client_headers(
    headers: Sequence[tuple[bytes, bytes]],
    query: bytes,
    forward: tuple[bytes, bool, bytes | None, int, bytes | None, bytes | None, bytes] | None = None,
) -> ClientHeaders:
    """Forwardable headers and the request's one credential; raises ``Unauthorized`` when
    there is more than one or it is malformed.  ``headers``: names lowercased; ``forward``:
    ``forward_request_headers(headers)`` when already known (the request fast path builds
    it in the pass that parsed the request: ``Request.forward``)."""
    block, seen_version, request_id, count, name, value, operator_block = (
        forward if forward is not None
        else forward_request_headers(headers if type(headers) is list else list(headers))
    )
    if query:
        query_count, query_value, query = split_query_key(query)
        if query_count:
            if count or query_count > 1:
                raise _ambiguous(count + query_count)
            if query_value is None:
                raise Unauthorized(
                    "a query parameter is named like a credential (access_token, $key, key[], "
                    "api_key, ...); send the key as ?key= or in a header"
                )
            return new_client_headers(
                block, operator_block, seen_version, request_id, _query_credential(query_value), query
            )
    credential = None
    if count:
        if count > 1:
            raise _ambiguous(count)
        assert name is not None and value is not None
        # (the usual Bearer value without the call into _header_credential: a frame fewer)
        if name != b"authorization" or (credential := plain_bearer(value)) is None:
            credential = _header_credential(name, value)
    return new_client_headers(block, operator_block, seen_version, request_id, credential, query)


#: Query parameter names that carry a credential somewhere, as compared: decoded, lowercase,
#: letters and digits only.  ``key``: Gemini (and ``$key``, Google's system-parameter form);
#: ``apikey``: Cloud Endpoints' ``api_key``, Azure's ``api-key``; ``accesstoken``,
#: ``oauthtoken``, ``bearertoken``: Google's OAuth token parameters; ``subscriptionkey``:
#: Azure API Management (``ocpapimsubscriptionkey``: its header's name, which APIM also reads
#: from the query); ``xgoogapikey``, ``xapikey``, ``authorization``: the headers' names;
#: ``apitoken``, ``token``, ``accesskey``: other services' usual spellings.  Exact matches
#: after normalising: ``pageToken`` (``pagetoken``) or ``key_id`` are ordinary parameters.
QUERY_CREDENTIALS: Final = frozenset({
    b"key", b"apikey", b"accesstoken", b"oauthtoken", b"bearertoken", b"subscriptionkey",
    b"ocpapimsubscriptionkey", b"xgoogapikey", b"xapikey", b"authorization", b"apitoken",
    b"token", b"accesskey",
})
_NAME_NOISE: Final = re.compile(rb"[^a-z0-9]+")
#: Decoding rounds for a name that is percent-encoded again (``%256Bey``): three covers any
#: chain of proxies that each decode once; a name still changing after them is refused.
_NAME_DECODES: Final = 3


def split_query_key(query: bytes) -> tuple[int, bytes | None, bytes]:
    """``(how many credential-like parameters, the first one's raw value, the query without
    them)``; the value is None when the first one is not named ``key`` (an OAuth token or
    an odd spelling is counted, never taken as an API key).

    Raises Unauthorized when a ``;``-joined ``&``-part carries a credential
    (``alt=sse;key=K``, ``key=K;alt=sse``): a server that splits on ``&`` only (Google's)
    reads the part as one parameter (``alt`` is ``sse;key=K``), one that splits on ``;``
    too reads a key; the gateway cannot forward the part nor drop it whole (``alt=sse``
    would be lost), nor say which reading the provider takes."""
    if query == _STREAM_QUERY:
        return 0, None, query  # (what the walk finds: no credential, alt readable, kept)
    count = 0
    first: bytes | None = None
    alt: bytes | None = None  # the first readable alt's value, decoded
    kept: list[bytes] = []
    for part in query.split(b"&"):
        found = False
        pieces = part.split(b";")  # (``_QUERY_SPLIT``'s split: ``part`` holds no "&")
        for piece in pieces:
            name, _, value = piece.partition(b"=")
            decoded, normal = _decoded_and_normal(name)
            if normal in ANSWER_SHAPING and (normal != b"alt" or _alt_unreadable(value)):
                raise ClientError(
                    f"the query parameter {decoded.decode('latin-1')!r} would change the form "
                    "of the provider's answer (Google's fields, alt other than sse or json, "
                    "callback, $ct, $httpMethod) so that its usage could not be read; send "
                    "the request without it"
                )
            if normal == b"alt":
                # alt=json&alt=sse: which one Google takes is not documented; a stream path
                # answered as JSON (or a unary one as SSE) is read by the wrong usage scanner
                value_decoded = (value if value in _READABLE_ALT  # (the usual alt=sse: no decoding)
                                 else unquote_to_bytes(value.replace(b"+", b" ")))
                if alt is not None and value_decoded != alt:
                    raise ClientError(
                        "the query parameter 'alt' is given more than once with different values: "
                        "whichever the provider takes would change the form of the provider's answer "
                        "so that its usage could not be read; send it once"
                    )
                alt = value_decoded
            if normal is None or normal in QUERY_CREDENTIALS:
                if len(pieces) > 1:
                    raise Unauthorized(
                        "a credential shares a ';'-joined query parameter with another "
                        "(alt=sse;key=...); separate query parameters with '&'"
                    )
                if not count:
                    first = value if decoded.strip().lower() == b"key" else None
                count += 1
                found = True
        if not found and part:
            kept.append(part)
    return count, first, b"&".join(kept) if count else query


#: Google's system parameters that change the form of an answer (every Google API reads
#: them, as ``name`` or ``$name``: https://cloud.google.com/apis/docs/system-parameters), as
#: compared (see ``_normal_name``): ``fields`` (a field mask: ``fields=candidates`` answers
#: without ``usageMetadata``), ``alt`` other than ``sse`` or ``json`` (``proto``: binary
#: protobuf), ``callback`` (JSONP), ``ct`` (``$ct``, the request's Content-Type) and
#: ``httpmethod`` (``$httpMethod``, X-HTTP-Method-Override's twin).  A provider answering
#: so would be served unbilled, so such a request is a 400 (``X-Goog-FieldMask``, the field
#: mask's header, is dropped: plano_fast.wire).
ANSWER_SHAPING: Final = frozenset({b"fields", b"alt", b"callback", b"ct", b"httpmethod"})
_READABLE_ALT: Final = (b"sse", b"json")
#: a Gemini stream's whole query as Google's SDKs send it (``:streamGenerateContent?alt=sse``):
#: ``split_query_key``'s walk costs ~13k instructions under callgrind, one comparison answers it
_STREAM_QUERY: Final = b"alt=sse"


def refuse_unary_sse(query: bytes) -> None:
    """ClientError when the query of a unary Gemini call (``:generateContent``) asks for
    ``alt=sse``: Google then answers server-sent events, which the unary usage scanner
    cannot read (the row would be ``usage_missing``, unpriced); a stream is
    ``:streamGenerateContent?alt=sse``.  (Names compared as ``split_query_key`` does.)"""
    if query.find(b"%") < 0 and query.find(b"sse") < 0:
        # Without a percent-escape a value decodes to ``sse`` only when it is ``sse`` as
        # sent (``+`` decodes to a space): a query without those bytes -- the usual
        # ``key=...`` of a unary call -- needs no walk (two C calls instead of a decode
        # per parameter; the walk is ``split_query_key``'s, whose refusals must keep
        # coming after this one's in config mode, so the two are not merged).
        return
    if query.find(b"=") < 0:
        return
    for part in query.split(b"&"):
        for piece in part.split(b";"):  # (``_QUERY_SPLIT``'s split: ``part`` holds no "&")
            name, _, value = piece.partition(b"=")
            if _decoded_and_normal(name)[1] == b"alt" and (
                unquote_to_bytes(value.replace(b"+", b" ")) == b"sse"
            ):
                raise ClientError(
                    "alt=sse asks for a streamed answer, which :generateContent does not "
                    "meter; use :streamGenerateContent?alt=sse"
                )


def _alt_unreadable(value: bytes) -> bool:
    if value in _READABLE_ALT:  # (the usual alt=sse: no decoding)
        return False
    return unquote_to_bytes(value.replace(b"+", b" ")) not in _READABLE_ALT


def _decoded_and_normal(name: bytes) -> tuple[bytes, bytes | None]:
    """A query parameter's name decoded once (``unquote_to_bytes(name.replace(b"+", b" "))``)
    and as compared (``_normal_name`` of that).  A name without ``%`` or ``+`` (the usual
    ``alt``, ``key``) is its own decoding, with no escape to undo: two C calls instead of a
    call into urllib (~1.5k instructions a parameter) and ``_normal_name``'s loop."""
    if name.find(b"%") < 0 and name.find(b"+") < 0:
        normal = name.lower()
        return name, normal if normal.isalnum() else _NAME_NOISE.sub(b"", normal)
    decoded = unquote_to_bytes(name.replace(b"+", b" "))
    return decoded, _normal_name(decoded)


def _normal_name(decoded: bytes) -> bytes | None:
    """A query parameter's (once-decoded) name as compared: decoded again while that changes
    it, lowercase, letters and digits only; None when it is still encoded after every round
    (nobody can say what it names)."""
    for _ in range(_NAME_DECODES):
        if decoded.find(b"%") < 0:  # (not ``in``: bytes' ``in`` tries the operand as an
            break                   # int first and clears a TypeError, ~2k instructions)
        again = unquote_to_bytes(decoded)
        if again == decoded:
            break
        decoded = again
    else:
        if decoded.find(b"%") >= 0 and unquote_to_bytes(decoded) != decoded:
            return None
    decoded = decoded.lower()
    if not decoded.isalnum():  # (the usual name, ``alt``, needs no regex: ~0.4 us less)
        decoded = _NAME_NOISE.sub(b"", decoded)
    return decoded


def _ambiguous(count: int) -> Unauthorized:
    return Unauthorized(
        f"the request carries {count} credentials (Authorization, x-api-key, x-goog-api-key, "
        "api-key or ?key=); send exactly one"
    )


def _header_credential(name: bytes, value: bytes) -> Credential:
    if name == b"authorization":
        credential = plain_bearer(value)
        return credential if credential is not None else _bearer_credential(value)
    token = value.strip(b" \t")
    if not token:
        raise Unauthorized(f"the {name.decode()} header is empty")
    _check_token(token)
    name = name.replace(b"_", b"-")  # x_api_key is written back as the header it stands for
    return new_credential(token, name + b": " + token + b"\r\n")


def _plain_bearer(value: bytes) -> Credential | None:
    """The usual ``Authorization`` value, ``Bearer <token>`` (one space, a printable token):
    its credential, what ``_bearer_credential`` makes of it, in two C calls instead of eight
    (a firewall request's credential, every request); else None (read by the general rules).
    The twin of the compiled ``plain_bearer`` (``_new_credentials.pyx``)."""
    if value[:7] == b"Bearer ":
        token = value[7:]
        if token and not token.translate(None, _PRINTABLE):
            return new_credential(token, b"authorization: " + value + b"\r\n")
    return None


#: ``_plain_bearer``; compiled where built (``_new_credentials.pyx``: ``bytes.translate``
#: builds its 256-byte table on every call, ~1.7k of the ~2.3k instructions it cost)
plain_bearer: Callable[[bytes], Credential | None] = _plain_bearer


def _bearer_credential(value: bytes) -> Credential:
    """An Authorization value by the general rules: ``Bearer`` in any case, one or more
    spaces, the token.  The whitespace around the whole value is the field's optional
    whitespace (spaces and tabs, RFC 9110 5.5); between scheme and token RFC 9110 11.4
    allows spaces only (``1*SP``), so ``Bearer<TAB>KEY`` and ``Bearer <TAB>KEY`` are 401s."""
    scheme, _, rest = value.strip(b" \t").partition(b" ")
    token = rest.lstrip(b" ")
    if scheme.lower() != b"bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    _check_token(token)
    return new_credential(token, b"authorization: Bearer " + token + b"\r\n")


def _query_credential(raw: bytes) -> Credential:
    # Decoded, then held to the header rule as it is: nothing stripped.  A header's
    # surrounding spaces are HTTP's optional whitespace, not part of its value; a decoded
    # ``%20`` or ``+`` is part of the key (``KEY%20`` is another key to the provider), and
    # a malformed escape (``%zz``, a trailing ``%``) has no one decoding to verify.
    if _BAD_ESCAPE.search(raw):
        raise Unauthorized("the key query parameter has a malformed percent-escape")
    token = unquote_to_bytes(raw.replace(b"+", b" "))
    if not token:
        raise Unauthorized("the key query parameter is empty (or is not an API key)")
    _check_token(token)
    return new_credential(token, QUERY_KEY_HEADER + b": " + token + b"\r\n")


def _check_token(token: bytes) -> None:
    # bytes.translate deleting the printable range leaves what is not printable: one C
    # pass, a quarter of a regex fullmatch's cost
    if not token or token.translate(None, _PRINTABLE):
        raise Unauthorized("the API key is malformed: it must be printable ASCII without spaces")


if os.environ.get(PURE_ENV) != "1":  # the switch every compiled module obeys
    try:
        from plano_fast._new_credentials import (  # noqa: E402 - needs the classes
            new_client_headers,
            new_credential,
            plain_bearer,
        )
    except ImportError:
        pass
