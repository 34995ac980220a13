"""The DLP scanner (plano_fast.wire._dlp, compiled, and its twin _dlp_py), property-tested:

* detectors: on generated text rich in near-misses (digit runs, separators, key prefixes,
  '@', ':', non-ASCII letters and digits) both implementations find exactly what each
  pattern's ``finditer`` over the whole text finds, the validators applied -- the prefilters
  (candidate starts, necessary conditions) never lose a match;
* request bodies: for generated documents in every client format (random nesting, decoy
  keys, duplicate members, escapes, surrogates, random formatting) and random policies,
  ``apply_body`` over the raw bytes with the compiled walker gives the same verdict as
  ``apply`` over ``json.loads(body)``: the same detections, the same block / warn names, and a
  redacted body that parses to the same document;
* a redaction rewrites only the redacted string's literal: every other byte is kept;
* fuzz: random bytes, truncated bodies, broken escapes and lone surrogates never crash the
  compiled walker, and it never accepts a body json.loads refuses.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plano_fast import guardrails, wire
from plano_fast.wire import _dlp_py
from plano_fast.wire._dlp_shared import NAMES, TEXT_PATTERNS, VALIDATORS
from tests.test_scan_properties import Obj, to_bytes

try:
    from plano_fast.wire import _dlp as _compiled
except ImportError:  # the extension is not built: the twin alone is checked against the reference
    _compiled = None  # type: ignore[assignment]

IMPLS: list[ModuleType] = [_dlp_py] + ([_compiled] if _compiled is not None else [])
needs_compiled = pytest.mark.skipif(_compiled is None, reason="the Cython extension is not built")

SETTINGS = settings(
    max_examples=int(os.environ.get("PLANO_FAST_HYPOTHESIS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FRAGMENTS = [
    "0", "1", "7", "9", "12", "123", "4111", "0000", "-", " ", ".", ":", "::", "+", "(", ")", "@", "_", "%",
    "a", "Z", "e", "GB", "DE89", "sk-", "sk-ant-api03-", "sk-proj-", "AIza", "AKIA", "ASIA", "ghp_", "gho_",
    "xoxb-", "xox", "-----BEGIN ", "-----", "RSA ", "PRIVATE KEY-----", "eyJ", "eyJhbGciOiJIUzI1NiJ9.", "ey",
    "A1b2C3d4E5f6G7h8", "abcdefghijklmnopqrstuvwxyz0123456789", "example.com", ".co", "a.b", "é", "模", "😀",
    "\u0663", "\uff11", "\n", "\t", '"', "\\", "123-45-6789", "078-05-1120", "4111 1111 1111 1111",
    "4111-1111-1111-1111", "4111111111111111", "378282246310005", "+1 415-555-0134", "(212) 555-0199",
    "+442071838750", "030 1234 5678", "192.168.1.20", "10.0.0.1", "2001:db8::1", "fe80::a:b", "dead:beef:1",
    "GB82WEST12345698765432", "DE89 3704 0044 0532 0130 00", "jane.doe@example.com", "x+tag@mail.co.uk",
    "Falcon", "sk-proj-A1b2C3d4E5f6G7h8A1b2C3", "AKIAIOSFODNN7EXAMPLE", "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "-----BEGIN RSA PRIVATE KEY-----", "AIzaSyA" + "b" * 32,
] + [  # the shortest match of each detector, and one character short of it
    "12 345 678", "12 345 67", "+12345678", "+1234567", "(12)345 678", "4222222222222", "422222222222",
    "NO9386011117947", "NO938601111794", "1.2.3.4", "1.2.3.", "1:2::3", "a::b", "a@b.co", "a@b.c",
    "AKIA0123456789ABCDEF", "AKIA0123456789ABCDE", "xoxb-0123456789", "xoxb-012345678", "sk-" + "a" * 20,
    "sk-" + "a" * 19, "eyJaaaaaaaa.eyJaaaaaaaa.aaaaaaaa", "eyJaaaaaaaa.eyJaaaaaaaa.aaaaaaa",
]  # fmt: skip
WHOLE = [f for f in FRAGMENTS if len(f) > 8]  # the ones that are (or nearly are) a finding
TEXTS = st.lists(
    st.one_of(st.sampled_from(WHOLE), st.sampled_from(FRAGMENTS), st.sampled_from(FRAGMENTS), st.text(max_size=3)),
    max_size=24,
).map("".join)


def reference(text: str, mask: int) -> list[tuple[int, int, int]]:
    """What the detectors mean: finditer over the whole text, validated; no prefilter."""
    found = []
    for detector, pattern in enumerate(TEXT_PATTERNS):
        if mask >> detector & 1:
            valid = VALIDATORS.get(detector)
            found += [(detector, m.start(), m.end()) for m in pattern.finditer(text) if valid is None or valid(m.group())]
    return found


@SETTINGS
@given(text=TEXTS, mask=st.integers(0, (1 << len(NAMES)) - 1))
def test_both_scanners_find_what_the_patterns_find(text: str, mask: int) -> None:
    expected = reference(text, mask)
    for impl in IMPLS:
        assert impl.scan_text(text, mask) == expected, impl.__name__


@pytest.mark.parametrize("separator", [" ", "", "|", "é", "0", "a", "-", ".", ":", "+", "_"])
def test_every_fragment_pair_as_the_patterns_find(separator: str) -> None:
    """Each fragment after each other one (and alone), joined by a separator: the boundaries
    a prefilter gets wrong (a match one character long or short, a neighbour that is a word
    character, a digit, a dot)."""
    every = (1 << len(NAMES)) - 1
    for first in FRAGMENTS:
        for second in FRAGMENTS:
            text = first + separator + second
            expected = reference(text, every)
            for impl in IMPLS:
                assert impl.scan_text(text, every) == expected, (impl.__name__, text)


def test_the_reference_is_not_empty_on_the_fragments() -> None:
    """The generator does reach every detector (else the property above proves little)."""
    every = (1 << len(NAMES)) - 1
    hit = {NAMES[d] for d, _, _ in reference(" | ".join(FRAGMENTS), every)}
    assert hit == set(NAMES)


# -- request bodies ---------------------------------------------------------------------------

KEYS = st.sampled_from(["messages", "content", "text", "type", "system", "input", "instructions", "output",
                        "contents", "parts", "systemInstruction", "role", "model", "data", "mess\u00e9"])  # fmt: skip
LEAF = st.one_of(TEXTS, TEXTS, st.just("tool_result"), st.integers(-5, 10**6), st.none(), st.booleans())
VALUES = st.recursive(
    LEAF,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.lists(st.tuples(KEYS, kids), max_size=5).map(Obj)),
    max_leaves=30,
)
DOCS = st.lists(st.tuples(KEYS, VALUES), max_size=6).map(Obj)


def _members(*pairs: tuple[str, Any]) -> st.SearchStrategy[Obj]:
    """An object of the given members, each present or not (None), in any order."""
    present = st.tuples(*(st.one_of(st.none(), v) for _, v in pairs)).map(
        lambda values: [(k, v) for (k, _), v in zip(pairs, values) if v is not None]
    )
    return present.flatmap(st.permutations).map(Obj)


CONTENT: st.SearchStrategy[Any] = st.deferred(lambda: st.one_of(TEXTS, st.lists(PART, max_size=3), VALUES))
PART = _members(("type", st.sampled_from(["text", "tool_result", "image_url", "input_text"])), ("text", TEXTS),
                ("content", CONTENT), ("data", TEXTS))  # fmt: skip
MESSAGE = _members(("role", st.just("user")), ("content", CONTENT), ("output", TEXTS), ("text", TEXTS))
TEXT_OBJECTS = st.lists(_members(("text", TEXTS), ("data", TEXTS)), max_size=3)
STRUCTURED = _members(
    ("model", TEXTS), ("messages", st.lists(MESSAGE, max_size=3)), ("system", st.one_of(TEXTS, TEXT_OBJECTS)),
    ("instructions", TEXTS), ("input", st.one_of(TEXTS, st.lists(st.one_of(MESSAGE, TEXTS, VALUES), max_size=3))),
    ("contents", st.lists(_members(("parts", TEXT_OBJECTS), ("role", TEXTS)), max_size=2)),
    ("systemInstruction", _members(("parts", TEXT_OBJECTS))), ("metadata", VALUES),
)  # fmt: skip


def write_body(doc: Obj, seed: int) -> bytes:
    """Random formatting and escapes (keys too) one time in four, else plain json.dumps."""
    if seed % 4 == 1:
        return to_bytes(doc, random.Random(seed))
    return json.dumps(json.loads(to_bytes(doc, random.Random(seed))), ensure_ascii=seed % 2 == 0).encode()


FORMATS = st.sampled_from(["openai", "anthropic", "responses", "gemini", "embeddings"])
POLICIES = st.builds(
    lambda detectors, custom: guardrails.parse_policy({"detectors": detectors, "custom": custom}),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from(guardrails.ACTIONS), min_size=1),
    st.one_of(st.just([]), st.sampled_from(guardrails.ACTIONS).map(
        lambda action: [{"name": "codename", "pattern": r"Falcon|x{3}", "action": action}])),
)  # fmt: skip


@contextmanager
def compiled_walker() -> Iterator[None]:
    saved = wire.dlp_scan_body
    assert _compiled is not None
    wire.dlp_scan_body = _compiled.scan_body
    try:
        yield
    finally:
        wire.dlp_scan_body = saved


def verdict(run: Any) -> tuple[Any, ...]:
    try:
        outcome = run()
    except guardrails.GuardrailBlocked as exc:
        return ("blocked", exc.detectors, exc.detections)
    body = None if outcome.body is None else json.loads(outcome.body)
    return ("forwarded", outcome.detections, outcome.warn, body)


@needs_compiled
@SETTINGS
@given(doc=st.one_of(STRUCTURED, STRUCTURED, DOCS), fmt=FORMATS, policy=POLICIES, seed=st.integers(0, 2**32))
def test_the_raw_body_walk_gives_the_decoded_documents_verdict(doc: Obj, fmt: str, policy: Any, seed: int) -> None:
    body = write_body(doc, seed)
    with compiled_walker():
        walked = verdict(lambda: guardrails.apply_body(policy, body, fmt, None))
    decoded = verdict(lambda: guardrails.apply(policy, json.loads(body), fmt, None))
    assert walked == decoded


@contextmanager
def pure_walker() -> Iterator[None]:
    """As without the compiled scanner: ``apply_body`` decodes the body."""
    saved = wire.dlp_scan_body
    wire.dlp_scan_body = None
    try:
        yield
    finally:
        wire.dlp_scan_body = saved


def verdict_bytes(run: Any) -> tuple[Any, ...]:
    """``verdict``, with the redacted body's bytes as they are."""
    try:
        outcome = run()
    except guardrails.GuardrailBlocked as exc:
        return ("blocked", exc.detectors, exc.detections)
    return ("forwarded", outcome.detections, outcome.warn, outcome.body)


