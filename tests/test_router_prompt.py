"""The router-model protocol against Plano's own expectations.

The expected prompts are Plano's unit tests (katanemo/plano 0.4.36,
crates/brightstaff/src/router/orchestrator_model_v1.rs: test_system_prompt_format,
test_parse_response, test_trim_middle_utf8_helper, test_skip_tool_call,
test_turn_cap_limits_routing_history), rebuilt here from Plano's template text."""
from __future__ import annotations

import json

import pytest

from plano_fast import router_prompt as RP

# Plano's ARCH_ORCHESTRATOR_V1_SYSTEM_PROMPT, copied from the Rust raw string.
PLANO_TEMPLATE = (
    "\nYou are a helpful assistant that selects the most suitable routes based on user intent.\n"
    "You are provided with a list of available routes enclosed within <routes></routes> XML tags:\n"
    "<routes>\n{routes}\n</routes>\n\n"
    "You are also given the conversation context enclosed within <conversation></conversation> XML tags:\n"
    "<conversation>\n{conversation}\n</conversation>\n\n"
    "## Instructions\n"
    "1. Analyze the latest user intent from the conversation.\n"
    "2. Compare it against the available routes to find which routes can help fulfill the request.\n"
    "3. Respond only with the exact route names from <routes>.\n"
    "4. If no routes can help or the intent is already fulfilled, return an empty list.\n\n"
    "## Response Format\n"
    "Return your answer strictly in JSON as follows:\n"
    '{{"route": ["route_name_1", "route_name_2", "..."]}}\n'
    "If no routes are needed, return an empty list for `route`.\n"
)

# test_system_prompt_format's expected prompt, verbatim.
PLANO_EXPECTED = '''
You are a helpful assistant that selects the most suitable routes based on user intent.
You are provided with a list of available routes enclosed within <routes></routes> XML tags:
<routes>
{"name": "Image generation", "description": "generating image", "parameters": {"type": "object", "properties": {}, "required": []}}
</routes>

You are also given the conversation context enclosed within <conversation></conversation> XML tags:
<conversation>
[
    {
        "role": "user",
        "content": "hi"
    },
    {
        "role": "assistant",
        "content": "Hello! How can I assist you today?"
    },
    {
        "role": "user",
        "content": "given the image In style of Andy Warhol, portrait of Bart and Lisa Simpson"
    }
]
</conversation>

## Instructions
1. Analyze the latest user intent from the conversation.
2. Compare it against the available routes to find which routes can help fulfill the request.
3. Respond only with the exact route names from <routes>.
4. If no routes can help or the intent is already fulfilled, return an empty list.

## Response Format
Return your answer strictly in JSON as follows:
{{"route": ["route_name_1", "route_name_2", "..."]}}
If no routes are needed, return an empty list for `route`.
'''

CONVERSATION = {
    "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I assist you today?"},
        {"role": "user", "content": "given the image In style of Andy Warhol, portrait of Bart and Lisa Simpson"},
    ]
}


def test_template_is_plano_s() -> None:
    assert RP.SYSTEM_PROMPT == PLANO_TEMPLATE


def test_prompt_matches_plano_test_system_prompt_format() -> None:
    routes = RP.render_routes([("Image generation", "generating image")])
    prompt = RP.render_prompt(routes, RP.conversation_of(CONVERSATION, "chat_completions"), 2**62)
    assert prompt == PLANO_EXPECTED


def test_routes_one_spaced_json_line_each_in_order_and_unicode_kept() -> None:
    text = RP.render_routes([("code: gen", "écrire du code, \"vite\""), ("b", "c")])
    assert text.split("\n") == [
        '{"name": "code: gen", "description": "écrire du code, \\"vite\\"", '
        '"parameters": {"type": "object", "properties": {}, "required": []}}',
        '{"name": "b", "description": "c", "parameters": {"type": "object", "properties": {}, "required": []}}',
    ]


def test_filtering_roles_tools_and_parts() -> None:
    # Plano's test_skip_tool_call / test_non_text_input: system, tool and text-less
    # messages are dropped; content parts keep their text joined by newlines.
    body = {
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "developer", "content": "dev"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "tool", "content": "42", "tool_call_id": "1"},
            {"role": "user", "content": "thanks"},
        ]
    }
    assert RP.select_messages(RP.conversation_of(body, "chat_completions")) == [
        ("user", "a\nb"), ("user", "thanks"),
    ]


