"""Type stub for the compiled scanner (plano_fast/wire/_scan.pyx); see plano_fast.wire._scan_py."""

from typing import Final

from plano_fast.wire._shared import ScanError as ScanError

API_OPENAI_CHAT: Final = 1
API_OPENAI_RESPONSES: Final = 2
API_ANTHROPIC: Final = 3
API_GEMINI: Final = 4

MAX_DEPTH: Final = 512
MAX_BODY_BYTES: Final = 33554432
MAX_EVENT_BYTES: Final = 8388608
MAX_HOLD_BYTES: Final = 65536
MAX_MODEL_BYTES: Final = 256
MAX_TOKEN_COUNT: Final = 999999999999999999
MAX_RAW_USAGE_BYTES: Final = 4096

class RequestFields:
    @property
    def model(self) -> str | None: ...
    @property
    def stream(self) -> bool: ...
    @property
    def include_usage(self) -> bool | None: ...
    @property
    def max_output_tokens(self) -> int | None: ...
    def __init__(
        self,
        model: str | None,
        stream: bool,
        include_usage: bool | None,
        max_output_tokens: int | None,
    ) -> None: ...
    def __eq__(self, other: object) -> bool: ...

def scan_request(body: bytes) -> RequestFields: ...
def rewrite_request(
    body: bytes, model: str | None = None, inject_include_usage: bool = False
) -> bytes: ...

class Usage:
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def has_usage(self) -> bool: ...
    @property
    def model(self) -> str | None: ...
    @property
    def is_error(self) -> bool: ...
    @property
    def tool_use_prompt_tokens(self) -> int: ...
    @property
    def cache_write_1h_tokens(self) -> int: ...
    @property
    def audio_input_tokens(self) -> int: ...
    @property
    def audio_output_tokens(self) -> int: ...
    def __init__(
        self,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        has_usage: bool = False,
        model: str | None = None,
        is_error: bool = False,
        tool_use_prompt_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        audio_input_tokens: int = 0,
        audio_output_tokens: int = 0,
    ) -> None: ...
    def __eq__(self, other: object) -> bool: ...

class UsageScanner:
    def __init__(self, api: int, streaming: bool, strip_usage_chunk: bool = False) -> None: ...
    def feed(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...
    def result(self) -> Usage: ...
    def raw_usage(self) -> bytes | None: ...
