"""Header relay in both directions (pure-Python twin of ``plano_fast/wire/_head.pyx``; same
results, checked against each other in the tests).

``forward_request_headers`` picks the client's headers that may go upstream, and
``response_head`` the upstream's header lines the client gets.

A proxy pays per response header it relays.  A real provider answer carries ~20 of them
(rate limits, organisation, Cloudflare cookies and ids), and handling each one in Python
(an httptools ``on_header`` callback, a lowercased name, a tuple, a filter, a join) measured
~3.7k instructions per header under callgrind: 40% of a firewall request.  Instead the
head is taken as the bytes it arrived as and the lines the client must not get are cut out
in one pass:

* the status line (the gateway writes its own);
* hop-by-hop headers (RFC 9110 §7.6.1) and framing: connection, keep-alive,
  proxy-connection, proxy-authenticate, proxy-authorization, te, trailer,
  transfer-encoding, upgrade, content-length;
* date and server (the gateway's own are sent).

Kept lines go out byte for byte, each ended with CRLF; an obs-fold continuation line
(RFC 9112 §5.2) is joined to its header with one space, as a proxy must.  The head has
already been accepted by llhttp, so its syntax is not checked again here.

``response_head(buf)`` returns ``(block, content_length, chunked, head_len)``: the kept
lines, the Content-Length value (-1 when absent), whether a Transfer-Encoding was present,
and the length of the head in ``buf`` including its blank line (-1 when ``buf`` holds no
complete head).  ``buf`` may continue past the head (body bytes from the same read).
"""

from __future__ import annotations

from plano_fast.wire._shared import UPSTREAM_VERSION_ERROR, connection_tokens


