"""From an OpenAI-style request to vLLM outputs and stored answers (shared by chat and
completions, streaming or not).

Response ids: the completion ``id`` is ``resp_<hex>``; choice 0 has that same id as its
``response_id`` and choice i > 0 has ``resp_<hex>_<i>``. So for n=1 the completion id is directly
usable in /v1/feedback, and for n>1 each choice carries its own ``response_id``.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from serving.answer_store import ServedAnswer
from serving.errors import ApiError
from serving.openai_schemas import ChatRequest, CompletionRequest


@dataclass
class Prepared:
    kind: str  # "chat" | "completion"
    request_id: str
    prompt_ids: list[int]
    prompt_key: str
    messages: list[dict[str, Any]] | None
    prompt: str | None
    max_tokens: int
    sampling: dict[str, Any]
    user: str | None
    created: int = field(default_factory=lambda: int(time.time()))
    principal: str | None = None
    """Pseudonym of the API key that asked (set by the route): it owns the answers."""
    account: str | None = None
    """Pseudonym of that key's account (set by the route): its quotas, recorded on the answers."""

    def response_id(self, index: int) -> str:
        return self.request_id if index == 0 else f"{self.request_id}_{index}"


def _prompt_key(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
                          ).hexdigest()[:32]


def check_model(req_model: str | None, settings, engine) -> None:
    if req_model and req_model not in (settings.served_model_name, engine.version):
        raise ApiError(404, f"model {req_model!r} not found; this server serves "
                       f"{settings.served_model_name!r} (version {engine.version})",
                       code="model_not_found", param="model")


def _bad(message: str, param: str, code: str = "request_too_large") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def check_caps(req, settings) -> None:
    """The deployment's caps on one request (each a setting): 400 with the limit named."""
    if req.n > settings.max_n:
        raise _bad(f"n={req.n} is above this server's limit of {settings.max_n} choices "
                   "(RLHF_MAX_N)", "n")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if len(stops) > settings.max_stop_sequences:
        raise _bad(f"{len(stops)} stop sequences; at most {settings.max_stop_sequences} "
                   "(RLHF_MAX_STOP_SEQUENCES)", "stop")
    for s in stops:
        if len(s) > settings.max_stop_chars:
            raise _bad(f"a stop sequence has {len(s)} characters; at most "
                       f"{settings.max_stop_chars} (RLHF_MAX_STOP_CHARS)", "stop")
    requested = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if requested is not None and requested > settings.max_tokens_limit:
        raise _bad(f"max_tokens={requested} is above this server's limit of "
                   f"{settings.max_tokens_limit} (RLHF_MAX_TOKENS_LIMIT)", "max_tokens")


def _check_chars(text: str, settings, param: str) -> None:
    if len(text) > settings.max_message_chars:
        raise _bad(f"{param} has {len(text)} characters; at most {settings.max_message_chars} "
                   "per message (RLHF_MAX_MESSAGE_CHARS)", param)


def _max_tokens(engine, n_prompt: int, requested: int | None, default: int) -> int:
    limit = engine.max_model_len
    if n_prompt >= limit:
        raise ApiError(400, f"This model's maximum context length is {limit} tokens; your "
                       f"prompt has {n_prompt} tokens. Shorten the prompt.",
                       code="context_length_exceeded", param="messages")
    if requested is not None and n_prompt + requested > limit:
        raise ApiError(400, f"This model's maximum context length is {limit} tokens; you "
                       f"requested {n_prompt + requested} tokens ({n_prompt} in the prompt, "
                       f"{requested} for the completion). Reduce the prompt or max_tokens.",
                       code="context_length_exceeded", param="max_tokens")
    return requested if requested is not None else min(default, limit - n_prompt)


def prepare_chat(req: ChatRequest, engine, settings) -> Prepared:
    check_model(req.model, settings, engine)
    check_caps(req, settings)
    if len(req.messages) > settings.max_messages:
        raise _bad(f"{len(req.messages)} messages; at most {settings.max_messages} per request "
                   "(RLHF_MAX_MESSAGES)", "messages")
    try:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    except ValueError as exc:
        raise ApiError(422, str(exc), param="messages") from exc
    for i, m in enumerate(messages):
        _check_chars(m["content"], settings, f"messages[{i}].content")
    ids = engine.count_tokens(engine.apply_chat_template(messages))
    max_tokens = _max_tokens(engine, len(ids), req.max_completion_tokens or req.max_tokens,
                             settings.default_max_tokens)
    return Prepared("chat", "resp_" + uuid.uuid4().hex, ids, _prompt_key(["chat", messages]),
                    messages, None, max_tokens, req.sampling_record(max_tokens),
                    settings.pseudonymise(req.user))


def prepare_completion(req: CompletionRequest, engine, settings) -> Prepared:
    check_model(req.model, settings, engine)
    check_caps(req, settings)
    _check_chars(req.prompt, settings, "prompt")
    ids = engine.count_tokens(req.prompt)
    if not ids:
        raise ApiError(422, "prompt must not be empty", param="prompt")
    max_tokens = _max_tokens(engine, len(ids), req.max_tokens, settings.default_max_tokens)
    return Prepared("completion", "resp_" + uuid.uuid4().hex, ids,
                    _prompt_key(["completion", req.prompt]), None, req.prompt, max_tokens,
                    req.sampling_record(max_tokens), settings.pseudonymise(req.user))


def sampling_params(prep: Prepared, stream: bool):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    s = prep.sampling
    return SamplingParams(
        n=s["n"], temperature=s["temperature"], top_p=s["top_p"], max_tokens=prep.max_tokens,
        stop=s["stop"], seed=s["seed"], presence_penalty=s["presence_penalty"],
        frequency_penalty=s["frequency_penalty"],
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY)


def stored_answer(prep: Prepared, version: str, index: int, text: str,
                  finish_reason: str | None, n_tokens: int) -> ServedAnswer:
    return ServedAnswer(principal=prep.principal, account=prep.account,
        response_id=prep.response_id(index), request_id=prep.request_id,
        model_version=version, kind=prep.kind, messages=prep.messages, prompt=prep.prompt,
        prompt_key=prep.prompt_key, text=text, finish_reason=finish_reason,
        sampling=prep.sampling, user=prep.user, completion_tokens=n_tokens)


def usage(n_prompt: int, n_completion: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion}