def test_turn_cap_keeps_last_16() -> None:
    msgs = [("user" if i % 2 == 0 else "assistant", f"message {i}") for i in range(40)]
    got = RP.select_messages(msgs)
    assert len(got) == RP.MAX_ROUTING_TURNS and got[0][1] == "message 24" and got[-1][1] == "message 39"


def test_token_budget_drops_old_turns_and_middle_trims_the_user() -> None:
    budget = 2048
    head, tail = "HEAD_MARKER_START ", " TAIL_MARKER_END"
    huge = head + "A" * 500_000 + tail
    got = RP.select_messages([("user", "old question"), ("assistant", "answer"), ("user", huge)], budget)
    # The overflowing newest message is trimmed into what is left; older turns go.
    assert len(got) == 1 and got[0][0] == "user"
    text = got[0][1]
    prompt_tokens = len(RP.SYSTEM_PROMPT.encode()) // 4
    assert len(text.encode()) == (budget - prompt_tokens) * 4
    assert text.startswith(head) and text.endswith(tail) and RP.TRIM_MARKER in text
    # an overflowing assistant message is not trimmed: the walk stops there
    got = RP.select_messages([("assistant", "x" * 40_000), ("user", "short")], budget)
    assert got == [("user", "short")]


def test_trim_middle_utf8_like_plano() -> None:
    # Plano's test_trim_middle_utf8_helper
    assert RP.trim_middle_utf8("hello", 100) == "hello"
    assert RP.trim_middle_utf8("hello", 5) == "hello"
    out = RP.trim_middle_utf8("0123456789" * 10, 20)
    assert len(out.encode()) <= 20 and out.startswith("0123456") and RP.TRIM_MARKER in out
    assert RP.trim_middle_utf8("abcdef", 2) == "ab"
    s = "é" * 100  # 2 bytes each: splits land on character boundaries
    out = RP.trim_middle_utf8(s, 21)
    assert len(out.encode()) <= 21 and out.replace(RP.TRIM_MARKER, "") == "é" * (len(out) - 1)


def test_request_body_shape() -> None:
    body = json.loads(RP.router_request("Arch-Router", "P"))
    assert body == {"model": "Arch-Router", "messages": [{"role": "user", "content": "P"}], "temperature": 0.01}


def test_parse_answer_like_plano_test_parse_response() -> None:
    known = ["Image generation", "Code generation"]
    assert RP.parse_answer('{"route": ["Image generation"]}', known) == ["Image generation"]
    assert RP.parse_answer('{"route": ["Image generation", "Code generation"]}', known) == known
    assert RP.parse_answer('{"route": []}', known) == []
    assert RP.parse_answer('{"route": null}', known) == []
    assert RP.parse_answer("{}", known) == []
    assert RP.parse_answer("", known) == []
    with pytest.raises(RP.RouterAnswerError):
        RP.parse_answer('{"route": ["route1"', known)
    assert RP.parse_answer("{'route': ['Image generation']}\\n", known) == ["Image generation"]
    assert RP.parse_answer('{"route": ["Unknown route"]}', known) == []
    # Arch-Router's older single-route form
    assert RP.parse_answer('{"route": "Code generation"}', known) == ["Code generation"]
    assert RP.parse_answer('{"route": "other"}', known) == []
    with pytest.raises(RP.RouterAnswerError):
        RP.parse_answer('{"route": 3}', known)


def test_conversation_of_other_apis() -> None:
    anthropic = {"system": "sys", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "1", "content": "x"}]}]}
    assert RP.select_messages(RP.conversation_of(anthropic, "messages")) == [("user", "hi")]
    assert RP.conversation_of({"input": "write code"}, "responses") == [("user", "write code")]
    responses = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "q"}]},
                           {"type": "function_call_output", "call_id": "1", "output": "o"}]}
    assert RP.conversation_of(responses, "responses") == [("user", "q")]


IMAGE_ROUTE = RP.render_routes([("Image generation", "generating image")])
LONG = ("given the image In style of Andy Warhol, portrait of Bart and Lisa Simpson and this is a very long "
        "message that exceeds the max token length of the routing model, so it should be truncated and only "
        "the last user message should be included in the conversation for routing.")  # fmt: skip


