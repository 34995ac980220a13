"""The output estimate of a streamed answer whose usage could not be read
(``client_disconnected_estimated``: the client left and the provider's answer could not be
read to its usage).

Why not the answer's bytes / 4: an SSE stream is mostly framing and JSON envelope (an
OpenAI chunk is ~170 bytes around a ~4-byte token), so bytes / 4 counted about 17 times the
output.  The estimate is the generated text's UTF-8 bytes / 4 (a token is about four bytes
of English text; the same rule as ``count_tokens``' estimate), the text being what the
provider generates: delta text, reasoning / thinking text and tool-call arguments.

The gateway never keeps the bytes it relays (the hot path only scans them), so the meter
only sees what is read after the client left (``ContentMeter.feed``, from the drain).  The
bytes relayed before that are estimated at the share of text the drained events showed
(framing per event is about constant within a stream); so are the bytes drained after the
first ``SAMPLE_EVENT_BYTES`` of events, unparsed (bounded work on the event loop).  When the
drained events carried no text at all, there is no share: the part relayed before counts
at bytes / 4.  When no whole event was drained,
there is no share to apply and bytes / 4 of what was seen is kept (an upper bound of the
text, as before).  A non-streamed (JSON) answer cut short cannot be parsed: bytes / 4 too
(one envelope, small against the text).

Whatever it counts, an output estimate never exceeds the request's own output bound when
it sets one (``output_bound``: its ``max_tokens`` / ``max_completion_tokens`` /
``max_output_tokens`` / ``generationConfig.maxOutputTokens`` times its choices, ``n`` or
``candidateCount``): the provider cannot generate more, reasoning included.  Bytes / 4
of a framed stream counted 833 output tokens for a ``max_tokens: 50`` request.

Runs only on that rare path: no cost on a request whose usage is read.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from plano_fast.managed.bounds import UnboundedContent, _choices
from plano_fast.wire import API_ANTHROPIC, API_GEMINI, API_OPENAI_CHAT, API_OPENAI_RESPONSES, ScanError, scan_request

BYTES_PER_TOKEN: Final = 4
#: a UTF-8 byte order mark: skipped once at the body's start
_BOM: Final = b"\xef\xbb\xbf"
#: an SSE event larger than this is counted as framing, not parsed (bounded work and memory)
MAX_EVENT_BYTES: Final = 1 << 20
#: events parsed before the share of text is taken as known: what comes after is counted at
#: that share, unparsed (the drain runs on the event loop: a 256 KiB read parsed whole
#: was a 46 ms stretch; the share is about constant within a stream)
SAMPLE_EVENT_BYTES: Final = 64 << 10


def tokens_of_bytes(n: int) -> int:
    """``n`` bytes at four a token, rounded up, at least 1 (never zero)."""
    return max(1, (n + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN)


def output_bound(body: bytes) -> int | None:
    """The most output tokens the request ``body`` lets the provider generate: its output
    ceiling (the largest it names, as the managed reservation reads it) times its
    choices; None when it names no ceiling or cannot be read that far (no cap then)."""
    try:
        ceiling = scan_request(body).max_output_tokens
    except (ScanError, ValueError):
        return None
    if ceiling is None:
        return None
    choices = 1
    if b'"n"' in body or b"andidate" in body or b"\\u" in body:  # (else no parse)
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if type(doc) is not dict:
            return None
        try:  # the reservation's own reading (a copy disagreed with it: halved caps)
            choices = _choices(doc)
        except UnboundedContent:
            return None  # (the provider refuses it or reads it some other way: no cap)
    return ceiling * choices


def capped(tokens: int, body: bytes) -> int:
    """An output estimate ``tokens`` capped at the request's ``output_bound`` (if any)."""
    bound = output_bound(body)
    return tokens if bound is None else min(tokens, bound)


def _text_bytes(value: object) -> int:
    return len(value.encode("utf-8", "surrogatepass")) if type(value) is str else 0


def _openai_chat(doc: dict[str, Any]) -> int:
    n = 0
    choices = doc.get("choices")
    for choice in choices if type(choices) is list else ():
        delta = choice.get("delta") if type(choice) is dict else None
        if type(delta) is not dict:
            continue
        for key in ("content", "reasoning_content", "reasoning", "refusal"):
            n += _text_bytes(delta.get(key))
        calls = delta.get("tool_calls")
        for call in calls if type(calls) is list else ():
            fn = call.get("function") if type(call) is dict else None
            if type(fn) is dict:
                n += _text_bytes(fn.get("arguments")) + _text_bytes(fn.get("name"))
    return n


def _responses(doc: dict[str, Any]) -> int:
    kind = doc.get("type")
    return _text_bytes(doc.get("delta")) if type(kind) is str and kind.endswith(".delta") else 0


def _anthropic(doc: dict[str, Any]) -> int:
    delta = doc.get("delta") if doc.get("type") == "content_block_delta" else None
    if type(delta) is not dict:
        return 0
    return sum(_text_bytes(delta.get(key)) for key in ("text", "thinking", "partial_json"))


