"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/responses,
/v1/models, /tokenize, /detokenize.

With a real engine the requests are served by vLLM's own protocol models and handlers
(serving/vllm_api.py explains why and how). The hand-written path below (``_legacy_*``) is
only used when the app has no vLLM serving state, i.e. with a stub engine (the trust tests
drive the real app in-process that way, without starting vLLM).

Extra fields (ignored by the official client, documented in docs/serving.md):
- every choice (and stream chunk choice) has ``response_id``, the id to rate in /v1/feedback,
  and ``feedback_token`` (streams: on the chunk that opens or finishes a choice), the signed
  proof that lets the answer's audience rate it without an API key (serving/feedback_token.py);
- responses carry ``model_version`` (also in ``system_fingerprint``): the exact version that
  produced the answer;
- /v1/models lists ``id: <served name>`` ("policy") with ``root`` and ``version`` = version id.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from serving import feedback_token, vllm_api
from serving.auth import require_api_key
from serving.errors import ApiError, error_responses
from serving.generation import (Prepared, prepare_chat, prepare_completion, sampling_params,
                                stored_answer, usage)
from serving.openai_schemas import MAX_N, ChatRequest, CompletionRequest
from serving.quotas import SHARED

log = logging.getLogger("rlhf.openai")
router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])


def _envelope(request: Request, prep: Prepared, version: str, obj: str) -> dict[str, Any]:
    return {"id": prep.request_id, "object": obj, "created": prep.created,
            "model": request.app.state.settings.served_model_name,
            "system_fingerprint": version, "model_version": version}


async def _admit(request: Request, prep: Prepared) -> str:
    """Bind the request to its caller and charge its quotas (429 over a limit); returns the
    feedback_token of its choices."""
    state = request.app.state
    caller = getattr(request.state, "caller", None)
    prep.principal = caller.principal if caller else None
    prep.account = caller.account if caller else None
    if state.quotas is not None:
        # per account: the keys of one customer share one budget (common/identity.py)
        key = prep.account or f"ip:{request.client.host if request.client else '?'}"
        cost = len(prep.prompt_ids) + prep.sampling["n"] * prep.max_tokens
        checks = [("rate_limit_generation_user", prep.user, 1, "requests per end user")] \
            if prep.user else []
        checks += [("rate_limit_generation_key", key, 1, f"requests per API key{SHARED}"),
                   ("rate_limit_generation_tokens_key", key, cost,
                    f"tokens per API key{SHARED} (prompt + n x max_tokens)")]
        await state.quotas.charge(checks)
    return feedback_token.issue(state.settings, prep.request_id, prep.sampling["n"],
                                prep.principal, prep.user)


def _count_tokens(request: Request, n_prompt: int, n_completion: int) -> None:
    m = request.app.state.metrics
    m.tokens.labels("prompt").inc(n_prompt)
    m.tokens.labels("completion").inc(n_completion)


async def _generate_final(request: Request, prep: Prepared):
    engine = request.app.state.engine
    params = sampling_params(prep, stream=False)
    final = None
    async with engine.serving() as version:
        async for out in engine.generate(prep.prompt_ids, params, prep.request_id):
            final = out
    outputs = sorted(final.outputs, key=lambda o: o.index)
    answers = [stored_answer(prep, version, o.index, o.text, o.finish_reason, len(o.token_ids))
               for o in outputs]
    await request.app.state.answers.save(answers)  # buffers in memory if Redis is down
    n_completion = sum(len(o.token_ids) for o in outputs)
    _count_tokens(request, len(prep.prompt_ids), n_completion)
    return version, outputs, usage(len(prep.prompt_ids), n_completion)


def _sse(data: dict) -> str:
    # ASCII-only JSON: model text may contain U+2028 or NEL, which some SSE clients treat as
    # line breaks (seen: httpx aiter_lines cut a chunk in two)
    return f"data: {json.dumps(data)}\n\n"


