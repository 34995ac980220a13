"""A provider's answer in a content coding, read decoded.

The gateway asks every provider for ``Accept-Encoding: identity`` (``wire.upstream_host_lines``;
the client's own Accept-Encoding is never forwarded), so a conforming provider answers in no
coding.  One that compresses anyway (a misconfigured OpenAI-compatible server, a CDN in front
of it) used to leave the row ``usage_missing``: unpriced in firewall and config mode, charged
the reservation's bound under a managed hard limit.  Now, for an answer the gateway reads
(a usage scanner; a status below 400, or an error of a provider called with the gateway's
own key, whose body is redacted of that key: compressed, the redaction saw no key and the
client's decoder gave it back):

* in a coding it can decode (``gzip``, ``deflate``), it is decoded as it comes and the client
  gets it in no coding (:class:`DecodingScanner`; the head without its Content-Encoding and
  its Content-Length, sent chunked).  Everything after the decoding sees the provider's
  bytes as a conforming provider sends them: the usage scanner (which reads the usage and
  cuts out the usage chunk the gateway asked for: ``include_usage`` injected, never meant for
  the client), managed mode's ``HoldTerminal`` (which holds a stream's terminal event until
  billing is done: compressed, ``[DONE]`` could not be seen, so it reached the client before
  the row was written), the stream DLP and the output guardrails (which read nothing in
  compressed bytes), a conversion to the client's format.  This is what a production
  gateway does with an answer its client did not ask to be coded (LiteLLM and Portkey
  decode every upstream answer; nginx's ``gunzip``): the client may not accept the coding
  (it sent no Accept-Encoding, or ``identity``: curl without ``--compressed``), and it
  always accepts none.  The cost, zlib's, falls on such answers only.
* in a coding it cannot (``br``, ``zstd``, ``compress``, a list of codings), it is relayed as
  it is and the scanner reads nothing (:class:`DecodedScanner`: compressed bytes read as
  they are would be noise): the row stays ``usage_missing`` (a hard limit charges its
  bound), and managed mode holds the latest piece of the body until billing is done, as
  for a JSON body (``HoldTerminal.undecodable_coding``): the stream's terminal event cannot
  be found in it.

A conversion of an answer the gateway does not read (an error, an unbilled answer) gets the
decoded bytes from :class:`DecodedFilter`; the response guardrails' hold of such an answer
relays it as it is (it reads only a 2xx answer in no coding).  Decoding is bounded: pieces of at most
:data:`DECODE_PIECE_BYTES`, :data:`MAX_DECODED_BYTES` in all (a decompression bomb stops
there), so memory stays bounded whatever the ratio.  A body that stops decoding (not what
its coding says, or past the cap) after the client's head left is an error of the upstream
(:class:`CodingError`): the answer is cut, never passed on as coded bytes under a head that
says none, nor ended as if it were whole.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Final

from plano_fast import wire as scan

if TYPE_CHECKING:
    from collections.abc import Callable

    from plano_fast.gateway.relay import BodyFilter
    from plano_fast.http_server import Responder

#: decoded bytes produced per decompress call
DECODE_PIECE_BYTES: Final = 256 * 1024
#: decoded bytes read at most; past them nothing more is decoded (the usage stays unread)
MAX_DECODED_BYTES: Final = 256 * 1024 * 1024
#: zlib's wbits per decodable coding (31: gzip; 15: zlib, the HTTP "deflate")
_WBITS: Final = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}


def content_coding(block: bytes) -> bytes | None:
    """The coding of a response whose kept header lines are ``block`` (CRLF-ended): one
    lowercase comma-separated value without ``identity``; None when there is none.  (The
    relay asks ``wire.has_content_encoding`` first: this is for the answers that have one.)"""
    codings: list[bytes] = []
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name.lower() == b"content-encoding":
            codings += [c.strip(b" \t").lower() for c in value.split(b",")]
    codings = [c for c in codings if c and c != b"identity"]
    return b", ".join(codings) or None


def decodable(coding: bytes) -> bool:
    return coding in _WBITS


def without_content_encoding(block: bytes) -> bytes:
    """Header lines ``block`` (CRLF-ended) without their Content-Encoding lines: the head of
    an answer relayed decoded."""
    lines = block.split(b"\r\n")
    return b"\r\n".join(line for line in lines if line.partition(b":")[0].strip(b" \t").lower() != b"content-encoding")


class Decoder:
    """One coded body's decoding, in bounded pieces; ``failed`` once it cannot go on (not
    what its coding says, or past :data:`MAX_DECODED_BYTES`)."""

    __slots__ = ("_zlib", "_wbits", "_decoded", "_started", "failed")

    def __init__(self, coding: bytes) -> None:
        self._wbits = _WBITS.get(coding, 0)
        self._zlib: Any = zlib.decompressobj(self._wbits) if self._wbits else None
        self._decoded = 0
        self._started = False
        self.failed = self._zlib is None

    def decode(self, data: bytes) -> list[bytes]:
        """The decoded pieces of ``data`` (the next bytes of the body)."""
        out: list[bytes] = []
        if self.failed or not data:
            return out
        try:
            piece = self._zlib.decompress(data, DECODE_PIECE_BYTES)
        except zlib.error:
            if self._wbits != 15 or self._started:
                self.failed = True
                return out
            # "deflate" sent raw, without zlib's header, as some servers do
            self._wbits = -15
            self._zlib = zlib.decompressobj(-15)
            try:
                piece = self._zlib.decompress(data, DECODE_PIECE_BYTES)
            except zlib.error:
                self.failed = True
                return out
        self._started = True
        while self._take(piece, out):
            tail = self._zlib.unconsumed_tail
            if not tail:
                break
            try:
                piece = self._zlib.decompress(tail, DECODE_PIECE_BYTES)
            except zlib.error:
                self.failed = True
                break
        return out

    def flush(self) -> bytes:
        """What is left at the body's end."""
        if self.failed:
            return b""
        try:
            piece = self._zlib.flush()
        except zlib.error:
            self.failed = True
            return b""
        out: list[bytes] = []
        self._take(piece, out)
        self.failed = True  # (nothing more is decoded)
        return b"".join(out)

    def _take(self, piece: bytes, out: list[bytes]) -> bool:
        self._decoded += len(piece)
        if self._decoded > MAX_DECODED_BYTES:
            self.failed = True
            return False
        if piece:
            out.append(piece)
        return True


