"""Managed-mode admin routes: provider keys, pipes and ``xproxy_`` tokens (request bodies,
JSON views and handlers; ``plano_fast.admin`` mounts them and applies the admin key).

Routes (JSON in and out; all take the admin key, see ``plano_fast.admin``)::

    POST   /provider-keys   {provider, api_key, project_id?, display_name?}    -> 201 key
    GET    /provider-keys?project_id=                                         -> {"provider_keys": [...]}
    POST   /provider-keys/{id}/revoke                                         -> 200 key
    POST   /pipes   {project_id, name, targets: [{provider, model?, model_filter?,
                     provider_key_id, weight?}]}                              -> 201 pipe
    GET    /pipes?project_id=      GET /pipes/{id}
    DELETE /pipes/{id}[?revoke_tokens=true]                                   -> 200
    POST   /tokens  {project_id, user_id?, pipe_id?, name?,
                     expires_in_s? | expires_at?}                             -> 201 {"token": ...}
    GET    /tokens?project_id=&user_id=                                       -> {"tokens": [...]}
    POST   /tokens/{id}/revoke                                                -> 200 token

``project_id``, in a body or a query, is a project's id or its name (404 when it names
none, 409 when several projects share the name); answers carry the id.  When managed mode
is off (``AdminContext.cipher is None``) every one of them answers 409
``managed_mode_disabled``.

Secrets
-------
* A provider key is encrypted (AES-256-GCM, provider bound as associated data) the moment
  the body is validated; only ciphertext, nonce and the master key's id are stored.  No
  answer ever contains the key: the creation answer shows its last 4 characters
  (``api_key_last4``, keys of 16+ characters only) so the operator can tell keys apart;
  nothing else ever does (the store keeps no clear-text part of it to show).
* A token is generated here (``xproxy_`` + 32 random bytes); only its SHA-256 is stored.
  The creation answer is the only time it is shown; listings show neither the token nor
  its hash.

After a change ``AdminContext.on_managed_changed`` reloads the gateway's managed state, so
a revocation takes effect at once on this instance (other instances: within their reload
interval).

Deleting a pipe that active tokens are bound to is refused (409 ``pipe_in_use``) unless
``?revoke_tokens=true``: the store would unbind those tokens (``pipe_id`` -> NULL) and they
would then fall back to the project's default pipe, i.e. gain access they were not given.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from plano_fast.admin_models import RequestError, parse_body, parse_json_body, resolve_project
from plano_fast.managed.crypto import KeyCipher
from plano_fast.managed.state import new_token, token_hash
from plano_fast.providers import canonical_provider_id
from plano_fast.store import (
    AlreadyExists,
    InvalidValue,
    MissingReference,
    Pipe,
    PipeTarget,
    ProviderKey,
    ProxyToken,
    Store,
)

if TYPE_CHECKING:
    from plano_fast.admin import AdminContext

Notify = Callable[..., Awaitable[dict[str, str]]]


# --------------------------------------------------------------------------- bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_Str200 = Annotated[str, Field(min_length=1, max_length=200)]
_Ref = Annotated[str, Field(min_length=1, max_length=128)]
_PROVIDER_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
MAX_PIPE_TARGETS: Final = 64
MAX_TOKEN_LIFETIME_S: Final = 10 * 366 * 86_400
PROVIDER_KEY_HINT_MIN_CHARS: Final = 16  # shorter keys get no last-4 hint at all


def _check_text(value: str) -> str:
    """Stripped, non-blank, no control characters."""
    text = value.strip()
    if not text:
        raise ValueError("must not be blank")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError("must not contain control characters")
    return text


def check_provider_secret(value: str) -> str:
    """A provider API key: 1..4096 printable ASCII characters, no whitespace.

    ASCII because it is sent in an HTTP header; anything else would only fail later, when
    the gateway loads its pipes.
    """
    if not 1 <= len(value) <= 4096:
        raise ValueError("must be 1 to 4096 characters")
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in value):
        raise ValueError("must be printable ASCII without whitespace")
    return value


def provider_key_hint(api_key: str) -> str | None:
    """The last 4 characters, shown once at creation so the operator can tell keys apart;
    None for keys too short for 4 characters to be a small part of them."""
    if len(api_key) < PROVIDER_KEY_HINT_MIN_CHARS:
        return None
    return "..." + api_key[-4:]


class ProviderKeyBody(_Body):
    provider: str
    api_key: str = Field(repr=False)
    project_id: _Ref | None = None  # None = shared by every project
    display_name: _Str200 | None = None

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        canonical = canonical_provider_id(value)
        if canonical is not None:
            return canonical
        text = value.strip()
        if _PROVIDER_LABEL.fullmatch(text) is None:
            raise ValueError(
                "must be a provider id (e.g. openai, anthropic) or a label of letters, digits "
                "and '._:/@+-' (up to 128 characters)"
            )
        return text

    @field_validator("api_key")
    @classmethod
    def _secret(cls, value: str) -> str:
        return check_provider_secret(value)

    @field_validator("display_name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _check_text(value)


class PipeTargetBody(_Body):
    provider: _Str200  # a model_providers entry: its name, or its provider id / prefix
    model: _Str200 | None = None
    model_filter: _Str200 | None = None
    provider_key_id: _Ref
    weight: Annotated[int, Field(ge=0, le=1_000_000)] = 1

    @field_validator("provider", "model", "model_filter")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return None if value is None else _check_text(value)

    @model_validator(mode="after")
    def _model_or_filter(self) -> PipeTargetBody:
        if self.model is None and self.model_filter is None:
            raise ValueError("give 'model' or 'model_filter' (\"*\" serves every model)")
        return self


class PipeBody(_Body):
    project_id: _Ref
    name: _Str200
    targets: Annotated[list[PipeTargetBody], Field(min_length=1, max_length=MAX_PIPE_TARGETS)]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_text(value)


def parse_instant(value: str) -> datetime.datetime:
    """ISO 8601 with a UTC offset (``Z`` or ``+hh:mm``) -> an aware datetime."""
    try:
        instant = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError("must be an ISO 8601 date and time, e.g. 2030-01-31T12:00:00Z") from None
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError("must include a UTC offset (e.g. Z or +02:00)")
    return instant


class TokenBody(_Body):
    project_id: _Ref
    user_id: _Ref | None = None
    pipe_id: _Ref | None = None  # None: the project's "default" pipe (or its only pipe)
    name: _Str200 | None = None
    expires_in_s: Annotated[int, Field(ge=1, le=MAX_TOKEN_LIFETIME_S)] | None = None
    expires_at: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @field_validator("expires_at")
    @classmethod
    def _expires_at(cls, value: str | None) -> str | None:
        if value is not None:
            parse_instant(value)
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _check_text(value)

    @model_validator(mode="after")
    def _one_expiry(self) -> TokenBody:
        if self.expires_in_s is not None and self.expires_at is not None:
            raise ValueError("give at most one of 'expires_in_s' or 'expires_at'")
        return self

    def expires_at_ns(self, now_ns: int) -> int | None:
        """The expiry as epoch nanoseconds; None = never expires."""
        if self.expires_in_s is not None:
            return now_ns + self.expires_in_s * 1_000_000_000
        if self.expires_at is not None:
            instant = parse_instant(self.expires_at)
            epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
            delta = instant - epoch
            return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
        return None


# --------------------------------------------------------------------------- JSON views


def ns_to_iso(time_ns: int | None) -> str | None:
    """Epoch nanoseconds -> ISO 8601 UTC with a ``Z``, to the microsecond."""
    if time_ns is None:
        return None
    seconds, rest = divmod(time_ns, 1_000_000_000)
    instant = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    instant = instant.replace(microsecond=rest // 1_000)
    return instant.isoformat().replace("+00:00", "Z")


def provider_key_view(k: ProviderKey) -> dict[str, Any]:
    """A provider key without its secret: no ciphertext, no nonce, no part of the key."""
    return {
        "id": k.id,
        "provider": k.provider,
        "project_id": k.project_id,
        "display_name": k.display_name,
        "key_id": k.key_id,
        "is_active": k.is_active,
        "created_at_ns": k.created_at_ns,
        "revoked_at_ns": k.revoked_at_ns,
    }


def pipe_view(p: Pipe, active_keys: Mapping[str, bool] | None = None) -> dict[str, Any]:
    """A pipe and its targets; with ``active_keys`` (key id -> active), each target says
    whether its key is usable (a target whose key is revoked or gone is skipped)."""
    targets = []
    for t in p.targets:
        target: dict[str, Any] = asdict(t)
        if active_keys is not None:
            target["provider_key_active"] = active_keys.get(t.provider_key_id or "", False)
        targets.append(target)
    return {
        "id": p.id,
        "project_id": p.project_id,
        "name": p.name,
        "targets": targets,
        "created_at_ns": p.created_at_ns,
    }


def token_state(t: ProxyToken, now_ns: int) -> str:
    if t.revoked:
        return "revoked"
    if t.expires_at_ns is not None and t.expires_at_ns <= now_ns:
        return "expired"
    return "active"


def token_view(t: ProxyToken, now_ns: int) -> dict[str, Any]:
    """A token's metadata: never the token, and not its hash either (nothing to show)."""
    return {
        "id": t.id,
        "project_id": t.project_id,
        "user_id": t.user_id,
        "pipe_id": t.pipe_id,
        "name": t.name,
        "state": token_state(t, now_ns),
        "expires_at_ns": t.expires_at_ns,
        "expires_at": ns_to_iso(t.expires_at_ns),
        "revoked": t.revoked,
        "revoked_at_ns": t.revoked_at_ns,
        "last_used_at_ns": t.last_used_at_ns,
        "created_at_ns": t.created_at_ns,
    }


