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
  compressed bytes), the key's redaction of an error body (``operator_key.redact``, the one
  mask, run on the decoded bytes), a conversion to the client's format.  This is what a
  production gateway does with an answer its client did not ask to be coded (LiteLLM and
  Portkey decode every upstream answer; nginx's ``gunzip``): the client may not accept the
  coding (it sent no Accept-Encoding, or ``identity``: curl without ``--compressed``), and it
  always accepts none.  The cost, zlib's, falls on such answers only.
* in a coding it cannot (``br``, ``zstd``, ``compress``, a list of codings), it is relayed as
  it is and the scanner reads nothing (:class:`DecodedScanner`: compressed bytes read as
  they are would be noise): the row stays ``usage_missing`` (a hard limit charges its
  bound), and managed mode holds the latest piece of the body until billing is done, as
  for a JSON body (``HoldTerminal.undecodable_coding``): the stream's terminal event cannot
  be found in it.  An error of a provider called with the gateway's key in such a coding
  is the gateway's 502 (its key's mask cannot read it).

A conversion of an answer the gateway does not read (an error, an unbilled answer) gets the
decoded bytes from :class:`DecodedFilter`; the response guardrails' hold of such an answer
relays it as it is (it reads only a 2xx answer in no coding).

Decoded: ``gzip`` (``x-gzip``; every member of a multi-member body) and ``deflate`` (the
zlib format RFC 9110 §8.4.1.2 names, or the raw deflate some servers send, told apart by the
first two bytes, whatever the split of the reads), with the standard library's zlib.

Decoding is bounded (a decompression bomb -- ~1,030 decoded bytes a coded byte -- costs no
more than an answer of its decoded size would): each decoded piece, at most
:data:`DECODE_PIECE_BYTES`, goes to its reader before the next is made; at most
:data:`MAX_RATIO` decoded bytes a coded byte past :data:`RATIO_FLOOR_BYTES` (so one upstream
read, uvloop's 256 KiB at most, decodes at most ~20 MiB on the event loop, the most a
:class:`DecodingScanner` hands on from one read); at most :data:`MAX_DECODED_BYTES` in all
for a stream, :data:`MAX_DECODED_JSON_BYTES` for a whole answer (what the usage scanner reads
of one).  Past a limit, at a byte that is not the coding's, or at a body whose coding never
ended, nothing more is decoded and the answer is not a whole one: relayed decoded, the
client's answer is cut (:class:`CodingError`: no last chunk, or the gateway's 502 when its
head has not left), never passed on as coded bytes under a head that says none, nor ended
as if it were whole; converted, a 502 / a stream cut short; relayed as sent, as sent.  The
row is ``usage_missing`` (a hard limit charges its bound).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from plano_fast import wire as scan
from plano_fast.conversion import ConversionFailed

if TYPE_CHECKING:
    from plano_fast.gateway.relay import BodyFilter
    from plano_fast.http_server import Responder

#: decoded bytes produced per decompress call: the most a decoder holds at once (each piece
#: goes to its reader before the next is made)
DECODE_PIECE_BYTES: Final = 256 * 1024
#: decoded bytes read at most from a stream; past them nothing more is decoded (the usage
#: stays unread)
MAX_DECODED_BYTES: Final = 256 * 1024 * 1024
#: decoded bytes read at most from a whole (non-streamed) answer: the usage scanner reads
#: no more than this of one (``wire.MAX_BODY_BYTES``, its ``has_usage`` False past them)
MAX_DECODED_JSON_BYTES: Final = scan.MAX_BODY_BYTES
#: decoded bytes per coded byte at most, past :data:`RATIO_FLOOR_BYTES`.  Real answers
#: compress 6-38 to 1 (the recorded answers in tests/data/fixtures, gzip -9, whole); a bomb
#: reaches ~1,030 to 1, so one 256 KiB read decoded ~256 MiB on the event loop at once
#: (benchmarks/results/review-l-20261206.md).  Apache mod_deflate's
#: ``DeflateInflateRatioLimit`` (200 by default) is the same guard for request bodies;
#: lower here, as a read's whole output is decoded and scanned before the loop goes on.
MAX_RATIO: Final = 64
#: decoded bytes read whatever the ratio (an answer that repeats itself compresses past
#: the ratio and is still small); one read decodes at most this plus MAX_RATIO x its size
#: (~20 MiB for uvloop's 256 KiB reads)
RATIO_FLOOR_BYTES: Final = 4 * 1024 * 1024
#: zlib's wbits per decodable coding (31: gzip; 15: zlib, the HTTP "deflate")
_WBITS: Final = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}
_GZIP: Final = 31


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


