"""One small JSON POST through the upstream pool: what guard models and filter services are
called with (plano_fast.guard_models, plano_fast.filter_chain).

The same connections, DNS cache and TLS context as provider traffic, no second HTTP client;
the whole exchange, connect included, is bounded by one deadline.  A kept-alive connection
the service had closed is retried once on a fresh one (nothing was processed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from plano_fast.errors import UpstreamError

if TYPE_CHECKING:
    from plano_fast.upstream import Origin, UpstreamHead, UpstreamPool


@dataclass(frozen=True, slots=True)
class Target:
    """A service URL, parsed once at config load."""

    origin: Origin
    host_header: bytes
    path: bytes  # the URL's path and query ("" path: "/")
    url: str  # as configured (for messages: a config value, never a secret)


def parse_target(url: str) -> Target:
    """``http(s)://host[:port][/path]`` -> Target; ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL are not supported (use api_key)")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target((parts.scheme, host, port, None), host_header.encode(), path.encode(), url)


class _Collect:
    """ResponseSink that gathers one small response."""

    __slots__ = ("future", "status", "parts", "retry_safe")

    def __init__(self, future: asyncio.Future[tuple[int, bytes]]) -> None:
        self.future = future
        self.status = 0
        self.parts: list[bytes] = []
        self.retry_safe = False

    def on_upstream_head(self, head: UpstreamHead) -> None:
        self.status = head.status

    def on_upstream_body(self, data: bytes) -> None:
        self.parts.append(data)

    def on_upstream_complete(self) -> None:
        if not self.future.done():
            self.future.set_result((self.status, b"".join(self.parts)))

    def on_upstream_error(self, error: UpstreamError, retry_safe: bool) -> None:
        self.retry_safe = retry_safe
        if not self.future.done():
            self.future.set_exception(error)

    def on_upstream_read_done(self) -> None:
        pass

    def on_upstream_pause_writing(self) -> None:
        pass

    def on_upstream_resume_writing(self) -> None:
        pass


async def post(
    pool: UpstreamPool,
    target: Target,
    body: bytes,
    timeout_s: float,
    path: bytes | None = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> tuple[int, bytes]:
    """POST ``body`` (JSON) to ``target`` (``path``: instead of the target's own); (status,
    body).  TimeoutError past ``timeout_s``; UpstreamError when the service is unreachable."""
    head = [b"POST " + (path or target.path) + b" HTTP/1.1\r\ncontent-type: application/json\r\n"
            b"accept: application/json\r\nhost: " + target.host_header + b"\r\n"]  # fmt: skip
    for name, value in headers:
        head.append(name + b": " + value + b"\r\n")
    head.append(b"content-length: %d\r\n\r\n" % len(body))
    return await exchange(pool, target.origin, [b"".join(head), body], timeout_s)


async def exchange(pool: UpstreamPool, origin: Origin, data: list[bytes], timeout_s: float) -> tuple[int, bytes]:
    """Send one request (``data``: its head and body) to ``origin`` and collect the answer;
    (status, body).  Shared with the router-model call (plano_fast.preference_routing)."""
    loop = pool.loop
    conn = None
    async with asyncio.timeout(timeout_s):
        try:
            conn = pool.take_idle(origin)
            while True:
                fresh = conn is None
                if conn is None:
                    conn = await pool.connect(origin)
                future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
                sink = _Collect(future)
                conn.send_request(data, sink, timeout_s, timeout_s)
                try:
                    result = await future
                except UpstreamError:
                    if fresh or not sink.retry_safe:
                        raise
                    conn = None  # a kept-alive connection the service had closed: once more
                    continue
                conn = None  # released to the pool (or closed) by the connection itself
                return result
        finally:
            if conn is not None and not conn.closed:
                conn.detach()
