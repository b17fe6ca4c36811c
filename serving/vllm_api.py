"""The OpenAI API of ``vllm serve``, served by vLLM's own protocol models and serving handlers
inside *our* FastAPI app, with our layer around them.

Why our app with vLLM's handlers, not vLLM's app (``build_app``) extended with our routes:
vLLM's app brings its own middlewares, exception handlers, auth (``--api-key``) and dozens of
routes (dev, sagemaker, anthropic, pooling, ...) that would bypass our API keys, quotas, caps,
body limit and metrics. Its handlers (``OpenAIServingChat``, ``OpenAIServingCompletion``,
``OpenAIServingResponses``, ``ServingTokenization``) are plain objects built by vLLM's own
``init_app_state`` from vLLM's own CLI parser, so every request field, default and error of
``vllm serve`` of the installed version is the same here. Our routes call them and add:

- a 400 naming any request field vLLM's protocol model does not know (``vllm serve`` would
  log and ignore it: a silent 200);
- our caps (RLHF_MAX_*), default max_tokens, quotas charged after vLLM renders the prompt
  (exact prompt tokens + n x max_tokens), via a hook on vLLM's ``OnlineRenderer``;
- ``response_id``, ``feedback_token`` and ``model_version`` on every choice/response, and the
  answer stored before the stream's ``[DONE]`` (Responses API: before ``response.completed``).

The version label comes from the engine, not from our bookkeeping: the engine stamps every
sampled token with its weight version (``update_weight_version`` during the swap's pause,
``CompletionOutput.weight_versions``), and ``EngineClientProxy`` (serving/vllm_bridge.py) records each engine request's
outputs as vLLM's handlers pull them. An answer whose tokens come from two versions (a long
generation kept across a bounded swap, see ``Engine.swap``) is labelled ``"v1+v2"``; the
training side drops such answers (their version is not a registry version).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from serving import feedback_token
from serving.errors import ApiError, describe_validation
from serving.vllm_bridge import CTX, Call, LabelledAnswer, RequestCtx
from serving.vllm_checks import check_caps, reject_unknown_fields, validate_body

log = logging.getLogger("rlhf.vllm_api")

def _prompt_key(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False,
                                     default=str).encode()).hexdigest()[:32]


def _sampling_record(params, n: int) -> dict[str, Any]:
    """The effective sampling setup (after vLLM applied the model's generation defaults)."""
    p = params
    rec = {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens,
           "n": n, "stop": list(p.stop or []) or None, "seed": p.seed,
           "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty}
    extra = {"top_k": (p.top_k, 0), "min_p": (p.min_p, 0.0),
             "repetition_penalty": (p.repetition_penalty, 1.0),
             "min_tokens": (p.min_tokens, 0), "ignore_eos": (p.ignore_eos, False),
             "logprobs": (p.logprobs, None)}
    for k, (v, default) in extra.items():
        if v not in (default, None, -1):
            rec[k] = v
    if getattr(p, "structured_outputs", None) is not None:
        rec["structured"] = True  # constrained decoding: not the policy's free distribution
    return rec


# ---- the routes' common flow -----------------------------------------------------------
@dataclass
class Flow:
    request: Request
    kind: str  # chat | completion | responses
    body: dict
    response_id: str
    ctx: RequestCtx
    messages: list | None = None
    prompts: list | None = None

    @property
    def settings(self):
        return self.request.app.state.settings

    def rid(self, index: int) -> str:
        return self.response_id if index == 0 else f"{self.response_id}_{index}"

    def n(self) -> int:
        return int(self.body.get("n") or 1)

    def token(self) -> str:
        total = max(1, len(self.ctx.calls)) * self.n()
        return feedback_token.issue(self.settings, self.response_id, total,
                                    self.ctx.principal, self.ctx.user)

    def locate(self, index: int) -> tuple[Call | None, int]:
        n = self.n()
        ci, i = divmod(index, n)
        return (self.ctx.calls[ci] if ci < len(self.ctx.calls) else None), i

    def label(self, index: int) -> str:
        call, i = self.locate(index)
        return call.label(i) if call else self.request.app.state.engine.version

    def overall_label(self) -> str:
        labels: list[str] = []
        for index in range(max(1, len(self.ctx.calls)) * self.n()):
            for v in self.label(index).split("+"):
                if v not in labels:
                    labels.append(v)
        return "+".join(labels)

    async def store(self) -> None:
        state = self.request.app.state
        answers = []
        n_prompt = n_completion = 0
        for ci, call in enumerate(self.ctx.calls):
            n_prompt += len(call.prompt_ids or [])
            for i in range(self.n()):
                index = ci * self.n() + i
                messages, prompt = self.messages, None
                if self.kind == "completion":
                    prompt = self._prompt_text(ci, call)
                    key = _prompt_key(["completion", prompt])
                else:
                    payload = ["chat", messages]
                    if self.body.get("tools"):
                        payload.append(self.body["tools"])
                    key = _prompt_key(payload)
                n_completion += call.tokens.get(i, 0)
                answers.append(LabelledAnswer(
                    principal=self.ctx.principal, account=self.ctx.account,
                    response_id=self.rid(index),
                    request_id=self.response_id, model_version=call.label(i),
                    kind="completion" if self.kind == "completion" else "chat",
                    messages=messages, prompt=prompt, prompt_key=key,
                    text=call.texts.get(i, ""), finish_reason=call.finish.get(i),
                    sampling=_sampling_record(call.params, self.n()), user=self.ctx.user,
                    completion_tokens=call.tokens.get(i, 0),
                    weight_versions=call.spans.get(i)))
        if answers:
            await state.answers.save(answers)  # buffers in memory if Redis is down
        state.metrics.tokens.labels("prompt").inc(n_prompt)
        state.metrics.tokens.labels("completion").inc(n_completion)

    def _prompt_text(self, ci: int, call: Call) -> str:
        p = self.prompts[ci] if self.prompts and ci < len(self.prompts) else None
        if isinstance(p, str):
            return p
        ids = p if isinstance(p, list) else call.prompt_ids
        try:
            return self.request.app.state.engine.tokenizer.decode(ids or [])
        except Exception:  # noqa: BLE001
            return json.dumps(ids)


def _ctx(request: Request) -> RequestCtx:
    caller = getattr(request.state, "caller", None)
    return RequestCtx(request.app.state, caller.principal if caller else None, None,
                      request.client.host if request.client else "?",
                      account=caller.account if caller else None)


def _check_model(body: dict, state) -> None:
    from serving.generation import check_model
    check_model(body.get("model"), state.settings, state.engine)
    body["model"] = state.settings.served_model_name  # a version id also names it


async def _run(handler_call, ctx: RequestCtx):
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    token = CTX.set(ctx)
    try:
        result = await handler_call()
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001  the answer `vllm serve` gives
        if ctx.error is not None:
            raise ctx.error from None
        result = create_error_response(exc)
    finally:
        CTX.reset(token)
    if ctx.error is not None:
        raise ctx.error
    return result


def _error_json(err) -> JSONResponse:
    return JSONResponse(err.model_dump(), status_code=err.error.code)


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def chat(request: Request, body: dict):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from serving.openai_schemas import ChatRequest

    state = request.app.state
    _check_model(body, state)
    validate_body(ChatRequest, body)  # our stricter checks (roles, ranges): clear 422s
    reject_unknown_fields(body, ChatCompletionRequest)
    check_caps(body, state.settings)
    req = validate_body(ChatCompletionRequest, body)
    if req.max_tokens is None and req.max_completion_tokens is None:
        req.max_tokens = state.settings.default_max_tokens  # capped by the context left
    hexid = uuid.uuid4().hex
    req.request_id = hexid
    ctx = _ctx(request)
    ctx.user = state.settings.pseudonymise(body.get("user"))
    flow = Flow(request, "chat", body, "resp_" + hexid, ctx, messages=body.get("messages"))
    result = await _run(lambda: state.vllm.openai_serving_chat.create_chat_completion(
        req, request), ctx)
    return await _finish(flow, result, "chat.completion")


async def completion(request: Request, body: dict):
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    state = request.app.state
    _check_model(body, state)
    reject_unknown_fields(body, CompletionRequest)
    check_caps(body, state.settings)
    if body.get("prompt") in (None, "", []):
        raise ApiError(422, "prompt must not be empty", code="invalid_body", param="prompt")
    req = validate_body(CompletionRequest, body)
    if req.max_tokens is None:
        req.max_tokens = state.settings.default_max_tokens
    hexid = uuid.uuid4().hex
    req.request_id = hexid
    ctx = _ctx(request)
    ctx.user = state.settings.pseudonymise(body.get("user"))
    p = body.get("prompt")
    prompts = [p] if isinstance(p, str) or (isinstance(p, list) and p
                                            and isinstance(p[0], int)) else list(p)
    flow = Flow(request, "completion", body, "resp_" + hexid, ctx, prompts=prompts)
    result = await _run(lambda: state.vllm.openai_serving_completion.create_completion(
        req, request), ctx)
    return await _finish(flow, result, "text_completion")


async def _finish(flow: Flow, result, obj: str):
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    if isinstance(result, ErrorResponse):
        return _error_json(result)
    if hasattr(result, "model_dump"):
        token = flow.token()
        await flow.store()  # stored before the client has the answer
        d = result.model_dump()
        d["id"] = flow.response_id
        for c in d.get("choices", []):
            c["response_id"] = flow.rid(c["index"])
            c["feedback_token"] = token
            c["model_version"] = flow.label(c["index"])
        d["model_version"] = d["system_fingerprint"] = flow.overall_label()
        return JSONResponse(d)
    return _stream(flow, result)


def _stream(flow: Flow, gen) -> StreamingResponse:
    token = flow.token()
    metrics = flow.request.app.state.metrics

    async def events():
        # vLLM may only call the engine while the stream is iterated (Responses API): the
        # context must be there too. This task serves this response only.
        CTX.set(flow.ctx)
        seen: set[int] = set()
        t0, first = time.perf_counter(), True
        stored = False
        async for raw in gen:
            if not raw.startswith("data: "):
                yield raw
                continue
            payload = raw[len("data: "):].strip()
            if payload == "[DONE]":
                if not stored:
                    stored = True
                    await flow.store()  # before [DONE]: a client that rates at once finds it
                yield raw
                continue
            try:
                d = json.loads(payload)
            except ValueError:
                yield raw
                continue
            if "error" in d and "choices" not in d:
                yield raw
                continue
            d["id"] = flow.response_id
            finishing = False
            for c in d.get("choices") or []:
                idx = c.get("index", 0)
                c["response_id"] = flow.rid(idx)
                if idx not in seen or c.get("finish_reason"):
                    seen.add(idx)
                    c["feedback_token"] = token
                if c.get("finish_reason"):
                    finishing = True
                    c["model_version"] = flow.label(idx)
                if first and (c.get("text") or (c.get("delta") or {}).get("content")):
                    first = False
                    metrics.ttft.observe(time.perf_counter() - t0)
            if finishing or d.get("usage"):
                d["model_version"] = d["system_fingerprint"] = flow.overall_label()
            yield _sse(d)
        if not stored:  # a generator that ended without [DONE] (client gone / error)
            await flow.store()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def responses(request: Request, body: dict):
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    state = request.app.state
    _check_model(body, state)
    reject_unknown_fields(body, ResponsesRequest)
    check_caps(body, state.settings)
    req = validate_body(ResponsesRequest, body)
    if req.max_output_tokens is None:
        req.max_output_tokens = state.settings.default_max_tokens
    ctx = _ctx(request)
    ctx.user = state.settings.pseudonymise(body.get("user"))
    inp = body.get("input")
    messages = ([{"role": "user", "content": inp}] if isinstance(inp, str) else inp) or []
    if body.get("instructions"):
        messages = [{"role": "system", "content": body["instructions"]}] + list(messages)
    flow = Flow(request, "responses", body | {"n": 1}, req.request_id, ctx, messages=messages)
    result = await _run(lambda: state.vllm.openai_serving_responses.create_responses(
        req, request), ctx)
    if isinstance(result, ErrorResponse):
        return _error_json(result)

    def decorate(d: dict) -> dict:
        d["response_id"] = flow.response_id
        d["feedback_token"] = flow.token()
        d["model_version"] = flow.overall_label()
        return d

    if hasattr(result, "model_dump"):
        await flow.store()
        return JSONResponse(decorate(result.model_dump(mode="json", by_alias=True)))

    async def events():  # the SSE framing of vLLM's responses router, plus our fields
        CTX.set(flow.ctx)  # vLLM calls the engine while the stream is iterated
        async for event in result:
            d = event.model_dump(mode="json", by_alias=True)
            if d.get("type") == "response.completed" and "response" in d:
                await flow.store()  # before the client learns it is complete
                decorate(d["response"])
            yield f"event: {d.get('type', 'unknown')}\ndata: {json.dumps(d)}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def tokenize(request: Request, body: dict, detokenize: bool = False):
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.entrypoints.serve.tokenize.protocol import (DetokenizeRequest,
                                                          TokenizeRequest)

    state = request.app.state
    _check_model(body, state)
    handler = state.vllm.serving_tokenization
    if detokenize:
        req = validate_body(DetokenizeRequest, body)
        result = await _run(lambda: handler.create_detokenize(req, request), _ctx(request))
    else:
        from pydantic import TypeAdapter
        try:
            req = TypeAdapter(TokenizeRequest).validate_python(body)
        except ValidationError as exc:
            message, param = describe_validation(exc.errors())
            raise ApiError(422, message, code="invalid_body", param=param) from None
        result = await _run(lambda: handler.create_tokenize(req, request), _ctx(request))
    if isinstance(result, ErrorResponse):
        return _error_json(result)
    return JSONResponse(result.model_dump())
