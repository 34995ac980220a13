"""``plano_fast.gateway.operator_key``: the masking of the gateway's keys in an error
body, whole, split at every offset and one byte at a time (the real-socket cases are in
tests/test_edges.py, round f)."""

from __future__ import annotations

import pytest

from plano_fast.gateway.operator_key import Redaction, redact, secrets_of

KEY = b"sk-proj-operator-secret-0123456789abcd"
OTHER = b"AIzaSy-another-key-0000"
BODY = b'{"error":{"message":"key ' + KEY + b" then " + OTHER + b' and ' + KEY + b'","code":null}}'


def masked_whole(body: bytes) -> bytes:
    return body.replace(KEY, b"*" * len(KEY)).replace(OTHER, b"*" * len(OTHER))


def feed_all(pieces: list[bytes], auth: bytes | tuple[tuple[bytes, bytes], ...]) -> bytes:
    out = []
    state: object = auth
    for piece in pieces:
        data, state = redact(piece, state)  # type: ignore[arg-type]
        out.append(data)
        assert len(data) == len(piece)  # (the Content-Length holds)
    return b"".join(out)


AUTHS = [
    b"Authorization: Bearer " + KEY + b"\r\nx-goog-api-key: " + OTHER + b"\r\nanthropic-version: 2023-06-01",
    ((b"authorization", b"Bearer " + KEY), (b"x-goog-api-key", OTHER), (b"anthropic-version", b"2023-06-01")),
]


@pytest.mark.parametrize("auth", AUTHS)
def test_keys_are_parsed_once_from_lines_or_pairs(auth: bytes | tuple[tuple[bytes, bytes], ...]) -> None:
    assert secrets_of(auth) == (KEY, OTHER)
    assert secrets_of(auth) is secrets_of(auth)  # (one parse per credential)


@pytest.mark.parametrize("auth", AUTHS)
def test_whole_body_split_at_every_offset_and_bytewise(auth: bytes | tuple[tuple[bytes, bytes], ...]) -> None:
    expected = masked_whole(BODY)
    assert feed_all([BODY], auth) == expected
    for cut in range(1, len(BODY)):
        got = feed_all([BODY[:cut], BODY[cut:]], auth)
        # a cut 1-3 bytes into a key leaves those bytes (its public head), nothing else
        for key in (KEY, OTHER):
            for start in _starts(BODY, key):
                if 0 < cut - start < 4:
                    got = got[:start] + b"*" * (cut - start) + got[cut:]
        assert got == expected, cut
    # one byte at a time: each key's first byte is left (too short to star), the rest
    # masked as it continues the key
    bytewise = feed_all([BODY[i : i + 1] for i in range(len(BODY))], auth)
    for key in (KEY, OTHER):
        for start in _starts(BODY, key):
            expected = expected[:start] + key[:1] + expected[start + 1 :]
    assert bytewise == expected


def _starts(body: bytes, key: bytes) -> list[int]:
    out, i = [], body.find(key)
    while i >= 0:
        out.append(i)
        i = body.find(key, i + 1)
    return out


def test_a_key_over_three_reads_and_a_false_start() -> None:
    r = Redaction((KEY,))
    assert r.feed(b"xx" + KEY[:10]) == b"xx" + b"*" * 10
    assert r.feed(KEY[10:20]) == b"*" * 10
    assert r.feed(KEY[20:] + b"!") == b"*" * (len(KEY) - 20) + b"!"
    # a read ending like a key's head, not followed by the rest: only that head is starred
    r = Redaction((KEY,))
    assert r.feed(b"say sk-proj") == b"say " + b"*" * 7
    assert r.feed(b"ect files") == b"ect files"
    # fewer than 4 of its first bytes: left, and the rest masked when it follows
    assert r.feed(b"id sk-") == b"id sk-"
    assert r.feed(KEY[3:] + b".") == b"*" * (len(KEY) - 3) + b"."


def test_short_values_and_other_headers_are_not_keys() -> None:
    assert secrets_of(b"api-key: short\r\nx-custom: a-long-non-secret-value") == ()
    assert redact(b"short a-long-non-secret-value", b"api-key: short")[0] == b"short a-long-non-secret-value"
