"""Incremental framing of upstream stream bodies (pure, no I/O).

:class:`SSEParser` turns Server-Sent-Events bytes split at *arbitrary* points into
``(event name, data)`` pairs: ``\\n``, ``\\r\\n`` and ``\\r`` line ends (a ``\\r\\n`` split
across two chunks is one line end), ``:`` comment lines ignored, multi-line ``data``
joined with ``\\n``, one optional space after the colon removed.  :class:`JSONArrayParser`
does the same for Gemini's ``streamGenerateContent`` without ``alt=sse`` (a JSON array
streamed element by element).  Both hold at most ``limit`` bytes of one incomplete event
and raise :class:`ConversionError` (502) beyond it.
"""

from __future__ import annotations

from plano_fast.convert.errors import ConversionError

#: default bound on the bytes of one incomplete upstream event
MAX_EVENT_BYTES = 1 << 20

Event = tuple[str | None, bytes]
_BOM = b"\xef\xbb\xbf"


def _too_big(limit: int) -> ConversionError:
    return ConversionError(f"upstream stream event exceeds the {limit}-byte buffer", status=502)


class SSEParser:
    __slots__ = ("_buf", "_skip_lf", "_data", "_size", "_event", "_limit", "_at_start")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        #: no byte read yet: one leading UTF-8 BOM is skipped (WHATWG: "One leading U+FEFF
        #: BYTE ORDER MARK character must be ignored if any are present")
        self._at_start = True
        self._buf = b""  # an incomplete line (no terminator seen yet)
        self._skip_lf = False  # the last byte seen was "\r": a leading "\n" belongs to it
        self._data: list[bytes] = []  # data lines of the event being read
        self._size = 0
        self._event: str | None = None
        self._limit = limit

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._at_start:
            start = self._buf + chunk if self._buf else chunk
            if len(start) < 3 and _BOM.startswith(start):
                self._buf = start  # (a BOM split across reads)
                return []
            self._at_start = False
            self._buf = b""
            chunk = start[3:] if start.startswith(_BOM) else start
            if not chunk:
                return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 10:
                chunk = chunk[1:]
                if not chunk:
                    return []
        data = self._buf + chunk if self._buf else chunk
        nl = data.rfind(b"\n")
        cr = data.rfind(b"\r")
        end = nl if nl > cr else cr
        if end < 0:
            if self._size + len(data) > self._limit:
                raise _too_big(self._limit)
            self._buf = data
            return []
        rest = data[end + 1 :]
        self._buf = rest
        complete = data[: end + 1]
        if cr >= 0:
            if end == cr and not rest:
                self._skip_lf = True
            complete = complete.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = complete.split(b"\n")
        lines.pop()  # "" after the final terminator
        events: list[Event] = []
        for line in lines:
            self._line(line, events)
        if self._size + len(rest) > self._limit:
            raise _too_big(self._limit)
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append((self._event, data))
                self._data = []
                self._size = 0
            self._event = None
            return
        if line[0] == 58:  # ":" comment / keep-alive
            return
        colon = line.find(b":")
        if colon < 0:
            field, value = line, b""
        else:
            field, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._limit:
                raise _too_big(self._limit)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        # "id", "retry" and unknown fields are ignored

    def close(self) -> list[Event]:
        """End of input: a last line without terminator and an event without the final
        blank line are still delivered (upstreams do end like that)."""
        events: list[Event] = []
        if self._buf:
            line, self._buf = self._buf, b""
            self._line(line, events)
        self._line(b"", events)
        return events


class JSONArrayParser:
    """``[{...},\\r\\n{...}]`` -> the bytes of each top-level object as it completes."""

    __slots__ = ("_buf", "_pos", "_depth", "_in_str", "_esc", "_start", "_limit")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._depth = 0
        self._in_str = False
        self._esc = False
        self._start = 0
        self._limit = limit

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        buf += chunk
        out: list[bytes] = []
        depth, in_str, esc, start = self._depth, self._in_str, self._esc, self._start
        i, n = self._pos, len(buf)
        while i < n:
            c = buf[i]
            if in_str:
                if esc:
                    esc = False
                elif c == 92:  # backslash
                    esc = True
                elif c == 34:
                    in_str = False
            elif c == 34:
                in_str = depth > 0
            elif c == 123 or (c == 91 and depth > 0):  # "{" or a nested "["
                if depth == 0:
                    start = i
                depth += 1
            elif (c == 125 or c == 93) and depth > 0:
                depth -= 1
                if depth == 0:
                    out.append(bytes(buf[start : i + 1]))
            i += 1
        if depth == 0:
            del buf[:]
            i = start = 0
        elif start:
            del buf[:start]
            i -= start
            start = 0
        self._depth, self._in_str, self._esc, self._start, self._pos = depth, in_str, esc, start, i
        if len(buf) > self._limit:
            raise _too_big(self._limit)
        return out