def _zlib_header(first: bytes) -> bool:
    """Whether a "deflate" body's first two bytes are a zlib header (RFC 1950: method 8, a
    window of at most 32 KiB, the check bits, no preset dictionary); else it is raw deflate,
    as some servers send it."""
    cmf, flg = first[0], first[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0 and not flg & 0x20


class Decoder:
    """One coded body's decoding, each decoded piece (at most :data:`DECODE_PIECE_BYTES`)
    handed to a reader as it is made; ``failed`` once it cannot go on (not what its coding
    says, past ``max_decoded_bytes`` or :data:`MAX_RATIO`).

    A gzip body is a series of members (RFC 1952 §2.2; a server may compress each flush as
    one): all are decoded, as Python's gzip module and urllib3 do; bytes after the last one
    that start no member end the decoding there.  A "deflate" body is read as zlib or raw
    deflate by its first two bytes (the choice made once two have arrived, whatever the
    split of the reads); bytes after its end are ignored."""

    __slots__ = ("_zlib", "_wbits", "_decoded", "_coded", "_limit", "_first", "_members", "ended", "failed")

    def __init__(self, coding: bytes, max_decoded_bytes: int = MAX_DECODED_BYTES) -> None:
        self._wbits = _WBITS.get(coding, 0)
        #: None until a "deflate" body's first two bytes say which format it is
        self._zlib: Any = zlib.decompressobj(self._wbits) if self._wbits == _GZIP else None
        self._decoded = 0
        self._coded = 0
        self._limit = max_decoded_bytes
        self._first = b""
        self._members = 1
        #: the body's end was read (``flush``), or bytes after a gzip body's last member
        self.ended = False
        self.failed = not self._wbits

    def decode(self, data: bytes, read: Callable[[bytes], object]) -> None:
        """Decode ``data`` (the next bytes of the body), each piece given to ``read``."""
        if self.failed or self.ended or not data:
            return
        z = self._zlib
        if z is None:
            data = self._first + data
            if len(data) < 2:
                self._first = data
                return
            self._first = b""
            z = self._zlib = zlib.decompressobj(15 if _zlib_header(data) else -15)
        self._coded += len(data)
        while data:
            if z.eof:
                if self._wbits != _GZIP:
                    return  # (bytes after a zlib / raw deflate stream's end: ignored)
                z = self._zlib = zlib.decompressobj(_GZIP)  # the next member
                self._members += 1
            try:
                piece = z.decompress(data, DECODE_PIECE_BYTES)
            except zlib.error:
                if self._members > 1:
                    self.ended = True  # trailing bytes, not a member: the body ends before them (urllib3's rule)
                else:
                    self.failed = True
                return
            if piece and not self._take(piece, read):
                return
            data = z.unused_data if z.eof else z.unconsumed_tail

    def flush(self, read: Callable[[bytes], object]) -> None:
        """The body's end: what is left to ``read``; nothing more is decoded after it."""
        z = self._zlib
        if self.failed or self.ended:
            self.ended = True
            return
        self.ended = True
        if z is None:  # a "deflate" body of one byte: no format has one
            self.failed = bool(self._first)
            return
        try:
            piece = z.flush()
        except zlib.error:
            self.failed = True
            return
        if piece:
            self._take(piece, read)
        if not z.eof and self._coded:
            # (an empty body -- a HEAD's, a bodyless error's -- is an empty answer, as urllib3
            # and curl read it, and as an empty "deflate" body already was above)
            # the coding's end never came (a gzip member without its trailer, a deflate
            # stream without its last block): a body cut short, as Python's gzip module
            # says (EOFError), not one read whole
            self.failed = True

    def _take(self, piece: bytes, read: Callable[[bytes], object]) -> bool:
        self._decoded += len(piece)
        if self._decoded > self._limit or self._decoded > RATIO_FLOOR_BYTES + MAX_RATIO * self._coded:
            self.failed = True
            return False
        read(piece)
        return True



class CodingError(ValueError):
    """A body that does not decode as its coding says (a byte that is not the coding's, a
    coding that never ended, past a limit of :class:`Decoder`)."""


class _DecodedUsage:
    """What a scanner reading decoded bytes reports: its inner scanner's usage, none when
    the decoding failed (not read whole: ``has_usage`` False, the row ``usage_missing``;
    a hard limit charges at least its bound), the counts seen so far kept as a cut stream
    keeps them."""

    __slots__ = ()
    _inner: Any
    _decoder: Decoder

    def result(self) -> Any:
        usage: Any = self._inner.result()
        if self._decoder.failed and usage.has_usage:
            key = usage._key()
            return type(usage)(*key[:5], False, *key[6:])
        return usage

    def raw_usage(self) -> bytes | None:
        return None if self._decoder.failed else self._inner.raw_usage()

    def usage_fields(self) -> tuple[object, ...]:
        return (*self.result()._key(), self.raw_usage())


class DecodingScanner(_DecodedUsage):
    """A usage scanner (``wire.UsageScanner``'s API) in front of which an answer in a
    decodable ``coding`` is decoded: what it returns to forward is the decoded body (less
    what ``inner``, the mode's own scanner, cuts out), what it reads is the decoded body.

    ``feed`` raises :class:`CodingError` once the decoding failed (the relay's upstream
    error: the answer is cut).  At the body's end (``finish``) an error would reach no one
    (the upstream connection has let go of the exchange): ``failed`` says it and the relay
    cuts the answer (``Exchange.on_upstream_complete``).  Like :class:`DecodedScanner`, a
    failed decoding has no usage (``usage_missing``)."""

    __slots__ = ("_inner", "_decoder", "_coding", "_out", "tap")

    def __init__(self, inner: scan.UsageScanner, coding: bytes, streaming: bool) -> None:
        self._inner = inner
        self._coding = coding
        self._decoder = Decoder(coding, MAX_DECODED_BYTES if streaming else MAX_DECODED_JSON_BYTES)
        #: what ``inner`` forwards of the pieces decoded from one read (the bound: a read's
        #: output, ~20 MiB at most; see the module's docstring)
        self._out: list[bytes] = []
        #: also given every decoded piece (managed mode's Responses state: the raw answer)
        self.tap: Callable[[bytes], object] | None = None

    @property
    def failed(self) -> bool:
        return self._decoder.failed

    def _read(self, piece: bytes) -> None:
        tap = self.tap
        if tap is not None:
            tap(piece)
        out = self._inner.feed(piece)
        if out:
            self._out.append(out)

    def feed(self, data: bytes) -> bytes:
        self._decoder.decode(data, self._read)
        out, self._out = self._out, []
        if self._decoder.failed:
            raise CodingError(f"upstream answer in content-encoding {self._coding.decode('latin-1')!r} "
                              "could not be decoded")
        return b"".join(out)

    def feed_from(self, data: bytes, start: int) -> bytes | None:
        return self.feed(data[start:])

    def finish(self) -> bytes:
        self._decoder.flush(self._read)
        out, self._out = self._out, []
        out.append(self._inner.finish())
        return b"".join(out)


class DecodedScanner(_DecodedUsage):
    """A usage scanner (``wire.UsageScanner``'s API) for an answer relayed as it is in
    ``coding``: what it is fed is forwarded unchanged; the decoded bytes are what it reads
    (nothing when the coding is not decodable: the usage stays missing).  An answer whose
    decoding failed (not its coding, cut short by a bad byte, past a limit) was not read
    whole: no usage counted (``has_usage`` False, the row ``usage_missing``; a hard limit
    charges at least its bound), the counts seen so far kept as a cut stream keeps them."""

    __slots__ = ("_inner", "_decoder", "_read")

    def __init__(self, api: int, streaming: bool, coding: bytes) -> None:
        self._inner = scan.UsageScanner(api, streaming, False)
        self._decoder = Decoder(coding, MAX_DECODED_BYTES if streaming else MAX_DECODED_JSON_BYTES)
        self._read = self._inner.feed

    def feed(self, data: bytes) -> bytes:
        self._decoder.decode(data, self._read)
        return data

    def feed_from(self, data: bytes, start: int) -> bytes | None:
        self.feed(data[start:])
        return None

    def finish(self) -> bytes:
        self._decoder.flush(self._read)
        self._inner.finish()
        return b""


class DecodedFilter:
    """A body filter that rebuilds the head (a conversion) given the decoded bytes of an
    answer in ``coding`` the gateway does not read (an error, an unbilled answer: one it
    reads is decoded by :class:`DecodingScanner`); the head it gets has no Content-Encoding.
    An answer with a byte that is not its coding's (or past a limit) is an upstream failure
    (``ConversionFailed``, raised to the relay while the body is read): the client gets the
    gateway's 502, or a stream cut short, not a converted answer that looks whole but is not
    the provider's."""

    __slots__ = ("_inner", "_decoder", "_coding")

    rebuilds_head = True

    def __init__(self, inner: BodyFilter, coding: bytes) -> None:
        self._inner = inner
        self._decoder = Decoder(coding)
        self._coding = coding

    def head(self, responder: Responder, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._inner.head(responder, status, [(n, v) for n, v in headers if n != b"content-encoding"])

    def relay(self, data: bytes, responder: Responder) -> None:
        inner = self._inner
        self._decoder.decode(data, lambda piece: inner.relay(piece, responder))
        self._check()

    def read_done(self, responder: Responder) -> None:
        self._inner.read_done(responder)

    def finish(self, responder: Responder, tail: bytes) -> None:
        pieces: list[bytes] = []
        self._decoder.decode(tail, pieces.append)
        self._check()
        # (a coding whose end never came is found here, every byte of the answer decoded
        # and converted already: the converter has the last word -- a JSON answer cut short
        # does not parse, its 502 -- and the row is usage_missing (DecodedScanner).  An
        # error raised now would reach no one: the response is the relay's to end.)
        self._decoder.flush(pieces.append)
        self._inner.finish(responder, b"".join(pieces))

    def _check(self) -> None:
        if self._decoder.failed:
            raise ConversionFailed(f"upstream answer in content-encoding {self._coding.decode('latin-1')!r} "
                                   "could not be decoded")
