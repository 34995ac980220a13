"""Session l's second review, mended: an empty gzip body is an empty answer, not a cut one,
and two managed (project, user) pairs never share a stored-conversation owner key."""

from __future__ import annotations

import gzip
import itertools
import zlib

import pytest

from plano_fast.gateway.coded_answer import Decoder
from plano_fast.responses_managed import managed_owner


@pytest.mark.parametrize("coding", [b"gzip", b"deflate"])
def test_an_empty_coded_body_is_an_empty_answer(coding: bytes) -> None:
    """A HEAD's or a bodyless 4xx's empty body under ``Content-Encoding: gzip`` ended as
    ``failed`` (the gzip decoder never saw its end) and the relay cut the client's
    connection; urllib3 and curl read it as an empty answer, and so did "deflate"."""
    read: list[bytes] = []
    decoder = Decoder(coding)
    decoder.flush(read.append)
    assert (decoder.failed, decoder.ended, read) == (False, True, [])


def test_a_gzip_body_cut_before_its_trailer_still_fails() -> None:
    """The control: a body with bytes whose coding never ended is a cut one."""
    body = gzip.compress(b'{"usage":{"prompt_tokens":1}}')
    read: list[bytes] = []
    decoder = Decoder(b"gzip")
    decoder.decode(body[:-4], read.append)
    decoder.flush(read.append)
    assert decoder.failed
    deflated = zlib.compress(b"x" * 100)
    whole = Decoder(b"deflate")
    whole.decode(deflated, read.append)
    whole.flush(read.append)
    assert not whole.failed


def test_managed_owner_keys_are_one_per_project_and_user() -> None:
    """Ids are admin-chosen and may hold ':' (``org:42``): project ``a`` with user ``b:c``
    and project ``a:b`` with user ``c`` both owned ``managed:a:b:c`` (each read the other's
    stored conversations and passed the other's item ids as its own).  Every pair of these
    awkward ids now gets its own key; plain ids keep the key they had."""
    assert managed_owner("p1", "u1") == "managed:p1:u1"
    assert managed_owner("p1", None) == "managed:p1:"
    assert managed_owner("a", "b:c") != managed_owner("a:b", "c")
    parts = ["", "a", "b", ":", "a:b", "b:c", "3#a", "#", "1#:", "3#a:b", "a#", "c"]
    pairs = list(itertools.product(parts, parts))
    keys = {managed_owner(p, u) for p, u in pairs}
    assert len(keys) == len(pairs)


def test_the_memory_stores_item_index_holds_live_responses_ids_only() -> None:
    """The index of output item ids dropped evicted responses' ids only once it held over
    8 x max_entries, by rebuilding the whole dict: with turns of more than 8 items (parallel
    tool calls) it stayed over that after the rebuild, so every later ``put`` rebuilt a dict
    of ~100k entries on the event loop (default max_entries).  Now a response's ids go with
    it -- evicted, expired or deleted -- and the index is exactly the live responses' ids."""
    from plano_fast.responses_state import MemoryResponseStore, StoredResponse

    now = [0.0]
    store = MemoryResponseStore(max_entries=2, ttl_s=10, clock=lambda: now[0])

    def put(rid: str, owner: str = "o") -> None:
        entry = StoredResponse(rid, owner, "m", "openai", [{"role": "user", "content": "x"}], 0.0)
        assert store.put(entry, tuple(f"{rid}_item{i}" for i in range(10)))

    for rid in ("r1", "r2", "r3"):  # r1 evicted by r3
        put(rid)
    assert len(store._items) == 20
    assert store.owned("o", ["r1_item0", "r2_item0", "r3_item9"]) == {"r2_item0", "r3_item9"}
    assert store.delete("r2", "o")
    assert len(store._items) == 10 and store.owned("o", ["r2_item0"]) == set()
    now[0] = 11.0  # r3 expired: read once, its ids go with it
    assert store.owned("o", ["r3_item0"]) == set()
    assert store._items == {}
    put("r4")
    put("r4")  # stored again under the same id: one set of ids
    assert len(store._items) == 10
