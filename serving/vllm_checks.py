"""Request checks of the OpenAI routes served by vLLM's handlers (serving/vllm_api.py), on the
raw JSON body before vLLM sees it: unknown fields are a 400 naming them (vLLM would ignore
them: a silent 200), our size caps (RLHF_MAX_*) are a 400, and a body that fails a protocol
model is a 422 in our error shape."""
from __future__ import annotations

import json

from pydantic import ValidationError

from serving.errors import ApiError, describe_validation

# request fields handled by our layer rather than passed to vLLM
OURS = {"user"}


def reject_unknown_fields(body: dict, model_cls, extra_ok: set[str] = frozenset()) -> None:
    names = set()
    for fname, f in model_cls.model_fields.items():
        names.add(fname)
        if f.alias:
            names.add(f.alias)
    unknown = sorted(set(body) - names - OURS - set(extra_ok))
    if unknown:
        raise ApiError(400, f"unsupported parameter{'s' if len(unknown) > 1 else ''}: "
                       f"{', '.join(unknown)} (not supported by this server's vLLM "
                       f"{model_cls.__name__}; it would be ignored)",
                       code="unsupported_parameter", param=unknown[0])


def check_caps(body: dict, settings) -> None:
    def bad(msg, param):
        return ApiError(400, msg, code="request_too_large", param=param)

    n = body.get("n") or 1
    if isinstance(n, int) and n > settings.max_n:
        raise bad(f"n={n} is above this server's limit of {settings.max_n} choices "
                  "(RLHF_MAX_N)", "n")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if isinstance(stops, list):
        if len(stops) > settings.max_stop_sequences:
            raise bad(f"{len(stops)} stop sequences; at most {settings.max_stop_sequences} "
                      "(RLHF_MAX_STOP_SEQUENCES)", "stop")
        for s in stops:
            if isinstance(s, str) and len(s) > settings.max_stop_chars:
                raise bad(f"a stop sequence has {len(s)} characters; at most "
                          f"{settings.max_stop_chars} (RLHF_MAX_STOP_CHARS)", "stop")
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = body.get(name)
        if isinstance(v, int) and v > settings.max_tokens_limit:
            raise bad(f"{name}={v} is above this server's limit of "
                      f"{settings.max_tokens_limit} (RLHF_MAX_TOKENS_LIMIT)", name)
    msgs = body.get("messages")
    if isinstance(msgs, list):
        if len(msgs) > settings.max_messages:
            raise bad(f"{len(msgs)} messages; at most {settings.max_messages} per request "
                      "(RLHF_MAX_MESSAGES)", "messages")
        for i, m in enumerate(msgs):
            c = m.get("content") if isinstance(m, dict) else None
            text = c if isinstance(c, str) else json.dumps(c or "")
            _chars(text, settings, f"messages[{i}].content")
    for name in ("prompt", "input", "instructions"):
        v = body.get(name)
        if v is not None:
            _chars(v if isinstance(v, str) else json.dumps(v), settings, name)


def _chars(text: str, settings, param: str) -> None:
    if len(text) > settings.max_message_chars:
        raise ApiError(400, f"{param} has {len(text)} characters; at most "
                       f"{settings.max_message_chars} per message (RLHF_MAX_MESSAGE_CHARS)",
                       code="request_too_large", param=param)


def validate_body(model_cls, body: dict):
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        message, param = describe_validation(exc.errors())
        raise ApiError(422, message, code="invalid_body", param=param) from None


