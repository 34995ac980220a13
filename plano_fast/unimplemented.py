"""What a Plano config may say that this plano_fast does not do: the one list.

``plano-fast validate`` and ``plano-fast serve`` report every entry found in a config, one
line each naming the field path; ``--strict`` turns them into errors.  The config model
(:mod:`plano_fast.config`) still type-checks these fields as Plano's schema does, so a typo
is an error whether or not the feature exists.

When a feature lands, delete its row here (and the test that names it fails until its
own tests take over): nothing else keeps the list.

Three tables:

* ``FIELDS``: field paths, matched against the config as written.  ``[]`` is "every item
  of a list", ``*`` "every key of a mapping", a last part ``key=value`` only that value;
  a row matches a field that is present and not null.  ``IMPLEMENTED`` names the paths a ``*`` row must skip.
* ``LISTENER_TYPES``: listener types that are not served (the gateway serves the first
  ``type: model`` listener); fields under a reported listener are not reported again.
* ``WIRE_APIS``: provider wire formats that are accepted in the config but not spoken.

Pure: data in, ``(path, reason)`` pairs out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from plano_fast import providers as P

# (path, what Plano does with it) -- the reason is printed after "not implemented: ".
FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("prompt_targets", "prompt targets (function calling to your APIs)"),
    ("endpoints", "endpoints of prompt targets"),
    ("system_prompt", "a system prompt added to requests"),
    ("agents", "agent orchestration"),
    ("model_providers[].stream", "a per-provider streaming switch"),
    ("llm_providers[].stream", "a per-provider streaming switch"),
    ("routing.routing_budget", "routing budgets (Plano's per-session cost gate on model switches; a session with x-model-affinity keeps its first decision for session_ttl_seconds instead)"),
    ("prompt_caching", "prompt-cache markers and session affinity"),
    ("mode=prompt", "the prompt gateway mode (mode: llm is what plano_fast does)"),
    ("overrides.*", "this override"),
    ("listeners[].router", "the agent orchestrator"),
    ("listeners[].agents", "agent orchestration"),
)

# Paths a ``*`` row above must not report (implemented, or handled elsewhere).
IMPLEMENTED: Final = frozenset({
    "overrides.upstream_connect_timeout",
    "overrides.llm_routing_model",
    "overrides.orchestrator_model_context_length",
})

LISTENER_TYPES: Final[dict[str, str]] = {
    "prompt": "prompt listeners (prompt targets, guards, function calling)",
    "agent": "agent listeners (agent orchestration)",
}

WIRE_APIS: Final[dict[str, str]] = {
    P.WIRE_BEDROCK: "the amazon_bedrock Converse API",
}


def _split(pattern: str) -> list[str]:
    """``"listeners[].max_retries"`` -> ``["listeners", "[]", "max_retries"]``."""
    out: list[str] = []
    for part in pattern.split("."):
        if part.endswith("[]"):
            out += [part[:-2], "[]"]
        else:
            out.append(part)
    return out


def _matches(node: Any, segments: list[str], loc: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
    if not segments:
        if node is not None:
            yield loc
        return
    head, rest = segments[0], segments[1:]
    if not rest and "=" in head:
        key, _, wanted = head.partition("=")
        if isinstance(node, dict) and node.get(key) == wanted:
            yield loc + (key,)
        return
    if head == "[]":
        if isinstance(node, list):
            for i, item in enumerate(node):
                yield from _matches(item, rest, loc + (i,))
    elif isinstance(node, dict):
        keys = [k for k in node if isinstance(k, str)] if head == "*" else [head]
        for key in keys:
            if key in node:
                yield from _matches(node[key], rest, loc + (key,))


def _plain(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in loc if isinstance(p, str))


def unimplemented_fields(data: dict[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """``(location, reason)`` for every ``FIELDS`` row present in ``data`` (the raw config)."""
    for pattern, reason in FIELDS:
        for loc in _matches(data, _split(pattern), ()):
            if _plain(loc) not in IMPLEMENTED:
                yield loc, reason
