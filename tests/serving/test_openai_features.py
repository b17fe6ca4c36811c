"""Issue 13: the OpenAI surface of `vllm serve` (vLLM's own protocol models and handlers) through
the official `openai` client, on a tiny-model server of this module (the shared one has no tool
parser: vLLM 0.32 needs one even for tool_choice="required"), with our layer on top
(response_id, feedback_token, model_version, stored answers)."""
from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from common.keys import KEYS
from serving.vllm_bridge import LabelledAnswer
from tests.helpers.server import running_server
from tests.serving.conftest import API_KEY

HELLO = [{"role": "user", "content": "What is the weather like in Paris?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def server(serving_env, tiny_model_dir, tmp_path_factory):
    # a random tiny model needs tight grammars to finish a JSON value within the context:
    # constrain tool arguments and allow no free whitespace (both plain `vllm serve` flags)
    env = serving_env | {"RLHF_TOOL_CALL_PARSER": "hermes", "RLHF_VLLM_SERVE_ARGS": (
                             "--tool-strict-level parameter --structured-outputs-config "
                             "'{\"backend\": \"xgrammar\", \"disable_any_whitespace\": true}'"),
                         "RLHF_DATA_DIR": str(tmp_path_factory.mktemp("features-data"))}
    with running_server(env, model_dir=tiny_model_dir,
                        log_dir=tmp_path_factory.mktemp("features-logs")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=60)


def stored(r, response_id: str) -> LabelledAnswer:
    raw = r.get(KEYS.answer(response_id))
    assert raw, f"answer {response_id} not stored"
    return LabelledAnswer.model_validate_json(raw)


def ours(choice_or_resp) -> dict:
    return choice_or_resp.model_extra


def test_tool_choice_required_returns_tool_calls(client, r):
    res = client.chat.completions.create(model="policy", messages=HELLO, tools=[WEATHER_TOOL],
                                         tool_choice="required", max_tokens=120,
                                         parallel_tool_calls=False,
                                         temperature=1.0, seed=7)
    choice = res.choices[0]
    assert choice.message.tool_calls, choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
    assert ours(choice)["response_id"] == res.id and ours(choice)["feedback_token"]
    ans = stored(r, res.id)
    assert ans.model_version == ours(res)["model_version"] == ours(choice)["model_version"]
    assert "get_weather" in ans.text  # the raw model output, what training needs


def test_named_tool_choice(client):
    res = client.chat.completions.create(
        model="policy", messages=HELLO, tools=[WEATHER_TOOL], max_tokens=120, temperature=1.0,
        seed=8,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = res.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")


def test_auto_tool_choice_is_parsed_by_the_configured_parser(client):
    # the tiny random model will rarely emit <tool_call>; the request must be accepted and
    # answered as vllm serve --tool-call-parser hermes does (content or tool_calls)
    res = client.chat.completions.create(model="policy", messages=HELLO, tools=[WEATHER_TOOL],
                                         tool_choice="auto", max_tokens=8)
    msg = res.choices[0].message
    assert msg.content is not None or msg.tool_calls


def test_tool_parser_setting_becomes_vllm_serve_flags():
    from common.settings import Settings
    from serving.vllm_bridge import serve_args
    args = serve_args(Settings(tool_call_parser="hermes",
                               vllm_serve_args="--response-role bot"), "/m")
    assert args.enable_auto_tool_choice and args.tool_call_parser == "hermes"
    assert args.response_role == "bot" and args.served_model_name == ["policy"]


def test_json_schema_is_respected(client, r):
    schema = {"type": "object", "properties": {"answer": {"type": "string",
                                                           "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    res = client.chat.completions.create(
        model="policy", messages=HELLO, max_tokens=120, temperature=1.0, seed=9,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "yn", "schema": schema}})
    data = json.loads(res.choices[0].message.content)
    assert data["answer"] in ("yes", "no") and set(data) == {"answer"}
    assert stored(r, res.id).sampling.get("structured") is True


def test_json_object_mode_parses(client):
    res = client.chat.completions.create(
        model="policy", messages=HELLO, max_tokens=120, temperature=1.0, seed=10,
        response_format={"type": "json_object"},
        extra_body={"structured_outputs": None})
    text = res.choices[0].message.content
    if res.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # a random tiny model may run out of tokens inside the object: still JSON-shaped
        assert text.lstrip().startswith("{")


def test_choice_and_regex_structured_outputs(client):
    res = client.chat.completions.create(
        model="policy", messages=HELLO, max_tokens=8, temperature=1.0, seed=1,
        extra_body={"structured_outputs": {"choice": ["sunny", "rainy"]}})
    assert res.choices[0].message.content in ("sunny", "rainy")
    res = client.completions.create(
        model="policy", prompt="Three digits:", max_tokens=8, temperature=1.0, seed=2,
        extra_body={"structured_outputs": {"regex": "[0-9]{3}"}})
    assert re.fullmatch(r"[0-9]{3}", res.choices[0].text)


def test_chat_logprobs_present(client):
    res = client.chat.completions.create(model="policy", messages=HELLO, max_tokens=5,
                                         temperature=0.0, logprobs=True, top_logprobs=2)
    content = res.choices[0].logprobs.content
    assert len(content) == res.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_completion_logprobs_and_echo(client, r):
    prompt = "The capital of France is"
    res = client.completions.create(model="policy", prompt=prompt, max_tokens=4,
                                    temperature=0.0, logprobs=2, echo=True)
    choice = res.choices[0]
    assert choice.text.startswith(prompt)
    assert choice.logprobs.tokens and choice.logprobs.top_logprobs
    ans = stored(r, ours(choice)["response_id"])
    assert ans.prompt == prompt and ans.text == choice.text[len(prompt):]  # generated only


def test_vllm_extra_sampling_params(client, r):
    res = client.chat.completions.create(
        model="policy", messages=HELLO, max_tokens=12, temperature=1.0, seed=5,
        extra_body={"ignore_eos": True, "min_tokens": 12, "top_k": 5})
    assert res.usage.completion_tokens == 12 and res.choices[0].finish_reason == "length"
    ans = stored(r, res.id)
    assert ans.sampling["ignore_eos"] is True and ans.sampling["top_k"] == 5


def test_stream_options_and_our_fields_in_a_stream(client, r):
    chunks = list(client.chat.completions.create(
        model="policy", messages=HELLO, max_tokens=6, n=2, stream=True, temperature=1.0,
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    finishing = [c for ch in chunks for c in ch.choices if c.finish_reason]
    assert {c.index for c in finishing} == {0, 1}
    for c in finishing:
        assert ours(c)["feedback_token"] and ours(c)["model_version"] == "v0"
        assert stored(r, ours(c)["response_id"]).model_version == "v0"
    assert chunks[-1].usage.completion_tokens > 0
    assert ours(chunks[-1])["model_version"] == "v0"
    assert all(c.usage is not None for c in chunks)  # continuous_usage_stats


def test_responses_api_answer_is_stored(client, r):
    resp = client.responses.create(model="policy", input="Hello there!", max_output_tokens=8,
                                   temperature=0.0)
    assert resp.status in ("completed", "incomplete") and resp.output_text
    extra = ours(resp)
    assert extra["model_version"] == "v0" and extra["feedback_token"]
    ans = stored(r, extra["response_id"])
    assert ans.text == resp.output_text and ans.messages[-1]["content"] == "Hello there!"
    # rateable like any answer
    fb = httpx.post(client.base_url.join("feedback").__str__(), timeout=10, json={
        "response_id": extra["response_id"], "rating": "up",
        "feedback_token": extra["feedback_token"]})
    assert fb.status_code == 200, fb.text


def test_responses_api_stream(client, r):
    events = list(client.responses.create(model="policy", input="Hi", max_output_tokens=6,
                                          stream=True))
    done = [e for e in events if e.type == "response.completed"]
    assert done and done[0].response.model_extra["model_version"] == "v0"
    assert stored(r, done[0].response.model_extra["response_id"])


@pytest.mark.parametrize("extra", [{"frobnicate": 1}, {"modalities": ["text", "audio"]},
                                   {"store": True}])
def test_unsupported_parameter_is_400_naming_it(client, extra):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="policy", messages=HELLO, max_tokens=2,
                                       extra_body=extra)
    (name,) = extra
    assert name in err.value.message and err.value.body["param"] == name


def test_tokenize_and_detokenize(server):
    h = server.headers()
    tok = httpx.post(server.url + "/tokenize", headers=h, timeout=10,
                     json={"model": "policy", "prompt": "Hello world"}).json()
    assert tok["count"] == len(tok["tokens"]) > 0
    back = httpx.post(server.url + "/detokenize", headers=h, timeout=10,
                      json={"model": "policy", "tokens": tok["tokens"]}).json()
    assert back["prompt"] == "Hello world"
    assert httpx.post(server.url + "/tokenize", json={"prompt": "x"}).status_code == 401


def test_metrics_have_ours_and_vllm_engine_metrics(server, client):
    client.chat.completions.create(model="policy", messages=HELLO, max_tokens=2)
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert "rlhf_http_requests_total" in text
    assert "vllm:" in text  # vLLM's engine metrics (e.g. vllm:num_requests_running)
