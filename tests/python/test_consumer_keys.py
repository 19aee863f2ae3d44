"""Consumer keys with the official SDKs, unmodified (driven by tests/e2e/governance.rs).

`openai` takes the consumer key as its `api_key` (sent as `Authorization: Bearer`), and
`google-genai` as its API key (sent as `x-goog-api-key`); the gateway's routes hold the
provider keys. A wrong key is the SDK's AuthenticationError, a spent rate limit its
RateLimitError with the gateway's `Retry-After`.
"""
import os

import openai
import pytest
from google import genai
from google.genai import errors, types

OPENAI_BASE_URL = os.environ["SWITCHYARD_BASE_URL"]
GEMINI_BASE_URL = os.environ["SWITCHYARD_GEMINI_BASE_URL"]
KEY = os.environ["SWITCHYARD_CONSUMER_KEY"]
LIMITED_KEY = os.environ["SWITCHYARD_LIMITED_KEY"]


def test_openai_sdk_with_a_consumer_key():
    client = openai.OpenAI(base_url=OPENAI_BASE_URL, api_key=KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="openai/x", messages=[{"role": "user", "content": "Hello"}]
    )
    assert raw.headers["x-switchyard-route"] == "openai"
    assert raw.parse().choices[0].message.content
    stream = client.chat.completions.create(
        model="openai/x", messages=[{"role": "user", "content": "Hello"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_openai_sdk_with_a_wrong_key():
    client = openai.OpenAI(base_url=OPENAI_BASE_URL, api_key="sy_" + "Z" * 32, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="openai/x", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"


def test_openai_sdk_rate_limited():
    client = openai.OpenAI(base_url=OPENAI_BASE_URL, api_key=LIMITED_KEY, max_retries=0)
    client.chat.completions.create(model="openai/x", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="openai/x", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_google_genai_sdk_with_a_consumer_key():
    client = genai.Client(
        api_key=KEY, http_options=types.HttpOptions(base_url=GEMINI_BASE_URL, api_version="v1beta")
    )
    reply = client.models.generate_content(model="g/gemini-2.5-flash", contents="Hello")
    assert reply.text
    wrong = genai.Client(
        api_key="sy_" + "Z" * 32,
        http_options=types.HttpOptions(base_url=GEMINI_BASE_URL, api_version="v1beta"),
    )
    with pytest.raises(errors.ClientError) as e:
        wrong.models.generate_content(model="g/gemini-2.5-flash", contents="Hello")
    assert e.value.code == 401