@needs_compiled
def test_the_walker_reads_the_slots_of_each_format() -> None:
    """Hand-built documents: the strings each format's slots name, and no other."""
    mail = "a@example.com"
    bodies = {
        "openai": {"model": mail, "messages": [{"role": "user", "content": mail}, {"content": [
            {"type": "text", "text": mail}, {"type": "image_url", "image_url": {"url": mail}},
            {"content": mail, "type": "tool_result"}, {"content": mail, "type": "other"}]}]},
        "anthropic": {"system": [{"text": mail}, {"data": mail}], "metadata": {"user_id": mail}, "messages": []},
        "gemini": {"contents": [{"parts": [{"text": mail}, {"inlineData": {"data": mail}}]}],
                   "systemInstruction": {"parts": [{"text": mail}]}, "messages": [{"content": mail}]},
        "responses": {"instructions": mail, "input": [{"content": mail}, {"output": mail}, mail],
                      "messages": [{"content": mail}]},
        "embeddings": {"input": [mail, [1, 2], mail], "messages": [{"content": mail}]},
    }  # fmt: skip
    expected = {"openai": 3, "anthropic": 1, "gemini": 2, "responses": 3, "embeddings": 2}
    assert _compiled is not None
    for fmt, doc in bodies.items():
        slots = _compiled.scan_body(json.dumps(doc).encode(), fmt, 1, False)
        assert slots is not None and len(slots) == expected[fmt], (fmt, slots)


