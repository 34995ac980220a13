"""The one-credential rules (plano_fast.credentials) on their own: the usual
``Authorization: Bearer <token>`` short cut gives what the general rules
(``_bearer_credential``) give."""

from __future__ import annotations

import pytest

from plano_fast.credentials import Credential, _bearer_credential, _header_credential
from plano_fast.errors import Unauthorized


VALUES = [
    b"Bearer sk-1", b"Bearer sk-proj-AbC_123.x~", b"bearer sk-1", b"BEARER sk-1", b"Bearer  sk-1",
    b"Bearer sk-1 ", b" Bearer sk-1", b"Bearer\tsk-1", b"Bearer sk 1", b"Bearer ", b"Bearer",
    b"Basic dXNlcjpw", b"Bearer sk-\x7f", b"Bearer sk-\xc3\xa9", b"Bearer \x00", b"", b"Bearer\x00sk",
]  # fmt: skip


@pytest.mark.parametrize("value", VALUES)
def test_authorization_short_cut_agrees_with_the_general_rules(value: bytes) -> None:
    try:
        expected: Credential | str = _bearer_credential(value)
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
