"""The downstream HTTP/1.1 server: one ``ServerProtocol`` per client connection.

Theory of operation
-------------------
The protocol owns bytes and connection state and knows nothing of providers, projects or
budgets.  httptools (llhttp) parses the request; llhttp already refuses the classic
smuggling shapes (Content-Length together with Transfer-Encoding, duplicate or non-numeric
Content-Length, Transfer-Encoding not ending in ``chunked``) and we add the rest of RFC 9112
§6.1: any Transfer-Encoding other than exactly ``chunked`` (we could not decode it) and a
Transfer-Encoding on an HTTP/1.0 request are refused.  Every framing error is answered with
400 and the connection is closed, because after a framing error the next byte's meaning is
unknowable.

Plain requests skip httptools: while it is between messages, whole requests at the front
of a read that plano_fast/wire/_request.pyx accepts (a strict subset of what llhttp accepts --
Content-Length bodies only, no Transfer-Encoding, Expect or Upgrade, the plain header
grammar -- parsed to the same fields, which tests/test_request_fast_path.py checks against
httptools) are dispatched from one Cython pass instead of a Python callback per header;
everything else, from the first declined byte on, goes to httptools as before.  The same
pass builds the upstream header block and finds the credential (``Request.forward``: what
``wire.forward_request_headers`` would compute from the headers), so the exchange does
not walk the header list a second time.  A plain head whose Content-Length body has not
all arrived is held (``_hold``) and its body completed from the next reads: httpx, under
the openai and anthropic SDKs, writes a request's head and body in two sends, so without
this every SDK request went through httptools' slower path; the held body is bounded and
timed as httptools' path bounds and times a body (the limit is checked on the announced
length, the body timeout armed when the head is in, the head identified past
``_IDENTIFY_AFTER_BYTES``).

A request is handed to the ``handler`` (the exchange) only once its body is complete: LLM
requests must be routed on the ``model`` inside the body, so the body is needed before the
first upstream byte can be sent.  The body is bounded by ``max_body_bytes`` (413).

The handler is called synchronously, from the parser callback.  The common case -- route,
take an idle pooled upstream connection, write the request -- needs no ``await``, and the
rest of the exchange runs in upstream callbacks, so most requests cost no asyncio Task,
coroutine frames or Future (measured: ~10 CPU µs per request on 3.11).  A handler that must
wait (open a connection, reserve budget in the database) returns a coroutine instead, which
runs as a task owned by the connection.

Pipelined requests are answered in order: while one exchange runs, later requests are
parsed into a queue and reading pauses, so a client can never make us buffer more than one
extra request (uvicorn's approach).

Flow control runs both ways (``Responder``): when the client's socket buffer passes the
high-water mark, reading from the upstream connection relaying to it pauses; when the
upstream's socket buffer fills while we send it a request, reading from the client pauses.
Memory per connection is therefore bounded by the write-buffer high-water mark plus one
socket read, whatever the size of the stream.

Limits and their precedents: header section 32 KiB by default (nginx uses 4 x 8 KiB large
header buffers, node 16 KiB; LLM clients send big ``anthropic-beta`` and tracing headers),
request head timeout 10 s (nginx ``client_header_timeout`` is 60 s, uvicorn has none; a slow
loris is cheap to refuse), keep-alive idle 60 s (nginx 75 s, AWS ALB 60 s).  They are
checked by a shared ``DeadlineClock`` tick, not a loop timer per request
(plano_fast.deadlines).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol, cast

import httptools

from plano_fast.deadlines import DeadlineClock
from plano_fast.errors import (
    ApiFormat,
    BodyTooLarge,
    GatewayError,
    HeadersTooLarge,
    HttpVersionNotSupported,
    MalformedRequest,
    RequestHeadTimeout,
    api_format_for_path,
)

# the compiled fast path for plain requests (None when not in use); httptools parses the rest
from plano_fast.twins import install_compiled
from plano_fast.wire import PURE_ENV, chunk_size_line, content_length_line
from plano_fast.wire import parse_request as _parse_request
from plano_fast.wire import parse_request_begun as _parse_request_begun
from plano_fast.wire._host import valid_host

log = logging.getLogger("plano_fast")

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    #: What a handler returns: None when it answered, or handed the exchange to callbacks,
    #: synchronously; a coroutine to run as a task when it has to wait for something.
    Pending = Coroutine[Any, Any, None] | None
    #: Told of a refusal the server answers: the error, the request's path without its
    #: query (None when the request line was not read), the responder answering it (None
    #: when the refusal gets no answer: bytes after a request still being answered).
    OnRefusal = Callable[[GatewayError, bytes | None, "Responder | None"], None]

Header = tuple[bytes, bytes]
#: what ``wire.forward_request_headers`` returns: (block, seen anthropic-version, the
#: client's x-request-id -- None: none, b"": more than one --, credential count, first
#: credential's name, its value, the block without the provider-account headers)
ForwardHeaders = tuple[bytes, bool, bytes | None, int, bytes | None, bytes | None, bytes]

# Write-buffer water marks for client transports.  64 KiB keeps a few SSE events in
# flight without letting a slow reader grow memory; measured in the 1 GiB slow-reader test.
CLIENT_WRITE_HIGH_WATER = 64 * 1024
CLIENT_WRITE_LOW_WATER = 16 * 1024

_STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}
_STATUS_LINES[529] = b"HTTP/1.1 529 Overloaded\r\n"


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


class _DateHeader:
    """``date:`` header bytes, rebuilt at most once a second rather than per response."""

    __slots__ = ("_second", "value")

    def __init__(self) -> None:
        self._second = -1
        self.value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self.value = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.value


DATE_HEADER = _DateHeader()
SERVER_HEADER = b"server: plano_fast\r\n"
#: request headers that decide framing and get checked as they arrive
#: (and upgrade: noted, so that only a head naming it asks httptools whether it upgrades;
#: host: counted and its value checked, RFC 9112 §3.2 wants exactly one valid one)
_FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"host"))
#: request body pieces shorter than this (tiny chunks, a trickled body) are joined as they
#: arrive rather than kept one object each (``on_body``)
_SMALL_PIECE = 4096
#: a request body past this many bytes has its head identified before the rest is read
#: (``on_body``): without it a client with no valid key could hold ``max_body_bytes`` (32 MiB)
#: per connection, on as many connections as it opens, until the body timeout
_IDENTIFY_AFTER_BYTES = 64 * 1024


class Request:
    """One parsed request, complete with its body.  Header names are lowercased.

    ``headers``: a list where httptools parsed the request; where the fast path did, a
    ``wire._request.RequestHeaders`` -- the same pairs as a read-only sequence, made on
    first use (the hot path reads ``forward`` instead).  Read it as a sequence."""

    __slots__ = (
        "method", "target", "path", "query", "headers", "body", "keep_alive", "forward", "http11"
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[Header],
        body: bytes,
        keep_alive: bool,
        forward: ForwardHeaders | None = None,
        http11: bool = True,
    ) -> None:
        self.method = method
        self.target = target
        path, sep, query = target.partition(b"?")
        self.path = path
        self.query = query if sep else b""
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        #: ``wire.forward_request_headers(headers)``, when the fast path built it in the
        #: pass that parsed the request (None: computed from ``headers`` on first use)
        self.forward = forward
        #: this request's version (HTTP/1.1, else 1.0): its answer's framing and keep-alive
        #: line follow it, not the connection's last parsed head (a pipelined 1.1 head read
        #: behind a 1.0 request must not change the 1.0 answer)
        self.http11 = http11

    @property
    def api_format(self) -> ApiFormat:
        """The client's API format (for errors), from the path; only needed on errors."""
        return api_format_for_path(self.path)

    def header(self, name: bytes) -> bytes | None:
        """First value of a header (``name`` lowercased)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


new_request: Callable[..., Request] = Request
"""``Request(...)``, positional: the server's constructor.  Compiled where built
(``plano_fast/_new_request.pyx``: the slots written in one C call, no ``__init__`` frame),
else the class itself (imported at the end of this module: it needs the class)."""


class UpstreamReader(Protocol):
    """What the responder pauses when the client reads slowly (an upstream transport)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class ServerLimits:
    """Per-listener limits, validated once at start-up."""

    __slots__ = (
        "max_header_bytes",
        "max_body_bytes",
        "request_head_timeout_s",
        "request_body_timeout_s",
        "keepalive_timeout_s",
    )

    def __init__(
        self,
        *,
        max_header_bytes: int = 32 * 1024,
        max_body_bytes: int = 32 * 1024 * 1024,
        request_head_timeout_s: float = 10.0,
        request_body_timeout_s: float = 300.0,
        keepalive_timeout_s: float = 60.0,
    ) -> None:
        if min(max_header_bytes, max_body_bytes) <= 0:
            raise ValueError("size limits must be positive")
        if min(request_head_timeout_s, request_body_timeout_s, keepalive_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.request_head_timeout_s = request_head_timeout_s
        self.request_body_timeout_s = request_body_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s


class Responder:
    """The write side of one exchange: response framing and client-side flow control.

    Created per request by the protocol; the exchange writes through it.  ``send_head``
    chooses the framing: a known ``content_length`` is sent as is, otherwise the body is
    sent chunked (HTTP/1.1) or delimited by closing the connection (HTTP/1.0 clients).

    Writes are gathered and handed to the transport by ``flush`` (called once per upstream
    read, and by ``end``): a small JSON answer leaves in one send() instead of three
    (head, body, terminator), which measured ~15% fewer CPU µs per request.
    """

    __slots__ = (
        "_proto",
        "_transport",
        "head_sent",
        "finished",
        "_chunked",
        "_close_after",
        "_http11",
        "upstream",
        "bytes_sent",
        "_out",
        "on_client_gone",
        "logged",
    )
    #: this request's access-log line is written (set by the exchange that wrote it,
    #: ``Exchange.observe`` / ``refused``): a refusal answered later gets no second line
    #: (``ServerProtocol``'s ``on_refusal``).  Set only with an access log: unset means
    #: False, read with getattr (no store per request without one)
    logged: bool

    def __init__(self, proto: ServerProtocol, keep_alive: bool, http11: bool = True) -> None:
        self._out: list[bytes | memoryview] = []
        self._proto = proto
        self._transport = proto.transport
        self.head_sent = False
        self.finished = False
        self._chunked = False
        self._close_after = not keep_alive
        #: the answered request's version (``Request.http11``): chunked or close-delimited,
        #: and whether an HTTP/1.0 keep-alive needs saying
        self._http11 = http11
        #: the upstream transport relaying to this client; paused when the client is slow
        self.upstream: UpstreamReader | None = None
        self.bytes_sent = 0
        #: called once if the client disconnects before the response is finished (an
        #: exchange running in callbacks has no task to cancel)
        self.on_client_gone: Callable[[], None] | None = None

    @property
    def closing(self) -> bool:
        return self._close_after or self._proto.draining

    def send_head(
        self, status: int, headers: list[Header] | tuple[Header, ...], content_length: int | None
    ) -> None:
        parts: list[bytes] = []
        add = parts.extend  # flat pieces, one join: no intermediate bytes per header
        for name, value in headers:
            add((name, b": ", value, b"\r\n"))
        self.send_head_block(status, b"".join(parts), content_length)

    def send_head_block(
        self, status: int, block: bytes, content_length: int | None, extra: bytes = b""
    ) -> None:
        """Send a head whose header lines (CRLF-ended) are ready in ``block``, then those of
        ``extra`` (the gateway's own lines after a relayed block: joined here once, rather
        than the ~1.3 KB block copied by a concatenation per line); framing, connection,
        date and server are added here."""
        line = _STATUS_LINES.get(status)
        parts = [line if line is not None else status_line(status), block, extra]
        if status != 200 and (status < 200 or status == 204 or status == 304):  # (200 first: one test)
            # A message with no body (RFC 9112 6.3 rule 1): the client reads none after
            # its head, so a "transfer-encoding: chunked" here and its "0\r\n\r\n" were
            # read as the start of the next response on the connection (a provider's 204
            # or 304 relayed: the client's next request failed or got the wrong answer).  No
            # framing header (a 304 may keep the length the GET would have, RFC 9110
            # 8.6; a 204 or 1xx may not send one), no close-delimiting either, and from
            # here on a HEAD's responder: body bytes dropped, no terminating chunk.
            if content_length is not None and status == 304:
                parts.append(content_length_line(content_length, False))
            self.__class__ = HeadResponder  # (same slots: Responder's layout)
        elif content_length is not None:
            parts.append(content_length_line(content_length, False))  # (C: ~0.5k instructions fewer than %d)
        elif self._http11:
            self._chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            self._close_after = True
        if self._close_after or self._proto.draining:  # (self.closing, without its call)
            self._close_after = True
            parts.append(b"connection: close\r\n")
        elif not self._http11:
            # An HTTP/1.0 connection persists only when the answer says so (RFC 9112
            # 9.3): without it the client takes the connection as closing while we keep it.
            parts.append(b"connection: keep-alive\r\n")
        parts.append(DATE_HEADER.get())
        parts.append(SERVER_HEADER)
        parts.append(b"\r\n")
        self.head_sent = True
        self._out.append(b"".join(parts))

    def send_body(self, data: bytes | memoryview) -> None:
        if not data:
            return
        n = len(data)
        self.bytes_sent += n
        if self._chunked:
            self._out.append(chunk_size_line(n))
            self._out.append(data)
            self._out.append(b"\r\n")
        else:
            self._out.append(data)

    def flush(self) -> None:
        """Hand everything gathered so far to the transport (one syscall, usually)."""
        out = self._out
        if out:
            self._out = []
            if self._proto.lost:
                return
            try:
                if len(out) == 1:
                    self._transport.write(out[0])
                else:
                    self._transport.writelines(out)
            except (OSError, RuntimeError):
                # The client's connection failed under this write: a reset the write itself
                # met, or a handle closed earlier in this loop turn whose connection_lost has
                # not run yet (uvloop raises for both).  connection_lost follows; the bytes
                # are the client's loss, and the caller goes on -- a response's end and its
                # settle step (its usage row) must not be skipped (_answer.pyx's _end alike).
                pass

    def end(self) -> None:
        """The response is complete: terminate framing and move to the next request."""
        if self.finished:
            return
        self.finished = True
        self.upstream = None
        self.on_client_gone = None  # (a bound method of the exchange: no cycle left behind)
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        self.flush()
        self._proto.exchange_done(self, self._close_after)

    def abort(self) -> None:
        """The response cannot be completed (upstream broke mid-body): drop the connection.

        Closing without the terminating chunk tells the client the body is incomplete,
        which is the only honest signal left once the status line has gone out.
        """
        if self.finished:
            return
        self.finished = True
        self.upstream = None
        self.on_client_gone = None
        self.flush()  # what was relayed so far still goes out; then the cut
        self._proto.exchange_done(self, True, abort=True)

    def send_error(self, error: GatewayError, fmt: ApiFormat) -> None:
        """Answer with a gateway error, if nothing has been sent yet; otherwise abort."""
        if self.head_sent:
            self.abort()
            return
        if error.close_connection:
            self._close_after = True
        body = error.body(fmt)
        headers = ((b"content-type", b"application/json"),) + error.headers(fmt)
        if error.request_id is not None:  # (every refusal the gateway answers: GatewayError.request_id)
            headers += ((b"x-plano-request-id", error.request_id.encode()),)
        self.send_head(error.status, headers, len(body))
        self.send_body(body)
        self.end()

    def send_simple(
        self, status: int, body: bytes, content_type: bytes = b"application/json"
    ) -> None:
        self.send_head(status, ((b"content-type", content_type),), len(body))
        self.send_body(body)
        self.end()

    def continue_in_task(self, pending: Coroutine[Any, Any, None], request: Request) -> None:
        """An exchange running in callbacks must wait after all (a retry): run ``pending``
        as a task, answered in the client's format if it fails."""
        self._proto.spawn(self._proto._run(pending, request, self))

    def pause_client_reading(self) -> None:
        self._proto.pause_client_reading()

    def resume_client_reading(self) -> None:
        self._proto.resume_client_reading()

    @property
    def client_connected(self) -> bool:
        return not self._proto.lost

    def peer(self) -> str:
        """The client's address as "host:port" ("" when unknown): for this request's
        access-log line.  Once per connection (uvloop's get_extra_info("peername") and the
        formatting cost ~5.6k instructions, ~2% of a firewall request, on every request
        otherwise)."""
        proto = self._proto
        try:
            text = proto.peer_text
        except AttributeError:  # a stand-in protocol (tests, benchmarks)
            text = ""
        if text:
            return text
        try:
            address = proto.transport.get_extra_info("peername")
        except AttributeError:
            return ""
        if isinstance(address, tuple) and len(address) >= 2:
            text = f"{address[0]}:{address[1]}"
            try:
                proto.peer_text = text
            except AttributeError:  # a stand-in protocol (tests, benchmarks)
                pass
        return text


class HeadResponder(Responder):
    """The responder of a HEAD request: the head the same GET would get, never a body byte
    (RFC 9110 9.3.2).  A body after a HEAD's head -- an error's JSON, /healthz's answer --
    is read by a front proxy as the start of the next response on the connection: its
    client gets the wrong answer (response desync)."""

    __slots__ = ()

    def send_body(self, data: bytes | memoryview) -> None:
        return None

    def end(self) -> None:
        self._chunked = False  # no body: no terminating chunk either
        Responder.end(self)


class ServerProtocol(asyncio.Protocol):
    """One client connection: parse, enforce limits, run exchanges in order."""

    __slots__ = (
        "transport",
        "loop",
        "_handler",
        "_precheck",
        "_limits",
        "_on_close",
        "_parser",
        "_headers",
        "_request_headers",
        "_url",
        "_head_bytes",
        "_body_parts",
        "_body_bytes",
        "_headers_done",
        "_pending",
        "_active",
        "deadline",
        "_clock",
        "_on_timeout",
        "_reading_paused",
        "_writing_paused",
        "_expect_continue",
        "_identified",
        "_te_seen",
        "_upgrade_seen",
        "_hosts",
        "_in_head",
        "_msg_started",
        "_head_raw",
        "_quiet_raw",
        "_body_progress",
        "_broken",
        "_held",
        "_held_body",
        "_held_length",
        "http11",
        "draining",
        "lost",
        "tasks",
        "_on_refusal",
        "peer_text",
    )

    def __init__(
        self,
        handler: Callable[[Request, Responder], Pending],
        limits: ServerLimits,
        clock: DeadlineClock,
        on_close: Callable[[ServerProtocol], None] | None = None,
        precheck: Callable[[Request], None] | None = None,
        on_refusal: OnRefusal | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._handler = handler
        #: told of every refusal answered here (the gateway counts them by type in /metrics
        #: and gives each answer without an access-log line its line); runs on errors only
        self._on_refusal = on_refusal
        #: run on a head that asks for 100-continue, before the body is invited: raises a
        #: GatewayError to refuse (the body is then never read; the connection closes)
        self._precheck = precheck
        self._limits = limits
        self._on_close = on_close
        self._parser = httptools.HttpRequestParser(self)
        self._headers: list[Header] = []
        #: the head's headers, set aside when the head ends (trailers go to _headers)
        self._request_headers: list[Header] = []
        self._url = b""
        self._head_bytes = 0
        self._body_parts: list[bytes | bytearray] = []
        self._body_bytes = 0
        self._headers_done = False
        self._pending: collections.deque[Request] = collections.deque()
        self._active: Responder | None = None
        #: the next timeout (loop time; 0 = none), checked by the shared DeadlineClock
        self.deadline = 0.0
        self._clock = clock
        #: what ``on_deadline`` calls, an unbound method of this class (a bound one would
        #: be a new object at every arming, i.e. on every request)
        self._on_timeout: Callable[[ServerProtocol], None] = ServerProtocol._on_head_timeout
        self._reading_paused = False
        self._writing_paused = False
        self._expect_continue = False
        self._identified = False
        self._te_seen = False
        self._upgrade_seen = False
        self._hosts = 0
        self._in_head = True
        self._msg_started = False
        self._head_raw = 0
        #: body phase: bytes read since the parser last reported progress (body, chunk)
        self._quiet_raw = 0
        self._body_progress = False
        self._broken = False
        #: a plain request whose head the fast path read and whose body is still arriving
        #: (``parse_request_begun``'s tuple: ``_hold``), else None; its body so far, and the
        #: body's announced length
        self._held: tuple[Any, ...] | None = None
        self._held_body: bytes | bytearray = b""
        self._held_length = 0
        self.http11 = True
        self.draining = False
        self.lost = False
        self.tasks: set[asyncio.Task[None]] = set()
        #: the client's "host:port", formatted on first use (Responder.peer)
        self.peer_text = ""

    # -- asyncio callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(CLIENT_WRITE_HIGH_WATER, CLIENT_WRITE_LOW_WATER)
        self._clock.add(self)
        self._arm(self._limits.request_head_timeout_s, ServerProtocol._on_head_timeout)

    def data_received(self, data: bytes) -> None:
        """Compiled where built (``plano_fast/_serve.pyx``: this method,
        ``_take_plain_requests`` and ``_start`` in one C call for a read of plain requests;
        ``data_received_py`` is this twin)."""
        if self._broken:
            return  # after a framing error nothing more is read
        if self._held is not None:
            taken = self._take_held_body(data)
            if taken == len(data) or self._broken:
                return
            data = data[taken:]
        if _parse_request is not None and not self._msg_started:
            # httptools is between messages, so whole plain requests at the front of
            # this read can bypass it; it parses whatever the fast path leaves.
            taken = self._take_plain_requests(data)
            if taken == len(data) or self._broken:
                return
            if taken:
                data = data[taken:]
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """What the fast path left of a read, to httptools (its callbacks below)."""
        try:
            self._parser.feed_data(data)
            if self._in_head:
                # httptools buffers a header until it ends, so a client that never ends
                # one must be stopped here: the bound is the limit plus one socket read.
                self._head_raw += len(data)
                if self._head_raw > self._limits.max_header_bytes:
                    raise self._headers_too_large()
            elif self._body_progress:
                self._body_progress = False
                self._quiet_raw = 0
            else:
                # Chunked trailers (or a chunk extension) come after the last chunk, and
                # httptools buffers them with no callback until each one ends: reads
                # that brought no body and no chunk are bounded like a head (the limit
                # plus one read); on_message_complete then counts the trailers exactly.
                self._quiet_raw += len(data)
                if self._quiet_raw > self._limits.max_header_bytes:
                    raise self._headers_too_large()
        except HeadersTooLarge as exc:
            self._refuse(exc)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, GatewayError):
                self._refuse(cause)
            else:  # a bug in a callback: answer rather than hang
                self._refuse(MalformedRequest(f"malformed request: {exc}"))
        except httptools.HttpParserUpgrade:
            self._refuse(MalformedRequest("protocol upgrade is not supported"))
        except httptools.HttpParserError as exc:
            self._refuse(MalformedRequest(f"malformed request: {_parser_reason(exc)}"))

    def _take_plain_requests(self, data: bytes) -> int:
        """Dispatch the complete requests at the front of ``data`` that the compiled fast
        path accepts (plano_fast/wire/_request.pyx: a strict subset of what httptools accepts,
        parsed to the same fields); returns how many bytes they took."""
        parse = _parse_request_begun
        assert parse is not None
        limits = self._limits
        taken = 0
        while True:
            parsed = parse(data, taken, limits.max_header_bytes, limits.max_body_bytes)
            if parsed is None:
                return taken
            method, target, headers, body, keep_alive, end, forward = parsed
            if isinstance(body, int):  # the head is here, not all of its body
                if self._active is not None:
                    return taken  # (behind a running exchange: httptools' path, as before)
                self._hold(parsed, data)
                return len(data)
            taken = end
            self._url = target
            if not keep_alive:
                # Connection: close -- the client sends nothing after this request
                # (RFC 9112 9.6), so nothing after it is read.
                self._broken = True
            request = new_request(method, target, headers, body, keep_alive, forward)
            if self._active is None:  # (_dispatch, inline: every plain request comes here)
                self._start(request)
            else:
                self._dispatch(request)
            if self._broken or taken == len(data):
                return taken

    def _hold(self, parsed: tuple[Any, ...], data: bytes) -> None:
        """Keep ``parsed`` (``parse_request_begun``'s: its head is in ``data``, its body
        starts at ``parsed[3]`` and is not all there) until its body is in.  As httptools'
        path does when a head ends: the body timeout armed (a body that never completes is
        answered ``_on_head_timeout``'s 408), the head identified once the body passes
        ``_IDENTIFY_AFTER_BYTES``; its announced length is within the limit (the parse
        declines a larger one, and httptools' path answers it 413 at once)."""
        self._held = parsed
        self._url = parsed[1]
        start = parsed[3]
        self._held_body = data[start:]
        self._held_length = parsed[5] - start
        self._identified = False
        self._arm(self._limits.request_body_timeout_s, ServerProtocol._on_head_timeout)
        if len(self._held_body) > _IDENTIFY_AFTER_BYTES:
            self._identify_held()

    def _take_held_body(self, data: bytes) -> int:
        """``data`` continues the held request's body: the request dispatched once its body is
        complete; returns how many bytes of ``data`` the body took (all, while incomplete)."""
        have = self._held_body
        need = self._held_length - len(have)
        if len(data) < need:
            if not have:
                self._held_body = data
            else:
                # pieces gather in one bytearray (a body trickled in tiny writes would
                # otherwise cost a bytes object per write)
                if type(have) is not bytearray:
                    have = self._held_body = bytearray(have)
                have += data
            if len(self._held_body) > _IDENTIFY_AFTER_BYTES and not self._identified:
                self._identify_held()
            return len(data)
        parsed = self._held
        assert parsed is not None
        body = data[:need] if not have else b"".join((have, data[:need]))
        self._held = None
        self._held_body = b""
        method, target, headers, _, keep_alive, _, forward = parsed
        if not keep_alive:
            self._broken = True  # (Connection: close: nothing after this request is read)
        self._dispatch(new_request(method, target, headers, body, keep_alive, forward))
        return need

    def _identify_held(self) -> None:
        """``_identify_head`` for the held request (its body passed ``_IDENTIFY_AFTER_BYTES``):
        a refusal answers it, closing, and nothing more is read."""
        self._identified = True
        held = self._held
        if self._precheck is None or held is None:
            return
        try:
            self._precheck(Request(held[0], held[1], held[2], b"", False))
        except GatewayError as exc:
            self._refuse(exc)
        except Exception:  # noqa: BLE001 - a bug in the check: answered, as httptools' path
            # answers an error raised in its callback (400, closing), not left to the body timeout
            log.exception("the head check failed on a held request")
            self._refuse(MalformedRequest("malformed request: the request head could not be checked"))

    def eof_received(self) -> bool | None:
        # A half-closed client may still read the answer to what it already sent.
        if self._active is None and not self._pending:
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.deadline = 0.0
        self._clock.discard(self)
        active = self._active
        if active is not None and not active.finished:
            gone = active.on_client_gone
            active.on_client_gone = None
            if gone is not None:
                gone()
            elif active.upstream is not None:
                # Unblock a paused upstream so the exchange can notice and clean up.
                active.upstream.resume_reading()
        for task in self.tasks:
            task.cancel()
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        active = self._active
        if active is not None and active.upstream is not None:
            active.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        active = self._active
        if active is not None and active.upstream is not None:
            active.upstream.resume_reading()

    # -- httptools callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []
        self._url = b""
        self._head_bytes = 0
        self._body_parts = []
        self._body_bytes = 0
        self._headers_done = False
        self._expect_continue = False
        self._identified = False
        self._te_seen = False
        self._upgrade_seen = False
        self._hosts = 0
        self._in_head = True
        self._msg_started = True
        self._quiet_raw = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_header_bytes:
            raise HeadersTooLarge("request line and headers exceed the size limit")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called once per header, so it does the least it can: the size limit is checked
        # when the head (or the trailers) ends and after each read (the raw-byte bounds in
        # data_received), since one read bounds what piles up in between; only the three
        # framing headers go through checks.
        self._head_bytes += len(name) + len(value) + 4
        name = name.lower()
        if name in _FRAMING_HEADERS:
            self._framing_header(name, value)
        self._headers.append((name, value))

    def _framing_header(self, name: bytes, value: bytes) -> None:
        if name == b"content-length":
            # llhttp has checked the digits; refuse an announced oversize body at once.
            if int(value) > self._limits.max_body_bytes:
                raise BodyTooLarge(
                    f"request body exceeds the limit of {self._limits.max_body_bytes} bytes"
                )
        elif name == b"transfer-encoding":
            if self._te_seen or value.strip().lower() != b"chunked":
                raise MalformedRequest(
                    "unsupported Transfer-Encoding: only a single 'chunked' is accepted"
                )
            self._te_seen = True
        elif name == b"upgrade":
            self._upgrade_seen = True
        elif name == b"host":
            self._hosts += 1
            if not valid_host(value.rstrip(b" \t")):  # (httptools keeps the trailing OWS: not the value)
                raise MalformedRequest("invalid Host header: a request's Host is host[:port] (RFC 9112 §3.2)")
        else:  # expect
            if value.strip().lower() != b"100-continue":
                raise MalformedRequest("unsupported Expect header")
            self._expect_continue = True

    def _check_head_bytes(self) -> None:
        if self._head_bytes > self._limits.max_header_bytes:
            raise self._headers_too_large()

    def _headers_too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(f"request headers exceed the limit of {self._limits.max_header_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._check_head_bytes()
        parser = self._parser
        version = parser.get_http_version()
        self.http11 = version == "1.1"
        if not self.http11 and version != "1.0":
            # llhttp takes HTTP/2.0 and HTTP/0.9 request lines too; served, they were answered
            # as HTTP/1.x, which a front proxy speaking the named version would misread.
            raise HttpVersionNotSupported(
                f"HTTP/{version} is not supported: the gateway speaks HTTP/1.1 and HTTP/1.0")
        if self._te_seen and not self.http11:
            raise MalformedRequest("Transfer-Encoding is not allowed on an HTTP/1.0 request")
        if self._hosts != 1 and (self._hosts or self.http11):
            # RFC 9112 §3.2: an HTTP/1.1 request without Host, or any with two, is a 400; a
            # front proxy that read another Host than ours would route it elsewhere.
            raise MalformedRequest("an HTTP/1.1 request needs exactly one Host header"
                                   if self.http11 else "a request has at most one Host header")
        if self._upgrade_seen and parser.should_upgrade():
            # Refused here, before the request is dispatched: httptools ends an upgrade
            # request's message at its head (its body is the new protocol's bytes), so
            # answering it and then refusing the upgrade was two answers to one request --
            # the first without its body -- and a front proxy's next response was ours.
            raise MalformedRequest("protocol upgrade is not supported")
        self._headers_done = True
        self._in_head = False
        self._head_raw = 0
        # Chunked trailers, if any, arrive through on_header after this: they go to a
        # list that is dropped (RFC 9110 §6.5.1 lets a recipient discard them), so they
        # are never forwarded as if they were headers; their size still counts.
        self._request_headers = self._headers
        self._headers = []
        # The head arrived in time; the body now gets the listener's request timeout.
        if self._active is None:
            self._arm(self._limits.request_body_timeout_s, ServerProtocol._on_head_timeout)
        if self._expect_continue and self._active is None:
            # (a GatewayError here is answered by data_received, closing)
            self._invite_body()

    def _invite_body(self) -> None:
        """Answer the head's ``Expect: 100-continue``: when the head ends with no exchange
        running, else when the running one ends (a pipelined head waits its turn; without
        this its client, waiting for the 100, would wait out the body timeout)."""
        self._expect_continue = False
        self._identify_head()
        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _identify_head(self) -> None:
        """Run the precheck on the head before (the rest of) its body is read: a client with
        a bad key does not get to upload it (a GatewayError refuses the request, closing)."""
        self._identified = True
        if self._precheck is not None:
            self._precheck(
                Request(self._parser.get_method(), self._url, self._request_headers, b"", False)
            )

    def on_chunk_header(self) -> None:
        self._body_progress = True

    def on_body(self, body: bytes) -> None:
        self._body_progress = True
        self._body_bytes += len(body)
        if self._body_bytes > _IDENTIFY_AFTER_BYTES and not self._identified:
            self._identify_head()
        if self._body_bytes > self._limits.max_body_bytes:
            raise BodyTooLarge(
                f"request body exceeds the limit of {self._limits.max_body_bytes} bytes"
            )
        parts = self._body_parts
        if parts and len(body) < _SMALL_PIECE and len(parts[-1]) < _SMALL_PIECE:
            # Tiny chunks gather in one bytearray: kept as bytes objects, a body sent in
            # 2-byte chunks cost ~43 bytes of memory per 2 (a 32 MiB body: ~900 MB).
            last = parts[-1]
            if type(last) is not bytearray:
                last = parts[-1] = bytearray(last)
            last += body
            return
        parts.append(body)

    def on_message_complete(self) -> None:
        self._msg_started = False
        if self._broken:
            return  # an earlier request in this read closed the connection
        self._check_head_bytes()  # trailers count toward the head
        parts = self._body_parts
        body = parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)
        self._body_parts = []
        request = new_request(
            self._parser.get_method(),
            self._url,
            self._request_headers,
            body,
            self._parser.should_keep_alive(),
            None,
            self.http11,
        )
        self._headers_done = False
        self._dispatch(request)

    def _dispatch(self, request: Request) -> None:
        if self._active is None:
            self._start(request)
        else:
            # Pipelined: answer in order; stop reading so at most one request waits.
            self._pending.append(request)
            self._pause_reading()

    # -- exchange lifecycle -----------------------------------------------------------
    def _start(self, request: Request) -> None:
        """Answer ``request`` (no exchange running): its responder, then the handler.
        Compiled where built (``plano_fast/_serve.pyx``; ``start_py`` is this twin)."""
        self.deadline = 0.0  # (_cancel_timer, inline)
        responder = new_responder(
            Responder if request.method != b"HEAD" else HeadResponder,
            self, request.keep_alive and not self.draining, request.http11,
        )
        self._active = responder
        try:
            pending = self._handler(request, responder)
        except GatewayError as exc:
            if self._on_refusal is not None:
                self._on_refusal(exc, request.path, responder)
            responder.send_error(exc, request.api_format)
            return
        except Exception as exc:  # noqa: BLE001 - a handler bug must not leave the client hanging
            self._handler_bug(exc, request, responder)
            return
        if pending is not None:
            self.spawn(self._run(pending, request, responder))
        elif not responder.finished and responder.on_client_gone is None:
            # Neither answered nor handed to upstream callbacks: a handler bug.
            responder.send_error(GatewayError("handler returned without a response"), request.api_format)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run part of an exchange as a task that dies with this connection."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _handler_bug(self, exc: Exception, request: Request, responder: Responder) -> None:
        self.loop.call_exception_handler(
            {"message": "unhandled error in request handler", "exception": exc}
        )
        error = GatewayError("internal gateway error")
        if self._on_refusal is not None:
            self._on_refusal(error, request.path, responder)
        responder.send_error(error, request.api_format)

    async def _run(
        self, pending: Coroutine[Any, Any, None], request: Request, responder: Responder
    ) -> None:
        try:
            await pending
        except asyncio.CancelledError:
            if not responder.finished:
                responder.abort()
            raise
        except GatewayError as exc:
            if self._on_refusal is not None:
                self._on_refusal(exc, request.path, responder)
            responder.send_error(exc, request.api_format)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not leave the client hanging
            self._handler_bug(exc, request, responder)
        if not responder.finished and responder.on_client_gone is None:
            # Neither answered nor handed to upstream callbacks: a handler bug.
            responder.send_error(GatewayError("handler returned without a response"), request.api_format)

    def exchange_done(self, responder: Responder, close: bool, abort: bool = False) -> None:
        if responder is not self._active:
            return
        self._active = None
        if self.lost:
            return
        if abort:
            self._broken = True
            self.transport.abort()
            return
        if close or self.draining:
            self._broken = True  # bytes after this request are not read
            self.transport.close()
            return
        if self._pending:
            self._start(self._pending.popleft())
            if not self._pending:
                self._resume_reading()
            return
        if self._reading_paused:
            self._resume_reading()
        if self._headers_done:
            # The next request's head is in; its body is still arriving.
            if self._expect_continue:
                try:
                    self._invite_body()
                except GatewayError as exc:
                    self._refuse(exc)
                    return
            self._arm(self._limits.request_body_timeout_s, ServerProtocol._on_head_timeout)
        elif self._msg_started:
            self._arm(self._limits.request_head_timeout_s, ServerProtocol._on_head_timeout)
        else:  # the usual keep-alive wait (``_arm``, inline: after every answer)
            self.deadline = self.loop.time() + self._limits.keepalive_timeout_s
            self._on_timeout = ServerProtocol._on_idle_timeout

    def _refuse(self, error: GatewayError) -> None:
        """Answer a request that cannot be parsed or accepted, then close."""
        self._broken = True
        self._cancel_timer()
        self._pause_reading()
        path = self._url.partition(b"?")[0] if self._url else None
        on_refusal = self._on_refusal
        if self._active is not None:
            # An exchange is still answering an earlier request; the client's later bytes
            # are garbage, so finish that answer and close.
            if on_refusal is not None:
                on_refusal(error, path, None)
            self._active._close_after = True
            return
        responder = Responder(self, keep_alive=False)
        self._active = responder
        if on_refusal is not None:
            on_refusal(error, path, responder)
        responder.send_error(error, api_format_for_path(path) if path else ApiFormat.OPENAI)

    # -- shutdown ---------------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful: close now if idle, otherwise after the in-flight response."""
        self.draining = True
        if self._active is None and not self.lost:
            self.transport.close()

    def abort(self) -> None:
        if not self.lost:
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return self._active is None

    @property
    def active(self) -> Responder | None:
        """The responder of the request being answered (None between requests)."""
        return self._active

    # -- timers and reading -----------------------------------------------------------
    def _arm(self, delay_s: float, callback: Callable[[ServerProtocol], None]) -> None:
        self.deadline = self.loop.time() + delay_s
        self._on_timeout = callback

    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def on_deadline(self) -> None:
        self._on_timeout(self)

    def _on_head_timeout(self) -> None:
        if self._active is None and not self.lost:
            self._refuse(RequestHeadTimeout("request was not received within the time limit"))

    def _on_idle_timeout(self) -> None:
        if self._active is None and not self.lost:
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.lost:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self.lost:
            self._reading_paused = False
            self.transport.resume_reading()

    # Used by the exchange while it writes a request upstream (upstream flow control).
    def pause_client_reading(self) -> None:
        self._pause_reading()

    def resume_client_reading(self) -> None:
        if not self._pending:
            self._resume_reading()


def _parser_reason(exc: Exception) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


def new_responder(cls: type[Responder], proto: ServerProtocol, keep_alive: bool, http11: bool = True) -> Responder:
    """``cls(proto, keep_alive, http11)``: the server's constructor of its responders
    (``cls``: Responder or HeadResponder).  Compiled where built
    (``plano_fast/_new_request.pyx``: the slots written in one C call, no ``__init__``
    frame), else this twin."""
    return cls(proto, keep_alive, http11)


data_received_py = ServerProtocol.data_received
start_py = ServerProtocol._start
if os.environ.get(PURE_ENV) != "1":  # the switch every compiled module obeys
    try:
        from plano_fast._new_request import new_request, new_responder  # noqa: E402 - needs the classes
    except ImportError:
        pass
# (after new_request / new_responder: the pass reads them from this module)
install_compiled(ServerProtocol, "plano_fast._serve", data_received="data_received", _start="start")
