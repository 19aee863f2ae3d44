"""The official `anthropic` SDK against a Switchyard gateway (driven by tests/e2e/sdk.rs).

The SDK is unmodified: only its base URL points at a `format: anthropic` proxy. The proxy
routes to Anthropic (passed through), to OpenAI (translated) and to Claude on Bedrock
(InvokeModel with the Messages body); each test runs against each route, so the SDK cannot
tell which provider served it.
"""
import json
import os

import anthropic
import pytest

BASE_URL = os.environ["SWITCHYARD_ANTHROPIC_BASE_URL"]
ROUTES = json.loads(os.environ["SWITCHYARD_ANTHROPIC_ROUTES"])
TOOL_ARGUMENTS = json.loads(os.environ["SWITCHYARD_TOOL_ARGUMENTS"])
THINKING_TEXT = os.environ["SWITCHYARD_THINKING_TEXT"]
TOOL_RESULT = "18C and sunny"
TOOL_REPLY = f"The tool answered: {TOOL_RESULT}"

TOOLS = [{
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}]
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


@pytest.fixture
def client():
    # The gateway holds the upstream keys; the client's own key is not forwarded.
    return anthropic.Anthropic(base_url=BASE_URL, api_key="unused-by-the-gateway", max_retries=0)


@pytest.fixture(params=ROUTES, ids=[r["id"] for r in ROUTES])
def route(request):
    return request.param


NATIVE = [r for r in ROUTES if r["native"]]


@pytest.fixture(params=NATIVE, ids=[r["id"] for r in NATIVE])
def native_route(request):
    return request.param


def test_message(client, route):
    raw = client.messages.with_raw_response.create(
        model=route["model"],
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hello"}],
        metadata={"user_id": "user-42"},
    )
    assert raw.headers["x-switchyard-route"] == route["id"]
    assert raw.headers["x-switchyard-model"] == route["served"]
    message = raw.parse()
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == route["reply"]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens >= 0
    assert message.usage.output_tokens > 0
    assert message.usage.cache_read_input_tokens == 2
    total_input = (message.usage.input_tokens + message.usage.cache_read_input_tokens
                   + message.usage.cache_creation_input_tokens)
    assert total_input > 2


def test_stream_helper_accumulates_the_final_message(client, route):
    with client.messages.stream(
        model=route["model"],
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == route["reply"]
    assert final.content[0].text == route["reply"]
    assert final.stop_reason == "end_turn"
    # Usage split across message_start and message_delta, combined by the SDK.
    assert final.usage.output_tokens > 0
    assert final.usage.cache_read_input_tokens == 2
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens > 2


def test_tool_round_trip(client, route):
    message = client.messages.create(model=route["model"], max_tokens=200, tools=TOOLS, messages=[QUESTION])
    assert message.stop_reason == "tool_use"
    call = next(b for b in message.content if b.type == "tool_use")
    assert call.name == "get_weather"
    assert call.input == TOOL_ARGUMENTS
    answer = client.messages.create(
        model=route["model"],
        max_tokens=200,
        tools=TOOLS,
        messages=[
            QUESTION,
            {"role": "assistant", "content": message.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": TOOL_RESULT}]},
        ],
    )
    assert answer.content[0].text == TOOL_REPLY
    assert answer.stop_reason == "end_turn"


def test_streamed_tool_call_arrives_whole(client, route):
    with client.messages.stream(model=route["model"], max_tokens=200, tools=TOOLS, messages=[QUESTION]) as stream:
        partial = "".join(e.partial_json for e in stream if e.type == "input_json")
        final = stream.get_final_message()
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.input == TOOL_ARGUMENTS
    assert json.loads(partial) == TOOL_ARGUMENTS
    assert final.stop_reason == "tool_use"


def test_thinking_round_trips_with_its_signature(client, native_route):
    """Extended thinking: the signed thinking block comes back unchanged at the head of the
    assistant turn that continues the tool loop (the mocks refuse it otherwise)."""
    thinking = {"type": "enabled", "budget_tokens": 1024}
    with client.messages.stream(
        model=native_route["model"], max_tokens=2048, thinking=thinking, tools=TOOLS, messages=[QUESTION]
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "tool_use"]
    assert final.content[0].thinking == THINKING_TEXT
    assert final.content[0].signature
    call = final.content[1]
    answer = client.messages.create(
        model=native_route["model"],
        max_tokens=2048,
        thinking=thinking,
        tools=TOOLS,
        messages=[
            QUESTION,
            {"role": "assistant", "content": final.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": TOOL_RESULT}]},
        ],
    )
    assert [b.type for b in answer.content] == ["thinking", "text"]
    assert answer.content[1].text == TOOL_REPLY


def test_errors_are_anthropic_errors(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-route/x", max_tokens=10, messages=[QUESTION])
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as caught:
        translated = next(r for r in ROUTES if not r["native"])
        client.messages.create(model=translated["model"], max_tokens=10, messages=[{"role": "robot", "content": "x"}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "messages[0].role" in caught.value.body["error"]["message"]


def test_count_tokens(client):
    native = next(r for r in ROUTES if r["id"] == "anthropic")
    count = client.messages.count_tokens(
        model=native["model"], system="Be brief.", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert count.input_tokens == 2 + 2 + 3  # the mock counts words, plus 3
    translated = next(r for r in ROUTES if not r["native"])
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.count_tokens(model=translated["model"], messages=[QUESTION])
    assert "count_tokens" in caught.value.body["error"]["message"]