class CodingError(ValueError):
    """A body that does not decode as its coding says (or past :data:`MAX_DECODED_BYTES`)."""


class DecodingScanner:
    """A usage scanner (``wire.UsageScanner``'s API) in front of which an answer in a
    decodable ``coding`` is decoded: what it returns to forward is the decoded body (less
    what ``inner``, the mode's own scanner, cuts out), what it reads is the decoded body."""

    __slots__ = ("_inner", "_decoder", "tap")

    def __init__(self, inner: scan.UsageScanner, coding: bytes) -> None:
        self._inner = inner
        self._decoder = Decoder(coding)
        #: also given every decoded piece (managed mode's Responses state: the raw answer)
        self.tap: Callable[[bytes], None] | None = None

    def feed(self, data: bytes) -> bytes:
        decoder = self._decoder
        pieces = decoder.decode(data)
        if decoder.failed:
            raise CodingError("the answer's body does not decode as its content-encoding says")
        tap = self.tap
        if tap is not None:
            for piece in pieces:
                tap(piece)
        feed = self._inner.feed
        return b"".join([feed(piece) for piece in pieces])

    def feed_from(self, data: bytes, start: int) -> bytes | None:
        return self.feed(data[start:])

    def finish(self) -> bytes:
        tail = self._decoder.flush()
        if tail and self.tap is not None:
            self.tap(tail)
        out = self._inner.feed(tail) if tail else b""
        return out + self._inner.finish()

    def result(self) -> Any:
        return self._inner.result()

    def raw_usage(self) -> bytes | None:
        return self._inner.raw_usage()

    def usage_fields(self) -> tuple[object, ...]:
        return self._inner.usage_fields()


class DecodedScanner:
    """A usage scanner (``wire.UsageScanner``'s API) for an answer relayed as it is in
    ``coding``: what it is fed is forwarded unchanged; the decoded bytes are what it reads
    (nothing when the coding is not decodable: the usage stays missing)."""

    __slots__ = ("_inner", "_decoder")

    def __init__(self, api: int, streaming: bool, coding: bytes) -> None:
        self._inner = scan.UsageScanner(api, streaming, False)
        self._decoder = Decoder(coding)

    def feed(self, data: bytes) -> bytes:
        for piece in self._decoder.decode(data):
            self._inner.feed(piece)
        return data

    def feed_from(self, data: bytes, start: int) -> bytes | None:
        self.feed(data[start:])
        return None

    def finish(self) -> bytes:
        tail = self._decoder.flush()
        if tail:
            self._inner.feed(tail)
        self._inner.finish()
        return b""

    def result(self) -> Any:
        return self._inner.result()

    def raw_usage(self) -> bytes | None:
        return self._inner.raw_usage()

    def usage_fields(self) -> tuple[object, ...]:
        return self._inner.usage_fields()


class DecodedFilter:
    """A body filter that rebuilds the head (a conversion) given the decoded bytes of an
    answer in ``coding``; the head it gets has no Content-Encoding."""

    __slots__ = ("_inner", "_decoder")

    rebuilds_head = True

    def __init__(self, inner: BodyFilter, coding: bytes) -> None:
        self._inner = inner
        self._decoder = Decoder(coding)

    def head(self, responder: Responder, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._inner.head(responder, status, [(n, v) for n, v in headers if n != b"content-encoding"])

    def relay(self, data: bytes, responder: Responder) -> None:
        for piece in self._decoder.decode(data):
            self._inner.relay(piece, responder)

    def read_done(self, responder: Responder) -> None:
        self._inner.read_done(responder)

    def finish(self, responder: Responder, tail: bytes) -> None:
        pieces = self._decoder.decode(tail) if tail else []
        pieces.append(self._decoder.flush())
        self._inner.finish(responder, b"".join(pieces))
