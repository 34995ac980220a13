"""Each header table is written once in Python (``plano_fast.wire._head_py``) and, hand-
unrolled for speed, in C, once per compare (``wire/_head.pyx`` ``classify`` and
``classify_tchar``; ``wire/_bytes.pxd`` ``account_name`` and ``account_line``, ``_head.pyx``
``tchar_account_name``; ``_bytes.request_kind``); the x-request-id rule likewise
(``upstream_request.finish_head``, ``gateway/_forward.pyx`` ``request_id_line_c``).  These
tests pin each compiled copy to its Python table, so that a name added to one place and not
the other fails here:

- the names the C source spells (its ``b"..."`` literals, each of the length its branch
  tests) are exactly the Python table's;
- every compiled classifier says what the table says of every name of it, in every case,
  and of its near misses (a byte left out, added or changed; ``-`` for ``_``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# relay first: it imports the compiled _forward and installs its pass (importing _forward
# first would import relay halfway through it, and relay would fall back to the twin)
from plano_fast.gateway import relay  # noqa: F401
from plano_fast.gateway import upstream_request
from plano_fast.wire import _head_py

try:
    from plano_fast.wire import _head as _compiled_head
except ImportError:  # the extension is not built: only the source tables are checked
    _compiled_head = None  # type: ignore[assignment]
try:
    from plano_fast.gateway import _forward as _compiled_forward
except ImportError:
    _compiled_forward = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    assert _compiled_head is not None and _compiled_forward is not None, "the compiled header tables were not built"

WIRE = Path(_head_py.__file__).parent
GATEWAY = Path(upstream_request.__file__).parent

# classify's verdicts (``_head.pyx``'s enum)
KEEP, DROP, CONTENT_LENGTH, TRANSFER_ENCODING = 0, 1, 2, 3
TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _body(path: Path, function: str) -> str:
    """The source of ``function`` in ``path``: its ``cdef`` line to the next top-level line."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"cdef .*\b{function}\(", line))
    stop = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines))
    return "\n".join(lines[start:stop])


def _spelled(path: Path, function: str) -> set[bytes]:
    """The names ``function`` spells, each checked to be as long as the branch it is in
    says (``if n == K:``, or the length passed beside it)."""
    names: set[bytes] = set()
    length = None
    for line in _body(path, function).splitlines():
        branch = re.search(r"if n == (\d+):", line)
        if branch:
            length = int(branch.group(1))
        for literal, passed in re.findall(r'b"([^"]*)"(?:, (\d+)\))?', line):
            name = literal.encode()
            expected = int(passed) if passed else length
            assert expected is None or len(name) == expected, (function, name, expected)
            names.add(name)
    return names


def _cases(name: bytes) -> list[bytes]:
    alternate = bytes(c if i % 2 else c ^ 0x20 if 97 <= c <= 122 else c for i, c in enumerate(name))
    return [name, name.upper(), name.title(), alternate, alternate.swapcase()]


def _near_misses(name: bytes, alphabet: bytes) -> set[bytes]:
    out = {name[:i] + name[i + 1:] for i in range(len(name))}
    for i in range(len(name) + 1):
        for c in alphabet:
            out.add(name[:i] + bytes([c]) + name[i:])
            if i < len(name):
                out.add(name[:i] + bytes([c]) + name[i + 1:])
    out.add(name.replace(b"-", b"_"))
    out.add(name.replace(b"_", b"-"))
    return out


# -- the names each compiled table spells are its Python table's ------------------------


@pytest.mark.parametrize("function", ["classify", "classify_tchar"])
def test_each_compiled_drop_table_spells_exactly_DROPPED(function: str) -> None:
    assert _spelled(WIRE / "_head.pyx", function) == _head_py.DROPPED


@pytest.mark.parametrize("path, function", [("_bytes.pxd", "account_name"), ("_bytes.pxd", "account_line"),
                                            ("_head.pyx", "tchar_account_name")])
def test_each_compiled_account_table_spells_exactly_ACCOUNT_HEADERS(path: str, function: str) -> None:
    assert _spelled(WIRE / path, function) == _head_py.ACCOUNT_HEADERS


def test_account_line_looks_for_the_colon_after_each_name_length() -> None:
    lengths = {int(k) for k in re.findall(r"n > (\d+) and p\[\1\] == 58", _body(WIRE / "_bytes.pxd", "account_line"))}
    assert lengths == {len(name) for name in _head_py.ACCOUNT_HEADERS}


