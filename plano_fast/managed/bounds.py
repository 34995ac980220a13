"""The most a managed request can cost, in tokens, before it is forwarded (pure: bytes in).

A hard budget reserves this bound, so it must really be an upper bound of what the
provider will bill.  The argument, per part of the bill:

* Text input: a token is never shorter than one byte of UTF-8, so the body's byte length
  bounds the tokens of every text it carries, and also the per-message framing the
  providers add (a message costs at least ``{"role":"user","content":""}``, 29 bytes, for
  the 3-4 tokens of framing).
* Tool definitions are text in the body; a provider's own tool-use instructions are not:
  ``TOOL_OVERHEAD_TOKENS`` is added when a request declares tools (Anthropic documents
  313-346 tokens for its tool-use system prompt; OpenAI's function preamble is smaller).
* Output: ``max_tokens`` (or the configured ceiling, which the gateway then sends, so the
  provider enforces it) bounds each choice; ``n`` (OpenAI) and ``candidateCount`` (Gemini)
  multiply it.  Reasoning / thinking tokens count within that ceiling at every provider.
* What bytes cannot bound is refused when a hard limit applies (400 naming the field):
  images, audio, video, files and documents (an image URL of 200 bytes was billed 2,843
  input tokens; a PDF's pages are unbounded), server-side state (``previous_response_id``,
  ``conversation``: the stored history is billed as input; with ``state_storage`` the
  gateway expands ``previous_response_id`` into the body before this bound is taken,
  plano_fast.responses_managed, so the history is counted), audio output, and
  provider-run tools whose results are added to the input (web search, file search,
  code execution, URL context, MCP; chat's ``web_search_options``, Anthropic's
  ``mcp_servers``), a stored prompt template (Responses ``prompt``: its text is billed
  as input), a Responses input item that references a stored item (``item_reference``),
  rates above the price table's (``service_tier`` other than auto, default, flex or
  standard_only; Anthropic's fast mode ``speed: "fast"`` and ``inference_geo``; a chat
  ``prediction``, whose rejected tokens are billed at output rates), and a
  model that searches the web on every call (``searches_on_every_call``: per-call fees).
  A request without a hard limit is not inspected.
* Service tier: the row is billed at the tier the answer names (plano_fast.pricing,
  "Service tiers"), which the provider may pick by itself: ``service_tier`` ``auto`` or
  absent is served at priority by an OpenAI project whose default tier is priority.  So
  the bound is priced at every tier the price entry lists (the dearest counts) unless the
  body pins a tier billed at or below the standard rates (``tiers_it_may_be_billed_at``):
  ``default`` (OpenAI: standard), ``standard_only`` (Anthropic: standard), ``flex``
  (OpenAI: flex or standard).  Anthropic's ``auto`` may use Priority Tier, which has no
  list price: such a row is billed at the standard rates (``priced_partial``), and the
  entry lists no tier, so the standard bound holds.

When a provider nevertheless bills more than was reserved, the settle path records the
difference on the usage row (``reservation_overrun_nano_usd``, migration 0004), counts it
(``BillingMetrics.reservation_overruns`` and ``reservation_overrun_nano_usd``) and logs it,
so an operator sees the hole.
"""

from __future__ import annotations

import json
import re
from typing import Any

TOOL_OVERHEAD_TOKENS = 1000

# A body containing none of these (and no \u escape, which could spell any key) holds
# nothing but text and a plain output ceiling: its bound is bytes and max_tokens, no parse.
_MARKERS = (
    b'"n"', b'"candidateCount"', b'"candidate_count"', b'"tools"', b'"functions"',
    b'"image', b'"input_image"', b'"inline_data"', b'"inlineData"', b'"file', b'"input_file"',
    b'"input_audio"', b'"audio"', b'"video', b'"document"', b'"previous_response_id"',
    b'"conversation"', b'"modalities"', b'"googleSearch"', b'"google_search', b'"codeExecution"',
    b'"code_execution"', b'"urlContext"', b'"url_context"', b'"web_search_options"', b'"mcp_servers"',
    b'"prompt"', b'"service_tier"', b'"speed"', b'"inference_geo"', b'"prediction"', b'"item_reference"',
    b'"id"', b"\\u",
)  # fmt: skip

# Where message content lives, per API (chat / messages / responses / gemini).
_CONTENT_KEYS = ("messages", "input", "system", "contents", "systemInstruction", "system_instruction",
                 "instructions")
