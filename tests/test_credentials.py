"""The one-credential rules (plano_fast.credentials) on their own: the usual
``Authorization: Bearer <token>`` short cut gives what the general rules
(``_bearer_credential``) give; which query parameters count as credentials."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plano_fast import credentials
from plano_fast.credentials import Credential, _bearer_credential, _header_credential, split_query_key
from plano_fast.errors import ClientError, Unauthorized


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


#: Credential names other services read from a query, found forwarded unchecked beside the
#: verified key by a review: x-api-key's and Azure API Management's header names, the usual
#: ``api_token`` / ``token`` / ``access_key``.
MORE_QUERY_CREDENTIALS = [b"x-api-key", b"x_api_key", b"X-Api-Key", b"ocp-apim-subscription-key",
                          b"Ocp-Apim-Subscription-Key", b"api_token", b"token", b"TOKEN", b"access_key",
                          b"access-key", b"%74oken"]  # fmt: skip


@pytest.mark.parametrize("name", MORE_QUERY_CREDENTIALS)
def test_more_credential_names_in_the_query_are_counted_never_taken_as_the_key(name: bytes) -> None:
    """Was: ``?x-api-key=``, ``?ocp-apim-subscription-key=``, ``?api_token=``, ``?token=``,
    ``?access_key=`` were ordinary parameters, forwarded as sent (beside the verified key:
    a second credential nobody checked).  Now each counts as a credential (removed from the
    query) and is not the key: the caller refuses it (401)."""
    assert split_query_key(b"alt=sse&" + name + b"=sk-other") == (1, None, b"alt=sse")


@pytest.mark.parametrize("name", [b"pageToken", b"page_token", b"nextPageToken", b"tokens", b"key_id",
                                  b"monkey", b"access_keys", b"max_tokens", b"prettyPrint"])  # fmt: skip
def test_names_that_merely_contain_a_credential_name_are_ordinary_parameters(name: bytes) -> None:
    """The names are compared exactly after normalising: ``pageToken`` (Google's paging) is
    not ``token``.  (``alt=1`` is no longer ordinary: the test below.)"""
    query = b"alt=sse&" + name + b"=1"
    assert split_query_key(query) == (0, None, query)


@pytest.mark.parametrize("query", [b"fields=candidates", b"%24fields=candidates", b"%2524fields=x", b"FIELDS=x",
                                   b"alt=proto", b"$alt=media", b"alt=1", b"alt=", b"alt=sse&alt=proto",
                                   b"callback=f", b"%24callback=f", b"$ct=text/plain", b"$httpMethod=GET",
                                   b"alt=sse;fields=x", b"key=K&fields=x",
                                   # alt twice with different values (which one Google takes is undocumented)
                                   b"alt=json&alt=sse", b"alt=sse&%24alt=json", b"$alt=sse&alt=%6Aso%6E",
                                   b"alt=sse;alt=json"])  # fmt: skip
def test_answer_shaping_system_parameters_are_refused(query: bytes) -> None:
    """Google's system parameters that change the form of the answer (a field mask without
    usageMetadata, protobuf, JSONP, a Content-Type or method override) are a 400 naming the
    parameter, in every spelling Google reads (``$name``, percent-encoded), before the
    credential is even read."""
    with pytest.raises(ClientError) as refused:
        split_query_key(query)
    assert type(refused.value) is ClientError and refused.value.status == 400
    assert "would change the form of the provider's answer" in refused.value.message


def test_alt_given_twice_with_one_value_passes() -> None:
    """The same value twice (any spelling) leaves nothing to choose: forwarded as sent."""
    for query in (b"alt=sse&alt=sse", b"alt=sse&%24alt=%73se", b"alt=json&prettyPrint=false&alt=json"):
        assert split_query_key(query) == (0, None, query)


@pytest.mark.parametrize("query", [b"alt=sse;key=K", b"key=K;alt=sse", b"alt=sse;api_key=K", b"a=1&alt=sse;key=K",
                                   b"key=K;", b"alt=sse&x=1;token=K"])  # fmt: skip
def test_a_credential_in_a_semicolon_joined_part_is_refused(query: bytes) -> None:
    """Was: an ``&``-part holding a credential between ``;`` was dropped whole, so
    ``alt=sse;key=K`` lost ``alt=sse`` (the stream answered as one JSON array), while Google,
    which splits on ``&`` only, reads ``alt`` as ``sse;key=K``.  The gateway cannot tell which
    reading a provider takes: now 401."""
    with pytest.raises(Unauthorized, match="';'-joined"):
        split_query_key(query)


def test_semicolons_without_a_credential_are_left_as_they_are() -> None:
    assert split_query_key(b"alt=sse;x=1&y=2") == (0, None, b"alt=sse;x=1&y=2")
    assert split_query_key(b"alt=sse;x=1&key=K") == (1, b"K", b"alt=sse;x=1")


def _refuses_unary_sse_by_the_walk(query: bytes) -> bool:
    """The reference: every ``&``/``;`` parameter decoded and compared, no shortcut."""
    from urllib.parse import unquote_to_bytes

    from plano_fast.credentials import _QUERY_SPLIT, _normal_name

    for part in query.split(b"&"):
        for piece in _QUERY_SPLIT.split(part):
            name, _, value = piece.partition(b"=")
            if (_normal_name(unquote_to_bytes(name.replace(b"+", b" "))) == b"alt"
                    and unquote_to_bytes(value.replace(b"+", b" ")) == b"sse"):
                return True
    return False


_QUERY_PIECES = st.sampled_from([b"alt", b"ALT", b"$alt", b"%61lt", b"%2561lt", b"a+lt", b"key", b"=", b"&", b";",
                                 b"sse", b"SSE", b"%73se", b"s%73e", b"ss+e", b"+sse", b"json", b"%", b"%zz",
                                 b"x", b"K-sse-1"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_QUERY_PIECES, max_size=8).map(b"".join))
def test_the_unary_sse_shortcut_refuses_exactly_what_the_walk_refuses(query: bytes) -> None:
    """``refuse_unary_sse`` skips the walk when the query holds neither ``%`` nor ``sse``:
    it refuses exactly the queries the full walk refuses (escapes, ``+``, case, ``;``)."""
    from plano_fast.credentials import refuse_unary_sse
    from plano_fast.errors import ClientError

    try:
        refuse_unary_sse(query)
        refused = False
    except ClientError:
        refused = True
    assert refused == _refuses_unary_sse_by_the_walk(query), query


def test_the_stream_query_shortcut_answers_what_the_walk_answers() -> None:
    """``alt=sse`` alone (a Gemini stream's query) is answered without the walk: as the walk
    answers it beside another ordinary parameter, and its spellings still take the walk."""
    assert split_query_key(b"alt=sse") == (0, None, b"alt=sse")
    assert split_query_key(b"alt=sse&x=1") == (0, None, b"alt=sse&x=1")
    assert split_query_key(b"x=1&alt=sse") == (0, None, b"x=1&alt=sse")
    with pytest.raises(ClientError):
        split_query_key(b"alt=sse&alt=json")
    with pytest.raises(ClientError):
        split_query_key(b"alt=sse&fields=x")


def _split_query_key_by_the_walk(query: bytes) -> tuple[int, bytes | None, bytes]:
    """The reference: ``split_query_key`` as it was before its shortcuts (round f), every
    parameter decoded with urllib and normalised by ``_normal_name``."""
    from urllib.parse import unquote_to_bytes

    from plano_fast.credentials import (
        _QUERY_SPLIT, _READABLE_ALT, ANSWER_SHAPING, QUERY_CREDENTIALS, _alt_unreadable, _normal_name,
    )

    count, first, alt, kept = 0, None, None, []
    for part in query.split(b"&"):
        found = False
        pieces = _QUERY_SPLIT.split(part)
        for piece in pieces:
            name, _, value = piece.partition(b"=")
            decoded = unquote_to_bytes(name.replace(b"+", b" "))
            normal = _normal_name(decoded)
            if normal in ANSWER_SHAPING and (normal != b"alt" or _alt_unreadable(value)):
                raise ClientError("shaping " + decoded.decode("latin-1"))
            if normal == b"alt":
                value_decoded = unquote_to_bytes(value.replace(b"+", b" "))
                assert value_decoded in _READABLE_ALT
                if alt is not None and value_decoded != alt:
                    raise ClientError("alt twice")
                alt = value_decoded
            if normal is None or normal in QUERY_CREDENTIALS:
                if len(pieces) > 1:
                    raise Unauthorized("joined")
                if not count:
                    first = value if decoded.strip().lower() == b"key" else None
                count += 1
                found = True
        if not found and part:
            kept.append(part)
    return count, first, b"&".join(kept) if count else query


_SPLIT_PIECES = st.sampled_from([b"alt", b"ALT", b"$alt", b"%61lt", b"%2561lt", b"a+lt", b"key", b"Key", b"KEY+",
                                 b"%6Bey", b"key[]", b"api_key", b"access_token", b"fields", b"x", b"pageToken",
                                 b"=", b"&", b";", b"sse", b"json", b"proto", b"%73se", b"%", b"%zz", b"+", b"K1"])


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.lists(_SPLIT_PIECES, max_size=9).map(b"".join), st.just(b"alt=sse")))
def test_split_query_key_answers_as_the_walk(query: bytes) -> None:
    """``split_query_key``'s shortcuts (``alt=sse`` alone, plain names, ';' split by
    bytes.split) answer as the full walk does: the same result, or the same refusal."""
    try:
        want: object = _split_query_key_by_the_walk(query)
    except (ClientError, Unauthorized) as exc:
        want = type(exc)
    try:
        got: object = split_query_key(query)
    except (ClientError, Unauthorized) as exc:
        got = type(exc)
    assert got == want, query


try:
    from plano_fast import _new_credentials as _compiled_credentials
except ImportError:  # the extension is not built: plain_bearer is the twin
    _compiled_credentials = None  # type: ignore[assignment]

PLAIN_BEARERS = [credentials._plain_bearer] + (
    [_compiled_credentials.plain_bearer] if _compiled_credentials is not None else []
)


def _plain_bearer_answers(value: bytes) -> list[tuple[bytes, bytes] | None]:
    answers: list[tuple[bytes, bytes] | None] = []
    for plain in PLAIN_BEARERS:
        got = plain(value)
        if got is not None:
            assert type(got) is Credential and type(got.secret) is bytes and type(got.line) is bytes
        answers.append(None if got is None else (got.secret, got.line))
    return answers


@pytest.mark.parametrize("value", VALUES + [b"Bearer sk-" + bytes([c]) + b"x" for c in range(256)])
def test_the_plain_bearer_twins_agree(value: bytes) -> None:
    """The compiled ``plain_bearer`` (``_new_credentials.pyx``) answers as its twin: the
    usual ``Bearer <printable token>`` only, every other value left to the general rules."""
    answers = _plain_bearer_answers(value)
    assert all(a == answers[0] for a in answers)
    token = value[7:]
    plain = value[:7] == b"Bearer " and bool(token) and all(0x21 <= c <= 0x7E for c in token)
    assert (answers[0] is not None) is plain
    if plain:
        assert answers[0] == (token, b"authorization: " + value + b"\r\n")


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.binary(max_size=24), st.binary(max_size=24).map(lambda b: b"Bearer " + b)))
def test_the_plain_bearer_twins_agree_on_generated_values(value: bytes) -> None:
    answers = _plain_bearer_answers(value)
    assert all(a == answers[0] for a in answers)


def test_the_authorization_header_takes_the_chosen_plain_bearer() -> None:
    if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
        assert _compiled_credentials is not None
    if _compiled_credentials is not None and os.environ.get("PLANO_FAST_PURE_SCANNER") != "1":
        assert credentials.plain_bearer is _compiled_credentials.plain_bearer
    else:
        assert credentials.plain_bearer is credentials._plain_bearer


@pytest.mark.parametrize("name", [b"authorization", b"x-api-key", b"api_key", b"x-goog-api-key"])
@pytest.mark.parametrize("value", VALUES)
def test_read_client_headers_takes_the_header_rules(name: bytes, value: bytes) -> None:
    """``read_client_headers`` (its Authorization short cut included) gives the credential,
    or the refusal, ``_header_credential`` gives for the one credential header."""
    try:
        expected: tuple[bytes, bytes] | str = _credential_pair(_header_credential(name, value))
    except Unauthorized as exc:
        expected = str(exc)
    forward = (b"accept: */*\r\n", False, None, 1, name, value, b"accept: */*\r\n")
    try:
        client = credentials.read_client_headers([], b"", forward)
        assert client.credential is not None
        got: tuple[bytes, bytes] | str = _credential_pair(client.credential)
    except Unauthorized as exc:
        got = str(exc)
    assert got == expected


def _credential_pair(credential: Credential) -> tuple[bytes, bytes]:
    return credential.secret, credential.line


def test_the_compiled_key_hash_reads_the_twins_memo() -> None:
    """``phases.key_hash`` is the compiled reader of ``_key_hash``'s memo where built: the
    digest is SHA-256 either way, a hit is the entry's, an entry whose salted check does not
    match (another key with the same first hash) is never taken, long keys included."""
    import hashlib

    from plano_fast.gateway import phases

    if _compiled_credentials is not None and os.environ.get("PLANO_FAST_PURE_SCANNER") != "1":
        assert phases.key_hash is _compiled_credentials.key_hash
    else:
        assert phases.key_hash is phases._key_hash
    keys = [b"sk-twin-%d" % i for i in range(50)] + [b"sk-long-" + b"k" * 600, b"", b"\x00\xff"]
    for key in keys + keys:  # misses, then hits
        assert phases.key_hash(key) == phases._key_hash(key) == hashlib.sha256(key).hexdigest()
    key = b"sk-forged"
    phases.key_hash(key)
    check, digest = phases._KEY_HASHES[hash(key)]
    phases._KEY_HASHES[hash(key)] = (check ^ 1, "0" * 64)  # a look-alike entry: not this key's
    assert phases.key_hash(key) == hashlib.sha256(key).hexdigest()
    assert phases._KEY_HASHES[hash(key)] == (check, digest)  # (rewritten by the twin)
