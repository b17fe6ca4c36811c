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
from serving.openai_schemas import ChatRequest, CompletionRequest

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
    if state.quotas is not None:
        key = prep.principal or f"ip:{request.client.host if request.client else '?'}"
        cost = len(prep.prompt_ids) + prep.sampling["n"] * prep.max_tokens
        checks = [("rate_limit_generation_user", prep.user, 1, "requests per end user")] \
            if prep.user else []
        checks += [("rate_limit_generation_key", key, 1, "requests per API key"),
                   ("rate_limit_generation_tokens_key", key, cost,
                    "tokens per API key (prompt + n x max_tokens)")]
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


@router.post("/chat/completions", responses=_ERRORS, openapi_extra=_BODY)
async def chat_completions(request: Request):
    body = await _json_body(request)
    if getattr(request.app.state, "vllm", None) is not None:
        return await vllm_api.chat(request, body)
    return await _legacy_chat(_legacy_parse(ChatRequest, body), request)


@router.post("/completions", responses=_ERRORS, openapi_extra=_BODY)
async def completions(request: Request):
    body = await _json_body(request)
    if getattr(request.app.state, "vllm", None) is not None:
        return await vllm_api.completion(request, body)
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