@pytest.mark.parametrize("build", ["compiled", "pure"])
def test_a_redaction_rewrites_only_that_strings_literal(build: str) -> None:
    """In both builds (on main the pure one re-encoded the whole body: compact, 1500.0)."""
    if build == "compiled" and _compiled is None:
        pytest.skip("the Cython extension is not built")
    policy = guardrails.parse_policy({"detectors": {"ssn": "redact", "email": "log"}})
    assert policy is not None
    body = (b'{ "messages" : [ {"role":"user", "content" : "caf\\u00e9 123-45-6789 \xc3\xa9t\xc3\xa9"},\n'
            b'  {"role":"user","content":"b@example.org 1.50E+3"} ], "temperature" : 1.50E+3 }')  # fmt: skip
    with compiled_walker() if build == "compiled" else pure_walker():
        outcome = guardrails.apply_body(policy, body, "openai", None)
    assert outcome.body == body.replace(
        b'"caf\\u00e9 123-45-6789 \xc3\xa9t\xc3\xa9"', '"café [REDACTED:ssn] été"'.encode()
    )
    assert outcome.detections == [("email", "log"), ("ssn", "redact")]


# -- fuzz -------------------------------------------------------------------------------------

BREAKS = [b'"', b"\\", b"\\u", b"\\ud800", b"\\udc00\\u", b"{", b"}", b"[", b"]", b",", b":", b"\x00", b"\x1f",
          b"\xff", b"\xc3", b"N", b"NaN", b"-", b"0", b"01", b"1.", b"e", b"tru", b" "]  # fmt: skip