# Keys that carry non-text input inside message content.
_MEDIA_KEYS = frozenset((
    "image_url", "input_image", "image", "inline_data", "inlineData", "file_data", "fileData",
    "file_id", "file_url", "input_audio", "audio", "video_url", "input_file", "file",
))  # fmt: skip
# Content part types that are not text.
_MEDIA_TYPES = frozenset((
    "image", "image_url", "input_image", "input_audio", "audio", "input_file", "file",
    "document", "video", "video_url", "container_upload",
))  # fmt: skip
_STATE_KEYS = ("previous_response_id", "conversation", "audio")
# Top-level members that make the provider bill what the body does not hold: chat's web
# search (per-call fees, the results as input), Anthropic's MCP connector (tool results as
# input).
_PROVIDER_INPUT = (
    ("web_search_options", "web search: its fees and results are not in the request"),
    ("mcp_servers", "MCP servers: their tool results are billed as input"),
)
# service_tier values billed at (or below: flex) the price table's rates; any other one
# (OpenAI's priority, Anthropic's fast, a tier not known yet) is refused under a hard limit.
_TABLE_RATE_TIERS = frozenset(("auto", "default", "flex", "standard_only"))
# Of those, the ones that pin the tier (``auto`` lets the provider pick, as no member does).
_PINNED_TIERS = frozenset(("default", "flex", "standard_only"))
# Members whose only non-default value is billed at a multiple of the table's rates:
# Anthropic's fast mode (``speed: "fast"``, 2-6x) and US-only inference (``inference_geo``,
# 1.1x).  (member, its standard value, why)
_PREMIUM_OPTIONS = (
    ("speed", "standard", "fast mode is billed at a multiple of the price table's rates"),
    ("inference_geo", "global", "inference pinned to a region is billed above the price table's rates"),
)
# Tool entries that are plain function declarations (everything else runs at the provider).
_FUNCTION_TOOL_TYPES = frozenset(("function", "custom"))
_GEMINI_TOOL_KEYS = frozenset(("functionDeclarations", "function_declarations"))


# Models that search the web on every call, billed per call (or per request) beside their
# tokens: OpenAI's ``*-search-preview`` / ``*-search-api`` ($10-30 per 1,000 calls, with
# no tool in the request), deep research models, Perplexity's ``sonar*`` (request fees).
_SEARCHING_MODEL = re.compile(r"(?:^|[/:-])(?:search-preview|search-api|deep-research|sonar)(?:$|[-:@.])")


def searches_on_every_call(model: str) -> bool:
    """Whether ``model`` is billed a search fee per call, which no token bound covers."""
    name = model.lower()
    if "search" not in name and "sonar" not in name:  # (most names: two substring tests)
        return False
    return _SEARCHING_MODEL.search(name) is not None


class UnboundedContent(ValueError):
    """The request carries something whose cost the body's bytes cannot bound."""


def token_bound(body: bytes, max_output_tokens: int) -> tuple[int, int]:
    """(input tokens, output tokens) that the provider cannot exceed for ``body``.

    Raises ``UnboundedContent`` naming the field when no such bound exists.
    """
    input_bound, output_bound, _ = request_bound(body, max_output_tokens)
    return input_bound, output_bound


