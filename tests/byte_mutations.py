"""Hypothesis helper shared by the fast-path parser tests: a few bytes of a message
flipped, inserted or deleted anywhere (the bytes a parser is most likely to mishandle
first: NUL, TAB, LF, CR, space, colon, DEL, 0xFF)."""

from __future__ import annotations

from hypothesis import strategies as st


def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = bytes([draw(st.sampled_from([0, 9, 10, 13, 32, 58, 127, 255]) | st.integers(0, 255))])
        if kind == "flip":
            data = data[:pos] + byte + data[pos + 1 :]
        elif kind == "insert":
            data = data[:pos] + byte + data[pos:]
        else:
            data = data[:pos] + data[pos + 1 :]
    return data