@needs_compiled
@SETTINGS
@given(doc=DOCS, fmt=FORMATS, seed=st.integers(0, 2**32), cut=st.floats(0, 1),
       inserts=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(BREAKS)), max_size=3))  # fmt: skip
def test_the_walker_never_accepts_what_json_refuses(doc: Obj, fmt: str, seed: int, cut: float,
                                                    inserts: list[tuple[float, bytes]]) -> None:  # fmt: skip
    assert _compiled is not None
    body = to_bytes(doc, random.Random(seed))
    plain = json.dumps(json.loads(body), ensure_ascii=False).encode()  # no escaped key, no duplicate
    assert _compiled.scan_body(plain, fmt, 127, True) is not None
    if _compiled.scan_body(body, fmt, 127, True) is None:
        assert _has_duplicates(doc) or b"\\" in body or b'\\u' in body  # left to json, and why
    mutated = body[: max(1, int(len(body) * cut))] if cut < 0.3 else body
    for where, piece in inserts:
        at = int(len(mutated) * where)
        mutated = mutated[:at] + piece + mutated[at:]
    found = _compiled.scan_body(mutated, fmt, 127, True)
    if found is not None:
        try:
            mutated.decode("utf-8")
        except UnicodeDecodeError:
            return  # apply_body never hands the walker such a body
        json.loads(mutated)  # accepted by the walker: json must accept it too


