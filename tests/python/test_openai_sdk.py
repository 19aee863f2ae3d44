"""The official `openai` SDK against a Switchyard gateway (driven by tests/e2e/sdk.rs).

The SDK is unmodified: only its base URL points at the gateway's proxy. One proxy routes to
every provider (OpenAI passed through; Azure, Gemini and Bedrock mocks reached through
translation where their API differs); each test runs against each route, so the SDK cannot
tell which provider served it.
"""
import json
import os
import urllib.request

import openai
import pytest

BASE_URL = os.environ["SWITCHYARD_BASE_URL"]
ROUTES = json.loads(os.environ["SWITCHYARD_ROUTES"])
TOOL_ARGUMENTS = json.loads(os.environ["SWITCHYARD_TOOL_ARGUMENTS"])
TOOL_RESULT = "18C and sunny"
TOOL_REPLY = f"The tool answered: {TOOL_RESULT}"

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
    "required": ["city"],
}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}]


@pytest.fixture
def client():
    # The gateway holds the upstream keys; the client's own key is not forwarded.
    return openai.OpenAI(base_url=BASE_URL, api_key="unused-by-the-gateway", max_retries=0)


@pytest.fixture(params=ROUTES, ids=[r["id"] for r in ROUTES])
def route(request):
    return request.param


def test_openai_chat_completion(client, route):
    raw = client.chat.completions.with_raw_response.create(
        model=route["model"],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=100,
        temperature=0.2,
    )
    assert raw.headers["x-switchyard-route"] == route["id"]
    assert raw.headers["x-switchyard-model"] == route["served"]
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == route["reply"]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.prompt_tokens_details.cached_tokens == 2


def test_openai_chat_completion_streaming(client, route):
    stream = client.chat.completions.create(
        model=route["model"],
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == route["reply"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_chat_streaming_without_usage_gets_none(client, route):
    chunks = list(client.chat.completions.create(
        model=route["model"], messages=[{"role": "user", "content": "Hello"}], stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == route["reply"]


def test_openai_chat_tool_call_round_trip(client, route):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=route["model"], messages=messages, tools=CHAT_TOOLS)
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT})
    second = client.chat.completions.create(model=route["model"], messages=messages, tools=CHAT_TOOLS)
    assert second.choices[0].message.content == TOOL_REPLY


def test_openai_chat_streamed_tool_call(client, route):
    stream = client.chat.completions.create(
        model=route["model"],
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=CHAT_TOOLS,
        stream=True,
    )
    name, arguments, call_id, finish = "", "", None, None
    for chunk in stream:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            assert tc.index == 0
            call_id = tc.id or call_id
            name += (tc.function.name or "") if tc.function else ""
            arguments += (tc.function.arguments or "") if tc.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and call_id
    assert json.loads(arguments) == TOOL_ARGUMENTS
    assert finish == "tool_calls"


def test_openai_responses(client, route):
    response = client.responses.create(
        model=route["model"], instructions="Be brief.", input="Hello", max_output_tokens=100)
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == route["reply"]
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


def test_openai_responses_streaming(client, route):
    with client.responses.stream(model=route["model"], input="Hello") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == route["reply"]
    assert final.output_text == route["reply"]
    assert final.usage.total_tokens > 0


def test_openai_responses_raw_event_sequence(client, route):
    events = list(client.responses.create(model=route["model"], input="Hello", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_openai_responses_tool_call_round_trip(client, route):
    first = client.responses.create(model=route["model"], input="What is the weather in Paris?", tools=RESPONSES_TOOLS)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == TOOL_ARGUMENTS
    second = client.responses.create(
        model=route["model"],
        tools=RESPONSES_TOOLS,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": TOOL_RESULT},
        ],
    )
    assert second.output_text == TOOL_REPLY


def test_openai_models_list(client):
    ids = [m.id for m in client.models.list()]
    for r in ROUTES:
        assert f"{r['id']}/{r['served']}" in ids, ids


def test_openai_unknown_route_without_fallback_is_an_openai_error(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope/gpt", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 404
    assert err.value.response.headers["x-switchyard-route"] == "none"


def test_openai_missing_model_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="", messages=[{"role": "user", "content": "Hi"}])


def test_openai_unsupported_parameter_is_a_bad_request_naming_it(client):
    translated = [r for r in ROUTES if r["translated"]]
    assert translated
    for r in translated:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=r["model"], messages=[{"role": "user", "content": "Hi"}], n=2)
        assert err.value.body["param"] == "n", err.value.body
        assert err.value.code == "unsupported_parameter"


def test_openai_wrong_base_path_is_not_found():
    other = openai.OpenAI(base_url=BASE_URL.replace("/support/", "/elsewhere/"), api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=ROUTES[0]["model"], messages=[{"role": "user", "content": "Hi"}])


def test_openai_health_endpoints():
    root = BASE_URL.split("/support")[0]
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"{root}{path}", timeout=5) as resp:
            assert resp.status == 200