def test_the_compiled_request_table_spells_exactly_the_request_tables() -> None:
    expected = (_head_py.DROPPED_REQUEST | _head_py.CREDENTIALS | _head_py.REQUEST_IDS
                | {_head_py.GATEWAY_PREFIX, b"anthropic-version"})  # fmt: skip
    assert _spelled(WIRE / "_bytes.pxd", "request_kind") == expected


def test_the_subscription_key_is_one_list() -> None:
    from plano_fast import credentials

    assert _head_py.SUBSCRIPTION_KEYS <= _head_py.ACCOUNT_HEADERS & _head_py.SECRET_HEADERS
    assert {name[:-1] for name in credentials._SUBSCRIPTION_KEY_NAMES} == _head_py.SUBSCRIPTION_KEYS


# -- what the compiled tables say of every name, every case, every near miss --------------

needs_compiled = pytest.mark.skipif(_compiled_head is None, reason="the compiled head filter is not built")


def _drop_verdict(name: bytes) -> int:
    lname = name.lower()
    if lname == b"content-length":
        return CONTENT_LENGTH
    if lname == b"transfer-encoding":
        return TRANSFER_ENCODING
    return DROP if lname in _head_py.DROPPED else KEEP


def _check(name: bytes) -> None:
    """Each compiled verdict on ``name`` against the Python tables."""
    assert _compiled_head is not None
    classify, classify_tchar, account_name, tchar_account_name, account_line = _compiled_head.header_verdicts(name)
    is_tchars = bool(name) and not name.translate(None, TCHARS)
    assert classify == _drop_verdict(name), name
    # (the line's name ends at its first colon: _head_py.without_account_headers' rule)
    assert account_line == ((name + b": v").partition(b":")[0].lower() in _head_py.ACCOUNT_HEADERS), name
    assert account_name == (name in _head_py.ACCOUNT_HEADERS), name  # as parsed: exactly, lowercase
    if is_tchars and len(name) >= 2:  # (the fast path's names: tchars, checked before)
        assert classify_tchar == _drop_verdict(name), name
        assert tchar_account_name == (name.lower() in _head_py.ACCOUNT_HEADERS), name


@needs_compiled
def test_every_name_of_the_tables_in_every_case() -> None:
    for name in sorted(_head_py.DROPPED | _head_py.ACCOUNT_HEADERS):
        for spelling in _cases(name):
            _check(spelling)


@needs_compiled
def test_every_near_miss_of_the_tables() -> None:
    """A byte left out, added or changed (to any tchar for the word-at-a-time compare,
    to any byte for the byte-wise one), in the lowercase name and in its upper case."""
    for name in sorted(_head_py.DROPPED | _head_py.ACCOUNT_HEADERS):
        for spelling in (name, name.upper()):
            for miss in _near_misses(spelling, TCHARS):
                _check(miss)
            for miss in _near_misses(spelling, bytes(range(256))):
                if miss.translate(None, TCHARS):  # (the tchar ones: just above)
                    _check(miss)


# -- the x-request-id rule: finish_head's and the compiled request passes' ----------------

_ID = st.one_of(
    st.none(), st.just(b""), st.binary(max_size=4),
    st.binary(min_size=126, max_size=130),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7F), max_size=132).map(str.encode),
    st.integers(0, 255).map(lambda c: b"req-" + bytes([c])),
    st.integers(120, 136).map(lambda n: b"r" * n),
)  # fmt: skip


def _finish_head_line(client_request_id: bytes | None, request_id: str) -> bytes:
    head = upstream_request.finish_head([], b"host: h\r\n", b"", client_request_id, request_id)[0]
    assert head.endswith(b"host: h\r\n" + b"content-length: 0\r\n\r\n")
    return head[: -len(b"host: h\r\ncontent-length: 0\r\n\r\n")]


@pytest.mark.skipif(_compiled_forward is None, reason="the compiled forward pass is not built")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_request_id=_ID, request_id=st.sampled_from(["gw-1", "a" * 40]))
def test_the_compiled_x_request_id_rule_is_finish_heads(client_request_id: bytes | None, request_id: str) -> None:
    assert _compiled_forward is not None
    expected = _finish_head_line(client_request_id, request_id)
    assert _compiled_forward.request_id_line(client_request_id, request_id) == expected
    sent = client_request_id or b""
    kept = 0 < len(sent) <= upstream_request.MAX_CLIENT_REQUEST_ID_BYTES and all(0x21 <= c <= 0x7E for c in sent)
    assert expected == b"x-request-id: " + (sent if kept else request_id.encode()) + b"\r\n"
