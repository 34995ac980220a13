"""The admin API: a small aiohttp application over the ``Store``.

Routes (JSON in and out; money as integer nano-USD plus an exact decimal USD string)::

    POST   /api-keys/register    {api_key | key_hash, provider, upstream_url, display_name?,
                                  project?, egress_ip?}                      -> 201 key
    POST   /api-keys/deactivate  {api_key | key_hash}                        -> 200
    POST   /api-keys/activate    {api_key | key_hash}                        -> 200
    GET    /api-keys?project_id=                                             -> {"api_keys": [...]}
    POST   /projects {name, id?}   GET /projects   GET|DELETE /projects/{id or name}
    POST   /users {name, email?, id?}   GET /users   GET|DELETE /users/{id}
    PUT    /limits  {scope_kind, scope_id, period, limit_usd | limit_nano_usd,
                     enforcement?, active?}                                  -> 200 limit
    GET    /limits?scope_kind=&scope_id=     DELETE /limits/{id}
    PUT    /pricing {model, project_id?, input_per_mtok_usd, output_per_mtok_usd,
                     cache_read_per_mtok_usd?, cache_write_per_mtok_usd?}    -> 200 price
    GET    /pricing                          DELETE /pricing/{id}
    GET    /usage/recent?project_id=&limit=  (limit 1..1000, default 100)
    GET    /usage/totals?project_id=&days=   (days 1..3660, default 30; per project/model/UTC day)
    GET    /budget/blocked                   -> {"blocked": [project ids], "scopes": [[kind, id]]}
    GET    /circuits                         -> {"pid", "open", "circuits": [{provider, model, key_id,
                                              state, consecutive_failures, opened_at, cooldown_left_s, ...}]}
                                             (this process's circuit breakers; docs/resilience.md)
    /provider-keys, /pipes, /tokens          managed mode: see ``plano_fast.admin_managed``
    *      /auth/check[/<path>]              Envoy ext_authz (client key, not the admin key)
    GET    /healthz                          {"status": "ok"} (no key)

Security model
--------------
* Every route takes the admin key (``Authorization: Bearer <admin_key>`` or
  ``x-admin-key: <admin_key>``, exactly one of them, once, compared with
  ``hmac.compare_digest``; two or more presented are a 401 whatever they hold), including unknown
  paths: without the key every request gets the same 401, so nothing about the routes is
  revealed.  Two deliberate exceptions:

  - ``/auth/check`` (and ``/auth/check/<anything>``, any method) is the Envoy ext_authz
    HTTP service.  Envoy calls it with the *client's* provider key, not the admin key, so
    it authenticates that key instead (unknown or inactive -> 401).  It only ever answers
    about the key it was given.
  - ``GET /healthz`` answers ``{"status": "ok"}`` without a key (liveness probes); it
    reveals nothing a TCP connect does not.

* Bind it to loopback (``admin_address`` defaults to 127.0.0.1); ``start_admin_server``
  warns when it is bound anywhere else.
* Client keys are hashed (SHA-256 hex of the UTF-8 key) as soon as the body is validated;
  the raw key is never stored, logged or returned.  Error bodies never echo submitted
  values, and the access log omits query strings (``?key=`` may hold a client key).

Projects by id or name: wherever a route takes a project (``project_id`` in a body or a
query, a limit's ``scope_id`` with ``scope_kind: project``, ``/projects/{id}``) it takes its
id or its name; a name shared by several projects is a 409 (pass the id), a project that
does not exist a 404 -- also for a list filter, which never answers an empty list for a
project that is not there.

Registering a key (``POST /api-keys/register``): ``project`` is optional.

* absent: a new project is created for the key ("one key hash = one project", as in
  firewall mode), named after ``display_name`` or ``key-<first 12 hex of the hash>``;
* the id of an existing project: that project;
* otherwise the name of exactly one existing project: that project (several projects with
  that name -> 409, pass the id);
* otherwise, a name that does not look like a UUID creates a project with that name
  (a UUID-shaped value that matches nothing is a 404: almost certainly a mistyped id).

The response says ``"project_created": true`` when a project was created.  Registering a
hash that is already registered is a 409 (reactivate with ``POST /api-keys/activate``).

After a change the gateway is told at once (``AdminContext.on_*_changed``); if that
fails the change is still saved, the response carries a ``"warning"``, and the gateway's
periodic reload picks it up.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_urldispatcher import AbstractResource, AbstractRoute

from plano_fast import admin_models as m
from plano_fast.admin_managed import ManagedAdmin, add_managed_routes
from plano_fast.admin_models import (
    RequestError,
    hash_api_key,
    parse_body,
    parse_json_body,
    resolve_project,
)
from plano_fast.credentials import Credential, read_client_headers, refuse_subscription_key
from plano_fast.errors import ClientError, GatewayError, Unauthorized
from plano_fast.managed.crypto import KeyCipher
from plano_fast.store import (
    AlreadyExists,
    InvalidValue,
    MissingReference,
    Project,
    RegisteredApiKey,
    Store,
    day_start,
)


log = logging.getLogger("plano_fast.admin")

ADMIN_KEY_ENV: Final = "PLANO_FAST_ADMIN_KEY"
MAX_BODY_BYTES: Final = 64 * 1024
MAX_RECENT_LIMIT: Final = 1000
MAX_TOTALS_DAYS: Final = 3660

# Response headers of a successful /auth/check (what Envoy forwards to the data plane).
H_FIREWALL_MODE: Final = "x-xproxy-firewall-mode"
H_UPSTREAM_URL: Final = "x-xproxy-upstream-url"
H_PROJECT_ID: Final = "x-xproxy-project-id"
H_PROVIDER_HINT: Final = "x-xproxy-provider-hint"
H_API_KEY_HASH: Final = "x-xproxy-api-key-hash"
H_EGRESS_IP: Final = "x-xproxy-egress-ip"  # only when the key has one


class AdminContext(Protocol):
    """What the admin app needs from the gateway."""

    @property
    def store(self) -> Store: ...

    @property
    def registry_ready(self) -> bool:
        """False until the key registry and the budget state have both loaded once
        (``/auth/check`` then fails closed: 503, as the data plane does)."""

    @property
    def keys_registered(self) -> bool:
        """True when callers' keys are registered (firewall and managed mode): a key-scope
        limit must then name a registered key.  False in config mode, where a caller is any
        key, known only by its SHA-256 (README "The three modes")."""

    @property
    def cipher(self) -> KeyCipher | None:
        """Managed mode's provider-key cipher; None when managed mode is off (the managed
        routes then answer 409 ``managed_mode_disabled``)."""

    async def on_managed_changed(self) -> None:
        """A provider key, pipe or token changed (also: a project or user was deleted):
        reload the managed state now, so a revocation is effective at once.  A no-op when
        managed mode is off."""

    async def on_keys_changed(self) -> None:
        """A key was registered, (de)activated or deleted: reload the ApiKeyRegistry now."""

    async def on_prices_changed(self) -> None:
        """Custom pricing changed: reload the pricing overrides."""

    async def on_limits_changed(self) -> None:
        """Spending limits changed: re-run the budget check."""

    def blocked(self) -> frozenset[tuple[str, str]]:
        """(scope_kind, scope_id) pairs currently over a limit."""

    def metrics(self) -> Mapping[str, float]:
        """This process's counters and gauges (names without prefix)."""

    def exposition(self) -> bytes:
        """The ``/metrics`` body: the whole instance (every worker), Prometheus text."""

    def circuits(self) -> list[dict[str, Any]]:
        """This process's circuit breakers, one entry per target (plano_fast.failover.circuit_views)."""

    def lookup_key(self, key_hash: str) -> RegisteredApiKey | None:
        """The in-memory registry entry; None when unknown or inactive."""

    def admit_path(self, method: bytes, target: bytes) -> None:
        """Raise a GatewayError (404/405/400) when the data plane would refuse to forward
        ``method target`` (the original request Envoy appends to ``/auth/check``)."""


