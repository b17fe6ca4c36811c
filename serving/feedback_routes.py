"""``POST /v1/feedback`` (thumbs), ``POST /v1/feedback/batch`` and ``POST /v1/comparisons``.

Who may rate, and as whom (issue 12, "votes bound to the answer's audience"):
- with the answer's ``feedback_token`` (no API key needed: a browser widget posts it directly)
  the rater is the one in the token: the answer's end user, else the key that asked for it;
- with an API key and no token, a key may only rate answers it produced (403 otherwise); the
  rater is the answer's end user, else the key's pseudonym;
- a ``user`` field names the rater only for trusted back-end keys (``RLHF_TRUSTED_API_KEYS``,
  or everyone while the API is open); anyone else sending one gets 403.
One vote per rater and target (the latest wins). Quotas: events per rater and per key (429 +
Retry-After; the keys of one account share the per-key budget). Idempotency: ``Idempotency-Key`` header or ``idempotency_key`` body field, scoped
to the key (and, for token callers, the rater); a retry returns the first result with
``duplicate: true``. A batch is all-or-nothing, idempotency conflicts included.
"""
from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from redis.exceptions import RedisError

from common.events import FeedbackEvent
from common.identity import accounts_by_principal
from serving import feedback_token
from serving.answer_store import ServedAnswer, StoreUnavailable
from serving.auth import Caller, authenticate, missing_key_or_token
from serving.errors import ApiError, describe_validation, error_responses
from serving.feedback_store import Accepted, PendingEvent, body_hash
from serving.quotas import SHARED