def request_bound(body: bytes, max_output_tokens: int) -> tuple[int, int, str | None]:
    """``token_bound``'s two bounds and the service tier the body pins (``default``,
    ``flex`` or ``standard_only``; None when the provider may pick one: ``auto`` or no
    ``service_tier``), from the one read of the body.

    Raises ``UnboundedContent`` naming the field when no such bound exists.
    """
    if not any(body.find(m) >= 0 for m in _MARKERS):
        return len(body), max_output_tokens, None
    try:
        doc = json.loads(body, object_pairs_hook=_members_once)
    except UnboundedContent:
        raise
    except ValueError as exc:
        raise UnboundedContent(f"the body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        return len(body), max_output_tokens, None
    for key in _STATE_KEYS:
        if doc.get(key) is not None:
            raise UnboundedContent(f"'{key}' (its cost is not in the request)")
    for key, why in _PROVIDER_INPUT:
        if doc.get(key) is not None:
            raise UnboundedContent(f"'{key}' ({why})")
    if isinstance(doc.get("prompt"), dict):
        raise UnboundedContent("'prompt' (a stored prompt: its text is billed as input, not in the request)")
    tier = doc.get("service_tier")
    if tier is not None and (type(tier) is not str or tier not in _TABLE_RATE_TIERS):
        # (not a string: a list or an object is no tier, and unhashable for the set)
        # priority (OpenAI), fast (Anthropic's fast mode, also as service_tier), or one not
        # known: billed above the price table's rates, so no bound from the table
        raise UnboundedContent(f"'service_tier' {tier!r} (billed above the price table's rates)")
    for key, allowed, why in _PREMIUM_OPTIONS:
        if doc.get(key, allowed) != allowed:
            raise UnboundedContent(f"'{key}' {doc[key]!r} ({why})")
    if doc.get("prediction") is not None:
        raise UnboundedContent(
            "'prediction' (a predicted output: its rejected tokens are billed at output rates, "
            "which a bound of the body's bytes as input does not cover)"
        )
    reference = _stored_item_in(doc.get("input"))
    if reference is not None:
        raise UnboundedContent(f"{reference} in 'input' (a stored item: its cost is not in the request)")
    modalities = doc.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        raise UnboundedContent("'modalities' with audio output")
    for key in _CONTENT_KEYS:
        where = _media_in(doc.get(key))
        if where is not None:
            raise UnboundedContent(f"{where} in '{key}'")
    input_bound = len(body)
    tools = [t for key in ("tools", "functions") if isinstance(doc.get(key), list) for t in doc[key]]
    if tools:
        for tool in tools:
            _check_tool(tool)
        input_bound += TOOL_OVERHEAD_TOKENS
    return input_bound, max_output_tokens * _choices(doc), tier if tier in _PINNED_TIERS else None


def tiers_it_may_be_billed_at(pinned: str | None, listed: tuple[tuple[str, Any], ...]) -> tuple[str | None, ...]:
    """The service tiers (None: the standard one) a request whose body pins ``pinned``
    (``request_bound``'s third value) may be billed at, of a price entry that lists
    ``listed`` (``ModelPrice.service_tiers``; a tier it does not list is billed at the
    standard rates): every listed one when the provider may pick, the standard one (and
    flex, when listed and pinned) otherwise."""
    if pinned is None:
        return (None, *(name for name, _ in listed))
    if pinned == "flex":  # (OpenAI's flex is cheaper than standard; quoted anyway, not assumed)
        return (None, *(name for name, _ in listed if name == "flex"))
    return (None,)


def _members_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose member names are unique, at any depth.  ``json.loads`` keeps the
    last of two duplicates, some providers' parsers the first: ``"n":8,"n":1`` would be
    reserved as one choice and billed as eight, an image hidden in a first ``messages``
    would never be seen.  What could be read two ways has no bound."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise UnboundedContent(f"'{key}' appears more than once (parsers disagree on which one counts)")
            seen.add(key)
    return doc


def _one_of(doc: dict[str, Any], camel: str, snake: str) -> Any:
    """A member a provider accepts in both spellings (Gemini's protobuf JSON): both given
    is read two ways, so refused like a duplicate."""
    if camel in doc and snake in doc:
        raise UnboundedContent(f"both '{camel}' and '{snake}' (parsers disagree on which one counts)")
    return doc.get(camel, doc.get(snake))


def _choices(doc: dict[str, Any]) -> int:
    n = doc.get("n")
    config = _one_of(doc, "generationConfig", "generation_config")
    if isinstance(config, dict):
        candidates = _one_of(config, "candidateCount", "candidate_count")
        if candidates is not None:
            n = candidates
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UnboundedContent(f"'n' / 'candidateCount' must be a positive integer, not {n!r}")
    return n


def _media_in(node: Any) -> str | None:
    """The first non-text input found in message content, described; None if all text."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if isinstance(kind, str) and kind in _MEDIA_TYPES:
                return f"a '{kind}' part"
            for key, value in item.items():
                if key in _MEDIA_KEYS and value is not None:
                    return f"'{key}'"
                if isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _stored_item_in(items: Any) -> str | None:
    """A Responses input item that names a stored item instead of carrying it, described:
    ``{"type": "item_reference", "id": ...}`` or the same without its (optional) type
    (an ``id`` and no ``role``); the provider bills the stored item's text as input."""
    if not isinstance(items, list):
        return None
    for item in items:
        if isinstance(item, dict):
            kind = item.get("type")
            if kind == "item_reference" or (kind is None and "id" in item and "role" not in item):
                return "an 'item_reference' item"
    return None


def _check_tool(tool: Any) -> None:
    if not isinstance(tool, dict):
        return
    kind = tool.get("type")
    if kind is None:
        # Anthropic custom tools (name + input_schema), OpenAI legacy functions, Gemini.
        other = [k for k in tool if k not in _GEMINI_TOOL_KEYS] if "name" not in tool else []
        if other and not {"name", "parameters"} & set(tool):
            raise UnboundedContent(f"provider-run tool '{other[0]}' (its results are billed as input)")
        return
    if kind not in _FUNCTION_TOOL_TYPES:
        raise UnboundedContent(f"provider-run tool '{kind}' (its results are billed as input)")
