"""Firewall mode: clients keep their own provider keys and change only the base URL.

Identify: the key (wherever the client's SDK puts it) is hashed with SHA-256 and looked
up in the in-memory ``ApiKeyRegistry`` — no database on the hot path.  Admit: unknown or
inactive keys get 401 and nothing is forwarded; a project or key in the budget checker's
blocked set gets 429; before the registry and the budget state have loaded once, every
request gets 503 (fail closed: never forwarded unbilled).  Forward: the client's request
goes to the registered upstream with its key untouched; only ``x-xproxy-*`` headers (which
only the gateway may set) and hop-by-hop headers are removed, and OpenAI-compatible
streams get ``stream_options.include_usage`` (stripped again from the response when the
client did not ask for it).  Observe and settle as in every exchange.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from plano_fast import scan
from plano_fast.errors import BadRequestBody, ServiceUnavailable, SpendingLimitExceeded, Unauthorized
from plano_fast.exchange import Exchange, client_key, finish_head, forwardable_headers, key_hash
from plano_fast.store import RegisteredApiKey, Store
from plano_fast.upstream import Origin

log = logging.getLogger("plano_fast.firewall")


@dataclass(frozen=True, slots=True)
class KeyRoute:
    """A registered key, with its upstream parsed once at load time."""

    key: RegisteredApiKey
    origin: Origin
    base_path: bytes
    host_header: str


def parse_upstream(key: RegisteredApiKey) -> KeyRoute:
    parts = urlsplit(key.upstream_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid upstream_url for key {key.key_hash[:12]}…")
    default_port = 443 if parts.scheme == "https" else 80
    port = parts.port or default_port
    host_header = parts.hostname if port == default_port else f"{parts.hostname}:{port}"
    return KeyRoute(
        key=key,
        origin=(parts.scheme, parts.hostname, port, key.egress_ip or None),
        base_path=parts.path.rstrip("/").encode(),
        host_header=host_header,
    )


class ApiKeyRegistry:
    """key SHA-256 -> route; reloaded every ``reload_interval_s`` and after admin changes."""

    def __init__(self, store: Store, reload_interval_s: float = 60.0) -> None:
        self.store = store
        self.reload_interval_s = reload_interval_s
        self._routes: dict[str, KeyRoute] = {}
        self.ready = False
        self._task: asyncio.Task[None] | None = None

    def lookup(self, key_sha256: str) -> KeyRoute | None:
        return self._routes.get(key_sha256)

    def lookup_key(self, key_sha256: str) -> RegisteredApiKey | None:
        route = self._routes.get(key_sha256)
        return route.key if route is not None else None

    def __len__(self) -> int:
        return len(self._routes)

    async def reload(self) -> None:
        routes: dict[str, KeyRoute] = {}
        for key in await self.store.list_active_api_keys():
            try:
                routes[key.key_hash] = parse_upstream(key)
            except ValueError as exc:
                log.error("%s", exc)
        self._routes = routes  # one assignment: readers see the old or the new map
        self.ready = True

    async def start(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # noqa: BLE001 - stays not-ready (503) until a reload works
            log.warning("key registry not loaded yet: %s", type(exc).__name__)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="key-registry")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s if self.ready else 1.0)
            try:
                await self.reload()
            except Exception as exc:  # noqa: BLE001 - keep serving the last good map
                log.warning("key registry reload failed: %s", type(exc).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def scan_api_for(path: bytes) -> tuple[int, str] | None:
    """Which usage shape a provider path answers with, or None (not an LLM call)."""
    if path.endswith(b"/chat/completions"):
        return scan.API_OPENAI_CHAT, "openai"
    if path.endswith(b"/responses"):
        return scan.API_OPENAI_RESPONSES, "openai"
    if path.endswith(b"/messages"):
        return scan.API_ANTHROPIC, "anthropic"
    if path.endswith(b":generateContent") or path.endswith(b":streamGenerateContent"):
        return scan.API_GEMINI, "gemini"
    return None


class FirewallExchange(Exchange):
    __slots__ = ()

    def start(self) -> Coroutine[Any, Any, None] | None:
        ctx = self.ctx
        registry, budget = ctx.registry, ctx.budget
        assert registry is not None and budget is not None
        if not registry.ready or not budget.ready:
            raise ServiceUnavailable("the gateway has not loaded its key registry and budgets yet")
        request = self.request
        key = client_key(request)
        if key is None:
            raise Unauthorized("no API key: send your provider key as you would to the provider")
        digest = key_hash(key)
        route = registry.lookup(digest)
        if route is None:
            raise Unauthorized("this API key is not registered with the gateway")
        project_id = route.key.project_id
        blocked = budget.blocked
        if blocked and (("project", project_id) in blocked or ("key", digest) in blocked):
            raise SpendingLimitExceeded()
        self.key_hash = digest
        self.project_id = project_id
        self.provider_id = route.key.provider
        body = request.body
        path = request.path
        api = scan_api_for(path) if request.method == b"POST" else None
        if api is not None:
            self.scan_api, self.wire_format = api
            inject = False
            if self.scan_api == scan.API_GEMINI:
                # Gemini names the model in the path and streams by method name.
                self.model = path.rsplit(b"/", 1)[-1].split(b":", 1)[0].decode("latin-1")
                self.streaming = path.endswith(b":streamGenerateContent")
            else:
                try:
                    fields = scan.scan_request(body)
                except scan.ScanError as exc:
                    raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
                self.model = fields.model
                self.streaming = fields.stream
                inject = (
                    fields.stream
                    and self.scan_api == scan.API_OPENAI_CHAT
                    and fields.include_usage is not True
                )
                if inject:
                    body = scan.rewrite_request(body, inject_include_usage=True)
            self.scanner = scan.UsageScanner(self.scan_api, self.streaming, inject)
        base = route.base_path
        if base and not path.startswith(base + b"/"):
            path = base + path
        target = path + b"?" + request.query if request.query else path
        head = [request.method + b" " + target + b" HTTP/1.1\r\n"]
        _, has_request_id = forwardable_headers(request, head, drop_credentials=False)
        self.upstream_data = finish_head(self, head, route.host_header, body, has_request_id)
        self.origin = route.origin
        return self.forward_now()
