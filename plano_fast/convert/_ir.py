"""The format-neutral request model the request converters go through.

Each source format is parsed into a :class:`Request` (``requests.py``) and each target
format is emitted from one (``_request_emit.py``): 3 parsers + 3 emitters cover every pair.
Content follows Anthropic's block model (the richest of the three): tool results are
parts of a *user* message, tool calls parts of an *assistant* message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Image:
    """Base64 ``data`` with its ``media_type``, or a ``url`` (http(s), gs://, file URIs)."""

    where: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


@dataclass(slots=True)
class Document:
    """A PDF (or other document): base64 ``data`` or a ``url``."""

    where: str
    media_type: str = "application/pdf"
    data: str | None = None
    url: str | None = None
    title: str | None = None


@dataclass(slots=True)
class Audio:
    where: str
    format: str  # "wav", "mp3", ...
    data: str


@dataclass(slots=True)
class ToolUse:
    id: str
    name: str
    input: dict[str, Any]


@dataclass(slots=True)
class ToolResult:
    tool_use_id: str
    content: list[Text | Image]
    is_error: bool = False
    name: str | None = None  # known when the source is Gemini


@dataclass(slots=True)
class Thinking:
    """Model reasoning echoed back in history; dropped by every target (it is only valid,
    signed, for the provider that produced it)."""

    text: str


Part = Text | Image | Document | Audio | ToolUse | ToolResult | Thinking


@dataclass(slots=True)
class Message:
    role: str  # "user" | "assistant"
    parts: list[Part]


@dataclass(slots=True)
class ToolDef:
    name: str
    description: str | None
    parameters: dict[str, Any]


@dataclass(slots=True)
class ThinkingSpec:
    """Requested reasoning: a token ``budget`` (Anthropic/Gemini) and/or an OpenAI
    ``effort``; ``dynamic`` = enabled, size left to the model."""

    budget: int | None = None
    effort: str | None = None
    dynamic: bool = False


@dataclass(slots=True)
class Request:
    system: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    tools: list[ToolDef] = field(default_factory=list)
    tool_choice: str | None = None  # "auto" | "any" | "none" | "tool"
    tool_name: str | None = None  # with tool_choice == "tool"
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    thinking: ThinkingSpec | None = None
    user: str | None = None
    #: OpenAI-shaped: {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
