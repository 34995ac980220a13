"""Cross-format exchanges: a client speaking one API in front of a provider speaking another.

Used by config mode when the client's endpoint and the provider's wire API differ:
``/v1/messages`` (Claude Code and the anthropic SDK) in front of OpenAI-compatible
providers, ``/v1/chat/completions`` in front of Anthropic's native Messages API, and
``/v1/responses`` (Codex CLI, the Agents SDK) in front of any provider without a native
Responses endpoint (chat completions, Messages or Gemini upstream).
Only this path parses and re-encodes JSON; same-format traffic never comes here.

Usage is read by the scanner from the *upstream* bytes, before conversion, so billing
sees the provider's own counts with the provider's semantics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plano_fast import wire as scan
from plano_fast.convert import ConversionError, StreamConverter, convert_error, convert_response
from plano_fast.convert._common import dumps as json_dumps
from plano_fast.convert._common import loads as json_loads
from plano_fast.errors import ApiFormat, ClientError, GatewayError
from plano_fast.http_server import Responder

__all__ = ["SCAN_API_FOR_WIRE", "Conversion", "ConversionFailed", "json_dumps", "json_loads", "request_error"]

# JSON through orjson (stdlib fallback for what orjson refuses: lone surrogates, NaN, big
# ints): parsing and re-encoding a converted request and its answer took ~35 us with the
# stdlib json module and ~5 us with orjson (a chat answer of 8 words + a Responses request).

# A converted non-streamed answer is buffered whole; bigger answers are refused (502).
MAX_BUFFERED_RESPONSE_BYTES = 64 * 1024 * 1024

SCAN_API_FOR_WIRE = {
    "openai": scan.API_OPENAI_CHAT,
    "anthropic": scan.API_ANTHROPIC,
    "gemini": scan.API_GEMINI,
}


class ConversionFailed(GatewayError):
    status = 502
    source = "upstream"
    code = "conversion_error"


def request_error(exc: ConversionError) -> GatewayError:
    return ClientError(str(exc)) if exc.status < 500 else ConversionFailed(str(exc))


class Conversion:
    """Per-exchange conversion state: the response side of one cross-format exchange."""

    __slots__ = ("source", "target", "client_model", "streaming", "stream", "buffer", "size",
                 "status", "headers", "request", "on_response")

    #: a body filter of the exchange (plano_fast.gateway.relay.BodyFilter) that answers the head
    rebuilds_head = True
    #: a coded answer is given to it decoded, an error's too (plano_fast.gateway.coded_answer)
    reads_decoded = True

    def __init__(
        self, source: str, target: str, client_model: str, streaming: bool, include_usage: bool,
        request: dict[str, Any] | None = None,
        on_response: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.source = source  # the upstream's format
        self.target = target  # the client's format
        self.client_model = client_model
        self.streaming = streaming
        #: the client's request when its answer echoes it (Responses API clients)
        self.request = request
        #: called with the client's answer object once complete (Responses conversation state)
        self.on_response = on_response
        self.stream = (
            StreamConverter(source, target, client_model=client_model, include_usage=include_usage,
                            request=request)
            if streaming else None
        )
        self.buffer: list[bytes] = []
        self.size = 0
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []

    def head(self, responder: Responder, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Streams start at once; a JSON answer (or any error) waits for its whole body."""
        self.status = status
        if status < 400 and self.stream is not None:
            responder.send_head(status, headers, None)
        else:
            self.headers = [(n, v) for n, v in headers if n != b"content-type"]

    def relay(self, data: bytes, responder: Responder) -> None:
        if not data:
            return
        if self.stream is not None and self.status < 400:
            try:
                out = self.stream.feed(data)
            except ConversionError as exc:
                responder.send_body(self.stream.error_event(str(exc)))
                responder.abort()
                return
            responder.send_body(out)
            return
        self.size += len(data)
        if self.size > MAX_BUFFERED_RESPONSE_BYTES:
            raise ConversionFailed("upstream answer too large to convert")
        self.buffer.append(data)

    def read_done(self, responder: Responder) -> None:
        responder.flush()

    def finish(self, responder: Responder, tail: bytes) -> None:
        """Send the rest, converted; the caller ends the response."""
        if self.stream is not None and self.status < 400:
            out = self.stream.feed(tail) + self.stream.finish() if tail else self.stream.finish()
            responder.send_body(out)
            final = self.stream.final_response
            if final is not None and self.on_response is not None:
                self.on_response(final)
            return
        if tail:
            self.buffer.append(tail)
        body = b"".join(self.buffer)
        ctype = (b"content-type", b"application/json")
        if self.status >= 400:
            status, converted = convert_error(self.status, body, self.source, self.target)
        else:
            status = self.status
            try:
                answer = convert_response(json_loads(body), self.source, self.target,
                                          client_model=self.client_model, request=self.request)
                converted = json_dumps(answer)
                if self.on_response is not None:
                    self.on_response(answer)
            except (ConversionError, ValueError) as exc:
                error = ConversionFailed(f"upstream answer could not be converted: {exc}")
                status, converted = error.status, error.body(_FORMATS[self.target])
        self.buffer = []
        responder.send_head(status, [*self.headers, ctype], len(converted))
        responder.send_body(converted)


_FORMATS = {
    "openai": ApiFormat.OPENAI,
    "anthropic": ApiFormat.ANTHROPIC,
    "gemini": ApiFormat.GEMINI,
    "responses": ApiFormat.OPENAI,
}