def _stream(request: Request, prep: Prepared, chat: bool, include_usage: bool, token: str):
    engine = request.app.state.engine
    params = sampling_params(prep, stream=True)
    obj = "chat.completion.chunk" if chat else "text_completion"

    def choice(index: int, text: str, finish: str | None, first: bool = False) -> dict:
        c: dict[str, Any] = {"index": index, "logprobs": None, "finish_reason": finish,
                             "response_id": prep.response_id(index)}
        if first or finish:  # not on every delta: it would triple the bytes of a stream
            c["feedback_token"] = token
        if chat:
            c["delta"] = ({"role": "assistant", "content": text} if first
                          else ({"content": text} if text else {}))
        else:
            c["text"] = text
        return c

    async def events():
        texts: dict[int, str] = {}
        tokens: dict[int, int] = {}
        finish: dict[int, str | None] = {}
        t0, first_token = time.perf_counter(), True
        try:
            async with engine.serving() as version:
                env = _envelope(request, prep, version, obj)
                if include_usage:
                    env["usage"] = None
                n = prep.sampling["n"]
                if chat:
                    yield _sse(env | {"choices": [choice(i, "", None, True) for i in range(n)]})
                async for out in engine.generate(prep.prompt_ids, params, prep.request_id):
                    for o in out.outputs:
                        texts[o.index] = texts.get(o.index, "") + o.text
                        tokens[o.index] = tokens.get(o.index, 0) + len(o.token_ids)
                        if o.finish_reason:
                            finish[o.index] = o.finish_reason
                        if first_token and o.token_ids:
                            first_token = False
                            request.app.state.metrics.ttft.observe(time.perf_counter() - t0)
                        if o.text or o.finish_reason:
                            yield _sse(env | {"choices": [choice(o.index, o.text,
                                                                  o.finish_reason)]})
            # stored before [DONE]: a client that rates right after the stream finds it
            answers = [stored_answer(prep, version, i, texts.get(i, ""), finish.get(i),
                                     tokens.get(i, 0)) for i in range(n)]
            await request.app.state.answers.save(answers)
            n_completion = sum(tokens.values())
            _count_tokens(request, len(prep.prompt_ids), n_completion)
            if include_usage:
                yield _sse(env | {"choices": [],
                                  "usage": usage(len(prep.prompt_ids), n_completion)})
        except Exception as exc:  # headers are sent: report in-band, as OpenAI does
            log.exception("stream %s failed", prep.request_id)
            yield _sse({"error": {"message": f"generation failed: {exc}",
                                  "type": "server_error", "param": None, "code": None}})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(422, "request body is not valid JSON", code="invalid_body") from None
    if not isinstance(body, dict):
        raise ApiError(422, "request body must be a JSON object", code="invalid_body")
    return body


def _legacy_parse(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError([e | {"loc": ("body", *e["loc"])}
                                      for e in exc.errors()]) from None


_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "description": "the request body of `vllm serve` "
               "(same vLLM version): any field its protocol model knows"}}}}}
_ERRORS = error_responses(400, 401, 404, 413, 422, 429)
_GEN_ERRORS = error_responses(400, 401, 404, 413, 422, 429, 503)


