"""What both implementations of the wire modules share: the scanner's public constants, its
error type and messages, the JSON string helpers the compiled scanner calls back into, and
the header relay's Connection-token reader.

Pure Python and imported by both twins (``_scan_py`` / ``_scan.pyx``, ``_head_py`` /
``_head.pyx``), so a constant or a message is written once; tests/test_scan.py checks the
compiled module's own C constants against these.
"""

from __future__ import annotations

import json
import json.encoder
from typing import Any, Final

class ScanError(ValueError):
    """Malformed input for the byte scanner (shared by both implementations)."""


API_OPENAI_CHAT: Final = 1
API_OPENAI_RESPONSES: Final = 2
API_ANTHROPIC: Final = 3
API_GEMINI: Final = 4

MAX_DEPTH: Final = 512
MAX_BODY_BYTES: Final = 32 * 1024 * 1024
MAX_EVENT_BYTES: Final = 8 * 1024 * 1024
MAX_HOLD_BYTES: Final = 64 * 1024
MAX_MODEL_BYTES: Final = 256
MAX_TOKEN_COUNT: Final = 10**18 - 1
MAX_RAW_USAGE_BYTES: Final = 4096

# Error messages (type errors; the JSON syntax messages differ between the twins).
MSG_NOT_OBJECT: Final = "request body must be a JSON object"
MSG_MODEL_TYPE: Final = 'request "model" must be a string'
MSG_MODEL_SURROGATE: Final = 'request "model" contains a lone surrogate escape'
MSG_STREAM_TYPE: Final = 'request "stream" must be a boolean'
MSG_STREAM_OPTIONS_TYPE: Final = 'request "stream_options" must be an object'
MSG_INCLUDE_USAGE_TYPE: Final = 'request "stream_options.include_usage" must be a boolean'
MSG_GENERATION_CONFIG_TYPE: Final = 'request "generationConfig" must be an object'
MAX_KEYS: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def msg_max_type(key: str) -> str:
    return f'request "{key}" must be an integer between 0 and {MAX_TOKEN_COUNT}'


#: Request members that must appear at most once (by the compiled scanner's slot order:
#: model, stream, stream_options, stream_options.include_usage, max_tokens,
#: max_completion_tokens, max_output_tokens, generationConfig.maxOutputTokens,
#: generationConfig).  Parsers disagree on duplicates (json.loads keeps the last, others
#: the first), so a repeated one could route or meter one value while the provider acts on
#: another: refused instead.
DUPLICATE_NAMES: Final = (
    "model",
    "stream",
    "stream_options",
    "stream_options.include_usage",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "generationConfig.maxOutputTokens",
    "generationConfig",
    # the conversation itself: the guardrails (DLP floor, guard models) read JSON's last
    # copy, a first-wins parser upstream would act on the first
    "messages",
    "contents",
    "input",
    "system",
)


def msg_duplicate(name: str) -> str:
    return f'request member "{name}" appears more than once; send it once'


# ---------------------------------------------------------------------------------------------
# JSON strings (valid ones: the scanners have checked the syntax)


class ConstantError(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise ConstantError(name)


DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def decode_json_string(raw: bytes) -> str:
    """Decode one JSON string token (with its quotes) that is already known to be valid."""
    value = DECODER.decode(raw.decode("utf-8"))
    assert isinstance(value, str)
    return value


def encode_json_string(value: str) -> bytes:
    """JSON-encode ``value`` like ``json.dumps(value, ensure_ascii=False)``."""
    if type(value) is not str:
        raise TypeError(f"model must be a str, not {type(value).__name__}")
    try:
        return json.encoder.encode_basestring(value).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: fall back to \\u escapes
        return json.encoder.encode_basestring_ascii(value).encode("ascii")


def has_lone_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# ---------------------------------------------------------------------------------------------
# header relay

#: ``response_head``'s refusal (both twins) of a status line naming an HTTP version other than
#: 1.x: llhttp takes ``HTTP/2.0`` and ``HTTP/0.9`` status lines (and refuses ``HTTP/1.2``); an
#: answer framed by another version is not one an HTTP/1.1 relay can read (RFC 9110 §6.2: a
#: major version it does not implement), so it is the 502 of a malformed head
UPSTREAM_VERSION_ERROR = "unsupported HTTP version in the upstream status line: only HTTP/1.x answers are relayed"


def connection_tokens(value: bytes, tokens: set[bytes] | None) -> set[bytes] | None:
    """Add the header names a Connection value lists (keep-alive and close are options)."""
    for token in value.split(b","):
        token = token.strip(b" \t").lower()
        if token and token not in (b"keep-alive", b"close"):
            tokens = tokens if tokens is not None else set()
            tokens.add(token)
    return tokens
