"""Type stub for the compiled DLP detectors (plano_fast/wire/_dlp.pyx); see plano_fast.wire._dlp_py."""

from typing import Final

MAX_DEPTH: Final = 96
FORMATS: Final[dict[str, int]]

def scan_text(text: str, mask: int) -> list[tuple[int, int, int]]: ...
def scan_body(
    body: bytes, fmt: str, mask: int, every: bool
) -> list[tuple[int, int, bool, list[tuple[int, int, int]]]] | None: ...
