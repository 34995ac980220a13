"""The OTLP protobuf encoding of trace span records (``plano_fast.spans``; no I/O).

A sampled request's spans used to be OpenTelemetry SDK spans, encoded by the SDK's OTLP
encoder: ~35 µs of span bookkeeping per request (context objects, samplers, locked
attribute maps, a ``ReadableSpan`` copy at the end) and ~65 µs to encode its two spans
(a protobuf message object per attribute), measured in-process with cProfile
(benchmarks/results/tracing-cost-20261205.md).  Now a span is a plain record (ids as
ints, ``time.time_ns`` stamps, a dict of attributes) and the export request is written
as bytes: the resource and the instrumentation scope once, each attribute's KeyValue
once per distinct short (key, value) (a bounded cache: provider, model, mode, outcome and
status repeat from one request to the next).

The bytes are the SDK's, byte for byte, for the same spans (tests/test_tracing_otlp.py
compares them with ``encode_spans`` of the SDK's own spans for the same calls): fields in
the order the SDK's protobuf runtime writes them, attributes in the SDK's order (a key
set again moves to the end), the SDK's attribute limits (``SpanLimits``: the oldest
attribute dropped past the count limit and counted, strings cut at the length limit), an
empty ``Status`` for an unset status, the span flags saying whether the parent is remote.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from plano_fast.wire import PURE_ENV

if TYPE_CHECKING:
    from plano_fast.spans import TraceSpan

log = logging.getLogger("plano_fast.tracing")

#: SpanFlags: CONTEXT_HAS_IS_REMOTE, | CONTEXT_IS_REMOTE when the parent came from a client
_FLAGS_LOCAL: Final = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_REMOTE: Final = b"\x85\x01" + struct.pack("<I", 0x300)
#: start_time_unix_nano (7) and end_time_unix_nano (8), fixed64 each, with their tags
_TIMES: Final = struct.Struct("<BQBQ")
_DOUBLE: Final = struct.Struct("<d")
#: the values whose KeyValue encodings are cached.  Not floats: 0.0 == -0.0 (one cache
#: entry would give the other its sign), and the gateway's floats are measurements
#: (``routing.determination_ms``) that seldom repeat.
_CACHED_TYPES: Final = frozenset({str, int, bool})
#: KeyValue encodings kept (the cache is emptied when it reaches this many)
_KV_CACHE_MAX: Final = 4096
#: a longer KeyValue encoding (key and value, UTF-8) is made each time, never cached: a
#: client's header name and value (``http.request.header.*``) reach the 32 KiB head, and
#: 4096 such entries held ~230 MiB; at this bound the cache holds a few MiB at most
_KV_CACHE_ENTRY_MAX: Final = 160


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL: Final = [bytes((i,)) for i in range(0x80)]


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte(s), the length, the payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _text(value: str) -> bytes:
    return value.encode("utf-8")


def any_value(value: Any) -> bytes:
    """An ``AnyValue`` message's bytes (the SDK's ``_encode_value``: None empty, then
    bool, str, int, float, bytes, sequences, mappings; anything else raises)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(b"\x0a", _text(value))
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError(f"Value out of range: {value}")
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` message's bytes."""
    return _field(b"\x0a", _text(key)) + _field(b"\x12", any_value(value))


def attributes_fields(tag: bytes, attributes: Mapping[str, Any]) -> bytes:
    """Repeated ``KeyValue`` fields with ``tag``; an attribute that cannot be encoded is
    left out and logged, as the SDK's encoder does."""
    out = []
    for key, value in attributes.items():
        try:
            out.append(_field(tag, key_value(key, value)))
        except Exception as exc:  # the SDK: "Failed to encode key %s: %s", the others kept
            log.error("Failed to encode key %s: %s", key, exc)
    return b"".join(out)


class OtlpEncoder:
    """``ExportTraceServiceRequest`` bytes for a batch of spans of one resource and one
    instrumentation scope (the gateway's tracer)."""

    #: the caches' bounds (read by the compiled twin too)
    cache_max: Final = _KV_CACHE_MAX
    kv_entry_max: Final = _KV_CACHE_ENTRY_MAX

    def __init__(self, resource_attributes: Mapping[str, Any], resource_schema_url: str,
                 scope_name: str, scope_version: str | None, scope_attributes: Mapping[str, Any] | None,
                 scope_schema_url: str | None) -> None:  # fmt: skip
        # ResourceSpans.resource (field 1): Resource { attributes = 1 }
        self._resource = _field(b"\x0a", attributes_fields(b"\x0a", resource_attributes))
        self._resource_schema = _field(b"\x1a", _text(resource_schema_url)) if resource_schema_url else b""
        # ScopeSpans.scope (field 1): InstrumentationScope { name = 1, version = 2, attributes = 3 }
        scope = _field(b"\x0a", _text(scope_name)) if scope_name else b""
        if scope_version:
            scope += _field(b"\x12", _text(scope_version))
        scope += attributes_fields(b"\x1a", scope_attributes or {})
        self._scope = _field(b"\x0a", scope)
        self._scope_schema = _field(b"\x1a", _text(scope_schema_url)) if scope_schema_url else b""
        self._kv: dict[tuple[str, Any, type], bytes] = {}
        self._heads: dict[tuple[str, int], bytes] = {}
        self._statuses: dict[str, bytes] = {}
        #: an export request's bytes: ``plano_fast._otlp``'s where it is built, else the twin
        self.request: Callable[[Iterable[TraceSpan]], bytes] = self._request_py
        if _compiled is not None:
            self.request = functools.partial(_compiled.request, self)

    def _request_py(self, spans: Iterable[TraceSpan]) -> bytes:
        """The export request of ``spans``, in their order (one join: no nested copies).
        (The pure twin of ``plano_fast._otlp.request``: ``OtlpEncoder.request`` is one or
        the other.)"""
        parts = [b"", b"", self._resource, b"\x12", b"", self._scope]
        size = len(self._scope)
        span = self._span_py
        for s in spans:
            encoded = span(s)
            n = len(encoded)
            length = _SMALL[n] if n < 0x80 else _varint(n)
            parts += (b"\x12", length, encoded)
            size += 1 + len(length) + n
        size += len(self._scope_schema)
        parts[4] = _varint(size)  # ResourceSpans.scope_spans
        size += len(self._resource) + 1 + len(parts[4]) + len(self._resource_schema)
        parts[0], parts[1] = b"\x0a", _varint(size)  # ExportTraceServiceRequest.resource_spans
        parts += (self._scope_schema, self._resource_schema)
        return b"".join(parts)

    def _span_py(self, span: TraceSpan) -> bytes:
        """A ``Span`` message's bytes, its fields in number order as the SDK's protobuf
        runtime writes them (flags, field 16, last).  Name and kind, each attribute's
        ``KeyValue`` of a string value and the status are looked up in caches.  (The pure
        twin of ``plano_fast._otlp._span``, which the compiled ``request`` calls.)"""
        head = self._heads.get((span.name, span.kind)) or self._head(span)
        attributes = span.attributes
        values = attributes.values()
        kvs: list[Any]
        try:  # (key, value, type of value) -> KeyValue field; the type: True == 1 == 1.0
            kvs = list(map(self._kv.get, zip(attributes, values, map(type, values))))
        except TypeError:  # an unhashable value: every attribute the slow way
            kvs = [None] * len(attributes)
        if None in kvs:
            kvs = [kv if kv is not None else self._miss(*item) for item, kv in zip(attributes.items(), kvs)]
        error = span.error
        if error is None:
            status = b"\x7a\x00"  # Status {} (code UNSET)
        else:
            status = self._statuses.get(error) or self._status(error)
        return b"".join((
            b"\x0a\x10", span.trace_id.to_bytes(16, "big"), b"\x12\x08", span.span_id.to_bytes(8, "big"),
            b"\x22\x08" + span.parent_id.to_bytes(8, "big") if span.parent_id else b"",
            head, _TIMES.pack(0x39, span.start_ns, 0x41, span.end_ns), *kvs,
            b"\x50" + _varint(span.dropped) if span.dropped else b"",
            status, _FLAGS_REMOTE if span.remote_parent else _FLAGS_LOCAL,
        ))  # fmt: skip

    def _head(self, span: TraceSpan) -> bytes:
        """The span's name and kind fields (a cache miss), remembered."""
        return self._remember(self._heads, (span.name, span.kind),
                              _field(b"\x2a", span.name.encode("utf-8", "replace")) + b"\x30" + _SMALL[span.kind])

    def _status(self, error: str) -> bytes:
        """The status field of an ERROR status (a cache miss), remembered."""
        description = _field(b"\x12", error.encode("utf-8", "replace")) if error else b""
        return self._remember(self._statuses, error, _field(b"\x7a", description + b"\x18\x02"))

    def _miss(self, key: str, value: Any) -> bytes:
        """An attribute's ``KeyValue`` field (a cache miss), remembered when the value is
        a short scalar (a tuple's items could be equal but of other types: (1,) == (1.0,)).
        (The compiled twin writes a string's here itself, and remembers it alike.)"""
        kv = self._attribute(key, value)
        t = type(value)
        if t in _CACHED_TYPES and len(kv) <= self.kv_entry_max:
            self._remember(self._kv, (key, value, t), kv)
        return kv

    @staticmethod
    def _remember(cache: dict[Any, bytes], key: Any, value: bytes) -> bytes:
        if len(cache) >= OtlpEncoder.cache_max:
            cache.clear()
        cache[key] = value
        return value

    @staticmethod
    def _attribute(key: str, value: Any) -> bytes:
        try:
            return _field(b"\x4a", key_value(key, value))
        except Exception as exc:  # the SDK: "Failed to encode key %s: %s", the others kept
            log.error("Failed to encode key %s: %s", key, exc)
            return b""


_compiled: ModuleType | None
try:
    if os.environ.get(PURE_ENV) == "1":
        raise ImportError(PURE_ENV)
    from plano_fast import _otlp as _compiled

    ENCODER_IMPLEMENTATION: Final = "cython"
except ImportError:
    _compiled = None
    ENCODER_IMPLEMENTATION: Final = "python"  # type: ignore[misc]


def compiled() -> ModuleType | None:
    """``plano_fast._otlp`` where it is built (and ``PLANO_FAST_PURE_SCANNER`` is not "1"),
    else None: read when an encoder or a ``Tracing`` is made."""
    return _compiled