# --------------------------------------------------------------------------- responses


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    resp = web.json_response(data, status=status, headers=headers)
    resp.headers["cache-control"] = "no-store"
    return resp


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return _json({"error": code, "message": message, **extra}, status)


_UNAUTHORIZED_MESSAGE: Final = (
    "a valid admin key is required (Authorization: Bearer <admin key> or x-admin-key header)"
)
_STATUS_CODES: Final = {
    404: ("not_found", "no such route"),
    405: ("method_not_allowed", "method not allowed on this route"),
    413: ("request_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes"),
}


def _presented_admin_keys(request: web.Request) -> list[str]:
    keys = request.headers.getall("x-admin-key", [])
    for value in request.headers.getall("authorization", []):
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            keys.append(token.strip())
    return keys


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _make_auth_middleware(admin_key: str, public: set[AbstractResource]) -> Middleware:
    """Admin key on every route but ``public`` ones; errors as JSON, never a traceback."""
    expected = _encode(admin_key)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is None or resource not in public:
            # One key a request: with any of several different ones accepted, each request
            # would be as many guesses (~100 x-admin-key lines a request, aiohttp's head
            # limit) against a short loopback key, also from a web page once its DNS name
            # rebinds to 127.0.0.1.  The same key presented twice (x-admin-key and a Bearer,
            # or a front proxy adding the Bearer the client sent too) is one guess: accepted.
            presented = set(_presented_admin_keys(request))
            ok = len(presented) == 1 and hmac.compare_digest(_encode(presented.pop()), expected)
            if not ok:
                return _json(
                    {"error": "unauthorized", "message": _UNAUTHORIZED_MESSAGE},
                    401,
                    {"www-authenticate": "Bearer"},
                )
        try:
            return await handler(request)
        except RequestError as exc:
            extra = {"details": exc.details} if exc.details else {}
            return _error(exc.status, exc.code, exc.message, **extra, **(exc.extra or {}))
        except web.HTTPException as exc:
            code, message = _STATUS_CODES.get(exc.status, ("http_error", exc.reason))
            resp = _error(exc.status, code, message)
            if "Allow" in exc.headers:
                resp.headers["Allow"] = exc.headers["Allow"]
            return resp
        except Exception as exc:  # noqa: BLE001 - one JSON 500; the message is not logged
            # Only the type and the frames: an exception's message could quote input.
            log.error(
                "admin API: internal error (%s) on %s %s\n%s",
                type(exc).__name__,
                request.method,
                request.path,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            return _error(500, "internal_error", "internal error in the admin API (see its log)")

    return middleware


class _NoRequestBytes(logging.Filter):
    """aiohttp's protocol logs a malformed request with its exception, whose message quotes
    the offending bytes (``LineTooLong: Got more than 8190 bytes when reading: b'sk-...'``:
    a client key).  Each such record keeps its level and loses its arguments and traceback:
    one line naming the exception type only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = "admin API: %s on a request (its bytes are not logged)"
        record.args = (type(exc).__name__ if exc is not None else "protocol error",)
        record.exc_info = None
        record.exc_text = None
        return True


_PROTOCOL_LOG: Final = logging.getLogger("plano_fast.admin.protocol")
_PROTOCOL_LOG.addFilter(_NoRequestBytes())


class _AccessLogger(AbstractAccessLogger):
    """Method, path (no query string: ``?key=`` can hold a client key), status, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.1fms", request.method, request.path, response.status, time * 1000)


# --------------------------------------------------------------------------- handlers


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        message = f"parameter '{name}': must be an integer from {low} to {high}"
        raise RequestError(400, "invalid_request", message)
    return value


def _query_str(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    return raw if raw else None


def _looks_like_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _client_credential(request: web.Request) -> Credential | None:
    """The request's one credential, decided exactly as the data plane decides it
    (plano_fast.credentials; ``Unauthorized`` when there are several or it is malformed)."""
    headers = [(name.lower(), value) for name, value in request.raw_headers]
    query = request.rel_url.raw_query_string.encode("latin-1", "replace")
    client = read_client_headers(headers, query)
    refuse_subscription_key(client)  # (firewall mode's rule: a second, unverified key)
    return client.credential


class _Admin:
    """The route handlers, bound to one gateway context."""

    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx

    @property
    def store(self) -> Store:
        return self.ctx.store

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return parse_json_body(await request.read())

    async def _notify(self, *callbacks: Callable[[], Awaitable[None]]) -> dict[str, str]:
        """Tell the gateway; a failure leaves the saved change for its periodic reload."""
        failed: list[str] = []
        for callback in callbacks:
            try:
                await callback()
            except Exception as exc:  # noqa: BLE001 - the change is saved either way
                name = getattr(callback, "__name__", "callback")
                log.warning(
                    "admin API: %s failed (%s); the periodic reload will apply the change",
                    name,
                    type(exc).__name__,
                )
                failed.append(name)
        if not failed:
            return {}
        names = ", ".join(failed)
        return {"warning": f"saved, but {names} failed; the gateway applies it on its next periodic reload"}

    # -- health ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    # -- api keys -------------------------------------------------------------------------

    async def _resolve_project(
        self, ref: str | None, key_hash: str, display_name: str | None
    ) -> tuple[Project, bool]:
        """(project, created): see "Registering a key" in the module docstring."""
        if ref is None:
            name = display_name or f"key-{key_hash[:12]}"
            return await self.store.create_project(name), True
        project = await self.store.get_project(ref)
        if project is not None:
            return project, False
        named = [p for p in await self.store.list_projects() if p.name == ref]
        if len(named) == 1:
            return named[0], False
        if len(named) > 1:
            raise RequestError(
                409, "ambiguous_project", "field 'project': several projects have this name; pass the id"
            )
        if _looks_like_uuid(ref):
            raise RequestError(404, "not_found", "field 'project': no project has this id")
        return await self.store.create_project(ref), True

    async def register_key(self, request: web.Request) -> web.Response:
        body = parse_body(m.RegisterKeyBody, await self._body(request))
        key_hash = body.resolved_hash()  # the raw key (repr-hidden) goes no further
        if await self.store.get_api_key(key_hash) is not None:
            raise RequestError(
                409, "already_exists",
                "this API key is already registered (reactivate it with POST /api-keys/activate)",
            )  # fmt: skip
        project, created = await self._resolve_project(body.project, key_hash, body.display_name)
        try:
            key = await self.store.register_api_key(
                key_hash, project.id, body.provider, body.upstream_url, body.display_name, body.egress_ip
            )
        except AlreadyExists:  # registered concurrently
            if created:
                await self.store.delete_project(project.id)
            raise RequestError(409, "already_exists", "this API key is already registered") from None
        extra = await self._notify(self.ctx.on_keys_changed)
        return _json({**m.key_view(key), "project_created": created, **extra}, 201)

    async def _set_active(self, request: web.Request, active: bool) -> web.Response:
        key_hash = parse_body(m.KeyRefBody, await self._body(request)).resolved_hash()
        if not await self.store.set_api_key_active(key_hash, active):
            raise RequestError(404, "not_found", "no registered API key has this hash")
        extra = await self._notify(self.ctx.on_keys_changed)
        return _json({"key_hash": key_hash, "is_active": active, **extra})

    async def deactivate_key(self, request: web.Request) -> web.Response:
        return await self._set_active(request, False)

    async def activate_key(self, request: web.Request) -> web.Response:
        return await self._set_active(request, True)

    async def _project_query(self, request: web.Request) -> str | None:
        """``?project_id=`` (an id or a name) as a project id; 404 when it names none."""
        ref = _query_str(request, "project_id")
        if ref is None:
            return None
        return (await resolve_project(self.store, ref, "project_id")).id

    async def list_keys(self, request: web.Request) -> web.Response:
        keys = await self.store.list_api_keys(await self._project_query(request))
        return _json({"api_keys": [m.key_view(k) for k in keys]})

    # -- projects / users -----------------------------------------------------------------

    async def create_project(self, request: web.Request) -> web.Response:
        body = parse_body(m.ProjectBody, await self._body(request))
        try:
            project = await self.store.create_project(body.name, project_id=body.id)
        except AlreadyExists:
            raise RequestError(409, "already_exists", "field 'id': a project with this id exists") from None
        return _json(m.project_view(project), 201)

    async def list_projects(self, request: web.Request) -> web.Response:
        return _json({"projects": [m.project_view(p) for p in await self.store.list_projects()]})

    async def get_project(self, request: web.Request) -> web.Response:
        project = await resolve_project(self.store, request.match_info["id"], "")
        return _json(m.project_view(project))

    async def delete_project(self, request: web.Request) -> web.Response:
        project_id = (await resolve_project(self.store, request.match_info["id"], "")).id
        # Pipes first: their targets reference the project's provider keys with ON DELETE
        # RESTRICT, which PostgreSQL checks before the cascade reaches the targets.
        for pipe in await self.store.list_pipes(project_id):
            await self.store.delete_pipe(pipe.id)
        if not await self.store.delete_project(project_id):
            raise RequestError(404, "not_found", "no project has this id")
        # Its keys, limits, prices, pipes, provider keys and tokens went with it.
        extra = await self._notify(
            self.ctx.on_keys_changed, self.ctx.on_limits_changed, self.ctx.on_prices_changed,
            self.ctx.on_managed_changed,
        )  # fmt: skip
        return _json({"deleted": True, **extra})

    async def create_user(self, request: web.Request) -> web.Response:
        body = parse_body(m.UserBody, await self._body(request))
        try:
            user = await self.store.create_user(body.name, email=body.email, user_id=body.id)
        except AlreadyExists:
            message = "field 'id' or 'email': a user with this id or email exists"
            raise RequestError(409, "already_exists", message) from None
        return _json(m.user_view(user), 201)

    async def list_users(self, request: web.Request) -> web.Response:
        return _json({"users": [m.user_view(u) for u in await self.store.list_users()]})

    async def get_user(self, request: web.Request) -> web.Response:
        user = await self.store.get_user(request.match_info["id"])
        if user is None:
            raise RequestError(404, "not_found", "no user has this id")
        return _json(m.user_view(user))

    async def delete_user(self, request: web.Request) -> web.Response:
        if not await self.store.delete_user(request.match_info["id"]):
            raise RequestError(404, "not_found", "no user has this id")
        # Its limits and tokens went with it.
        extra = await self._notify(self.ctx.on_limits_changed, self.ctx.on_managed_changed)
        return _json({"deleted": True, **extra})

    # -- spending limits ------------------------------------------------------------------

    async def put_limit(self, request: web.Request) -> web.Response:
        body = parse_body(m.LimitBody, await self._body(request))
        exists: object
        scope_id = body.scope_id
        if body.scope_kind == "project":
            scope_id = (await resolve_project(self.store, body.scope_id, "scope_id")).id
            exists = True
        elif body.scope_kind == "user":
            exists = await self.store.get_user(body.scope_id)
        else:
            exists = await self.store.get_api_key(body.scope_id)
            if exists is None and not self.ctx.keys_registered:
                exists = True  # config mode: any key's hash names a caller
        if exists is None:
            raise RequestError(404, "not_found", f"field 'scope_id': no {body.scope_kind} has this id")
        try:
            limit = await self.store.set_spending_limit(
                body.scope_kind, scope_id, body.period, body.amount_nano_usd, body.enforcement,
                active=body.active,
            )  # fmt: skip
        except InvalidValue as exc:
            raise RequestError(400, "invalid_request", str(exc)) from None
        extra = await self._notify(self.ctx.on_limits_changed)
        return _json({**m.limit_view(limit), **extra})

    async def list_limits(self, request: web.Request) -> web.Response:
        scope_kind, scope_id = _query_str(request, "scope_kind"), _query_str(request, "scope_id")
        if scope_kind == "project" and scope_id is not None:
            scope_id = (await resolve_project(self.store, scope_id, "scope_id")).id
        limits = await self.store.list_spending_limits(scope_kind, scope_id)
        return _json({"limits": [m.limit_view(limit) for limit in limits]})

    async def delete_limit(self, request: web.Request) -> web.Response:
        if not await self.store.delete_spending_limit(request.match_info["id"]):
            raise RequestError(404, "not_found", "no spending limit has this id")
        extra = await self._notify(self.ctx.on_limits_changed)
        return _json({"deleted": True, **extra})

    # -- custom pricing -------------------------------------------------------------------

    async def put_price(self, request: web.Request) -> web.Response:
        body = parse_body(m.PriceBody, await self._body(request))
        project_id = None
        if body.project_id is not None:
            project_id = (await resolve_project(self.store, body.project_id, "project_id")).id
        typed = body.model.strip()
        model = typed.lower()  # the pricing registry matches model ids case-insensitively
        try:
            price = await self.store.set_custom_price(
                model,
                project_id=project_id,
                input_per_mtok_nano_usd=body.input_per_mtok_usd,
                output_per_mtok_nano_usd=body.output_per_mtok_usd,
                cache_read_per_mtok_nano_usd=body.cache_read_per_mtok_usd,
                cache_write_per_mtok_nano_usd=body.cache_write_per_mtok_usd,
            )
        except MissingReference:
            raise RequestError(404, "not_found", "field 'project_id': no project has this id") from None
        extra = await self._notify(self.ctx.on_prices_changed)
        # Rows that found no price for this model may price now.
        requeued = 0
        for name in dict.fromkeys((typed, model)):
            requeued += await self.store.requeue_unpriced(model=name, project_id=project_id)
        return _json({**m.price_view(price), "requeued_unpriced_rows": requeued, **extra})

    async def list_prices(self, request: web.Request) -> web.Response:
        return _json({"prices": [m.price_view(p) for p in await self.store.list_custom_prices()]})

    async def delete_price(self, request: web.Request) -> web.Response:
        if not await self.store.delete_custom_price(request.match_info["id"]):
            raise RequestError(404, "not_found", "no custom price has this id")
        extra = await self._notify(self.ctx.on_prices_changed)
        return _json({"deleted": True, **extra})

    # -- usage / budget -------------------------------------------------------------------

    async def usage_recent(self, request: web.Request) -> web.Response:
        project_id = await self._project_query(request)
        limit = _query_int(request, "limit", 100, 1, MAX_RECENT_LIMIT)
        rows = await self.store.recent_usage(project_id, limit)
        return _json({"project_id": project_id, "usage": [m.usage_view(r) for r in rows]})

    async def usage_totals(self, request: web.Request) -> web.Response:
        project_id = await self._project_query(request)
        days = _query_int(request, "days", 30, 1, MAX_TOTALS_DAYS)
        start_s = day_start(time.time_ns()) - (days - 1) * 86_400
        start_ns = start_s * 1_000_000_000
        if project_id is not None:
            ids = [project_id]
        else:
            ids = [p.id for p in await self.store.list_projects()]
        totals: list[dict[str, Any]] = []
        for pid in ids:
            rows = await self.store.usage_totals(pid, start_ns=start_ns)
            totals += [m.total_view(t, pid) for t in rows]
        body: dict[str, Any] = {
            "project_id": project_id,
            "days": days,
            "start_day": start_s,
            "totals": totals,
        }
        if project_id is None:
            # Every row, whatever its project (also deleted or no project), per day and model.
            rows = await self.store.usage_totals(None, start_ns=start_ns)
            body["all_projects"] = [m.total_view(t, None) for t in rows]
        return _json(body)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format: billing counters (rows written, unpriced-unknown,
        spilled, flush failures, ...) and gauges (connections, backlog, registry size)."""
        return web.Response(
            body=self.ctx.exposition(), headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def circuits(self, request: web.Request) -> web.Response:
        """Per-target health memory of the process serving this request: circuit state
        (closed / open / half_open), consecutive failures, when it opened and the cooldown
        left.  Targets are named by provider, model and provider key id, never a key."""
        circuits = self.ctx.circuits()
        return _json({
            "pid": os.getpid(),
            "circuits": circuits,
            "open": sum(1 for c in circuits if c["state"] == "open"),
        })

    async def budget_blocked(self, request: web.Request) -> web.Response:
        scopes = sorted(self.ctx.blocked())
        projects = [scope_id for kind, scope_id in scopes if kind == "project"]
        return _json({"blocked": projects, "scopes": [[kind, scope_id] for kind, scope_id in scopes]})

    # -- Envoy ext_authz ------------------------------------------------------------------

    async def auth_check(self, request: web.Request) -> web.Response:
        """Firewall-mode identity: the client's key -> routing headers, or a refusal."""
        if not self.ctx.registry_ready:
            # Registry and budgets: /auth/check admits exactly when the data plane would.
            return _json(
                {
                    "error": "registry_unavailable",
                    "message": "the API key registry and budgets are not loaded yet; retry shortly",
                },
                503,
                {"retry-after": "1"},
            )
        tail = request.raw_path.partition("?")[0][len("/auth/check"):]
        if tail and tail != "/":
            # Envoy appends the original path: refuse what the data plane would not forward
            # (with its query: alt=sse on a unary Gemini call).
            target = request.raw_path[len("/auth/check"):]
            try:
                self.ctx.admit_path(request.method.encode(), target.encode("latin-1", "replace"))
            except GatewayError as exc:
                return _error(exc.status, exc.code or "not_found", exc.message)
        try:
            credential = _client_credential(request)
        except Unauthorized as exc:
            return _error(401, "invalid_api_key", exc.message)
        except ClientError as exc:  # a query parameter the data plane refuses (400)
            return _error(exc.status, exc.code, exc.message)
        if credential is None:
            return _error(
                401,
                "missing_api_key",
                "no API key in the request (Authorization: Bearer, x-api-key, x-goog-api-key, "
                "api-key or ?key=)",
            )
        key_hash = hashlib.sha256(credential.secret).hexdigest()
        del credential
        info = self.ctx.lookup_key(key_hash)
        if info is None or not info.is_active:
            return _error(401, "invalid_api_key", "the API key is not registered or is inactive")
        blocked = self.ctx.blocked()
        if ("project", info.project_id) in blocked:
            return _error(429, "spending_limit_exceeded", "project has exceeded its spending limit")
        if ("key", key_hash) in blocked:
            return _error(429, "spending_limit_exceeded", "API key has exceeded its spending limit")
        headers = {
            H_FIREWALL_MODE: "true",
            H_UPSTREAM_URL: info.upstream_url,
            H_PROJECT_ID: info.project_id,
            H_PROVIDER_HINT: info.provider,
            H_API_KEY_HASH: key_hash,
        }
        if info.egress_ip:
            headers[H_EGRESS_IP] = info.egress_ip
        resp = web.Response(status=200, headers=headers)
        resp.headers["cache-control"] = "no-store"
        return resp


# --------------------------------------------------------------------------- app / server


def create_admin_app(ctx: AdminContext, *, admin_key: str) -> web.Application:
    """The admin application (see the module docstring for routes and auth).

    ``admin_key`` must be non-empty: without one there would be no way to authenticate,
    and an admin API that answers anyone is refused rather than served (fail closed).
    """
    if not admin_key or not admin_key.strip():
        raise ValueError("the admin API needs a non-empty admin key")
    handlers = _Admin(ctx)
    public: set[AbstractResource] = set()

    def exempt(route: AbstractRoute) -> None:
        assert route.resource is not None
        public.add(route.resource)

    app = web.Application(
        client_max_size=MAX_BODY_BYTES, middlewares=[_make_auth_middleware(admin_key, public)]
    )
    r = app.router
    exempt(r.add_get("/healthz", handlers.healthz))
    r.add_post("/api-keys/register", handlers.register_key)
    r.add_post("/api-keys/deactivate", handlers.deactivate_key)
    r.add_post("/api-keys/activate", handlers.activate_key)
    r.add_get("/api-keys", handlers.list_keys)
    r.add_post("/projects", handlers.create_project)
    r.add_get("/projects", handlers.list_projects)
    r.add_get("/projects/{id}", handlers.get_project)
    r.add_delete("/projects/{id}", handlers.delete_project)
    r.add_post("/users", handlers.create_user)
    r.add_get("/users", handlers.list_users)
    r.add_get("/users/{id}", handlers.get_user)
    r.add_delete("/users/{id}", handlers.delete_user)
    r.add_put("/limits", handlers.put_limit)
    r.add_get("/limits", handlers.list_limits)
    r.add_delete("/limits/{id}", handlers.delete_limit)
    r.add_put("/pricing", handlers.put_price)
    r.add_get("/pricing", handlers.list_prices)
    r.add_delete("/pricing/{id}", handlers.delete_price)
    r.add_get("/usage/recent", handlers.usage_recent)
    r.add_get("/usage/totals", handlers.usage_totals)
    r.add_get("/budget/blocked", handlers.budget_blocked)
    r.add_get("/metrics", handlers.metrics)
    r.add_get("/circuits", handlers.circuits)
    add_managed_routes(r, ManagedAdmin(ctx, handlers._notify))
    # Envoy's ext_authz HTTP service appends the original path to its path_prefix and
    # keeps the original method, so accept any method on /auth/check and below it.
    exempt(r.add_route("*", "/auth/check", handlers.auth_check))
    exempt(r.add_route("*", "/auth/check/{tail:.*}", handlers.auth_check))
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start_admin_server(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (port 0 picks a free one).

    ``reuse_port`` lets every worker of a ``--workers N`` gateway serve the admin API on
    the same port (each answers from the shared store; a change reloads the in-memory
    state of the worker that made it at once, the others within their reload interval).
    Returns ``(runner, bound_port)``; the caller stops it with ``await runner.cleanup()``.
    """
    if not is_loopback(host):
        log.warning("admin API bound to %s, not loopback: make sure only operators can reach it", host)
    runner = web.AppRunner(
        app, access_log_class=_AccessLogger, handle_signals=False, logger=_PROTOCOL_LOG
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    log.info("admin API listening on %s:%s", host, bound[1])
    return runner, int(bound[1])
