"""Round trips: openai -> anthropic -> openai and anthropic -> openai -> anthropic (and via
gemini) keep content, tools, tool ids, stop reasons and usage — for requests, responses
and streams, on fixed cases and on hypothesis-generated ones."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plano_fast.convert import convert_request, convert_response
from tests.test_convert_support import (
    anthropic_accumulate,
    anthropic_events,
    assert_anthropic_stream_valid,
    assert_openai_stream_valid,
    convert_stream,
    openai_accumulate,
    openai_chunks,
)
from tests.test_convert_requests import ANTHROPIC_TOOL_CONVERSATION, OPENAI_TOOL_CONVERSATION

# --------------------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------------------


def via(body: dict[str, Any], *formats: str) -> dict[str, Any]:
    for source, target in zip(formats, formats[1:], strict=False):
        body = convert_request(body, source, target, target_model="m")
    return body


def norm_openai_messages(messages: list[dict[str, Any]]) -> list[Any]:
    out: list[Any] = []
    system = [m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])
              for m in messages if m["role"] in ("system", "developer")]
    if system:
        out.append(("system", "\n".join(system)))
    for m in messages:
        role = m["role"]
        if role in ("system", "developer"):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = [p for p in content if not (p.get("type") == "text" and not p["text"])]
            if len(content) == 1 and content[0]["type"] == "text":
                content = content[0]["text"]
            else:
                content = [{"type": "image_url", "image_url": {"url": p["image_url"]["url"]}} if p["type"] == "image_url" else p
                           for p in content]
        if role == "assistant":
            calls = [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"] or "{}")) for c in m.get("tool_calls") or []]
            out.append(("assistant", content or None, calls))
        elif role == "tool":
            text = content if isinstance(content, str) else "".join(p["text"] for p in content)
            out.append(("tool", m["tool_call_id"], text))
        else:
            out.append((role, content))
    return out


def test_openai_anthropic_openai_request() -> None:
    src = OPENAI_TOOL_CONVERSATION
    back = via(src, "openai", "anthropic", "openai")
    assert norm_openai_messages(back["messages"]) == norm_openai_messages(src["messages"])
    tools = [{**t, "function": {k: v for k, v in t["function"].items() if k != "strict"}} for t in src["tools"]]
    assert back["tools"] == tools
    for key in ("tool_choice", "parallel_tool_calls", "max_completion_tokens", "top_p", "stream", "user"):
        assert back[key] == src[key], key
    assert back["stop"] == ["END"] and back["temperature"] == 1.0  # temperature capped by Anthropic's range


def test_anthropic_openai_anthropic_request() -> None:
    src = ANTHROPIC_TOOL_CONVERSATION
    back = via(src, "anthropic", "openai", "anthropic")
    assert back["system"] == "Be brief.\nUse tools."
    expected = json.loads(json.dumps(src["messages"]))
    expected[1]["content"] = expected[1]["content"][1:]  # thinking is not carried across providers
    error_result = expected[2]["content"][1]
    error_result["content"] = "Error: down"  # is_error has no OpenAI field: it becomes a prefix
    del error_result["is_error"]
    expected[2]["content"][0]["content"] = "18C"
    assert back["messages"] == expected
    assert back["tools"] == [{k: v for k, v in t.items() if k != "cache_control"} for t in src["tools"]]
    for key in ("tool_choice", "max_tokens", "temperature", "top_p", "stop_sequences", "stream", "metadata"):
        assert back[key] == src[key], key


def test_gemini_round_trips_request() -> None:
    from tests.test_convert_requests import GEMINI_CONVERSATION

    for middle in ("openai", "anthropic"):
        back = via(GEMINI_CONVERSATION, "gemini", middle, "gemini")
        src = GEMINI_CONVERSATION["contents"]
        assert [c["role"] for c in back["contents"]] == [c["role"] for c in src]
        calls = [p["functionCall"] for p in back["contents"][1]["parts"]]
        assert [(c["name"], c["args"]) for c in calls] == [("capital", {"country": "France"}), ("weather", {"city": "Paris"})]
        responses = [p["functionResponse"] for p in back["contents"][2]["parts"]]
        by_id = {c["id"]: c["name"] for c in calls}
        assert [(by_id[r["id"]], r["name"], r["response"]) for r in responses] == [
            ("weather", "weather", {"result": "18C"}), ("capital", "capital", {"result": "Paris"})]
        assert back["toolConfig"] == GEMINI_CONVERSATION["toolConfig"]


# --------------------------------------------------------------------------------------
# responses
# --------------------------------------------------------------------------------------

OPENAI_RESPONSE = {
    "id": "chatcmpl-R1", "object": "chat.completion", "created": 7, "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": "Calling.", "refusal": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": '{"x":[1,2]}'}},
            {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]}}],
    "usage": {"prompt_tokens": 4020, "completion_tokens": 40, "total_tokens": 4060,
              "prompt_tokens_details": {"cached_tokens": 4000, "cache_write_tokens": 10},
              "completion_tokens_details": {"reasoning_tokens": 0}},
}


def test_openai_anthropic_openai_response() -> None:
    ant = convert_response(OPENAI_RESPONSE, "openai", "anthropic", client_model="claude")
    back = convert_response(ant, "anthropic", "openai", client_model="gpt-4o", created=7)
    assert back == {**OPENAI_RESPONSE, "id": "chatcmpl-R1"}


def test_anthropic_openai_anthropic_response() -> None:
    src = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude",
           "content": [{"type": "text", "text": "Calling."}, {"type": "tool_use", "id": "toolu_9", "name": "a", "input": {"x": {"y": None}}}],
           "stop_reason": "tool_use", "stop_sequence": None,
           "usage": {"input_tokens": 3, "cache_creation_input_tokens": 418, "cache_read_input_tokens": 1111, "output_tokens": 33}}
    back = convert_response(convert_response(src, "anthropic", "openai", client_model="g"), "openai", "anthropic", client_model="claude")
    assert back == src
    for stop in ("end_turn", "max_tokens", "refusal"):
        s = {**src, "content": [{"type": "text", "text": "x"}], "stop_reason": stop}
        assert convert_response(convert_response(s, "anthropic", "openai", client_model="g"), "openai", "anthropic",
                                client_model="claude")["stop_reason"] == stop
    for middle in ("gemini",):
        g = convert_response(src, "anthropic", middle, client_model="g")
        back = convert_response(g, middle, "anthropic", client_model="claude")
        assert back["content"] == src["content"] and back["stop_reason"] == "tool_use"
        assert back["usage"]["cache_read_input_tokens"] == 1111 and back["usage"]["output_tokens"] == 33


# --------------------------------------------------------------------------------------
# streams
# --------------------------------------------------------------------------------------


def stream_round_trip_openai(data: bytes, middle: str) -> tuple[dict[str, Any], dict[str, Any]]:
    mid, _ = convert_stream("openai", middle, data)
    back, _ = convert_stream(middle, "openai", mid)
    chunks, done = openai_chunks(back)
    assert_openai_stream_valid(chunks, done)
    return openai_accumulate(openai_chunks(data)[0]), openai_accumulate(chunks)


def comparable_openai(acc: dict[str, Any]) -> dict[str, Any]:
    usage = acc["usage"] or {}
    return {
        "content": acc["content"],
        "calls": [(c["id"], c["name"], json.loads(c["arguments"] or "{}")) for _, c in sorted(acc["tool_calls"].items())],
        "finish": acc["finish_reason"],
        "usage": (usage.get("prompt_tokens"), usage.get("completion_tokens"),
                  (usage.get("prompt_tokens_details") or {}).get("cached_tokens")),
    }


text_st = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
ident_st = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=10)
json_value_st = st.recursive(st.none() | st.booleans() | st.integers(-1000, 1000) | text_st,
                             lambda c: st.lists(c, max_size=3) | st.dictionaries(ident_st, c, max_size=3), max_leaves=6)


@st.composite
def openai_streams(draw: st.DrawFn) -> bytes:
    base = {"id": "chatcmpl-" + draw(ident_st), "object": "chat.completion.chunk", "created": 1, "model": "gpt"}
    chunks: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    for piece in draw(st.lists(text_st, max_size=4)):
        chunks.append({"content": piece})
    calls = draw(st.lists(st.tuples(ident_st, ident_st, st.dictionaries(ident_st, json_value_st, max_size=3)), max_size=3,
                          unique_by=lambda c: c[0]))
    for k, (cid, name, args) in enumerate(calls):
        encoded = json.dumps(args)
        cuts = sorted(draw(st.lists(st.integers(0, len(encoded)), max_size=3)))
        pieces = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=False)]
        chunks.append({"tool_calls": [{"index": k, "id": "call_" + cid, "type": "function", "function": {"name": name, "arguments": ""}}]})
        chunks.extend({"tool_calls": [{"index": k, "function": {"arguments": p}}]} for p in pieces if p)
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length", "content_filter"]))
    usage = {"prompt_tokens": draw(st.integers(0, 10**6)), "completion_tokens": draw(st.integers(0, 10**5))}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    usage["prompt_tokens_details"] = {"cached_tokens": draw(st.integers(0, usage["prompt_tokens"]))}
    body = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in chunks]
    body.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    body.append({**base, "choices": [], "usage": usage})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in body) + b"data: [DONE]\n\n"


@settings(max_examples=80, deadline=None)
@given(data=openai_streams(), middle=st.sampled_from(["anthropic", "gemini"]))
def test_openai_stream_round_trip(data: bytes, middle: str) -> None:
    original, back = stream_round_trip_openai(data, middle)
    assert comparable_openai(back) == comparable_openai(original)


@settings(max_examples=80, deadline=None)
@given(data=openai_streams())
def test_anthropic_stream_round_trip(data: bytes) -> None:
    """anthropic -> openai -> anthropic, starting from a generated Anthropic stream."""
    ant, _ = convert_stream("openai", "anthropic", data)  # a valid Anthropic stream
    events = anthropic_events(ant)
    assert_anthropic_stream_valid(events)
    oai, _ = convert_stream("anthropic", "openai", ant)
    again, _ = convert_stream("openai", "anthropic", oai)
    events2 = anthropic_events(again)
    assert_anthropic_stream_valid(events2)
    first, second = anthropic_accumulate(events), anthropic_accumulate(events2)
    assert second["blocks"] == first["blocks"]
    assert second["stop_reason"] == first["stop_reason"] and second["usage"] == first["usage"]
    assert second["id"] == first["id"]


@st.composite
def openai_conversations(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    tools = draw(st.lists(ident_st, min_size=1, max_size=3, unique=True))
    for _turn in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(text_st)})
        calls = draw(st.lists(st.tuples(ident_st, st.sampled_from(tools), st.dictionaries(ident_st, json_value_st, max_size=3)),
                              max_size=3, unique_by=lambda c: c[0]))
        text = draw(st.none() | text_st)
        if not calls and text is None:
            text = "ok"
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        ids = [f"call_{len(messages)}_{cid}" for cid, _, _ in calls]
        if calls:
            msg["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                                 for i, (_, n, a) in zip(ids, calls, strict=True)]
        messages.append(msg)
        messages.extend({"role": "tool", "tool_call_id": i, "content": draw(text_st)} for i in ids)
    messages.append({"role": "user", "content": draw(text_st)})
    return {"model": "gpt", "messages": messages,
            "tools": [{"type": "function", "function": {"name": t, "parameters": {"type": "object", "properties": {}}}} for t in tools]}


@settings(max_examples=80, deadline=None)
@given(body=openai_conversations(), middle=st.sampled_from(["anthropic", "gemini"]))
def test_openai_request_round_trip(body: dict[str, Any], middle: str) -> None:
    back = via(body, "openai", middle, "openai")
    # Anthropic/Gemini merge a tool-result turn with the next user text into one user
    # turn; back in OpenAI they are tool messages followed by the user message again
    assert norm_openai_messages(back["messages"]) == norm_openai_messages(body["messages"])
    assert back["tools"] == body["tools"]
