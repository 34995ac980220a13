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

Without ``state_storage`` nothing a body names of the provider's own stored state may go
up at all (``refuse_unowned_state``): the provider keeps one pool of responses,
conversations and items for the operator's server-side key, so ``previous_response_id``,
``conversation`` or an input item that names a stored item would be resolved there --
another project's conversation continued, its text in the answer.  With it,
``previous_response_id`` is expanded as above, and an input item sent back by id (a
``reasoning`` item without its ``encrypted_content``, as OpenAI's tool loop and
openai-agents' ``to_input_list()`` send a turn's output back; an ``item_reference``; an
``image_generation_call`` without its ``result``) passes when it is an output item of
this owner's stored answers (``check_own_references``: the gateway keeps their ids); a
``conversation`` is still refused.  An Anthropic Messages body's ``container`` id is the
same kind of name (``refuse_container_reuse``).

Files, vector stores and stored prompts are the same pool: a ``file_id`` (Responses
``input_file`` / ``input_image``, a chat ``file`` part, Anthropic's ``source: {type:
"file"}`` and ``container_upload``), ``file_ids`` (a ``code_interpreter`` container),
``vector_store_ids`` (``file_search``), ``prompt: {id}`` and an ``image_generation``
tool's ``input_image_mask`` name the operator's account's objects.  No project can make one
through the gateway (the Files, vector store and prompt endpoints are not served in
managed mode), so such an id is the operator's own or another tenant's, which cannot be
told apart: every one is refused (``refuse_stored_files``; the Responses ones in
``refuse_unowned_state``).  An operator who means to share files with its projects does
so in config or firewall mode, where each key is its own account.
"""

from __future__ import annotations

import json
import time
from typing import Any

from plano_fast.convert._common import dumps, loads
from plano_fast.errors import ClientError, NotFound, ServiceUnavailable, Unauthorized
from plano_fast.gateway.phases import key_hash
from plano_fast.managed.state import TOKEN_PREFIX, ManagedState, token_hash
from plano_fast.responses_state import ResponseStore, Turn, begin_turn
from plano_fast.responses_store import StateUnavailable

__all__ = ["ManagedTurn", "check_own_references", "expand_managed", "managed_owner", "names_a_container",
           "names_a_file", "owner_of", "refuse_container_reuse", "refuse_stored_files", "refuse_unowned_state"]

#: answers bigger than this are not kept for the state (the relay is unaffected)
MAX_RECORDED_BYTES = 16 * 1024 * 1024


def managed_owner(project_id: str | None, user_id: str | None) -> str:
    """The owner key of a managed project's and user's stored conversations and item ids.
    Ids are admin-chosen and may hold ``:`` (``org:42``): a project id holding ``:`` or
    ``#`` is written ``<length>#<id>``, so two (project, user) pairs never share a key
    (project ``a`` with user ``b:c`` and project ``a:b`` with user ``c`` did:
    ``managed:a:b:c``, each reading the other's conversations).  Ids without them keep
    the key they always had (stored conversations stay reachable)."""
    project = project_id or ""
    if ":" in project or "#" in project:
        project = f"{len(project)}#{project}"
    return f"managed:{project}:{user_id or ''}"


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


#: bytes one of which a body naming stored state holds (a ``\u`` escape can spell any name)
_STATE_MARKERS = (b"previous_response_id", b"conversation", b'"id"', b"item_reference", b"container", b"file_id",
                  b"vector_store_ids", b"\\u")

#: what a refused input item is told to do instead (no state_storage / not this owner's)
_INSTEAD = (
    "continue with 'previous_response_id' (the gateway's state_storage keeps the conversation), or send "
    "'store': false with 'include': [\"reasoning.encrypted_content\"] so that reasoning items carry their "
    "'encrypted_content', or send the items themselves (leave reasoning items out)"
)


def refuse_unowned_state(body: bytes, expands_previous: bool) -> None:
    """400 for a managed Responses body naming state the provider keeps for the operator's
    key rather than carrying it: ``conversation``; ``previous_response_id`` unless the
    gateway expands it from its own store (``expands_previous``: ``state_storage``); an
    input item that is a reference -- ``item_reference``, an ``id`` without ``type`` or
    ``role``, a ``reasoning`` item by ``id`` without its ``encrypted_content`` (the
    provider reads the stored reasoning), an ``image_generation_call`` by ``id`` without
    its ``result`` -- unless ``expands_previous`` (then ``check_own_references`` lets this
    owner's own through); a file, vector store or stored prompt by id (the module's
    docstring), state storage or not.  Every project reaches the provider under the
    one server-side key, so such a name would be resolved in a pool every project shares:
    which project stored it is unknown to the provider, and a 404 here could not tell
    either.  Every spelling a JSON parser accepts counts (escapes; each copy of a repeated
    member, as a first-wins parser upstream could read any)."""
    if not any(body.find(m) >= 0 for m in _STATE_MARKERS):
        return
    try:
        doc = json.loads(body, object_pairs_hook=_Members)
    except (ValueError, RecursionError):  # (the scanner refuses it with a precise message)
        return
    if type(doc) is not _Members:
        return
    if any(v is not None for v in doc.values_of("conversation")):
        raise ClientError(
            "'conversation' names a conversation stored at the provider, which this gateway cannot "
            "attribute to a project; send the conversation's items in 'input'"
        )
    if not expands_previous and any(v is not None for v in doc.values_of("previous_response_id")):
        raise ClientError(
            "'previous_response_id' names a response stored at the provider, which this gateway cannot "
            "attribute to a project (no state_storage); send the conversation's items in 'input'"
        )
    for tools in doc.values_of("tools"):
        for tool in tools if type(tools) is list else ():
            if type(tool) is _Members and "code_interpreter" in tool.values_of("type") and any(
                type(c) is str for c in tool.values_of("container")
            ):
                raise ClientError(
                    "a 'code_interpreter' tool's 'container' names a container stored at the provider (its "
                    "files too), which this gateway cannot attribute to a project; use {\"type\": \"auto\"}"
                )
            named = _tool_names_stored(tool) if type(tool) is _Members else None
            if named is not None:
                raise ClientError(f"{named} {_NOT_ATTRIBUTABLE}")
    for prompt in doc.values_of("prompt"):
        if type(prompt) is _Members and any(v is not None for v in prompt.values_of("id")):
            raise ClientError(
                "'prompt' names a prompt template stored at the provider (the operator's account), which this "
                "gateway cannot attribute to a project; send its text in 'instructions' and 'input'"
            )
    for items in doc.values_of("input"):
        _refuse_file_ids(items, "'input'")
        if expands_previous:
            continue  # (references: check_own_references, against the gateway's store)
        for item in items if type(items) is list else ():
            named = _reference(item) if type(item) is _Members else None
            if named is not None:
                raise ClientError(
                    f"{named} in 'input' names an item stored at the provider, which this gateway cannot "
                    f"attribute to a project (no state_storage): {_INSTEAD}"
                )


#: the end of a refusal naming a file, vector store or prompt by id
_NOT_ATTRIBUTABLE = (
    "names an object stored in the operator's provider account (a file, vector store or prompt), which this "
    "gateway cannot attribute to a project (projects cannot upload through it); send the content itself "
    "(file_data, image_url, text)"
)


def _tool_names_stored(tool: _Members) -> str | None:
    """What a Responses tool names of the operator's stored objects, else None."""
    if any(type(v) is list and v for v in tool.values_of("vector_store_ids")):
        return "a 'file_search' tool's 'vector_store_ids'"
    for container in tool.values_of("container"):
        if type(container) is _Members and any(type(v) is list and v for v in container.values_of("file_ids")):
            return "a 'code_interpreter' container's 'file_ids'"
    for mask in tool.values_of("input_image_mask"):
        if type(mask) is _Members and any(v is not None for v in mask.values_of("file_id")):
            return "an 'image_generation' tool's 'input_image_mask' 'file_id'"
    return None


def _refuse_file_ids(value: Any, where: str) -> None:
    """400 when ``value`` (messages, input items, content parts, at any depth) holds an
    object with a ``file_id`` (or a non-empty ``file_ids``): a Files API object of the
    operator's account.  A tool call's arguments object (Anthropic ``tool_use``'s
    ``input``) is the model's text for the client's own tool, not a file: skipped, as is
    ``metadata``."""
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is list:
            stack.extend(node)
        elif type(node) is _Members:
            for key, member in node:
                if key == "file_id" and member is not None or key == "file_ids" and type(member) is list and member:
                    raise ClientError(f"a '{key}' in {where} {_NOT_ATTRIBUTABLE}")
                if (key == "input" and type(member) is _Members) or key == "metadata":
                    continue
                if type(member) is list or type(member) is _Members:
                    stack.append(member)


def names_a_file(body: bytes) -> bool:
    """Whether ``body`` could name a ``file_id`` in some spelling: the word, or an escaped
    letter of it (``\\u006x``) or underscore (``\\u005f``).  The compiled start declines
    such a chat or Messages body to the twin (``refuse_stored_files``)."""
    return (body.find(b"file_id") >= 0 or body.find(b"\\u006") >= 0 or body.find(b"\\u005f") >= 0
            or body.find(b"\\u005F") >= 0)


def refuse_stored_files(body: bytes) -> None:
    """400 for a managed chat completions or Anthropic Messages body naming a Files API
    object by id: a chat ``file`` part's ``file: {file_id}``, Anthropic's ``source:
    {"type": "file", "file_id"}`` and ``container_upload`` -- the operator's account's
    files, every project's alike (the module's docstring)."""
    if not names_a_file(body):
        return
    try:
        doc = json.loads(body, object_pairs_hook=_Members)
    except (ValueError, RecursionError):  # (the scanner refuses it with a precise message)
        return
    if type(doc) is not _Members:
        return
    for name in ("messages", "system"):
        for value in doc.values_of(name):
            _refuse_file_ids(value, f"'{name}'")


def _stored_references(body: bytes) -> list[tuple[str, Any]]:
    """The input items of a Responses body that name a stored item (``_reference``), as
    (what it is, its id)."""
    if body.find(b'"id"') < 0 and body.find(b"item_reference") < 0 and body.find(b"\\u") < 0:
        return []
    try:
        doc = json.loads(body, object_pairs_hook=_Members)
    except (ValueError, RecursionError):
        return []
    found: list[tuple[str, Any]] = []
    for items in doc.values_of("input") if type(doc) is _Members else ():
        for item in items if type(items) is list else ():
            named = _reference(item) if type(item) is _Members else None
            if named is not None:
                found.extend((named, item_id) for item_id in item.values_of("id"))
    return found


async def check_own_references(store: ResponseStore, body: bytes, owner: str) -> None:
    """With state_storage: 400 unless every input item ``body`` sends back by id (a
    reasoning item without its ``encrypted_content``, an ``item_reference``, ...) is an
    output item of ``owner``'s stored answers (``owned_items``: only the gateway's own
    stored turns count; another project's id, or one answered before the gateway kept
    them, is unknown).  The ids are read on this path only: a body with none costs a
    search for ``"id"``.  503 when the state database is away."""
    references = _stored_references(body)
    if not references:
        return
    ids = [i for _, i in references if type(i) is str]
    try:
        owned = await store.owned_items(owner, ids) if ids else set()
    except StateUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None
    for named, item_id in references:
        if item_id not in owned:
            shown = item_id if type(item_id) is str else json.dumps(item_id)
            raise ClientError(
                f"{named} in 'input', '{shown[:80]}', is not an output item of this project's stored answers: "
                f"the provider would resolve it in a pool every project shares; {_INSTEAD}"
            )


def names_a_container(body: bytes) -> bool:
    """Whether ``body`` could name Anthropic's ``container`` in some spelling: its letters
    as they are, or an escaped ASCII letter (``\\u006f``; no JSON encoder escapes a
    letter: an ``ensure_ascii`` body escapes only non-ASCII and control characters).  The
    compiled start declines such a body to the twin, which parses it."""
    return body.find(b"ontainer") >= 0 or body.find(b"\\u006") >= 0 or body.find(b"\\u007") >= 0


def refuse_container_reuse(body: bytes) -> None:
    """400 for a managed Anthropic Messages body naming a code-execution container by id
    (the top-level ``container``: a string, or an object with an ``id``; Anthropic's
    container reuse): a container is made by any request that runs code and kept for the
    operator's key, so the id could be another project's, its files with it.  An object
    without an ``id`` (skills for a new container) passes."""
    if not names_a_container(body):
        return
    try:
        doc = json.loads(body, object_pairs_hook=_Members)
    except (ValueError, RecursionError):  # (the scanner refuses it with a precise message)
        return
    if type(doc) is not _Members:
        return
    for value in doc.values_of("container"):
        if type(value) is str or (type(value) is _Members and any(v is not None for v in value.values_of("id"))):
            raise ClientError(
                "'container' names a code-execution container stored at the provider (its files too), which "
                "this gateway cannot attribute to a project; leave it out for a new container"
            )


class _Members(list[tuple[str, Any]]):
    """A JSON object as its members in order, repeated names kept."""

    def values_of(self, name: str) -> list[Any]:
        return [value for key, value in self if key == name]


def _reference(item: _Members) -> str | None:
    """What ``item`` is when it names a stored item instead of carrying it, else None."""
    kinds = item.values_of("type")
    has_id = any(v is not None for v in item.values_of("id"))
    if "item_reference" in kinds:
        return "an 'item_reference' item"
    if not kinds and has_id and not item.values_of("role"):
        return "an 'item_reference' item (an 'id' without 'type' or 'role')"
    if "reasoning" in kinds and has_id and not any(v for v in item.values_of("encrypted_content")):
        return "a 'reasoning' item by 'id' (without its 'encrypted_content')"
    if "image_generation_call" in kinds and has_id and not any(v for v in item.values_of("result")):
        return "an 'image_generation_call' item by 'id' (without its 'result')"
    return None


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
    await check_own_references(store, body, owner)
    out, turn = begin_turn(doc, store, owner, prior)
    turn.index_items = True  # (a later body may send this turn's output back by id)
    if previous is not None:
        if doc.get("store") is None:
            del out["store"]  # the provider's default, as the client sent it
        body = dumps(out)
    return body, ManagedTurn(turn, streaming) if turn.enabled else None
