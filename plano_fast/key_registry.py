"""Firewall mode's key registry: client key SHA-256 -> registered project and upstream.

Loaded from the store at start and every ``reload_interval_s`` (and after admin changes);
requests read it in memory, never the database.  Until it has loaded once, ``ready`` is
False and firewall requests get 503 (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from plano_fast.periodic import Periodic
from plano_fast.store import RegisteredApiKey, Store
from plano_fast.upstream import Origin
from plano_fast.wire import upstream_host_lines

log = logging.getLogger("plano_fast.firewall")

#: Keys parsed per stretch of the event loop on a reload (``parse_upstream`` is a few µs a
#: key: 20,000 keys parsed in one go would hold every request in flight ~100 ms, once a
#: reload interval; issue 27).
RELOAD_SLICE = 64


@dataclass(frozen=True, slots=True)
class KeyRoute:
    """A registered key, with its upstream parsed once at load time."""

    key: RegisteredApiKey
    origin: Origin
    base_path: bytes
    host_header: str
    #: the upstream head's Host line and ``accept-encoding: identity`` (built here, not per
    #: request: ``wire.upstream_host_lines``)
    host_line: bytes


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
        host_line=upstream_host_lines(host_header),
    )


class ApiKeyRegistry:
    """key SHA-256 -> route; reloaded every ``reload_interval_s`` and after admin changes."""

    def __init__(self, store: Store, reload_interval_s: float = 60.0) -> None:
        self.store = store
        self.reload_interval_s = reload_interval_s
        self._routes: dict[str, KeyRoute] = {}
        self._reload_lock = asyncio.Lock()
        self.ready = False
        # until the first load succeeds, retried every second
        self._loop = Periodic(
            "key-registry", self.reload, lambda: self.reload_interval_s if self.ready else 1.0,
            on_error=self._reload_failed,
        )

    def lookup(self, key_sha256: str) -> KeyRoute | None:
        return self._routes.get(key_sha256)

    def lookup_key(self, key_sha256: str) -> RegisteredApiKey | None:
        route = self._routes.get(key_sha256)
        return route.key if route is not None else None

    def __len__(self) -> int:
        return len(self._routes)

    async def reload(self) -> None:
        # One reload at a time: the map is built over several turns of the loop, and a
        # reload after an admin change must not be overwritten by an older one finishing
        # after it (the one that started later reads the store later, and assigns last).
        async with self._reload_lock:
            routes: dict[str, KeyRoute] = {}
            for i, key in enumerate(await self.store.list_active_api_keys()):
                if i and i % RELOAD_SLICE == 0:
                    await asyncio.sleep(0)
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
        self._loop.start()

    @staticmethod
    def _reload_failed(exc: Exception) -> None:
        # keep serving the last good map
        log.warning("key registry reload failed: %s", type(exc).__name__)

    async def stop(self) -> None:
        await self._loop.stop()
