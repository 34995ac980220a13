"""Conversation state for Responses API requests served through conversion
(``previous_response_id`` in front of providers that keep no state themselves).

Plano's ``state_storage: {type: memory}`` (or its older name ``state_storage_v1_responses``):
a converted Responses answer is stored under its ``resp_…`` id with the conversation so far
(every input item of the turn, history included, then the turn's output items), its
model, provider and owner; a later request naming it in ``previous_response_id`` gets that
history put in front of its own ``input`` before conversion.  OpenAI-family providers with
a responses endpoint keep the passthrough: their ``previous_response_id`` goes to them.

* Owner: the caller's key hash (config mode), so one key cannot continue another key's
  conversation: a foreign, unknown or expired id is a 404, indistinguishable.
* ``store: false`` stores nothing (the answer reports ``store: false``).
* ``GET /v1/responses/{id}`` answers a stored response object, ``DELETE`` removes it (the
  caller's own only; anything else is a 404).
* ``ttl_s`` (default 24 h) after the last write an entry expires; ``max_entries``
  (default 10 000, least recently stored evicted first) and ``max_conversation_bytes``
  (default 4 MiB of JSON per stored conversation; a longer one is not stored) bound memory.
* The memory store is per process: with several workers, a follow-up may reach a worker
  that never saw the first turn (404).  ``type: sqlite``, ``postgres`` (Plano's, with its
  ``connection_string``) and ``store`` (the gateway's own database) share the state across
  workers and gateway processes: ``plano_fast.responses_store``.
* Every store answers ``fetch`` (async; the history is read before the request is
  converted, ``ConfigExchange.start``), ``put`` (the write starts at once and never blocks
  the event loop), ``remove`` and ``close``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from plano_fast.convert._common import dumps, loads

if TYPE_CHECKING:
    from plano_fast.http_server import Responder
    from plano_fast.responses_store import SharedResponseStore

__all__ = [
    "ConversationNotFound",
    "ResponseStore",
    "needs_prefetch",
    "prefetch",
    "MemoryResponseStore",
    "StoredResponse",
    "Turn",
    "begin_turn",
    "store_from_config",
    "stored_response_answer",
]

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_CONVERSATION_BYTES = 4 * 1024 * 1024


class ConversationNotFound(LookupError):
    """``previous_response_id`` names no conversation this caller may continue."""


@dataclass(slots=True)
class StoredResponse:
    id: str
    owner: str
    model: str
    provider: str
    items: list[Any]  # the conversation: input items of every turn and their outputs
    stored_at_s: float
    response: dict[str, Any] | None = None  # the answer as the client got it (GET)


class MemoryResponseStore:
    """An in-process store with expiry and an entry cap (insertion order = eviction order)."""

    __slots__ = ("ttl_s", "max_entries", "max_conversation_bytes", "_entries", "_clock", "_items", "_keys_of")

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_conversation_bytes = max_conversation_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._clock = clock
        #: (owner, output item id) -> the stored response that answered it (``owned_items``)
        self._items: dict[tuple[str, str], str] = {}
        #: a stored response's keys in ``_items``: dropped with it (evicted, expired,
        #: deleted), so the index holds live responses' ids only, whatever their count
        self._keys_of: dict[str, tuple[tuple[str, str], ...]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, response_id: str, owner: str) -> StoredResponse:
        entry = self._entries.get(response_id)
        if entry is None or entry.owner != owner:
            raise ConversationNotFound(response_id)
        if self._clock() - entry.stored_at_s > self.ttl_s:
            del self._entries[response_id]
            self._forget_items(response_id)
            raise ConversationNotFound(response_id)
        return entry

    def _forget_items(self, response_id: str) -> None:
        items = self._items
        for key in self._keys_of.pop(response_id, ()):
            if items.get(key) == response_id:
                del items[key]

    def put(self, entry: StoredResponse, item_ids: tuple[str, ...] = ()) -> bool:
        """Store ``entry`` (``item_ids``: its output items' ids, kept for ``owned_items``);
        False (nothing stored) when its conversation is over the cap."""
        if len(dumps(entry.items)) > self.max_conversation_bytes:
            return False
        entry.stored_at_s = self._clock()
        self._forget_items(entry.id)  # (the same id stored again: its old items go)
        self._entries[entry.id] = entry
        self._entries.move_to_end(entry.id)
        while len(self._entries) > self.max_entries:
            evicted, _ = self._entries.popitem(last=False)
            self._forget_items(evicted)
        if item_ids:
            keys = tuple((entry.owner, item_id) for item_id in item_ids)
            self._keys_of[entry.id] = keys
            items = self._items
            for key in keys:
                items[key] = entry.id
        return True

    def owned(self, owner: str, item_ids: list[str]) -> set[str]:
        """Those of ``item_ids`` that are output items of ``owner``'s stored, unexpired answers."""
        found: set[str] = set()
        for item_id in item_ids:
            rid = self._items.get((owner, item_id))
            if rid is None:
                continue
            try:
                self.get(rid, owner)
            except ConversationNotFound:
                continue
            found.add(item_id)
        return found

    def delete(self, response_id: str, owner: str) -> bool:
        entry = self._entries.get(response_id)
        if entry is None or entry.owner != owner:
            return False
        del self._entries[response_id]
        self._forget_items(response_id)
        return True

    # the interface every store answers (the shared ones in plano_fast.responses_store)
    async def fetch(self, response_id: str, owner: str) -> StoredResponse | None:
        try:
            return self.get(response_id, owner)
        except ConversationNotFound:
            return None

    async def remove(self, response_id: str, owner: str) -> bool:
        return self.delete(response_id, owner)

    async def owned_items(self, owner: str, item_ids: list[str]) -> set[str]:
        return self.owned(owner, item_ids)

    async def close(self) -> None:
        return None


ResponseStore = Union[MemoryResponseStore, "SharedResponseStore"]


def _as_items(value: object) -> list[Any]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


class Turn:
    """One Responses request's part in a conversation: its full input (history first) and,
    once answered, what is stored under the answer's id."""

    __slots__ = ("store", "owner", "items", "model", "provider", "enabled", "index_items")

    def __init__(self, store: ResponseStore, owner: str, items: list[Any], enabled: bool) -> None:
        self.store = store
        self.owner = owner
        self.items = items
        self.model = ""
        self.provider = ""
        self.enabled = enabled
        #: keep the output items' ids for ``owned_items`` (managed mode: a later body may
        #: send them back by id, plano_fast.responses_managed)
        self.index_items = False

    def record(self, response: dict[str, Any]) -> None:
        """The answer (a Responses object, JSON or the stream's final one) is complete."""
        rid = response.get("id")
        if not self.enabled or not isinstance(rid, str) or response.get("status") == "failed":
            return
        output = [item for item in response.get("output") or () if isinstance(item, dict)]
        entry = StoredResponse(rid, self.owner, self.model, self.provider, [*self.items, *output], 0.0, response)
        item_ids = tuple(i for i in (item.get("id") for item in output) if type(i) is str) if self.index_items else ()
        if isinstance(self.store, MemoryResponseStore):
            self.store.put(entry, item_ids)
        else:
            self.store.put(entry, len(output), item_ids)


def needs_prefetch(store: ResponseStore, body: bytes) -> bool:
    """Whether a converted Responses request must read its history before conversion: a
    shared store and a body that may name ``previous_response_id`` (or escapes a key)."""
    return not isinstance(store, MemoryResponseStore) and (
        body.find(b"previous_response_id") >= 0 or body.find(b"\\u") >= 0
    )


async def prefetch(store: ResponseStore, body: bytes, owner: str) -> StoredResponse | None:
    """The stored conversation a Responses request body names in ``previous_response_id``
    (None when it names none, or one this caller has not got: :func:`begin_turn` decides).
    The state database being away is a 503 (``ServiceUnavailable``)."""
    from plano_fast.errors import ServiceUnavailable
    from plano_fast.responses_store import StateUnavailable

    try:
        doc = loads(body)
    except ValueError:
        return None
    previous = doc.get("previous_response_id") if type(doc) is dict else None
    if not isinstance(previous, str):
        return None
    try:
        return await store.fetch(previous, owner)
    except StateUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None


def begin_turn(
    doc: dict[str, Any], store: ResponseStore, owner: str, prior: StoredResponse | None = None
) -> tuple[dict[str, Any], Turn]:
    """The request with its ``previous_response_id`` expanded into ``input`` (raises
    :class:`ConversationNotFound`), and its :class:`Turn`.  ``prior``: the conversation
    :func:`prefetch` read (shared stores); the memory store is read here."""
    items = _as_items(doc.get("input"))
    previous = doc.get("previous_response_id")
    out = dict(doc)
    if previous is not None:
        if not isinstance(previous, str):
            raise ConversationNotFound(str(previous))
        if prior is None or prior.id != previous or prior.owner != owner:
            if not isinstance(store, MemoryResponseStore):
                raise ConversationNotFound(previous)
            prior = store.get(previous, owner)
        items = [*prior.items, *items]
        del out["previous_response_id"]
        out["input"] = items
    enabled = doc.get("store") is not False
    out["store"] = enabled
    return out, Turn(store, owner, items, enabled)


async def stored_response_answer(
    store: ResponseStore, method: bytes, response_id: str, owner: str, responder: Responder
) -> None:
    """``GET /v1/responses/{id}`` (the stored response object) and ``DELETE`` (OpenAI's
    ``{"id", "object": "response", "deleted": true}``) for this caller's stored
    conversations, answered on ``responder``; 404 for an unknown, expired or foreign id,
    503 when the state database is away -- both raised, so the server answers them as every
    refusal (``x-plano-request-id``, the access-log line, errors_total; the 404 was sent
    plain before 2026-12-06)."""
    from plano_fast.errors import NotFound, ServiceUnavailable
    from plano_fast.responses_store import StateUnavailable

    try:
        answer = await _stored_answer(store, method, response_id, owner)
    except StateUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None
    if answer is None:
        raise NotFound(f"response '{response_id}' not found")
    responder.send_simple(*answer)


async def _stored_answer(
    store: ResponseStore, method: bytes, response_id: str, owner: str
) -> tuple[int, bytes] | None:
    """The answer to a stored conversation's GET or DELETE; None: no such conversation."""
    entry = await store.fetch(response_id, owner)
    if entry is None:
        return None
    if method == b"DELETE":
        await store.remove(response_id, owner)
        return 200, dumps({"id": response_id, "object": "response", "deleted": True})
    return 200, dumps(entry.response or {"id": response_id, "object": "response"})


def store_from_config(
    raw: dict[str, Any], *, sqlite_path: str = "plano_fast.db", database_url: str | None = None
) -> ResponseStore | None:
    """The store configured by Plano's ``state_storage`` (or ``state_storage_v1_responses``);
    None without one, or with an unknown type (warned).  ``sqlite_path`` / ``database_url``:
    the gateway's own store (types ``sqlite`` and ``store``; ``postgres`` without a
    ``connection_string``)."""
    spec = raw.get("state_storage") or raw.get("state_storage_v1_responses")
    if not spec:
        return None
    kind = spec.get("type", "memory") if isinstance(spec, dict) else None
    if kind not in ("memory", "sqlite", "postgres", "store"):
        log.warning("state_storage type %r is not supported (memory, sqlite, postgres, store): "
                    "conversation state is off", kind)
        return None
    assert isinstance(spec, dict)
    ttl_s = float(spec.get("ttl_s", DEFAULT_TTL_S))
    max_bytes = int(spec.get("max_conversation_bytes", DEFAULT_MAX_CONVERSATION_BYTES))
    if kind == "memory":
        return MemoryResponseStore(
            ttl_s=ttl_s, max_entries=int(spec.get("max_entries", DEFAULT_MAX_ENTRIES)),
            max_conversation_bytes=max_bytes,
        )
    from plano_fast.responses_store import PostgresResponseStore, SqliteResponseStore

    common: dict[str, Any] = {"ttl_s": ttl_s, "max_conversation_bytes": max_bytes,
                              "sweep_interval_s": float(spec.get("sweep_interval_s", 300.0))}
    if kind == "store":
        kind = "postgres" if database_url else "sqlite"
    if kind == "postgres":
        dsn = spec.get("connection_string") or database_url
        if not isinstance(dsn, str) or not dsn:
            log.warning("state_storage type postgres needs a connection_string (or the gateway's "
                        "database_url): conversation state is off")
            return None
        return PostgresResponseStore(dsn, **common)
    path = spec.get("path") or sqlite_path
    return SqliteResponseStore(str(path), **common)
