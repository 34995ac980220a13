"""The upstream side: keep-alive connection pools per origin, DNS cache, response relay.

One ``UpstreamConnection`` (an asyncio.Protocol) carries one request at a time.  Its
response is parsed by httptools and each parsed piece is handed to the ``ResponseSink``
(the exchange) straight from ``data_received`` — no task, no queue, no await per chunk —
so an SSE event reaches the client in the same loop iteration it arrived in.  A plain
answer that arrives whole in one read (the common non-streaming case) skips httptools:
``wire.parse_response_head`` (compiled; a strict subset of what llhttp accepts, checked against
it in tests/test_response_fast_path.py) reads it in one pass and the same sink calls follow.

Pool rules (after httpcore): all pool state changes in one synchronous step; idle
connections are kept LIFO (the most recently used is the most likely to still be open); a
connection is dropped when it has been idle longer than ``idle_timeout_s`` or when the
server closed it (``connection_lost`` while idle removes it at once).  Errors are
translated into gateway errors at this one boundary, each saying whether a retry is safe:
only a connect failure, or a *reused* connection that died before any response byte, may
be retried — then on a fresh connection, once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Protocol, cast

import httptools

from plano_fast.deadlines import DeadlineClock
from plano_fast.errors import UpstreamConnectError, UpstreamError, UpstreamStalled, UpstreamTimeout
from plano_fast.wire import ResponseHead, response_head
from plano_fast.wire import parse_response_head as _parse_response

Header = tuple[bytes, bytes]

# A response head larger than this is refused (502): httptools itself sets no bound, and a
# provider's head is ~2 KiB.  nginx's default proxy_buffer_size is 4-8 KiB.
MAX_RESPONSE_HEAD_BYTES = 64 * 1024

# Upstream write-buffer marks: past the high mark the client stops being read.
UPSTREAM_WRITE_HIGH_WATER = 256 * 1024
UPSTREAM_WRITE_LOW_WATER = 64 * 1024


#: An upstream response's head as the client will get it: ``status``, ``block`` (the kept
#: header lines, CRLF-ended, ready to follow the gateway's own status line: the rules are
#: plano_fast.wire._head_py's), ``content_length`` (None unless Content-Length framed),
#: ``chunked``, and ``headers()`` (the block parsed, for the few paths that rewrite an
#: answer).  Compiled (plano_fast/wire/_head.pyx): one is built per upstream answer.
UpstreamHead = ResponseHead


class ResponseSink(Protocol):
    """Receives one upstream response as it is parsed (implemented by the exchange)."""

    def on_upstream_head(self, head: UpstreamHead) -> None: ...

    def on_upstream_body(self, data: bytes) -> None: ...

    def on_upstream_complete(self) -> None: ...

    def on_upstream_error(self, error: UpstreamError, retry_safe: bool) -> None: ...

    def on_upstream_read_done(self) -> None:
        """One socket read has been parsed: write out what it produced."""

    def on_upstream_pause_writing(self) -> None: ...

    def on_upstream_resume_writing(self) -> None: ...


Origin = tuple[str, str, int, str | None]  # scheme, host, port, local (egress) address


class DnsCache:
    """getaddrinfo results cached for ``ttl_s``; IP literals bypass it."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, int], tuple[float, list[tuple[int, str]]]] = {}

    async def resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(family, host)
                return [(family, host)]
            except OSError:
                pass
        now = time.monotonic()
        entry = self._entries.get((host, port))
        if entry is not None and entry[0] > now:
            return entry[1]
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[tuple[int, str]] = []
        for family, _, _, _, sockaddr in infos:
            item = (int(family), str(sockaddr[0]))
            if item not in addresses:
                addresses.append(item)
        if not addresses:
            raise OSError(f"no address for {host}")
        self._entries[(host, port)] = (now + self._ttl_s, addresses)
        return addresses


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to a provider; one request at a time."""

    # Slots: the compiled read path (plano_fast/gateway/_answer.pyx) reads and writes them
    # in place; a dict attribute from C is a generic lookup (~150 instructions each).
    __slots__ = (
        "_pool",
        "origin",
        "transport",
        "_parser",
        "_sink",
        "_head_buf",
        "_chunked",
        "_has_length",
        "_head_seen",
        "_received_any",
        "_reading_paused",
        "deadline",
        "_first_byte_timeout_s",
        "_idle_timeout_s",
        "_last_rx",
        "reused",
        "closed",
        "idle_since",
        # the pool's idle list for ``origin`` (``UpstreamPool._idle[origin]``), kept by the
        # compiled release (``_answer._release``) once it found it: no origin hashed an answer
        "idle_stack",
    )

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self._pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._sink: ResponseSink | None = None
        #: the response's bytes until its head is complete (then relayed as a block)
        self._head_buf = b""
        self._chunked = False
        self._has_length = False
        self._head_seen = False
        self._received_any = False
        self._reading_paused = False
        #: first-byte / stall check due at this loop time (0 = none), on the pool's clock
        self.deadline = 0.0
        self._first_byte_timeout_s = 0.0
        self._idle_timeout_s = 0.0
        self._last_rx = 0.0
        self.reused = False
        self.closed = False
        self.idle_since = 0.0
        self.idle_stack: list[UpstreamConnection] | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("active" if self._sink else "idle")
        return f"<UpstreamConnection {self.origin[0]}://{self.origin[1]}:{self.origin[2]} {state}>"

    # -- used by the exchange ---------------------------------------------------------
    def send_request(
        self,
        data: list[bytes],
        sink: ResponseSink,
        first_byte_timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        assert self.transport is not None and self._sink is None
        self._sink = sink
        self._received_any = False
        self._head_buf = b""
        self._chunked = False
        self._has_length = False
        self._head_seen = False
        self._first_byte_timeout_s = first_byte_timeout_s
        self._idle_timeout_s = idle_timeout_s
        loop = self._pool.loop
        self._last_rx = now = loop.time()
        self.deadline = now + first_byte_timeout_s
        self.transport.writelines(data)

    @property
    def sink(self) -> ResponseSink | None:
        """Whom this connection's answer goes to (None: no request in flight); read at
        the gateway's stop only (``app._stop_unanswered``)."""
        return self._sink

    def sending(self) -> bool:
        """Part of the request is still in the write buffer: the provider answered before
        reading all of it (an early 413, a server answering after the head).  Such a
        connection is not reused: the next request's bytes would queue behind the unread
        rest, and a provider that stopped reading never sees them (a 504 at the first-byte
        timeout for another client; under a hard limit, charged its whole reservation)."""
        transport = self.transport
        return transport is not None and transport.get_write_buffer_size() > 0

    def detach(self) -> None:
        """The exchange gives up on this response (client gone): close, never reuse."""
        self._sink = None
        self._close()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self._last_rx = self._pool.loop.time()
            self.transport.resume_reading()

    # -- asyncio callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(UPSTREAM_WRITE_HIGH_WATER, UPSTREAM_WRITE_LOW_WATER)
        self._pool.clock.add(self)

    def data_received(self, data: bytes) -> None:
        if self._sink is None:
            # Bytes on an idle connection: the server is confused; never reuse it.
            self._close()
            return
        self._last_rx = now = self._pool.loop.time()
        if not self._received_any:
            # From the first byte on, the idle timeout applies (checked lazily: on_deadline
            # re-arms from the last byte); without this a first-byte timeout longer than
            # the idle one would delay the first idle check until it expired.
            self._received_any = True
            self.deadline = now + self._idle_timeout_s
        sink = self._sink
        if not self._head_seen:
            buf = self._head_buf
            if not buf and _parse_response is not None:
                # At a message boundary: a whole plain answer in this read (the common
                # case) is taken in one compiled pass instead of llhttp and three callbacks
                # (its ResponseHead built in that pass: wire.parse_response_head).
                parsed = _parse_response(data, MAX_RESPONSE_HEAD_BYTES)
                if parsed is not None:
                    take_whole_answer_py(self, sink, data, parsed)
                    return
            self._head_buf = buf + data if buf else data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # The sink raised while handling a piece; it has already dealt with it.
            cause = exc.__context__
            self._fail(UpstreamError(f"error relaying upstream response: {cause!r}"), False)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"invalid response from upstream: {exc}"), False)
        else:
            if not self._head_seen and len(self._head_buf) > MAX_RESPONSE_HEAD_BYTES:
                self._fail(UpstreamError(
                    f"upstream response head exceeds {MAX_RESPONSE_HEAD_BYTES} bytes"), False)
        sink.on_upstream_read_done()

    #: the twin of the compiled ``data_received`` (plano_fast/gateway/_answer.pyx), which
    #: replaces the method where it is built
    data_received_py = data_received

    def _take_whole_response(
        self, sink: ResponseSink, data: bytes, parsed: tuple[UpstreamHead, bool, int]
    ) -> None:
        """What the httptools callbacks do for a response ``parse_response_head`` accepted
        (the parser is left at the message boundary, where it already was)."""
        head, keep_alive, head_len = parsed
        self._head_seen = True
        self._has_length = True
        try:
            sink.on_upstream_head(head)
            if head.content_length and self._sink is not None:
                sink.on_upstream_body(data[head_len:])
            self._message_complete(keep_alive)
        except Exception as exc:  # noqa: BLE001 - as a callback's error under httptools
            self._fail(UpstreamError(f"error relaying upstream response: {exc!r}"), False)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._pool.forget(self)
        self._pool.connections_closed += 1  # once per connection made (asyncio's contract)
        sink = self._sink
        if sink is None:
            return
        if self._head_seen and not self._chunked and not self._has_length and exc is None:
            # A close-delimited body (RFC 9112 §6.3 rule 8) ends with the connection: with
            # its orderly close (EOF).  A reset (``exc`` set) is a cut, not its end: relayed
            # as the end, the client got a falsely complete answer and the row was "ok"
            # with the usage seen before the cut (a Gemini stream's running counts).
            self._sink = None
            sink.on_upstream_complete()
            return
        if not self._received_any:
            self._fail(
                UpstreamConnectError("upstream closed the connection before responding"),
                retry_safe=self.reused,
            )
        else:
            self._fail(UpstreamError("upstream closed the connection mid-response"), False)

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.on_upstream_pause_writing()

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.on_upstream_resume_writing()

    # -- httptools callbacks ----------------------------------------------------------
    # No on_header: llhttp checks the head, and the head is relayed from the bytes it
    # arrived as (plano_fast.wire), not rebuilt header by header in Python.
    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        block, length, chunked, end = response_head(self._head_buf)
        if end < 0:
            raise UpstreamError("upstream response head could not be delimited")
        if status < 200:
            # 1xx interim responses (100 Continue, 103 Early Hints) are not relayed.
            self._head_buf = self._head_buf[end:]
            return
        assert self._sink is not None
        self._head_buf = b""
        self._head_seen = True
        self._chunked = chunked
        self._has_length = length >= 0
        self._sink.on_upstream_head(
            UpstreamHead(status, block, None if chunked or length < 0 else length, chunked)
        )

    def on_body(self, body: bytes) -> None:
        if self._sink is not None:
            self._sink.on_upstream_body(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return
        self._message_complete(self._parser.should_keep_alive())

    def _message_complete(self, keep_alive: bool) -> None:
        sink = self._sink
        self._sink = None
        self.deadline = 0.0  # (_cancel_timer, inline)
        keep = keep_alive and not self.closed and not self.sending()
        if keep:
            # llhttp starts the next message on the same parser (a new one per response
            # cost ~3k instructions: httptools looks up every callback at construction).
            self._pool.release(self)
        else:
            self._close()
        if sink is not None:
            sink.on_upstream_complete()

    # -- internals --------------------------------------------------------------------
    def on_deadline(self) -> None:
        if self._sink is None or self.closed:
            return
        loop = self._pool.loop
        if not self._received_any:
            self._fail(UpstreamTimeout(
                f"upstream sent no response within {self._first_byte_timeout_s:g}s "
                "(first-byte timeout)"), False)
            return
        if self._reading_paused:
            # The client is slow, not the provider: keep waiting.
            self.deadline = loop.time() + self._idle_timeout_s
            return
        remaining = self._last_rx + self._idle_timeout_s - loop.time()
        if remaining > 0:
            self.deadline = loop.time() + remaining
            return
        if not self._head_seen:
            # Only an interim (1xx) answer, or part of a head, came: nothing was relayed,
            # so this is no stall mid-response but no final answer (a 504 before the head).
            self._fail(UpstreamTimeout(
                f"upstream sent no final response: nothing for {self._idle_timeout_s:g}s after an "
                "interim (1xx) response or part of a head (idle timeout)"), False)
            return
        self._fail(UpstreamStalled(
            f"upstream stalled mid-response: nothing for {self._idle_timeout_s:g}s (idle timeout)"), False)

    def _fail(self, error: UpstreamError, retry_safe: bool) -> None:
        sink = self._sink
        self._sink = None
        self._close()
        if sink is not None:
            sink.on_upstream_error(error, retry_safe)

    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def _close(self) -> None:
        self._cancel_timer()
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self.transport is not None:
                self.transport.abort()


def take_whole_answer_py(
    conn: UpstreamConnection, sink: ResponseSink, data: bytes, parsed: tuple[UpstreamHead, bool, int]
) -> None:
    """A whole plain answer in one read (``parse_response_head`` took it): the sink's
    callbacks, as httptools would call them, then the read's end."""
    conn._take_whole_response(sink, data, parsed)
    sink.on_upstream_read_done()



class UpstreamPool:
    """Keep-alive connections per origin (scheme, host, port, egress address)."""

    # Slots for what the compiled read path (plano_fast/gateway/_answer.pyx) reads on every
    # answer, in place (a dict attribute from C is a generic lookup: ~250 instructions
    # each, four per answer; ``idle_timeout_s``: the compiled take_idle, _forward.pyx); a
    # __dict__ for the rest (a harness may replace ``connect``).
    __slots__ = ("loop", "closed", "_idle", "max_idle_per_origin", "idle_timeout_s", "__dict__")

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        idle_timeout_s: float,
        max_idle_per_origin: int,
        dns_ttl_s: float,
        clock: DeadlineClock,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        #: checks active connections' first-byte and stall timeouts
        self.clock = clock
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_idle_per_origin = max_idle_per_origin
        self.dns = DnsCache(dns_ttl_s)
        self._ssl = ssl_context
        #: an origin's list is never replaced or deleted, only appended to and popped (and
        #: cleared once ``closed`` is set): a connection keeps its list (``idle_stack``)
        self._idle: dict[Origin, list[UpstreamConnection]] = {}
        self.connections_opened = 0
        #: opened - closed: the connections open now (idle or carrying a request)
        self.connections_closed = 0
        self.closed = False

    def __repr__(self) -> str:
        idle = sum(len(v) for v in self._idle.values())
        return f"<UpstreamPool idle={idle} opened={self.connections_opened}>"

    @property
    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    @property
    def busy_count(self) -> int:
        """Connections carrying a request now (open and not idle; one closed but not yet
        told ``connection_lost`` counts too, until it is)."""
        idle = 0
        for stack in self._idle.values():
            idle += len(stack)
        return self.connections_opened - self.connections_closed - idle

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # Verified against the system CA store; HTTP/1.1 only.
            ctx = ssl.create_default_context()
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl = ctx
        return self._ssl

    def take_idle(self, origin: Origin) -> UpstreamConnection | None:
        stack = self._idle.get(origin)
        if not stack:
            return None
        now = self.loop.time()
        while stack:
            conn = stack.pop()
            if conn.closed or now - conn.idle_since > self.idle_timeout_s:
                conn._close()
                continue
            conn.reused = True
            return conn
        return None

    async def connect(self, origin: Origin, timeout_s: float | None = None) -> UpstreamConnection:
        """A new connection to ``origin`` within ``timeout_s`` (the pool's own by default;
        a model provider may set its own ``connect_timeout``)."""
        scheme, host, port, local_addr = origin
        try:
            async with asyncio.timeout(self.connect_timeout_s if timeout_s is None else timeout_s):
                addresses = await self.dns.resolve(host, port)
                last_exc: BaseException | None = None
                for family, address in addresses:
                    try:
                        _, proto = await self.loop.create_connection(
                            lambda: UpstreamConnection(self, origin),
                            address,
                            port,
                            family=family,
                            ssl=self.ssl_context() if scheme == "https" else None,
                            server_hostname=host if scheme == "https" else None,
                            local_addr=(local_addr, 0) if local_addr else None,
                        )
                        break
                    except OSError as exc:
                        last_exc = exc
                else:
                    raise last_exc or OSError("no address")
        except TimeoutError:
            raise UpstreamConnectError(
                f"timed out connecting to upstream {host}:{port}"
            ) from None
        except ssl.SSLError as exc:
            raise UpstreamConnectError(f"TLS error with upstream {host}:{port}: {exc.reason}") from None
        except OSError as exc:
            raise UpstreamConnectError(
                f"cannot connect to upstream {host}:{port}: {exc.strerror or exc}"
            ) from None
        assert isinstance(proto, UpstreamConnection)
        sock = proto.transport.get_extra_info("socket") if proto.transport else None
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.connections_opened += 1
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        if self.closed or conn.closed:
            conn._close()
            return
        stack = self._idle.setdefault(conn.origin, [])
        if len(stack) >= self.max_idle_per_origin:
            conn._close()
            return
        conn.idle_since = self.loop.time()
        stack.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.clock.discard(conn)
        stack = self._idle.get(conn.origin)
        if stack and conn in stack:
            stack.remove(conn)

    def sweep(self) -> None:
        """Close idle connections past their idle timeout (called periodically)."""
        now = self.loop.time()
        for stack in self._idle.values():
            for conn in [c for c in stack if now - c.idle_since > self.idle_timeout_s]:
                conn._close()

    def close(self) -> None:
        self.closed = True
        for stack in list(self._idle.values()):
            for conn in list(stack):
                conn._close()
        self._idle.clear()