# --------------------------------------------------------------------------- handlers

TOKEN_SHOWN_ONCE: Final = (
    "the token is shown once: store it now; it cannot be retrieved again (only its SHA-256 is kept)"
)
_DISABLED_MESSAGE: Final = (
    "managed mode is off on this gateway (enable plano_fast.managed and set PLANO_FAST_MASTER_KEY)"
)
_TRUE: Final = frozenset({"1", "true", "yes"})


def _json(data: object, status: int = 200) -> web.Response:
    resp = web.json_response(data, status=status)
    resp.headers["cache-control"] = "no-store"
    return resp


def _query_str(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    return raw if raw else None


def _target_provider_id(name: str) -> str | None:
    """The provider a target name plainly means (``openai`` or ``openai/gpt-4o``), if any."""
    return canonical_provider_id(name.split("/", 1)[0])


class ManagedAdmin:
    """The managed-mode route handlers, bound to one gateway context."""

    def __init__(self, ctx: AdminContext, notify: Notify) -> None:
        self.ctx = ctx
        self._notify = notify

    @property
    def store(self) -> Store:
        return self.ctx.store

    def _cipher(self) -> KeyCipher:
        cipher = self.ctx.cipher
        if cipher is None:
            raise RequestError(409, "managed_mode_disabled", _DISABLED_MESSAGE)
        return cipher

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return parse_json_body(await request.read())

    async def _changed(self) -> dict[str, str]:
        return await self._notify(self.ctx.on_managed_changed)

    async def _require_project(self, ref: str) -> str:
        """The id of the project ``ref`` names (its id or name); 404 / 409 otherwise."""
        return (await resolve_project(self.store, ref, "project_id")).id

    async def _project_query(self, request: web.Request) -> str | None:
        ref = _query_str(request, "project_id")
        return None if ref is None else await self._require_project(ref)

    # -- provider keys --------------------------------------------------------------------

    async def create_provider_key(self, request: web.Request) -> web.Response:
        cipher = self._cipher()
        body = parse_body(ProviderKeyBody, await self._body(request))
        if body.project_id is not None:
            body = body.model_copy(update={"project_id": await self._require_project(body.project_id)})
        ciphertext, nonce, key_id = cipher.encrypt(body.api_key, body.provider)
        hint = provider_key_hint(body.api_key)
        try:
            key = await self.store.create_provider_key(
                body.provider, ciphertext, nonce, key_id,
                project_id=body.project_id, display_name=body.display_name,
            )  # fmt: skip
        except MissingReference:  # the project went away meanwhile
            raise RequestError(404, "not_found", "field 'project_id': no project has this id") from None
        extra = await self._changed()
        view = provider_key_view(key)
        if hint is not None:
            view["api_key_last4"] = hint
        return _json({**view, **extra}, 201)

    async def list_provider_keys(self, request: web.Request) -> web.Response:
        self._cipher()
        keys = await self.store.list_provider_keys(await self._project_query(request))
        return _json({"provider_keys": [provider_key_view(k) for k in keys]})

    async def revoke_provider_key(self, request: web.Request) -> web.Response:
        self._cipher()
        key_id = request.match_info["id"]
        if await self.store.get_provider_key(key_id) is None:
            raise RequestError(404, "not_found", "no provider key has this id")
        changed = await self.store.revoke_provider_key(key_id)
        extra = await self._changed()
        key = await self.store.get_provider_key(key_id)
        if key is None:
            raise RequestError(404, "not_found", "no provider key has this id")
        pipes = [
            p.id for p in await self.store.list_pipes() if any(t.provider_key_id == key_id for t in p.targets)
        ]
        # Targets using the key are skipped from now on; a pipe left without targets fails.
        return _json({**provider_key_view(key), "changed": changed, "pipes_affected": pipes, **extra})

    # -- pipes ----------------------------------------------------------------------------

    async def _check_targets(self, body: PipeBody) -> list[str]:
        """Every target's key must exist, be active and belong to the pipe's project (or be
        shared); refusals name the field.  Returns warnings for plain provider mismatches."""
        details: list[dict[str, str]] = []
        warnings: list[str] = []
        for i, target in enumerate(body.targets):
            field = f"targets.{i}.provider_key_id"
            key = await self.store.get_provider_key(target.provider_key_id)
            if key is None:
                details.append({"field": field, "message": "no provider key has this id"})
            elif not key.is_active:
                details.append({"field": field, "message": "this provider key is revoked"})
            elif key.project_id is not None and key.project_id != body.project_id:
                details.append({"field": field, "message": "this provider key belongs to another project"})
            else:
                meant = _target_provider_id(target.provider)
                if meant is not None and meant != canonical_provider_id(key.provider) and meant != key.provider:
                    warnings.append(
                        f"targets.{i}: provider '{target.provider}' looks like {meant}, "
                        f"but its key is a {key.provider} key"
                    )
        if details:
            message = "; ".join(f"field '{d['field']}': {d['message']}" for d in details)
            raise RequestError(400, "invalid_request", message, details)
        return warnings

    async def _active_keys(self) -> dict[str, bool]:
        return {k.id: k.is_active for k in await self.store.list_provider_keys()}

    async def create_pipe(self, request: web.Request) -> web.Response:
        self._cipher()
        body = parse_body(PipeBody, await self._body(request))
        body = body.model_copy(update={"project_id": await self._require_project(body.project_id)})
        warnings = await self._check_targets(body)
        targets = [
            PipeTarget(t.provider, t.model, t.model_filter, t.provider_key_id, t.weight) for t in body.targets
        ]
        try:
            pipe = await self.store.create_pipe(body.project_id, body.name, targets)
        except AlreadyExists:
            raise RequestError(
                409, "already_exists", "field 'name': this project already has a pipe with this name"
            ) from None
        except InvalidValue as exc:
            raise RequestError(400, "invalid_request", f"field 'targets': {exc}") from None
        except MissingReference:  # a project or key went away meanwhile
            raise RequestError(404, "not_found", "the project or a provider key no longer exists") from None
        extra = await self._changed()
        view = pipe_view(pipe, await self._active_keys())
        if warnings:
            view["warnings"] = warnings
        return _json({**view, **extra}, 201)

    async def list_pipes(self, request: web.Request) -> web.Response:
        self._cipher()
        pipes = await self.store.list_pipes(await self._project_query(request))
        active = await self._active_keys()
        return _json({"pipes": [pipe_view(p, active) for p in pipes]})

    async def _get_pipe(self, request: web.Request) -> Pipe:
        pipe = await self.store.get_pipe(request.match_info["id"])
        if pipe is None:
            raise RequestError(404, "not_found", "no pipe has this id")
        return pipe

    async def get_pipe(self, request: web.Request) -> web.Response:
        self._cipher()
        pipe = await self._get_pipe(request)
        return _json(pipe_view(pipe, await self._active_keys()))

    async def delete_pipe(self, request: web.Request) -> web.Response:
        self._cipher()
        pipe = await self._get_pipe(request)
        now = time.time_ns()
        bound = [
            t for t in await self.store.list_proxy_tokens(project_id=pipe.project_id)
            if t.pipe_id == pipe.id and token_state(t, now) == "active"
        ]  # fmt: skip
        if bound and request.query.get("revoke_tokens", "").lower() not in _TRUE:
            raise RequestError(
                409, "pipe_in_use",
                f"{len(bound)} active token(s) are bound to this pipe; revoke them first or pass "
                "?revoke_tokens=true (unbound, they would fall back to the project's default pipe)",
                extra={"token_ids": [t.id for t in bound]},
            )  # fmt: skip
        for token in bound:
            await self.store.revoke_proxy_token(token.id)
        deleted = await self.store.delete_pipe(pipe.id)
        extra = await self._changed()
        if not deleted:
            raise RequestError(404, "not_found", "no pipe has this id")
        return _json({"deleted": True, "revoked_tokens": [t.id for t in bound], **extra})

    # -- tokens ---------------------------------------------------------------------------

    async def create_token(self, request: web.Request) -> web.Response:
        self._cipher()
        body = parse_body(TokenBody, await self._body(request))
        body = body.model_copy(update={"project_id": await self._require_project(body.project_id)})
        if body.user_id is not None and await self.store.get_user(body.user_id) is None:
            raise RequestError(404, "not_found", "field 'user_id': no user has this id")
        if body.pipe_id is not None:
            pipe = await self.store.get_pipe(body.pipe_id)
            if pipe is None:
                raise RequestError(404, "not_found", "field 'pipe_id': no pipe has this id")
            if pipe.project_id != body.project_id:
                raise RequestError(400, "invalid_request", "field 'pipe_id': the pipe belongs to another project")
        now = time.time_ns()
        expires_at_ns = body.expires_at_ns(now)
        if expires_at_ns is not None:
            if expires_at_ns <= now:
                raise RequestError(400, "invalid_request", "field 'expires_at': must be in the future")
            if expires_at_ns - now > MAX_TOKEN_LIFETIME_S * 1_000_000_000:
                raise RequestError(400, "invalid_request", "field 'expires_at': must be within 10 years")
        token = new_token()
        try:
            row = await self.store.create_proxy_token(
                token_hash(token), body.project_id, user_id=body.user_id, pipe_id=body.pipe_id,
                name=body.name, expires_at_ns=expires_at_ns,
            )  # fmt: skip
        except MissingReference:
            raise RequestError(404, "not_found", "the project, user or pipe no longer exists") from None
        extra = await self._changed()
        return _json({"token": token, "note": TOKEN_SHOWN_ONCE, **token_view(row, now), **extra}, 201)

    async def list_tokens(self, request: web.Request) -> web.Response:
        self._cipher()
        tokens = await self.store.list_proxy_tokens(
            await self._project_query(request), _query_str(request, "user_id")
        )
        now = time.time_ns()
        return _json({"tokens": [token_view(t, now) for t in tokens]})

    async def _find_token(self, token_id: str) -> ProxyToken | None:
        for token in await self.store.list_proxy_tokens():
            if token.id == token_id:
                return token
        return None

    async def revoke_token(self, request: web.Request) -> web.Response:
        self._cipher()
        token_id = request.match_info["id"]
        changed = await self.store.revoke_proxy_token(token_id)
        if not changed and await self._find_token(token_id) is None:
            raise RequestError(404, "not_found", "no token has this id")
        extra = await self._changed()
        token = await self._find_token(token_id)
        if token is None:  # its project or user was deleted meanwhile
            raise RequestError(404, "not_found", "no token has this id")
        return _json({**token_view(token, time.time_ns()), "changed": changed, **extra})


def add_managed_routes(router: web.UrlDispatcher, handlers: ManagedAdmin) -> None:
    router.add_post("/provider-keys", handlers.create_provider_key)
    router.add_get("/provider-keys", handlers.list_provider_keys)
    router.add_post("/provider-keys/{id}/revoke", handlers.revoke_provider_key)
    router.add_post("/pipes", handlers.create_pipe)
    router.add_get("/pipes", handlers.list_pipes)
    router.add_get("/pipes/{id}", handlers.get_pipe)
    router.add_delete("/pipes/{id}", handlers.delete_pipe)
    router.add_post("/tokens", handlers.create_token)
    router.add_get("/tokens", handlers.list_tokens)
    router.add_post("/tokens/{id}/revoke", handlers.revoke_token)
