"""Conversation state in managed mode (``xproxy_`` tokens, hard budgets) for the Responses API.

Managed mode forwards ``/v1/responses`` to providers with a native Responses endpoint.
Their own server-side state cannot be bounded (the stored history is billed as input but
is not in the request), so a hard budget refuses ``previous_response_id``; and with one
server-side key for every project it would not know whose conversation an id is.  With
``state_storage`` configured the gateway keeps the state instead:

* every answer (``store`` not false) is stored under the provider's response id with the
  conversation so far (``plano_fast.responses_state``), owned by the token's project and
  user;
* a later ``previous_response_id`` is expanded here, before the reservation: the request
  is sent with the whole history in ``input`` and without ``previous_response_id``, so the
  reservation (``plano_fast.managed.bounds``: the body's bytes bound its input tokens)
  counts the history the provider will bill;
* an id this project and user have not got stored is a 404 (never passed to the provider,
  where it might be another project's).
"""

from __future__ import annotations

import time
from typing import Any

from plano_fast.convert._common import dumps, loads
from plano_fast.errors import NotFound, ServiceUnavailable, Unauthorized
from plano_fast.gateway.phases import key_hash
from plano_fast.managed.state import TOKEN_PREFIX, ManagedState, token_hash
from plano_fast.responses_state import ResponseStore, Turn, begin_turn
from plano_fast.responses_store import StateUnavailable

__all__ = ["ManagedTurn", "expand_managed", "managed_owner", "owner_of"]

#: answers bigger than this are not kept for the state (the relay is unaffected)
MAX_RECORDED_BYTES = 16 * 1024 * 1024


def managed_owner(project_id: str | None, user_id: str | None) -> str:
    return f"managed:{project_id or ''}:{user_id or ''}"


def owner_of(managed: ManagedState | None, secret: bytes) -> str:
    """The owner of the conversations a credential reaches (GET / DELETE
    ``/v1/responses/{id}``): an ``xproxy_`` token's project and user in managed mode (a
    revoked, expired or unknown token is a 401), else the key's hash (config mode)."""
    if managed is None or not secret.startswith(TOKEN_PREFIX.encode()):
        return key_hash(secret)
    token = managed.lookup(token_hash(secret), time.time_ns()) if managed.ready else None
    if token is None:
        raise Unauthorized("this token is invalid, revoked or expired")
    return managed_owner(token.project_id, token.user_id)


class ManagedTurn:
    """The answer's bytes, collected as relayed, recorded once the exchange settled."""

    __slots__ = ("turn", "streaming", "chunks", "size")

    def __init__(self, turn: Turn, streaming: bool) -> None:
        self.turn = turn
        self.streaming = streaming
        self.chunks: list[bytes] = []
        self.size = 0

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= MAX_RECORDED_BYTES:
            self.chunks.append(data)

    def complete(self, status: int, model: str | None, provider: str | None) -> None:
        """The answer was relayed in full (before its last bytes leave): store it."""
        if status >= 300 or self.size > MAX_RECORDED_BYTES:
            return
        body = b"".join(self.chunks)
        self.chunks = []
        response = final_response(body) if self.streaming else _json(body)
        if response is None:
            return
        self.turn.model, self.turn.provider = model or "", provider or ""
        self.turn.record(response)


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        doc = loads(body)
    except ValueError:
        return None
    return doc if type(doc) is dict and doc.get("object") == "response" else None


def final_response(stream: bytes) -> dict[str, Any] | None:
    """The response object of a Responses stream's terminal event (completed/incomplete)."""
    for line in reversed(stream.split(b"\n")):
        line = line.strip()
        if not line.startswith(b"data:") or b'"response.' not in line:
            continue
        try:
            event = loads(line[5:])
        except ValueError:
            continue
        if type(event) is dict and event.get("type") in ("response.completed", "response.incomplete"):
            response = event.get("response")
            return response if type(response) is dict else None
    return None


async def expand_managed(
    store: ResponseStore, body: bytes, owner: str, streaming: bool
) -> tuple[bytes, ManagedTurn | None]:
    """``body`` with its ``previous_response_id`` expanded (the same bytes without one),
    and what records the answer (None for ``store: false``).  404 for an id ``owner`` has
    not got stored, 503 when the state database is away."""
    try:
        doc = loads(body)
    except ValueError:
        return body, None  # the scanner already accepted it; let the provider answer
    if type(doc) is not dict:
        return body, None
    previous = doc.get("previous_response_id")
    prior = None
    if previous is not None:
        try:
            prior = await store.fetch(previous, owner) if isinstance(previous, str) else None
        except StateUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from None
        if prior is None:
            raise NotFound(f"previous_response_id '{previous}' not found")
    out, turn = begin_turn(doc, store, owner, prior)
    if previous is not None:
        if doc.get("store") is None:
            del out["store"]  # the provider's default, as the client sent it
        body = dumps(out)
    return body, ManagedTurn(turn, streaming) if turn.enabled else None