# No router-level dependencies and no typed body parameters here on purpose: FastAPI's
# dependency solving was ~30% of the CPU of a feedback call (profiled), and ingest is the
# hottest path. Each route authenticates first, then validates the raw body with pydantic.
router = APIRouter(prefix="/v1", tags=["feedback"])
RETRY_AFTER_S = "2"
FEEDBACK_ERRORS = error_responses(401, 403, 404, 413, 422, 429, 503)
MAX_BATCH = 1000
POST_PATHS = ("/v1/feedback", "/v1/feedback/batch", "/v1/comparisons")
"""Answered on the direct path (serving/direct_routes.py): they take only the request."""
TokenStr = Annotated[str, StringConstraints(min_length=1, max_length=feedback_token.MAX_LEN)]
ResponseId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
TOKEN_FIELD = Field(default=None, min_length=1, max_length=feedback_token.MAX_LEN,
                    description="the answer's feedback_token: rate without an API key")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ThumbIn(_Strict):
    response_id: str = Field(min_length=1, max_length=200)
    rating: Literal["up", "down"]
    feedback_token: str | None = TOKEN_FIELD
    user: str | None = Field(default=None, max_length=256,
                             description="rater; trusted back-end keys only")
    comment: str | None = Field(default=None, max_length=4000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class ComparisonIn(_Strict):
    response_ids: list[ResponseId] = Field(
        min_length=2, max_length=2, json_schema_extra={"uniqueItems": True},
        description="two different answers to the same prompt (422 otherwise)")
    choice: Literal["a", "b", "tie", "both_bad"]
    feedback_token: TokenStr | Annotated[list[TokenStr], Field(min_length=1, max_length=2)] \
        | None = Field(default=None, description="the answers' feedback_token (one per answer "
                                                 "if they come from two requests)")
    user: str | None = Field(default=None, max_length=256,
                             description="rater; trusted back-end keys only")
    comment: str | None = Field(default=None, max_length=4000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class ThumbBatchIn(_Strict):
    items: list[ThumbIn] = Field(min_length=1, max_length=MAX_BATCH)


def _inline_refs(node, defs: dict):
    """The schema with its `$defs` references replaced by their definitions: embedded in
    the OpenAPI document, `#/$defs/...` would point at the document root (unresolvable)."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs) | {
                k: v for k, v in node.items() if k != "$ref"}
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _body_doc(model: type[BaseModel]) -> dict:
    """Keep the request schema in /docs although the body is parsed by hand."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline_refs(schema, schema.get("$defs", {}))}}}}


def _has_token(raw: bytes) -> bool:
    """Cheap pre-check for a caller without a key: does the body carry any feedback_token?"""
    if b"feedback_token" not in raw:
        return False
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        return any(isinstance(i, dict) and i.get("feedback_token") for i in body["items"])
    return isinstance(body, dict) and bool(body.get("feedback_token"))


async def _auth_and_parse(request: Request, model: type[BaseModel]):
    """(caller or None for a token-only caller, parsed body). 401 before 422: a caller with
    neither key nor token learns nothing about the body."""
    caller = authenticate(request, key_optional=True)
    raw = await request.body()
    if caller is None and not _has_token(raw):
        raise missing_key_or_token()
    try:
        return caller, model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        message, param = describe_validation(exc.errors())
        raise ApiError(422, message, code="invalid_body", param=param) from None


def _unavailable(exc: Exception) -> ApiError:
    return ApiError(503, f"feedback store unavailable, retry later ({exc})", "server_error",
                    "store_unavailable", headers={"Retry-After": RETRY_AFTER_S})


def _forbidden(message: str, code: str, param: str | None = None) -> ApiError:
    return ApiError(403, message, "permission_error", code, param)


@dataclass
class Rater:
    rater: str
    principal: str | None
    """The key the vote is charged to (and idempotency keys are scoped to)."""
    idem_scope: str
    account: str | None = None
    """That key's account: names the per-key feedback quota."""


def _resolve(request: Request, caller: Caller | None, ids: list[str], user: str | None,
             tokens: list[str], answers: list[ServedAnswer]) -> Rater:
    """Who rates `ids`, after checking the caller may: see the module docstring."""
    settings = request.app.state.settings
    if user is not None and not (caller and caller.trusted):
        raise _forbidden(
            "`user` on feedback is accepted only from trusted back-end keys "
            "(RLHF_TRUSTED_API_KEYS): the rater is the one in the answer's feedback_token, "
            "or the answer's own end user", "user_not_allowed", "user")
    if tokens:
        claims = [feedback_token.verify(settings, t) for t in tokens]
        first = claims[0]
        if any((c.principal, c.user) != (first.principal, first.user) for c in claims[1:]):
            raise _forbidden("the feedback_tokens were issued to different callers or users",
                             "feedback_token_mismatch", "feedback_token")
        for rid in ids:
            if not any(c.covers(rid) for c in claims):
                raise _forbidden(f"the feedback_token does not cover response_id {rid!r}: a "
                                 "token rates only the answers it was returned with",
                                 "feedback_token_mismatch", "feedback_token")
        if caller and caller.has_key and not caller.open and caller.principal != first.principal:
            raise _forbidden("this feedback_token was issued to another API key",
                             "not_your_answer", "feedback_token")
        rater = settings.pseudonymise(user) if user else first.rater
        # the token names the key; its account is today's (a token holds no account claim)
        account = accounts_by_principal(settings).get(first.principal, first.principal)
        return Rater(rater, first.principal, f"{first.principal or '-'}|{rater}", account)
    if caller is None:  # token-only caller (a batch item without a token)
        raise missing_key_or_token()
    if not caller.open:
        for a in answers:
            if getattr(a, "principal", None) != caller.principal:
                raise _forbidden(f"response_id {a.response_id!r} was produced for another API "
                                 "key; a key may only rate answers it produced (or send the "
                                 "answer's feedback_token)", "not_your_answer", "response_id")
    if user:
        rater = settings.pseudonymise(user)
    else:
        stored = {a.user for a in answers}
        rater = (stored.pop() if len(stored) == 1 and None not in stored
                 else caller.principal or "anonymous")
    return Rater(rater, caller.principal, caller.principal or "-", caller.account)


def _idem_key(header: str | None, body: str | None, scope: str) -> str | None:
    if header and body and header != body:
        raise ApiError(422, "Idempotency-Key header and idempotency_key field differ",
                       code="idempotency_key_mismatch", param="idempotency_key")
    key = header or body
    if key is not None and not (0 < len(key) <= 200):
        raise ApiError(422, "Idempotency-Key must be 1-200 characters",
                       param="idempotency_key")
    return f"{scope}:{key}" if key else None


async def _lookup(request: Request, ids: list[str]) -> dict[str, ServedAnswer]:
    try:
        found = await request.app.state.answers.get_many(ids)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from exc
    missing = [i for i in ids if found.get(i) is None]
    if missing:
        # An answer a server buffered while Redis was down (serving/answer_store.py) reaches
        # Redis only when that server flushes it: another process (`rlhf ingest`, another
        # replica) misses it until then. While a flush is under way say so: retry, not gone.
        try:
            flushing = await request.app.state.answers.being_flushed()
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        if flushing:
            raise ApiError(503, f"response_id {missing[0]!r} is not in the answer store yet: "
                           "answers held during a Redis outage are being written; retry",
                           "server_error", "answer_not_written_yet", "response_id",
                           headers={"Retry-After": RETRY_AFTER_S})
        raise ApiError(404, f"unknown response_id {missing[0]!r} (never returned, or expired)",
                       code="response_not_found", param="response_id")
    return found  # type: ignore[return-value]


async def _charge(request: Request, raters: list[Rater]) -> None:
    """Quotas: per rater first (narrowest), then per key; one unit per event."""
    quotas = request.app.state.quotas
    if quotas is None:
        return
    client = request.client.host if request.client else "?"
    per_rater = Counter(r.rater for r in raters)
    per_key = Counter(r.account or f"ip:{client}" for r in raters)
    await quotas.charge(
        [("rate_limit_feedback_rater", k, n, "feedback events per rater")
         for k, n in per_rater.items()]
        + [("rate_limit_feedback_key", k, n, f"feedback events per API key{SHARED}")
           for k, n in per_key.items()])


async def _record(request: Request, items: list[PendingEvent],
                  batch: bool = False) -> list[Accepted]:
    try:
        results = await request.app.state.feedback.add(items)
    except RedisError as exc:
        raise _unavailable(exc) from exc
    conflicts = [k for k, res in enumerate(results) if res.status == "conflict"]
    if conflicts:
        where = f"items[{conflicts[0]}]: " if batch else ""
        rest = "; nothing of this batch was recorded" if batch else ""
        raise ApiError(422, f"{where}this idempotency key was already used with a different "
                       f"body{rest}", code="idempotency_key_reused",
                       param=f"items.{conflicts[0]}.idempotency_key" if batch
                       else "idempotency_key")
    metrics = request.app.state.metrics
    for it, res in zip(items, results):
        if res.status == "dup":
            metrics.feedback_duplicates.inc()
        else:
            metrics.feedback.labels(it.event.kind).inc()
    return results


def _reply(item: PendingEvent, res: Accepted) -> dict:
    return {"object": "feedback.event", "event_id": res.event_id, "stream_id": res.stream_id,
            "duplicate": res.status == "dup", "kind": item.event.kind,
            "rater": item.event.rater, "target": item.event.target}


def _tokens(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    tokens = [value] if isinstance(value, str) else value
    if not 1 <= len(tokens) <= 2:
        raise ApiError(422, "feedback_token: one token, or a list of one or two",
                       code="invalid_body", param="feedback_token")
    return tokens


def _thumb_event(request: Request, body: ThumbIn, answer: ServedAnswer,
                 caller: Caller | None, header_key: str | None) -> tuple[PendingEvent, Rater]:
    who = _resolve(request, caller, [body.response_id], body.user, _tokens(body.feedback_token),
                   [answer])
    ev = FeedbackEvent(event_id="fb_" + uuid.uuid4().hex, kind="thumb", rater=who.rater,
                       target=body.response_id, response_id=body.response_id,
                       rating=body.rating, comment=body.comment)
    idem = _idem_key(header_key, body.idempotency_key, who.idem_scope)
    # the body hash only matters for retries (same key, different body => refused)
    digest = body_hash(body.model_dump(exclude={"idempotency_key", "feedback_token"})
                       | {"rater": who.rater}) if idem else ""
    return PendingEvent(ev, idem, digest), who


@router.post("/feedback", openapi_extra=_body_doc(ThumbIn), responses=FEEDBACK_ERRORS)
async def post_feedback(request: Request):
    caller, body = await _auth_and_parse(request, ThumbIn)
    idempotency_key = request.headers.get("idempotency-key")
    answers = await _lookup(request, [body.response_id])
    item, who = _thumb_event(request, body, answers[body.response_id], caller, idempotency_key)
    await _charge(request, [who])
    (res,) = await _record(request, [item])
    return JSONResponse(_reply(item, res))


@router.post("/feedback/batch", openapi_extra=_body_doc(ThumbBatchIn), responses=FEEDBACK_ERRORS)
async def post_feedback_batch(request: Request):
    """Many thumbs in one call and one Redis round trip; all-or-nothing (validation,
    permissions, quotas and idempotency conflicts: one bad item and nothing is recorded)."""
    caller, body = await _auth_and_parse(request, ThumbBatchIn)
    answers = await _lookup(request, list({t.response_id for t in body.items}))
    items, raters = [], []
    for k, t in enumerate(body.items):
        try:
            item, who = _thumb_event(request, t, answers[t.response_id], caller, None)
        except ApiError as exc:
            exc.message = f"items[{k}]: {exc.message}"
            exc.param = f"items.{k}.{exc.param}" if exc.param else f"items.{k}"
            raise
        items.append(item)
        raters.append(who)
    await _charge(request, raters)
    results = await _record(request, items, batch=True)
    return JSONResponse({"object": "list",
                         "data": [_reply(i, r) for i, r in zip(items, results)]})


@router.post("/comparisons", openapi_extra=_body_doc(ComparisonIn), responses=FEEDBACK_ERRORS)
async def post_comparison(request: Request):
    caller, body = await _auth_and_parse(request, ComparisonIn)
    idempotency_key = request.headers.get("idempotency-key")
    a_id, b_id = body.response_ids
    if a_id == b_id:
        raise ApiError(422, "response_ids must name two different answers",
                       code="same_response", param="response_ids")
    answers = await _lookup(request, [a_id, b_id])
    a, b = answers[a_id], answers[b_id]
    if a.prompt_key != b.prompt_key:
        raise ApiError(422, "the two answers do not answer the same prompt",
                       code="different_prompts", param="response_ids")
    who = _resolve(request, caller, [a_id, b_id], body.user, _tokens(body.feedback_token),
                   [a, b])
    ev = FeedbackEvent(event_id="fb_" + uuid.uuid4().hex, kind="comparison", rater=who.rater,
                       target=f"{a_id}|{b_id}", response_ids=[a_id, b_id],
                       choice=body.choice, comment=body.comment)
    idem = _idem_key(idempotency_key, body.idempotency_key, who.idem_scope)
    digest = body_hash(body.model_dump(exclude={"idempotency_key", "feedback_token"})
                       | {"rater": who.rater}) if idem else ""
    item = PendingEvent(ev, idem, digest)
    await _charge(request, [who])
    (res,) = await _record(request, [item])
    return JSONResponse(_reply(item, res))
