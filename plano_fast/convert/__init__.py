"""Format conversion between OpenAI Chat Completions, Anthropic Messages and Gemini
generateContent, and the OpenAI Responses API in front of each of them (pure functions: no
I/O, no asyncio).

``"responses"`` is a client format only: a source for ``convert_request`` and
``count_tokens_estimate``, a target for ``convert_response``, ``StreamConverter`` and
``convert_error`` (OpenAI's error shape).  Its mapping is in ``_request_responses.py``
(requests), ``_responses_out.py`` (answers) and ``_stream_responses.py`` (the event
stream); ``request=`` gives the answer converters the client's request, whose settings a
Responses answer echoes.  Structured output (``text.format`` json_schema/json_object) goes
to Anthropic as a forced tool (``plano_json_output``) whose call comes back as the text.

API
---
``convert_request(body, source, target, *, target_model, stream=None, ...) -> dict``
    A client request in ``source`` format as an upstream request in ``target`` format.
``convert_response(body, source, target, *, client_model, created=None, request=None) -> dict``
    A non-streamed upstream answer as the client's answer.
``convert_error(status, body, source, target) -> (status, bytes)``
    An upstream error response in the client's error shape (status kept; 529 -> 503 for
    non-Anthropic clients).
``StreamConverter(source, target, *, client_model, include_usage=True, request=None)``
    ``feed(bytes) -> bytes``, ``finish() -> bytes``, ``.usage``, ``.truncated``,
    ``.errored``, ``error_event(message)``.
``count_tokens_estimate(body, source) -> int``
    An ESTIMATE of input tokens for ``/v1/messages/count_tokens`` in front of a provider
    without a counting endpoint (rule in ``requests.count_tokens_estimate``).
``ConversionError(ValueError)``: ``.status`` 400 (cannot be expressed; the message names
    the field) or 502 (unusable upstream bytes).

Mapping tables
--------------
Stop reasons (canonical = Anthropic ``stop_reason``):

=============================  ===================  ====================================
Anthropic                      OpenAI               Gemini
=============================  ===================  ====================================
end_turn                       stop                 STOP (also RECITATION, OTHER,
                                                    MALFORMED_FUNCTION_CALL, unknown)
stop_sequence                  stop                 STOP
pause_turn                     stop                 STOP
max_tokens                     length               MAX_TOKENS
model_context_window_exceeded  length               MAX_TOKENS
tool_use                       tool_calls           STOP (+ functionCall parts)
                               (function_call ->)
refusal                        content_filter       SAFETY (from: SAFETY, LANGUAGE,
                                                    BLOCKLIST, PROHIBITED_CONTENT, SPII,
                                                    IMAGE_SAFETY, promptFeedback block)
=============================  ===================  ====================================

OpenAI ``stop``/null and Gemini ``STOP`` become ``tool_use`` when the answer contains
tool calls.  OpenAI ``stop`` never becomes ``stop_sequence`` (OpenAI does not say which
stop string matched).

tool_choice:

=========================  ==============================  =================================
Anthropic                  OpenAI                          Gemini functionCallingConfig
=========================  ==============================  =================================
{type: auto}               "auto"                          mode AUTO (VALIDATED -> auto)
{type: any}                "required"                      mode ANY
{type: none}               "none"                          mode NONE
{type: tool, name: X}      {type: function, function:{X}}  mode ANY, allowedFunctionNames [X]
disable_parallel_tool_use  parallel_tool_calls: false      (not expressible: dropped)
=========================  ==============================  =================================

Thinking / reasoning:

* Anthropic ``thinking.budget_tokens`` or Gemini ``thinkingBudget`` -> OpenAI
  ``reasoning_effort``: budget <= 1024 "low", <= 8192 "medium", above "high".
* OpenAI ``reasoning_effort`` -> budget (Anthropic ``budget_tokens``, Gemini
  ``thinkingBudget``): minimal 1024, low 1024, medium 8192, high 24576, xhigh 32768;
  ``"none"`` = no thinking.  Gemini ``thinkingLevel`` is treated as an effort.
* Anthropic <-> Gemini: the budget is copied.  Gemini ``thinkingBudget: -1`` (dynamic)
  and Anthropic ``adaptive`` -> Gemini -1 / Anthropic budget 8192 / no OpenAI effort;
  ``thinkingBudget: 0`` and Anthropic ``disabled`` -> no thinking.
* Into Anthropic the budget is at least 1024 and below ``max_tokens``: without a
  ``max_tokens`` the request gets ``budget + 4096``; with ``max_tokens <= budget`` the
  budget becomes ``max_tokens - 1`` (thinking dropped if that is under 1024).
* Into Gemini thinking sets ``includeThoughts: true``; thoughts come back as Anthropic
  ``thinking`` blocks (empty signature) / OpenAI ``reasoning_content``.

Other request rules: Anthropic ``max_tokens`` is required: ``DEFAULT_ANTHROPIC_MAX_TOKENS``
(4096) when the source has none.  Temperature into Anthropic is capped at 1.  OpenAI
targets get ``max_completion_tokens`` (option ``openai_max_tokens_field="max_tokens"``)
and, when streaming, ``stream_options.include_usage: true``.  Gemini function calls carry
no ids: Gemini requests get stable ids (``call_<sha256>`` of position) and calls in
Gemini answers ``call_<sha256(responseId, n)>``; a ``functionResponse`` without id is
matched to the earliest unanswered call of the same name.  Function calls sent to a
Gemini 3+ model (``gemini-<major>`` >= 3 in ``target_model``) carry Google's documented
``thoughtSignature: "skip_thought_signature_validator"`` (they were not produced by that
model, or the client dropped the signature; Gemini 3 rejects unsigned calls with 400).
Gemini tool schemas are sent as ``parametersJsonSchema`` (JSON Schema as is); incoming
OpenAPI ``parameters``
(``type: STRING``) are lower-cased to JSON Schema.  ``top_k`` is dropped for OpenAI;
``seed``/penalties are dropped for Anthropic; ``cache_control``, ``metadata`` (except
``user_id``), ``safetySettings`` are dropped.  An ``is_error`` tool result becomes an OpenAI
tool message prefixed "Error: " and a Gemini ``{"error": text}`` response.

Raises ConversionError (400) -- what cannot be expressed:

* into Anthropic or Gemini from OpenAI: ``n`` > 1, ``logprobs``/``top_logprobs``, audio
  output (``audio``, ``modalities: [audio]``), legacy ``functions``/``function_call``/role
  ``function``, ``web_search_options``, non-function tools, ``tool_choice``
  ``allowed_tools``, ``file`` parts given by ``file_id``;
* into Anthropic: audio input parts, ``response_format`` json_object/json_schema,
  images/documents by non-HTTP URL;
* into OpenAI: documents by URL; Anthropic server tools (``web_search_*``, ``bash_*`` ...)
  and server-tool blocks, ``mcp_servers``, ``container``, ``search_result``/``container_upload``
  blocks (into any target);
* from Gemini: ``candidateCount`` > 1, logprobs, non-TEXT ``responseModalities``,
  ``speechConfig``, ``cachedContent``, built-in tools (``googleSearch``,
  ``codeExecution``...), ``executableCode`` parts, non-image/PDF/audio inline data,
  several ``allowedFunctionNames`` (a subset of the tools);
* into Gemini: a tool result whose call id is not in the history (Gemini needs the name);
* malformed input (wrong types) with the JSON path of the field.
"""

from __future__ import annotations

from plano_fast.convert._common import DEFAULT_ANTHROPIC_MAX_TOKENS, FORMATS
from plano_fast.convert.errors import ConversionError, convert_error
from plano_fast.convert.requests import convert_request, count_tokens_estimate
from plano_fast.convert.responses import convert_response
from plano_fast.convert.streams import MAX_EVENT_BYTES, StreamConverter

__all__ = [
    "DEFAULT_ANTHROPIC_MAX_TOKENS",
    "FORMATS",
    "MAX_EVENT_BYTES",
    "ConversionError",
    "StreamConverter",
    "convert_error",
    "convert_request",
    "convert_response",
    "count_tokens_estimate",
]
