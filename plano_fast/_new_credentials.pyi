"""Type stub for plano_fast/_new_credentials.pyx; see plano_fast.credentials.new_client_headers."""

from collections.abc import Callable

from plano_fast.credentials import ClientHeaders, Credential

CLIENT_FIELDS: tuple[str, ...]
CREDENTIAL_FIELDS: tuple[str, ...]

def new_client_headers(
    block: bytes, operator_block: bytes, seen_version: bool, request_id: bytes | None,
    credential: Credential | None, query: bytes,
) -> ClientHeaders: ...
def new_credential(secret: bytes, line: bytes) -> Credential: ...
def plain_bearer(value: bytes) -> Credential | None: ...
def install_key_hash(
    memo: dict[int, tuple[int, str]], salt: bytes, slow: Callable[[bytes], str]
) -> None: ...
def key_hash(key: bytes) -> str: ...
