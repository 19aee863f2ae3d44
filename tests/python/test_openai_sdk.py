"""The official `openai` SDK against a Switchyard gateway (driven by tests/e2e/sdk.rs).

The SDK is unmodified: only its base URL points at the gateway's proxy.
"""
import os

import urllib.request
import openai
import pytest

BASE_URL = os.environ["SWITCHYARD_BASE_URL"]
MODEL = os.environ["SWITCHYARD_MODEL"]
SERVED = os.environ["SWITCHYARD_SERVED_MODEL"]
REPLY = os.environ["SWITCHYARD_EXPECTED_REPLY"]


@pytest.fixture
def client():
    # The gateway holds the upstream key; the client's own key is not forwarded.
    return openai.OpenAI(base_url=BASE_URL, api_key="unused-by-the-gateway", max_retries=0)


def test_openai_chat_completion(client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}]
    )
    assert raw.headers["x-switchyard-route"] == "openai"
    assert raw.headers["x-switchyard-model"] == SERVED
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens > 0


def test_openai_chat_completion_streaming(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_openai_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert f"openai/{SERVED}" in ids, ids


def test_openai_unknown_route_without_fallback_is_an_openai_error(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope/gpt", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 404
    assert err.value.response.headers["x-switchyard-route"] == "none"


def test_openai_missing_model_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="", messages=[{"role": "user", "content": "Hi"}])


def test_openai_wrong_base_path_is_not_found():
    other = openai.OpenAI(base_url=BASE_URL.replace("/support/", "/elsewhere/"), api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])


def test_openai_health_endpoints():
    root = BASE_URL.split("/support")[0]
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"{root}{path}", timeout=5) as resp:
            assert resp.status == 200