class ResponseHead:
    """An upstream response's head as the client will get it (``plano_fast.upstream.UpstreamHead``).

    ``block`` is the upstream's header lines minus the status line, hop-by-hop and framing
    headers, date and server (``response_head`` has the rules), byte for byte and
    CRLF-ended, ready to follow the gateway's own status line; ``content_length`` is set
    for a Content-Length-framed body; ``headers()`` parses the block for the few paths that
    rewrite an answer.  Compiled twin: ``_head.pyx`` (an extension type, cheaper to build).
    """

    __slots__ = ("status", "block", "content_length", "chunked")

    def __init__(self, status: int, block: bytes, content_length: int | None, chunked: bool) -> None:
        self.status = status
        self.block = block
        self.content_length = content_length
        self.chunked = chunked

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The kept headers as (lowercased name, value) pairs."""
        out: list[tuple[bytes, bytes]] = []
        for line in self.block.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                out.append((name.lower(), value.strip(b" \t")))
        return out

#: Headers that describe one hop, not the message (RFC 9110 §7.6.1): never relayed in
#: either direction; framing is redone for each side.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Response headers the client does not get: hop-by-hop, framing, date/server (the
#: gateway's own are sent), and the headers the gateway itself sets on an answer (an
#: upstream's copy -- another gateway's, say -- would reach the client twice, or pass for ours).
GATEWAY_RESPONSE_HEADERS = frozenset({
    b"x-plano-request-id", b"x-plano-requested-model", b"x-plano-guardrail-warning",
    b"x-model-router-selected-route",
})
#: (Compiled: ``_head.classify`` and ``classify_tchar``; tests/test_header_tables.py checks
#: them name for name.)
DROPPED = HOP_BY_HOP | {b"content-length", b"date", b"server"} | GATEWAY_RESPONSE_HEADERS
#: Request headers recomputed or meaningless for the upstream hop.  accept-encoding is
#: dropped so the provider answers in identity encoding: usage cannot be read from gzip.
#: Method-override headers are dropped because some frameworks (Google's front ends among
#: them) honour them: the provider could act on another method than the one metered.
#: x-goog-fieldmask is Google's response field mask (``fields`` as a header): a mask without
#: ``usageMetadata`` would answer without the usage (the query form is refused:
#: plano_fast.credentials.ANSWER_SHAPING).
DROPPED_REQUEST = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"accept-encoding",
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
    b"x-goog-fieldmask",
    # their underscore spellings: CGI/WSGI-style servers read "_" as "-" (accept_encoding
    # would get a gzip answer, whose usage cannot be read; transfer_encoding would be read
    # as the framing; x_http_method_override as the override)
    b"accept_encoding",
    b"transfer_encoding",
    b"x_http_method_override",
    b"x_http_method",
    b"x_method_override",
    b"x_goog_fieldmask",
}


def upstream_host_lines(host_header: str) -> bytes:
    """The upstream head's Host line and ``Accept-Encoding: identity``, built once per target
    (``ModelProvider.host_line``, ``KeyRoute.host_line``; written by every forwarded request's
    ``upstream_request.finish_head``): no line built per request.  The client's own
    Accept-Encoding is dropped (:data:`DROPPED_REQUEST`), and a request without one may be
    answered in any coding (RFC 9110 12.5.3): a provider that compressed its answers would
    leave their usage unreadable, so the gateway asks for identity, always."""
    return b"host: " + host_header.encode() + b"\r\naccept-encoding: identity\r\n"


#: Where an SDK puts its key: never forwarded as sent (see forward_request_headers).  The
#: underscore spellings count too: CGI/WSGI-style servers map "_" and "-" to one name.
CREDENTIALS = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"x-goog-api-key",
        b"api-key",
        b"x_api_key",
        b"x_goog_api_key",
        b"api_key",
    }
)
#: Azure API Management's subscription key, both spellings: a credential (SECRET_HEADERS)
#: that also selects the account (ACCOUNT_HEADERS), refused where the client's own key goes
#: upstream (plano_fast.credentials.refuse_subscription_key).
SUBSCRIPTION_KEYS = frozenset({b"ocp-apim-subscription-key", b"ocp_apim_subscription_key"})
#: Headers whose value is a secret: the request credentials above, Azure API Management's
#: subscription key (a credential: ACCOUNT_HEADERS), cookies and proxy credentials.  Never
#: copied into a trace span (plano_fast.tracing); the gateway's own values of them are its
#: keys, masked in an error body that echoes them (plano_fast.gateway.operator_key).
SECRET_HEADERS = CREDENTIALS | SUBSCRIPTION_KEYS | {b"cookie", b"proxy-authorization"}
#: The client's request id: never forwarded as sent (see forward_request_headers); the
#: underscore spelling too, as for CREDENTIALS.
REQUEST_IDS = frozenset({b"x-request-id", b"x_request_id"})
#: Only the gateway may set these (a client must not forge identity upstream).
GATEWAY_PREFIX = b"x-xproxy-"

#: A Content-Length beyond this is refused (no LLM answer is 2**62 bytes).
MAX_CONTENT_LENGTH = (1 << 62) - 1


def response_head(buf: bytes) -> tuple[bytes, int, bool, int]:
    end = _head_end(buf)
    if end < 0:
        return b"", -1, False, -1
    if not buf.startswith(b"HTTP/1."):
        # llhttp takes HTTP/2.0 and HTTP/0.9 status lines too (and refuses HTTP/1.2): an
        # answer in another version's framing is not one this relay can read as HTTP/1.x
        raise ValueError(UPSTREAM_VERSION_ERROR)
    lines = buf[:end].split(b"\n")
    out: list[bytes] = []
    content_length = -1
    chunked = False
    keep_prev = False
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            break
        if line[0] in (0x20, 0x09):  # obs-fold: continues the previous header
            if keep_prev:
                out[-1] = out[-1] + b" " + line.strip(b" \t")
            continue
        name, _, value = line.partition(b":")
        lname = name.lower()
        if lname == b"content-length":
            content_length = _content_length(value)
        elif lname == b"transfer-encoding":
            # Only one ``chunked``: llhttp undoes chunked alone, so ``gzip, chunked`` was
            # relayed as gzip bytes under no coding (the client got garbage, the usage was
            # unread), and a second line means chunked applied twice (RFC 9112 §7: never).
            if chunked or value.strip(b" \t").lower() != b"chunked":
                raise ValueError("unsupported Transfer-Encoding: only a single 'chunked' is relayed")
            chunked = True
        keep_prev = lname not in DROPPED
        if keep_prev:
            out.append(line)
    block = b"".join([line + b"\r\n" for line in out])
    return block, content_length, chunked, end


def has_content_encoding(block: bytes) -> bool:
    """Whether ``block`` (CRLF-ended header lines, ``response_head``'s) has a Content-Encoding
    line, its name in any case: the relay's test for an answer in a coding
    (plano_fast.gateway.coded_answer), on every answer read on httptools' path (streams).
    Compiled twin in ``_head.pyx``: a memchr per line, a name compared only after a ``c``:
    ~1.5k instructions a call, Python's call included, on an OpenAI-like 22-line head's
    block, where two ``bytes.find`` (either case of ``ncoding``) cost ~4.8k (callgrind,
    10,000 calls: benchmarks/results/attack-battery-20261206k.md)."""
    return any(line[:17].lower() == b"content-encoding:" for line in block.split(b"\r\n"))


def _head_end(buf: bytes) -> int:
    """Length of the head including its blank line: the first LF followed by LF or CRLF."""
    nl = buf.find(b"\n")
    while nl >= 0:
        if buf[nl + 1:nl + 2] == b"\n":
            return nl + 2
        if buf[nl + 1:nl + 3] == b"\r\n":
            return nl + 3
        nl = buf.find(b"\n", nl + 1)
    return -1


def _content_length(value: bytes) -> int:
    digits = value.strip(b" \t")
    if not digits or not digits.isdigit() or len(digits) > 19:
        raise ValueError("invalid Content-Length")
    n = int(digits)
    if n > MAX_CONTENT_LENGTH:
        raise ValueError("invalid Content-Length")
    return n


def forward_request_headers(
    headers: list[tuple[bytes, bytes]],
) -> tuple[bytes, bool, bytes | None, int, bytes | None, bytes | None, bytes]:
    """The client's headers (names lowercased, as parsed) that may go upstream, as CRLF-ended
    lines; whether anthropic-version was among them; the client's x-request-id (or x_request_id: None when it
    sent none, b"" when it sent more than one: never in the block, the upstream head writes
    one, see ``upstream_request.finish_head``); the credential headers: how many there
    were, and the first one's name and value (None when none); and the block to send where
    the key is the operator's: ``without_account_headers(block)``, the block itself (the
    same object) when it holds no :data:`ACCOUNT_HEADERS` line -- known from this pass, so
    a request without them is not walked again.

    Dropped: hop-by-hop headers and those named in Connection (RFC 9110 §7.6.1), framing and
    host (redone for the upstream hop), accept-encoding, every x-xproxy-* header, and every
    credential header (:data:`CREDENTIALS`) -- the gateway writes back the one credential it
    verified (plano_fast.credentials), so Connection can neither remove nor keep one.
    Credentials are counted whatever Connection says.
    """
    tokens: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            tokens = connection_tokens(value, tokens)
    out: list[bytes] = []
    seen_version = False
    request_id: bytes | None = None
    credentials = 0
    credential_name: bytes | None = None
    credential_value: bytes | None = None
    accounts = False
    for name, value in headers:
        if name in CREDENTIALS:
            if not credentials:
                credential_name, credential_value = name, value
            credentials += 1
            continue
        if name in DROPPED_REQUEST or name.startswith(GATEWAY_PREFIX):
            continue
        if tokens and name in tokens:
            continue
        if name == b"anthropic-version":
            seen_version = True
        elif name in REQUEST_IDS:
            request_id = value if request_id is None else b""
            continue
        elif name in ACCOUNT_HEADERS:
            accounts = True
        out.append(name + b": " + value + b"\r\n")
    block = b"".join(out)
    return (block, seen_version, request_id, credentials, credential_name, credential_value,
            without_account_headers(block) if accounts else block)



#: Headers that select or reveal the provider account the gateway's own key belongs to:
#: OpenAI's organization and project (request: which of the key's organizations/projects
#: pays; response: the operator's ids), Google's quota/billing project, Anthropic's
#: organization id; Azure's ``Ocp-Apim-Subscription-Key`` (request: a resource or API
#: Management subscription key of the client's choosing, which Azure AI services accept
#: beside ``api-key``) and ``x-ms-region`` (response: where the operator's resource is).
#: Where the key is the operator's (config mode with an ``access_key``, managed mode) they
#: are cut both ways; a client's own key (firewall, passthrough_auth) keeps them.  The
#: underscore spellings of the request headers count too, as for CREDENTIALS.  (Compiled:
#: ``_bytes.account_name``, ``account_line``, ``_head.tchar_account_name``;
#: tests/test_header_tables.py checks them name for name.)
ACCOUNT_HEADERS = SUBSCRIPTION_KEYS | {
    b"openai-organization", b"openai_organization", b"openai-project", b"openai_project",
    b"x-goog-user-project", b"x_goog_user_project", b"anthropic-organization-id", b"x-ms-region",
}


def without_account_headers(block: bytes) -> bytes:
    """``block`` (CRLF-ended header lines) without its :data:`ACCOUNT_HEADERS` lines (names
    in any case); ``block`` itself when it has none."""
    out: list[bytes] = []
    cut = False
    i, n = 0, len(block)
    while i < n:
        j = block.find(b"\n", i)
        j = n if j < 0 else j + 1
        line = block[i:j]
        if line.partition(b":")[0].lower() in ACCOUNT_HEADERS:
            cut = True
        else:
            out.append(line)
        i = j
    return b"".join(out) if cut else block


# -- the gateway's own header lines (compiled twins in _head.pyx, formatted in C there) --


def content_length_line(n: int, blank_line: bool) -> bytes:
    """``b"content-length: %d\\r\\n" % n``, and the head's closing CRLF after it when
    ``blank_line`` (``n`` >= 0)."""
    if n < 0:
        raise ValueError("negative content length")
    return (b"content-length: %d\r\n\r\n" if blank_line else b"content-length: %d\r\n") % n


def chunk_size_line(n: int) -> bytes:
    """A chunk's size line, ``b"%x\\r\\n" % n`` (``n`` >= 0)."""
    if n < 0:
        raise ValueError("negative chunk size")
    return b"%x\r\n" % n


def header_line(start: bytes, value: str) -> bytes:
    """``start + value.encode() + b"\\r\\n"`` (``start``: the name and ``": "``)."""
    return start + value.encode() + b"\r\n"


class RequestIds:
    """Request ids: ``prefix`` (drawn by the caller), ``-``, then a counter from 1 in
    lowercase hex.  ``reset`` starts over with a new prefix (a forked child), in place:
    ``next`` stays bound where it was taken."""

    __slots__ = ("_prefix", "_counter")

    def __init__(self, prefix: str) -> None:
        self.reset(prefix)

    def reset(self, prefix: str) -> None:
        if not prefix.isascii() or len(prefix) > 64:
            raise ValueError("a request id prefix is at most 64 ASCII characters")
        self._prefix = prefix
        # (a range's iterator: next() is one C call, atomic under the GIL as the compiled
        # counter is; the wire package imports no itertools)
        self._counter = iter(range(1, 1 << 64))

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"
