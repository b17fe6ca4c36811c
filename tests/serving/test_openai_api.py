"""The OpenAI-compatible routes through the official client, against the real engine."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from common.events import StoredAnswer
from common.keys import KEYS
from common.settings import Settings

HELLO = [{"role": "user", "content": "Hello! What is the capital of France?"}]


def rid(choice) -> str:
    return choice.model_extra["response_id"]


def stored(r, response_id: str) -> StoredAnswer:
    raw = r.get(KEYS.answer(response_id))
    assert raw, f"answer {response_id} not stored"
    return StoredAnswer.model_validate_json(raw)


def test_chat_completion_is_stored_with_version_and_pseudonymous_user(client, r):
    res = client.chat.completions.create(model="policy", messages=HELLO, max_tokens=12,
                                         temperature=0.7, top_p=0.9, seed=3, user="alice")
    assert res.object == "chat.completion" and res.model == "policy"
    choice = res.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert res.usage.completion_tokens > 0 and res.usage.prompt_tokens > 0
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    assert rid(choice) == res.id  # n=1: the completion id is the rateable id
    ans = stored(r, res.id)
    assert ans.model_version == res.model_extra["model_version"] == "v0"
    assert ans.text == choice.message.content and ans.kind == "chat"
    assert ans.messages == HELLO and ans.finish_reason == choice.finish_reason
    assert ans.sampling["temperature"] == 0.7 and ans.sampling["top_p"] == 0.9
    assert ans.sampling["seed"] == 3 and ans.sampling["max_tokens"] == 12
    assert ans.user == Settings(user_hmac_key="test-hmac").pseudonymise("alice") != "alice"
    assert ans.completion_tokens == res.usage.completion_tokens
    ttl = r.ttl(KEYS.answer(res.id))
    assert 29 * 86400 < ttl <= 30 * 86400  # default retention: 30 days


def test_n2_gives_two_rateable_answers_to_the_same_prompt(client, r):
    res = client.chat.completions.create(model="policy", messages=HELLO, max_tokens=8, n=2,
                                         temperature=1.0)
    assert [c.index for c in res.choices] == [0, 1]
    ids = [rid(c) for c in res.choices]
    assert len(set(ids)) == 2
    a, b = stored(r, ids[0]), stored(r, ids[1])
    assert a.prompt_key == b.prompt_key and a.request_id == b.request_id == res.id


def test_seed_and_greedy_are_reproducible_and_stop_is_applied(client):
    kw = dict(model="policy", messages=HELLO, max_tokens=16)
    x = client.chat.completions.create(temperature=1.0, seed=42, **kw)
    y = client.chat.completions.create(temperature=1.0, seed=42, **kw)
    assert x.choices[0].message.content == y.choices[0].message.content
    g = client.chat.completions.create(temperature=0.0, **kw).choices[0].message.content
    assert g == client.chat.completions.create(temperature=0.0, **kw).choices[0].message.content
    stop = g.strip()[:2]
    if stop:  # greedy output is deterministic, so it must stop before that text
        s = client.chat.completions.create(temperature=0.0, stop=[stop], **kw)
        assert stop not in s.choices[0].message.content
        assert s.choices[0].finish_reason == "stop"


def test_streaming_chat_chunks_usage_and_storage(client, r):
    stream = client.chat.completions.create(
        model="policy", messages=HELLO, max_tokens=10, temperature=0.0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    ans = stored(r, chunks[0].id)
    assert ans.text == text and ans.finish_reason == finishes[-1]
    assert ans.completion_tokens == chunks[-1].usage.completion_tokens
    # streaming and non-streaming give the same greedy text
    same = client.chat.completions.create(model="policy", messages=HELLO, max_tokens=10,
                                          temperature=0.0)
    assert same.choices[0].message.content == text


def test_streaming_n2_each_choice_is_stored(client, r):
    stream = client.chat.completions.create(model="policy", messages=HELLO, max_tokens=6,
                                            n=2, stream=True)
    texts, ids = {0: "", 1: ""}, {}
    for c in stream:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            ids[ch.index] = rid(ch)
    assert set(ids) == {0, 1}
    for i in (0, 1):
        assert stored(r, ids[i]).text == texts[i]


def test_completions_plain_and_streamed(client, r):
    res = client.completions.create(model="policy", prompt="The capital of France is",
                                    max_tokens=8, temperature=0.0)
    assert res.object == "text_completion" and res.choices[0].text
    ans = stored(r, rid(res.choices[0]))
    assert ans.kind == "completion" and ans.prompt == "The capital of France is"
    assert ans.text == res.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="policy", prompt="The capital of France is", max_tokens=8, temperature=0.0,
        stream=True) if c.choices)
    assert streamed == res.choices[0].text


def test_models_lists_the_served_version(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["policy"]
    assert models[0].model_extra["root"] == models[0].model_extra["version"] == "v0"


def test_prompt_longer_than_context_is_400_with_the_limit(client):
    long_text = "the quick brown fox " * 200  # >> 256 tokens (RLHF_MAX_MODEL_LEN)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="policy", max_tokens=4,
                                       messages=[{"role": "user", "content": long_text}])
    assert err.value.status_code == 400
    assert "maximum context length is 256 tokens" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="policy", prompt="hello", max_tokens=1000)
    assert "256" in err.value.message


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=HELLO, max_tokens=2)
    assert "gpt-9" in err.value.message


@pytest.mark.parametrize("body,needle", [
    ({"messages": HELLO, "temperature": 5}, "temperature"),
    ({"messages": HELLO, "n": 0}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ({"prompt_missing": True}, "messages"),
])
def test_malformed_chat_body_is_422_with_a_message(server, body, needle):
    res = httpx.post(server.v1 + "/chat/completions", json=body, headers=server.headers())
    assert res.status_code == 422
    assert needle in res.json()["error"]["message"]


def test_invalid_json_is_422(server):
    res = httpx.post(server.v1 + "/chat/completions", content=b"{not json",
                     headers=server.headers() | {"content-type": "application/json"})
    assert res.status_code == 422 and res.json()["error"]["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic abc"}])
def test_missing_or_wrong_api_key_is_401(server, headers):
    for method, path in [("post", "/chat/completions"), ("post", "/feedback"),
                         ("post", "/comparisons"), ("get", "/models")]:
        res = getattr(httpx, method)(server.v1 + path, headers=headers,
                                     **({"json": {}} if method == "post" else {}))
        assert res.status_code == 401, path
        assert "API key" in res.json()["error"]["message"]


def test_openai_client_with_wrong_key_gets_authentication_error(server):
    from openai import OpenAI
    bad = OpenAI(base_url=server.v1, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_health_and_metrics(server, client):
    client.chat.completions.create(model="policy", messages=HELLO, max_tokens=2)
    h = server.health()
    assert h["version"] == "v0" and h["status"] == "serving" and h["probe"]
    text = httpx.get(server.url + "/metrics").text
    assert 'rlhf_http_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'rlhf_tokens_total{kind="completion"}' in text
    assert "rlhf_http_request_seconds_bucket" in text
    assert json.loads(json.dumps(h))  # plain JSON