def plano_expected(conversation_block: str) -> str:
    """PLANO_EXPECTED with another <conversation> block (the rest of Plano's expected
    prompts is the same text)."""
    head, rest = PLANO_EXPECTED.split("<conversation>\n", 1)
    return head + "<conversation>\n" + conversation_block + "\n</conversation>" + rest.split("\n</conversation>", 1)[1]


# Plano's test_conversation_exceed_token_count (235), ..._large_single_message (200) and
# test_conversation_trim_upto_user_message (230): budget, conversation, the expected block.
@pytest.mark.parametrize(("budget", "conversation", "block"), [
    (235, [("user", "hi"), ("assistant", "Hello! How can I assist you today?"),
           ("user", "given the image In style of Andy Warhol, portrait of Bart and Lisa Simpson")],
     '[\n    {\n        "role": "user",\n        "content": "given the image In style of Andy Warhol, portrait of Bart and Lisa Simpson"\n    }\n]'),
    (200, [("user", "hi"), ("assistant", "Hello! How can I assist you today?"), ("user", LONG)],
     '[\n    {\n        "role": "user",\n        "content": "' + LONG + '"\n    }\n]'),
    (230, [("user", "hi"), ("assistant", "Hello! How can I assist you today?"),
           ("user", "given the image In style of Andy Warhol"), ("assistant", "ok here is the image"),
           ("user", "pls give me another image about Bart and Lisa")],
     '[\n    {\n        "role": "user",\n        "content": "given…rhol"\n    },\n    {\n        "role": "assistant",\n'
     '        "content": "ok here is the image"\n    },\n    {\n        "role": "user",\n'
     '        "content": "pls give me another image about Bart and Lisa"\n    }\n]'),
])  # fmt: skip
def test_token_budget_matches_plano_s_expected_prompts(budget: int, conversation: list[tuple[str, str]], block: str) -> None:
    assert RP.render_prompt(IMAGE_ROUTE, conversation, budget) == plano_expected(block)


# -- the router call's body, built without rendering and re-encoding the prompt ----------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def reference_request(model: str, routes_text: str, messages: list[tuple[str, str]], max_len: int) -> bytes:
    """The body as first written: the whole prompt rendered with the standard library's
    indented encoder, then encoded as the request's one message."""
    selected = RP.select_messages(messages, max_len)
    conversation = json.dumps([{"role": r, "content": t} for r, t in selected], indent=4, ensure_ascii=False)
    prompt = PLANO_TEMPLATE.replace("{routes}", routes_text).replace("{conversation}", conversation)
    return json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0.01},
                      ensure_ascii=False).encode()  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    model=st.text(max_size=20),
    routes=st.lists(st.tuples(st.text(max_size=30), st.text(max_size=60)), min_size=1, max_size=4),
    messages=st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "tool"]), st.text(max_size=200)), max_size=20),
    max_len=st.sampled_from([50, 200, 8192]),
)
def test_request_builder_is_byte_identical_to_rendering_the_prompt(
    model: str, routes: list[tuple[str, str]], messages: list[tuple[str, str]], max_len: int
) -> None:
    routes_text = RP.render_routes(routes)
    want = reference_request(model, routes_text, messages, max_len)
    if "{conversation}" in routes_text:
        with pytest.raises(ValueError):
            RP.RequestBuilder(model, routes_text)
        return
    assert RP.RequestBuilder(model, routes_text).build(messages, max_len) == want
    assert RP.router_request(model, RP.render_prompt(routes_text, messages, max_len)) == want


def test_request_builder_on_plano_s_golden_conversation() -> None:
    routes = RP.render_routes([("Image generation", "generating image")])
    messages = RP.conversation_of(CONVERSATION, "chat_completions")
    body = json.loads(RP.RequestBuilder("Arch-Router", routes).build(messages, 2**62))
    assert body == {"model": "Arch-Router", "messages": [{"role": "user", "content": PLANO_EXPECTED}], "temperature": 0.01}
    # a description naming the placeholder: render_prompt fills it too, so no builder
    with pytest.raises(ValueError):
        RP.RequestBuilder("m", RP.render_routes([("r", "see {conversation}")]))
