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
    b"Bearer \tsk-1", b"bearer\t sk-1", b"Bearer sk-1\t", b"\tBearer sk-1",
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


def test_only_spaces_separate_the_scheme_from_the_token() -> None:
    """RFC 9110 11.4: ``auth-scheme 1*SP token68``.  The field's own optional whitespace
    around the value (spaces and tabs) is not the key's; a tab between scheme and token is
    a 401 (was: ``Bearer <TAB>KEY`` accepted, the tab stripped with the spaces)."""
    for value in (b"Bearer sk-1", b"Bearer   sk-1", b"\tBearer sk-1\t ", b"bearer sk-1"):
        assert _bearer_credential(value).secret == b"sk-1", value
    for value in (b"Bearer\tsk-1", b"Bearer \tsk-1", b"Bearer\t sk-1", b"Bearer \t sk-1"):
        with pytest.raises(Unauthorized):
            _bearer_credential(value)