# ---- the documented request bodies of /v1/chat/completions and /v1/completions ---------------
# The fields every engine serves (vLLM's handlers, and the stub-engine path below), with this
# deployment's caps (RLHF_MAX_*; above one: 400). Any other field: 400 unsupported_parameter
# (vLLM's handlers accept more of their protocol model's fields; they are not documented here).
# A schema-valid request can still get 400 context_length_exceeded (prompt tokens + max_tokens
# over the model's context, which depends on the prompt's tokens), 404 (an unknown `model`),
# 429 (quotas) or 503 (Redis down).
def _null(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _common_fields(s) -> dict:
    limit = s.max_tokens_limit
    stop = {"type": "string", "maxLength": s.max_stop_chars}
    return {
        "model": _null({"type": "string", "description": "the served model name (or the "
                        "served version id); 404 for another"}),
        "temperature": _null({"type": "number", "minimum": 0, "maximum": 2}),
        "top_p": _null({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        "max_tokens": _null({"type": "integer", "minimum": 1, "maximum": limit,
                             "description": "RLHF_MAX_TOKENS_LIMIT; default "
                             "RLHF_DEFAULT_MAX_TOKENS (capped by the context left)"}),
        "n": {"type": "integer", "minimum": 1, "maximum": min(s.max_n, MAX_N), "default": 1,
              "description": "choices (RLHF_MAX_N)"},
        "stop": _null({"anyOf": [stop, {"type": "array", "items": stop,
                                        "maxItems": s.max_stop_sequences}]}),
        "seed": _null({"type": "integer"}),
        "presence_penalty": _null({"type": "number", "minimum": -2, "maximum": 2}),
        "frequency_penalty": _null({"type": "number", "minimum": -2, "maximum": 2}),
        "stream": {"type": "boolean", "default": False},
        "stream_options": _null({"type": "object", "properties": {
            "include_usage": {"type": "boolean", "default": False}}}),
        "user": _null({"type": "string", "maxLength": 256,
                       "description": "the end user (stored only as its HMAC pseudonym)"}),
    }


def chat_body_schema(s) -> dict:
    cap = s.max_message_chars
    part = {"type": "object", "required": ["type", "text"], "properties": {
        "type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
        "description": "a text part (the parts of a message count together against "
                       "RLHF_MAX_MESSAGE_CHARS)"}
    message = {"type": "object", "required": ["role"], "properties": {
        "role": {"type": "string",
                 "enum": ["system", "user", "assistant", "developer", "tool"]},
        "content": _null({"anyOf": [{"type": "string", "maxLength": cap},
                                    {"type": "array", "items": part}]})}}
    props = _common_fields(s) | {
        "messages": {"type": "array", "minItems": 1, "maxItems": s.max_messages,
                     "items": message, "description": "RLHF_MAX_MESSAGES messages of at most "
                     "RLHF_MAX_MESSAGE_CHARS characters"},
        "max_completion_tokens": _null({"type": "integer", "minimum": 1,
                                        "maximum": s.max_tokens_limit})}
    return {"type": "object", "required": ["messages"], "properties": props,
            "additionalProperties": False}


def completion_body_schema(s) -> dict:
    text = {"type": "string", "minLength": 1, "maxLength": s.max_message_chars}
    props = _common_fields(s) | {"prompt": {"anyOf": [text, {
        "type": "array", "items": text, "minItems": 1, "maxItems": 1}],
        "description": "one prompt (a string, or a list of one string)"}}
    return {"type": "object", "required": ["prompt"], "properties": props,
            "additionalProperties": False}


def _doc(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": schema}}}}


_GEN_OK = {200: {"description": "the completion; with `stream: true` a server-sent event "
                 "stream of chunks ending with `data: [DONE]`",
                 "content": {"application/json": {"schema": {"type": "object"}},
                             "text/event-stream": {"schema": {  # one event
                                 "type": "object", "required": ["data"], "properties": {
                                     "event": {"type": "string"},
                                     "data": {"type": "string", "description": "a JSON "
                                              "chunk (or an in-band error), then [DONE]"}}}}}}}


def _documented_settings():
    """The caps the schema states: this process's settings (RLHF_* environment), as
    create_app's default."""
    from common.settings import Settings
    try:
        return Settings()
    except Exception:  # noqa: BLE001  an unreadable environment: the defaults
        return Settings.model_construct()


_DOC_SETTINGS = _documented_settings()
_CHAT_DOC = _doc(chat_body_schema(_DOC_SETTINGS))
_COMPLETION_DOC = _doc(completion_body_schema(_DOC_SETTINGS))


_JSON_TYPES = {"string": lambda v: isinstance(v, str),
               "boolean": lambda v: isinstance(v, bool),
               "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
               or (isinstance(v, float) and v.is_integer()),
               "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
               "null": lambda v: v is None, "array": lambda v: isinstance(v, list),
               "object": lambda v: isinstance(v, dict)}


def _type_error(value, schema: dict, where: str) -> str | None:
    """Where `value` has a JSON type its documented schema does not allow (types only: the
    ranges and lengths are pydantic's and the caps' checks), or None."""
    if "anyOf" in schema:
        errors = [_type_error(value, s, where) for s in schema["anyOf"]]
        return None if None in errors else errors[0]
    if "type" in schema and not _JSON_TYPES[schema["type"]](value):
        return where
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            if bad := _type_error(v, schema["items"], f"{where}.{i}"):
                return bad
    if isinstance(value, dict):
        for k, sub in schema.get("properties", {}).items():
            if k in value and (bad := _type_error(value[k], sub, f"{where}.{k}")):
                return bad
    return None


def _legacy_checks(body: dict, schema: dict, settings) -> None:
    """The stub-engine path enforces the documented body as vLLM's handlers do: a field it
    does not serve is a 400 (not silently ignored), each max-tokens field is capped, flags
    are JSON booleans."""
    unknown = sorted(set(body) - set(schema["properties"]))
    if unknown:
        raise ApiError(400, f"unsupported parameter{'s' if len(unknown) > 1 else ''}: "
                       f"{', '.join(unknown)} (not supported by this server; it would be "
                       "ignored)", code="unsupported_parameter", param=unknown[0])
    for name, value in body.items():  # JSON types as documented (pydantic would take
        where = _type_error(value, schema["properties"][name], name)  # false, "0.5", 1)
        if where:
            raise ApiError(422, f"{where}: wrong JSON type", code="invalid_body", param=where)
    for name in ("max_completion_tokens", "max_tokens"):
        v = body.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v > settings.max_tokens_limit:
            raise ApiError(400, f"{name}={v} is above this server's limit of "
                           f"{settings.max_tokens_limit} (RLHF_MAX_TOKENS_LIMIT)",
                           code="request_too_large", param=name)


def _text_parts(req: ChatRequest) -> None:
    for i, m in enumerate(req.messages):
        for p in m.content if isinstance(m.content, list) else []:
            if p.get("type") == "text" and not isinstance(p.get("text"), str):
                raise ApiError(422, f"messages.{i}.content: a text part needs a string "
                               "`text`", code="invalid_body", param=f"messages.{i}.content")


@router.post("/chat/completions", responses=_GEN_OK | _GEN_ERRORS, openapi_extra=_CHAT_DOC)
async def chat_completions(request: Request):
    body = await _json_body(request)
    if getattr(request.app.state, "vllm", None) is not None:
        return await vllm_api.chat(request, body)
    settings = request.app.state.settings
    _legacy_checks(body, chat_body_schema(settings), settings)
    req = _legacy_parse(ChatRequest, body)
    _text_parts(req)
    return await _legacy_chat(req, request)


@router.post("/completions", responses=_GEN_OK | _GEN_ERRORS, openapi_extra=_COMPLETION_DOC)
async def completions(request: Request):
    body = await _json_body(request)
    if getattr(request.app.state, "vllm", None) is not None:
        return await vllm_api.completion(request, body)
    settings = request.app.state.settings
    _legacy_checks(body, completion_body_schema(settings), settings)
    return await _legacy_completions(_legacy_parse(CompletionRequest, body), request)


@router.post("/responses", responses=_ERRORS, openapi_extra=_BODY)
async def responses(request: Request):
    body = await _json_body(request)
    if getattr(request.app.state, "vllm", None) is None:
        raise ApiError(501, "the Responses API needs the vLLM engine", code="not_implemented")
    return await vllm_api.responses(request, body)


async def _legacy_chat(body: ChatRequest, request: Request):
    state = request.app.state
    prep = prepare_chat(body, state.engine, state.settings)
    token = await _admit(request, prep)
    if body.stream:
        return _stream(request, prep, True,
                       bool(body.stream_options and body.stream_options.include_usage), token)
    version, outputs, use = await _generate_final(request, prep)
    choices = [{"index": o.index, "response_id": prep.response_id(o.index),
                "feedback_token": token,
                "message": {"role": "assistant", "content": o.text},
                "finish_reason": o.finish_reason, "logprobs": None} for o in outputs]
    return _envelope(request, prep, version, "chat.completion") | {"choices": choices,
                                                                    "usage": use}


async def _legacy_completions(body: CompletionRequest, request: Request):
    state = request.app.state
    prep = prepare_completion(body, state.engine, state.settings)
    token = await _admit(request, prep)
    if body.stream:
        return _stream(request, prep, False,
                       bool(body.stream_options and body.stream_options.include_usage), token)
    version, outputs, use = await _generate_final(request, prep)
    choices = [{"index": o.index, "response_id": prep.response_id(o.index),
                "feedback_token": token, "text": o.text,
                "finish_reason": o.finish_reason, "logprobs": None} for o in outputs]
    return _envelope(request, prep, version, "text_completion") | {"choices": choices,
                                                                    "usage": use}


@router.get("/models")
async def models(request: Request):
    state = request.app.state
    version = state.engine.version
    return {"object": "list", "data": [{
        "id": state.settings.served_model_name, "object": "model",
        "created": int(state.started_at), "owned_by": "rlhf-live",
        "root": version, "version": version,
        "max_model_len": state.engine.max_model_len}]}


# vLLM serves these at the root, not under /v1; same here (API key required).
root_router = APIRouter(tags=["openai"], dependencies=[Depends(require_api_key)])


@root_router.post("/tokenize", responses=_ERRORS, openapi_extra=_BODY)
async def tokenize(request: Request):
    if getattr(request.app.state, "vllm", None) is None:
        raise ApiError(501, "tokenize needs the vLLM engine", code="not_implemented")
    return await vllm_api.tokenize(request, await _json_body(request))


@root_router.post("/detokenize", responses=_ERRORS, openapi_extra=_BODY)
async def detokenize(request: Request):
    if getattr(request.app.state, "vllm", None) is None:
        raise ApiError(501, "detokenize needs the vLLM engine", code="not_implemented")
    return await vllm_api.tokenize(request, await _json_body(request), detokenize=True)
