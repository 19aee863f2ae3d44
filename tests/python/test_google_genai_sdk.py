"""The official `google-genai` SDK against a Switchyard gateway's Gemini-format proxy
(driven by tests/e2e/sdk.rs).

The SDK is unmodified: `http_options` points it at the proxy's base path, and it calls
`{base}/v1beta/models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`) with the
model named `<route>/<model>` (the slash is sent as is). The client's API key goes in
`x-goog-api-key`, which the route's dynamic selector forwards to Gemini.
"""
import json
import os

import pytest
from google import genai
from google.genai import errors, types

BASE_URL = os.environ["SWITCHYARD_GEMINI_BASE_URL"]
API_KEY = os.environ["SWITCHYARD_GEMINI_API_KEY"]
MODEL = os.environ["SWITCHYARD_GEMINI_MODEL"]
REPLY = os.environ["SWITCHYARD_GEMINI_REPLY"]
TOOL_ARGUMENTS = json.loads(os.environ["SWITCHYARD_TOOL_ARGUMENTS"])
TOOL_RESULT = "18C and sunny"

WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Weather in a city",
    parameters=types.Schema(
        type="OBJECT",
        properties={"city": types.Schema(type="STRING"), "unit": types.Schema(type="STRING")},
        required=["city"],
    ),
)


@pytest.fixture
def client():
    return genai.Client(
        api_key=API_KEY,
        http_options=types.HttpOptions(base_url=BASE_URL, api_version="v1beta"),
    )


def test_genai_generate_content(client):
    response = client.models.generate_content(
        model=MODEL,
        contents="Hello",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=100, temperature=0.2),
    )
    assert response.text == REPLY
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage.prompt_token_count > 0 and usage.candidates_token_count > 0
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert usage.cached_content_token_count == 2


def test_genai_streaming(client):
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="Hello"))
    assert len(chunks) >= 3
    assert "".join(c.text or "" for c in chunks) == REPLY
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_genai_function_calling_round_trip(client):
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    question = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])
    first = client.models.generate_content(model=MODEL, contents=[question], config=config)
    call = first.function_calls[0]
    assert call.name == "get_weather"
    assert call.args == TOOL_ARGUMENTS
    second = client.models.generate_content(
        model=MODEL,
        contents=[
            question,
            first.candidates[0].content,
            types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather", response={"output": TOOL_RESULT})]),
        ],
        config=config,
    )
    assert second.text == f"The tool answered: {TOOL_RESULT}"


def test_genai_streamed_function_call(client):
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    calls = [fc for chunk in client.models.generate_content_stream(model=MODEL, contents="Weather in Paris?", config=config)
             for fc in (chunk.function_calls or [])]
    assert [c.name for c in calls] == ["get_weather"]
    assert calls[0].args == TOOL_ARGUMENTS


def test_genai_chat_session_keeps_history(client):
    chat = client.chats.create(model=MODEL)
    assert chat.send_message("Hello").text == REPLY
    assert chat.send_message("And again?").text == REPLY
    assert len(chat.get_history()) == 4


def test_genai_errors_are_api_errors(client):
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(model="nope/gemini-2.5-flash", contents="Hi")
    assert err.value.code == 404
    assert err.value.status == "NOT_FOUND"
    # Gemini's own refusal (an unknown model) comes through as Gemini said it.
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(model=MODEL.split("/")[0] + "/gemini-0-nope", contents="Hi")
    assert err.value.code == 404
    assert "gemini-0-nope" in err.value.message


def test_genai_bad_key_is_refused_by_gemini():
    bad = genai.Client(api_key="AIza-wrong", http_options=types.HttpOptions(base_url=BASE_URL, api_version="v1beta"))
    with pytest.raises(errors.ClientError) as err:
        bad.models.generate_content(model=MODEL, contents="Hi")
    assert err.value.code == 400
    assert "API key not valid" in err.value.message