def _gemini(doc: dict[str, Any]) -> int:
    n = 0
    candidates = doc.get("candidates")
    for cand in candidates if type(candidates) is list else ():
        content = cand.get("content") if type(cand) is dict else None
        parts = content.get("parts") if type(content) is dict else None
        for part in parts if type(parts) is list else ():
            if type(part) is not dict:
                continue
            n += _text_bytes(part.get("text"))
            call = part.get("functionCall")
            if type(call) is dict:
                args = json.dumps(call.get("args"), separators=(",", ":"), ensure_ascii=False)
                n += len(args.encode("utf-8", "surrogatepass"))
    return n


_TEXT_OF: Final = {API_OPENAI_CHAT: _openai_chat, API_OPENAI_RESPONSES: _responses,
                   API_ANTHROPIC: _anthropic, API_GEMINI: _gemini}  # fmt: skip


class ContentMeter:
    """Counts the whole SSE events fed to it (``event_bytes``, framing included) and the
    generated text they carry (``text_bytes``), for scan API ``api``."""

    __slots__ = (
        "text_of", "pending", "event_bytes", "text_bytes", "mid_event", "head_bytes", "unparsed_bytes", "at_body_start",
    )  # fmt: skip

    def __init__(self, api: int, mid_event: bool = False) -> None:
        """``mid_event``: the meter starts where the relay stopped, maybe inside an event:
        the bytes up to the first event's end then belong to the part relayed before
        (``head_bytes``), not to a drained event."""
        self.text_of = _TEXT_OF.get(api, _openai_chat)
        self.pending = b""
        self.event_bytes = 0
        self.text_bytes = 0
        self.mid_event = mid_event
        self.head_bytes = 0
        self.unparsed_bytes = 0  # read after the sample: counted at its share of text
        #: the first event is the body's first: one leading UTF-8 BOM is skipped there, as
        #: the scanners, the SSE parser and the stream DLP do (WHATWG SSE); else its first
        #: line was not read as ``data:`` and that event's text went uncounted
        self.at_body_start = not mid_event

    def feed(self, data: bytes) -> None:
        """More of the answer (any split point): each event completed is counted."""
        if self.event_bytes >= SAMPLE_EVENT_BYTES:
            self.unparsed_bytes += len(data)
            return
        buf = self.pending + data if self.pending else data
        start = 0
        while True:
            end, sep = _event_end(buf, start)
            if end < 0:
                break
            if self.mid_event:
                self.mid_event = False
                self.head_bytes += end + sep - start
            else:
                event = buf[start:end]
                if self.at_body_start:
                    self.at_body_start = False
                    event = event.removeprefix(_BOM)  # (counted as framing below)
                self._event(event)
                self.event_bytes += end + sep - start
            start = end + sep
            if self.event_bytes >= SAMPLE_EVENT_BYTES:  # the sample is complete
                self.unparsed_bytes += len(buf) - start
                self.pending = b""
                return
        rest = buf[start:]
        if len(rest) > MAX_EVENT_BYTES:  # a huge event: framing, not parsed (bounded memory)
            self.event_bytes += len(rest)
            rest = b""
        self.pending = rest

    def _event(self, event: bytes) -> None:
        lines = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        data = b"\n".join(line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:"))
        if not data or data == b"[DONE]":
            return
        try:
            doc = json.loads(data)
            if type(doc) is dict:
                self.text_bytes += self.text_of(doc)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            return

    def output_tokens(self, bytes_before: int) -> int:
        """The output estimate: the drained text, plus the ``bytes_before`` relayed before
        the meter started (and what was read after its sample) at the drained events'
        share of text (bytes / 4 of everything when no whole event was drained)."""
        bytes_before += self.head_bytes
        if not self.event_bytes:
            return tokens_of_bytes(bytes_before + len(self.pending))
        if not self.text_bytes:
            # The drained events carried no text (a finish chunk, pings, keep-alive
            # comments): no share to apply, so what was relayed before counts at bytes / 4,
            # the upper bound, rather than at a share of 0 (which billed 1 token).
            return tokens_of_bytes(bytes_before)
        outside = bytes_before + self.unparsed_bytes + len(self.pending)
        return tokens_of_bytes(self.text_bytes + outside * self.text_bytes // self.event_bytes)


#: an SSE event ends at a blank line, in any of the three line-end spellings
_EVENT_END: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def _event_end(buf: bytes, start: int) -> tuple[int, int]:
    """Where the first SSE event at or after ``start`` ends (a blank line), and the length
    of that blank line's separator; (-1, 0) when none is complete yet.  One left-to-right
    search: a separator the stream never uses must not be looked for to the buffer's end
    once per event (that was quadratic in a drained read: 0.3 s for one 256 KiB read)."""
    found = _EVENT_END.search(buf, start)
    if found is None:
        return -1, 0
    return found.start(), found.end() - found.start()