@needs_compiled
@SETTINGS
@given(blob=st.binary(max_size=200), fmt=FORMATS, text=st.text(max_size=60))
def test_random_bytes_and_surrogates_do_not_crash(blob: bytes, fmt: str, text: str) -> None:
    assert _compiled is not None
    for body in (blob, b'{"messages":[{"content":"' + blob + b'"}]}', b'{"input":"\\' + blob[:7]):
        result = _compiled.scan_body(body, fmt, 127, True)
        assert result is None or isinstance(result, list)
    lone = text + "\ud800" + text[:5] + "\udfff"
    assert _compiled.scan_text(lone, 127) == _dlp_py.scan_text(lone, 127)


def _has_duplicates(value: Any) -> bool:
    """A generated document with a repeated member (json.loads keeps the last; the walker
    leaves such a body to json where a slot is chosen)."""
    if isinstance(value, Obj):
        keys = [k for k, _ in value]
        return len(keys) != len(set(keys)) or any(_has_duplicates(v) for _, v in value)
    if isinstance(value, list):
        return any(_has_duplicates(v) for v in value)
    return False


@needs_compiled
@SETTINGS
@given(doc=st.one_of(STRUCTURED, STRUCTURED, DOCS), fmt=FORMATS, policy=POLICIES, seed=st.integers(0, 2**32))
def test_the_twins_write_the_same_redacted_bytes(doc: Obj, fmt: str, policy: Any, seed: int) -> None:
    """The compiled walker and the pure build give the same verdict and the same body, byte
    for byte.  On main the pure build re-encoded the whole document as compact JSON (the
    same document, other bytes: every redaction of a body not sent compact differed)."""
    body = write_body(doc, seed)
    with compiled_walker():
        compiled = verdict_bytes(lambda: guardrails.apply_body(policy, body, fmt, None))
    with pure_walker():
        pure = verdict_bytes(lambda: guardrails.apply_body(policy, body, fmt, None))
    assert pure == compiled


@needs_compiled
@SETTINGS
@given(doc=st.one_of(STRUCTURED, DOCS), fmt=FORMATS, seed=st.integers(0, 2**32), mask=st.integers(0, 127),
       every=st.booleans(), inserts=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(BREAKS)), max_size=2))
def test_the_pure_walker_finds_the_compiled_walkers_slots(doc: Obj, fmt: str, seed: int, mask: int, every: bool,
                                                          inserts: list[tuple[float, bytes]]) -> None:
    """The same slots (offsets, plain flag, findings), and None for the same bodies: broken
    ones too (a body that is not UTF-8 is never walked)."""
    assert _compiled is not None
    body = write_body(doc, seed)
    for where, piece in inserts:
        at = int(len(body) * where)
        body = body[:at] + piece + body[at:]
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert _dlp_py.scan_body(body, fmt, mask, every) == _compiled.scan_body(body, fmt, mask, every)


def test_the_pure_walker_leaves_what_the_compiled_one_leaves() -> None:
    """Hand-picked: an escaped key, a repeated slot member, nesting past MAX_DEPTH, a bad
    escape, trailing bytes: None (json.loads decides); a plain and an escaped text found."""
    deep = b'{"messages":' + b"[" * 97 + b"]" * 97 + b"}"
    for body in (b'{"mess\\u0061ges":[]}', b'{"messages":[],"messages":[]}', deep, b'{"messages":[{"content":"\\x"}]}',
                 b'{"messages":[]} x', b'{"messages":[{"content":"a\\u12"}]}', b"", b"NaN", b'{"a":01}'):
        assert _dlp_py.scan_body(body, "openai", 127, True) is None, body
        if _compiled is not None:
            assert _compiled.scan_body(body, "openai", 127, True) is None, body
    body = b'{"messages":[{"content":"a@example.com"},{"content":"caf\\u00e9"}]}'
    assert _dlp_py.scan_body(body, "openai", 127, True) == [(25, 38, True, [(0, 0, 13)]), (53, 62, False, [])]
