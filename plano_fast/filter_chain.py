"""Plano's filter chains on the model listener: HTTP services that see a request before it
is forwarded (``input_filters``) and a response before the client does (``output_filters``).

Config, in Plano's shape::

    filters:
      - {id: content_guard, url: http://content-guard:10500, type: http}
      - {id: output_redactor, url: http://output-filter:10502, type: http}
    listeners:
      - type: model
        name: llm_gateway
        port: 12000
        input_filters: [content_guard]
        output_filters: [output_redactor]
    plano_fast:
      filter_chain:
        timeout_ms: 5000        # deadline of a whole chain (every filter in it)
        on_error: fail_closed   # a filter that fails (5xx, timeout, not JSON): 502; fail_open skips it

As Plano calls them (brightstaff ``execute_raw_filter``): the raw body is POSTed to the
filter's ``url`` + the client's request path (``http://host/anonymize`` +
``/v1/chat/completions``), ``content-type: application/json``; 200 -> its body replaces the
request (or response) and goes to the next filter; 4xx -> the filter refuses: the client
gets that status, in its own API format, with the filter's message and ``x-plano-guardrail:
filter:<id>``, and nothing is forwarded; 5xx, a timeout, a connection error or a 200 whose
body is not JSON -> ``on_error``.  Filters run in the listed order.

Output filters see non-streamed responses that were answered 2xx in the client's format
(not converted, not compressed); a streamed response, or one converted from another
provider format, is not filtered (see docs/guardrails.md).  MCP filters (``type: mcp``,
Plano's default when ``type`` is absent) are refused when the config is loaded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from plano_fast.errors import ClientError, GatewayError, UpstreamError
from plano_fast.guard_models import GuardConfigError
from plano_fast.http_post import Target, parse_target, post

if TYPE_CHECKING:
    from plano_fast.metrics import RequestMetrics
    from plano_fast.upstream import UpstreamPool

_FILTER_FIELDS: Final = frozenset({"id", "url", "type", "transport", "tool"})


class FilterRefused(ClientError):
    """An input (or output) filter answered 4xx."""

    code = "filter_refused"

    def __init__(self, filter_id: str, status: int, message: str) -> None:
        self.filter_id = filter_id
        self.status = status
        super().__init__(message)

    def headers(self, fmt: Any) -> tuple[tuple[bytes, bytes], ...]:
        return ((b"x-plano-guardrail", b"filter:" + self.filter_id.encode()),)


class FilterFailed(GatewayError):
    status = 502
    code = "filter_error"

    def __init__(self, filter_id: str, what: str) -> None:
        self.filter_id = filter_id
        super().__init__(f"filter '{filter_id}' failed ({what}); the request was not completed")

    def headers(self, fmt: Any) -> tuple[tuple[bytes, bytes], ...]:
        return ((b"x-plano-guardrail", b"filter:" + self.filter_id.encode() + b":unavailable"),)


@dataclass(frozen=True, slots=True)
class Filter:
    id: str
    target: Target


@dataclass(frozen=True, slots=True)
class FilterChains:
    input: tuple[Filter, ...]
    output: tuple[Filter, ...]
    timeout_s: float
    fail_open: bool


def parse_chains(filters: object, listener: object, listener_loc: str, settings: object) -> FilterChains | None:
    """Plano's ``filters`` and the served listener's ``input_filters``/``output_filters``
    (``listener``: that listener's raw mapping, ``listener_loc`` its path) -> the chains,
    None when the listener uses none; GuardConfigError naming the field."""
    by_id: dict[str, Filter] = {}
    for i, item in enumerate(filters if isinstance(filters, list) else []):
        loc = f"filters[{i}]"
        if not isinstance(item, dict):
            raise GuardConfigError(f"{loc}: expected a mapping with id and url")
        unknown = sorted(set(item) - _FILTER_FIELDS)
        if unknown:
            raise GuardConfigError(f"{loc}.{unknown[0]}: unknown field")
        kind = item.get("type", "mcp")
        if kind != "http":
            raise GuardConfigError(
                f"{loc}.type: MCP filters are not supported by plano_fast (type is "
                f"{kind!r}{'' if 'type' in item else ', Plano’s default'}); set type: http for a "
                "plain HTTP filter service"
            )
        if not isinstance(item.get("id"), str) or not item["id"]:
            raise GuardConfigError(f"{loc}.id: a filter id is required")
        if item["id"] in by_id:
            raise GuardConfigError(f"{loc}.id: '{item['id']}' is already defined")
        try:
            target = parse_target(str(item.get("url", "")))
        except ValueError as exc:
            raise GuardConfigError(f"{loc}.url: {exc}") from None
        by_id[item["id"]] = Filter(item["id"], target)
    chains: dict[str, tuple[Filter, ...]] = {}
    for field in ("input_filters", "output_filters"):
        names = listener.get(field) if isinstance(listener, dict) else None
        found = []
        for j, name in enumerate(names or []):
            if name not in by_id:
                raise GuardConfigError(f"{listener_loc}.{field}[{j}]: no filter with id '{name}' in filters")
            found.append(by_id[name])
        chains[field] = tuple(found)
    if not chains["input_filters"] and not chains["output_filters"]:
        if settings is not None:
            raise GuardConfigError("plano_fast.filter_chain: the served listener has no input_filters or output_filters")
        return None
    raw: dict[str, Any] = settings if isinstance(settings, dict) else {}
    if settings is not None and not isinstance(settings, dict):
        raise GuardConfigError("plano_fast.filter_chain: expected a mapping (timeout_ms, on_error)")
    unknown = sorted(set(raw) - {"timeout_ms", "on_error"})
    if unknown:
        raise GuardConfigError(f"plano_fast.filter_chain.{unknown[0]}: unknown field (timeout_ms, on_error)")
    timeout_ms = raw.get("timeout_ms", 5000)
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float) or timeout_ms < 1:
        raise GuardConfigError(f"plano_fast.filter_chain.timeout_ms: a number >= 1 (got {timeout_ms!r})")
    on_error = raw.get("on_error", "fail_closed")
    if on_error not in ("fail_open", "fail_closed"):
        raise GuardConfigError(f"plano_fast.filter_chain.on_error: fail_open or fail_closed (got {on_error!r})")
    return FilterChains(chains["input_filters"], chains["output_filters"], timeout_ms / 1000, on_error == "fail_open")


def refusal_message(filter_id: str, body: bytes) -> str:
    """The filter's own words when it gave some (FastAPI's ``detail``, an ``error`` object,
    ``message``), else a plain sentence; bounded."""
    said = ""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    for _ in range(3):  # {"detail": {"error": ..., "message": ...}} and kin
        if isinstance(doc, dict):
            doc = doc.get("message") or doc.get("detail") or doc.get("error")
    if isinstance(doc, str):
        said = doc
    text = f"the request was refused by filter '{filter_id}'" + (f": {said}" if said else "")
    return text[:1000]


async def run_chain(
    chain: tuple[Filter, ...],
    chains: FilterChains,
    pool: UpstreamPool,
    body: bytes,
    path: bytes,
    metrics: RequestMetrics,
) -> bytes:
    """``body`` through ``chain`` in order, all within ``chains.timeout_s``; the last
    filter's body.  FilterRefused (4xx) or FilterFailed (fail_closed)."""
    deadline = time.monotonic() + chains.timeout_s
    for f in chain:
        left_s = deadline - time.monotonic()
        what = ""
        try:
            if left_s <= 0:
                raise TimeoutError
            status, answer = await post(pool, f.target, body, left_s, path=f.target.path.rstrip(b"/") + path)
        except TimeoutError:
            what = f"no answer within the chain's {chains.timeout_s * 1000:.0f} ms"
        except (UpstreamError, OSError) as exc:
            what = str(exc) or type(exc).__name__
        else:
            if 400 <= status < 500:
                metrics.detected(((f"filter:{f.id}", "refuse"),))
                raise FilterRefused(f.id, status, refusal_message(f.id, answer))
            if status == 200:
                try:
                    json.loads(answer)
                except ValueError:
                    what = "its answer is not JSON"
                else:
                    body = answer
                    continue
            else:
                what = f"HTTP {status}"
        metrics.detected(((f"filter:{f.id}", "fail_open" if chains.fail_open else "fail_closed"),))
        if not chains.fail_open:
            raise FilterFailed(f.id, what)
    return body
