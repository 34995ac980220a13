"""The one-credential rules (plano_fast.credentials) on their own: the usual
``Authorization: Bearer <token>`` short cut gives what the general rules give."""

from __future__ import annotations

import pytest

from plano_fast.credentials import Credential, _check_token, _header_credential
from plano_fast.errors import Unauthorized


def _general(value: bytes) -> Credential:
    """The general rules for an Authorization value (the short cut's reference)."""
    scheme, _, rest = value.strip(b" \t").partition(b" ")
    token = rest.strip(b" \t")
    if scheme.lower() != b"bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    _check_token(token)
    return Credential(token, b"authorization: Bearer " + token + b"\r\n")


VALUES = [
    b"Bearer sk-1", b"Bearer sk-proj-AbC_123.x~", b"bearer sk-1", b"BEARER sk-1", b"Bearer  sk-1",
    b"Bearer sk-1 ", b" Bearer sk-1", b"Bearer\tsk-1", b"Bearer sk 1", b"Bearer ", b"Bearer",
    b"Basic dXNlcjpw", b"Bearer sk-\x7f", b"Bearer sk-\xc3\xa9", b"Bearer \x00", b"", b"Bearer\x00sk",
]  # fmt: skip


@pytest.mark.parametrize("value", VALUES)
def test_authorization_short_cut_agrees_with_the_general_rules(value: bytes) -> None:
    try:
        expected: Credential | str = _general(value)
    except Unauthorized as exc:
        expected = str(exc)
    try:
        got: Credential | str = _header_credential(b"authorization", value)
    except Unauthorized as exc:
        got = str(exc)
    if isinstance(expected, str):
        assert got == expected
    else:
        assert isinstance(got, Credential)
        assert (got.secret, got.line) == (expected.secret, expected.line)
