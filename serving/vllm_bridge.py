"""The engine side of serving/vllm_api.py: how vLLM's own OpenAI handlers are built on our
engine, and what we learn from each engine request they make.

- ``build_state``: vLLM's handlers (chat, completions, responses, tokenization) from vLLM's own
  ``init_app_state`` and CLI parser (``serve_args``), on ``EngineClientProxy`` — our AsyncLLM as
  the handlers see it, recording every engine request's outputs (texts, finish reasons, the
  weight-version spans of the tokens) into the calling HTTP request's ``RequestCtx``.
- ``_hook_renderer``: quotas charged right after vLLM renders a prompt (exact token counts),
  before any engine request is made.
"""
from __future__ import annotations

import shlex
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from serving.answer_store import ServedAnswer
from serving.errors import ApiError
from serving.quotas import SHARED


class LabelledAnswer(ServedAnswer):
    """A stored answer plus the engine's weight-version spans of its tokens."""

    weight_versions: list[tuple[str, int, int]] | None = None
    """(version, first token, end token) spans as the engine reported them."""


# ---- per-request context (set by our route, read by the proxy and the renderer hook) -----
@dataclass
class Call:
    """One engine request (one prompt; n choices)."""

    params: Any
    delta: bool
    admitted_version: str
    prompt_ids: list[int] | None = None
    texts: dict[int, str] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)
    spans: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)

    def record(self, out) -> None:
        if self.prompt_ids is None and getattr(out, "prompt_token_ids", None) is not None:
            self.prompt_ids = list(out.prompt_token_ids)
        for o in out.outputs:
            i = o.index
            if self.delta:
                self.texts[i] = self.texts.get(i, "") + o.text
                self.tokens[i] = self.tokens.get(i, 0) + len(o.token_ids)
            else:
                self.texts[i], self.tokens[i] = o.text, len(o.token_ids)
            if o.finish_reason:
                self.finish[i] = o.finish_reason
            if o.weight_versions:
                self.spans[i] = [(s.version, s.start, s.end) for s in o.weight_versions]

    def label(self, i: int) -> str:
        spans = self.spans.get(i)
        if not spans:  # no token sampled (or no label reported): the version it was given to
            return self.admitted_version
        versions: list[str] = []
        for v, _, _ in spans:
            if v not in versions:
                versions.append(v)
        return "+".join(versions)


@dataclass
class RequestCtx:
    state: Any
    principal: str | None
    user: str | None
    client_host: str
    calls: list[Call] = field(default_factory=list)
    error: ApiError | None = None
    charged: bool = False
    account: str | None = None
    """The key's account: names the generation quotas, recorded on the answers."""


CTX: ContextVar[RequestCtx | None] = ContextVar("rlhf_request_ctx", default=None)


class EngineClientProxy:
    """vLLM's ``EngineClient`` (our AsyncLLM) as the handlers see it; ``generate`` records
    each engine request's outputs into the calling request's context. Everything else is the
    AsyncLLM's own attribute."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine.llm, name)

    def generate(self, prompt, sampling_params, request_id, *args, **kwargs):
        ctx = CTX.get()
        call = None
        if ctx is not None:
            from vllm.sampling_params import RequestOutputKind
            call = Call(sampling_params,
                        getattr(sampling_params, "output_kind", None) == RequestOutputKind.DELTA,
                        self._engine.version)
            ctx.calls.append(call)
        return self._generate(call, prompt, sampling_params, request_id, args, kwargs)

    async def _generate(self, call, prompt, sampling_params, request_id, args, kwargs):
        async for out in self._engine.llm.generate(prompt, sampling_params, request_id,
                                                   *args, **kwargs):
            if call is not None:
                call.record(out)
            yield out


# ---- building vLLM's serving state --------------------------------------------------------
def serve_args(settings, model_path: str):
    """`vllm serve` arguments from vLLM's own parser (its defaults, its validation)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    argv = ["--model", model_path, "--served-model-name", settings.served_model_name]
    if settings.tool_call_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", settings.tool_call_parser]
    argv += shlex.split(settings.vllm_serve_args)
    try:
        return make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    except SystemExit:  # argparse printed why; do not let it end the server silently
        raise ValueError(f"vLLM refused the serve arguments {argv[4:]} (RLHF_TOOL_CALL_PARSER "
                         "/ RLHF_VLLM_SERVE_ARGS); see the message above") from None


async def build_state(engine, settings):
    """vLLM's handlers (chat, completions, responses, tokenization) on our engine."""
    from starlette.datastructures import State

    from vllm.entrypoints.launchers.api_server.app_state import init_app_state

    client = EngineClientProxy(engine)
    state = State()
    args = serve_args(settings, engine.path)
    tasks = await engine.llm.get_supported_tasks()
    await init_app_state(client, state, args, tasks)
    _hook_renderer(state.online_renderer, engine)
    return state


def _hook_renderer(renderer, engine) -> None:
    """Charge quotas right after vLLM renders a prompt (exact token counts), before any
    engine request is made. Errors are kept in the context: the route raises them."""
    for name in ("render_chat", "render_completion", "render_responses"):
        orig = getattr(renderer, name, None)
        if orig is None:
            continue

        async def hooked(request, *a, _orig=orig, **kw):
            result = await _orig(request, *a, **kw)
            ctx = CTX.get()
            if ctx is not None and not ctx.charged and not _is_error(result):
                ctx.charged = True
                try:
                    await _charge(ctx, request, _prompt_lengths(result), engine.max_model_len)
                except ApiError as exc:
                    ctx.error = exc
                    raise
            return result

        setattr(renderer, name, hooked)


def _is_error(obj) -> bool:
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    return isinstance(obj, ErrorResponse)


def _prompt_lengths(result) -> list[int]:
    if isinstance(result, tuple):  # chat: (conversation, engine_inputs)
        inputs = result[-1]
    elif isinstance(result, list):
        inputs = result
    else:
        inputs = getattr(result, "engine_inputs", None) or []
        if not isinstance(inputs, list):
            inputs = [inputs]
    out = []
    for ei in inputs:
        ids = ei.get("prompt_token_ids") if isinstance(ei, dict) else None
        out.append(len(ids) if ids is not None else 0)
    return out or [0]


async def _charge(ctx: RequestCtx, request, prompt_lens: list[int], max_model_len: int):
    quotas = ctx.state.quotas
    if quotas is None:
        return
    n = getattr(request, "n", None) or 1
    asked = (getattr(request, "max_completion_tokens", None)
             or getattr(request, "max_tokens", None)
             or getattr(request, "max_output_tokens", None))
    cost = 0
    for plen in prompt_lens:
        left = max(0, max_model_len - plen)
        cost += plen + n * (min(asked, left) if asked else left)
    key = ctx.account or f"ip:{ctx.client_host}"   # the keys of one account share a budget
    checks = [("rate_limit_generation_user", ctx.user, 1, "requests per end user")] \
        if ctx.user else []
    checks += [("rate_limit_generation_key", key, 1, f"requests per API key{SHARED}"),
               ("rate_limit_generation_tokens_key", key, cost,
                f"tokens per API key{SHARED} (prompt + n x max_tokens)")]
    await quotas.charge(checks)
