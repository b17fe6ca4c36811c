"""``POST /v1/feedback`` (thumbs), ``POST /v1/feedback/batch`` and ``POST /v1/comparisons``.

Rater identity (one vote per rater and target, the latest wins): the pseudonymised ``user``
field, else the answer's stored (already pseudonymised) user, else a pseudonym of the API key,
else "anonymous". Idempotency: ``Idempotency-Key`` header or ``idempotency_key`` body field,
scoped to the API key; a retry returns the first result with ``duplicate: true``.
"""
from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from common.events import FeedbackEvent, StoredAnswer
from serving.answer_store import StoreUnavailable
from serving.auth import require_api_key
from serving.errors import ApiError, describe_validation
from serving.feedback_store import Accepted, PendingEvent, body_hash

# No router-level dependencies and no typed body parameters here on purpose: FastAPI's
# dependency solving was ~30% of the CPU of a feedback call (profiled), and ingest is the
# hottest path. Each route authenticates first, then validates the raw body with pydantic.
router = APIRouter(prefix="/v1", tags=["feedback"])
RETRY_AFTER_S = "2"
MAX_BATCH = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ThumbIn(_Strict):
    response_id: str = Field(min_length=1, max_length=200)
    rating: Literal["up", "down"]
    user: str | None = Field(default=None, max_length=256)
    comment: str | None = Field(default=None, max_length=4000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class ComparisonIn(_Strict):
    response_ids: list[str] = Field(min_length=2, max_length=2)
    choice: Literal["a", "b", "tie", "both_bad"]
    user: str | None = Field(default=None, max_length=256)
    comment: str | None = Field(default=None, max_length=4000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class ThumbBatchIn(_Strict):
    items: list[ThumbIn] = Field(min_length=1, max_length=MAX_BATCH)


def _body_doc(model: type[BaseModel]) -> dict:
    """Keep the request schema in /docs although the body is parsed by hand."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


async def _parse(request: Request, model: type[BaseModel]):
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        message, param = describe_validation(exc.errors())
        raise ApiError(422, message, code="invalid_body", param=param) from None


def _unavailable(exc: Exception) -> ApiError:
    return ApiError(503, f"feedback store unavailable, retry later ({exc})", "server_error",
                    "store_unavailable", headers={"Retry-After": RETRY_AFTER_S})


def _rater(request: Request, user: str | None, answers: list[StoredAnswer],
           principal: str | None) -> str:
    if user:
        return request.app.state.settings.pseudonymise(user)
    stored = {a.user for a in answers}
    if len(stored) == 1 and None not in stored:
        return stored.pop()
    return principal or "anonymous"


def _idem_key(header: str | None, body: str | None, principal: str | None) -> str | None:
    if header and body and header != body:
        raise ApiError(422, "Idempotency-Key header and idempotency_key field differ",
                       code="idempotency_key_mismatch", param="idempotency_key")
    key = header or body
    if key is not None and not (0 < len(key) <= 200):
        raise ApiError(422, "Idempotency-Key must be 1-200 characters",
                       param="idempotency_key")
    return f"{principal or '-'}:{key}" if key else None


async def _lookup(request: Request, ids: list[str]) -> dict[str, StoredAnswer]:
    try:
        found = await request.app.state.answers.get_many(ids)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from exc
    missing = [i for i in ids if found.get(i) is None]
    if missing:
        raise ApiError(404, f"unknown response_id {missing[0]!r} (never returned, or expired)",
                       code="response_not_found", param="response_id")
    return found  # type: ignore[return-value]


async def _record(request: Request, items: list[PendingEvent]) -> list[Accepted]:
    try:
        results = await request.app.state.feedback.add(items)
    except RedisError as exc:
        raise _unavailable(exc) from exc
    metrics = request.app.state.metrics
    for it, res in zip(items, results):
        if res.status == "conflict":
            raise ApiError(422, "this idempotency key was already used with a different body",
                           code="idempotency_key_reused", param="idempotency_key")
        if res.status == "dup":
            metrics.feedback_duplicates.inc()
        else:
            metrics.feedback.labels(it.event.kind).inc()
    return results


def _reply(item: PendingEvent, res: Accepted) -> dict:
    return {"object": "feedback.event", "event_id": res.event_id, "stream_id": res.stream_id,
            "duplicate": res.status == "dup", "kind": item.event.kind,
            "rater": item.event.rater, "target": item.event.target}


def _thumb_event(request: Request, body: ThumbIn, answer: StoredAnswer,
                 principal: str | None, header_key: str | None) -> PendingEvent:
    rater = _rater(request, body.user, [answer], principal)
    ev = FeedbackEvent(event_id="fb_" + uuid.uuid4().hex, kind="thumb", rater=rater,
                       target=body.response_id, response_id=body.response_id,
                       rating=body.rating, comment=body.comment)
    idem = _idem_key(header_key, body.idempotency_key, principal)
    # the body hash only matters for retries (same key, different body => refused)
    digest = body_hash(body.model_dump(exclude={"idempotency_key"}) | {"rater": rater}) \
        if idem else ""
    return PendingEvent(ev, idem, digest)


@router.post("/feedback", openapi_extra=_body_doc(ThumbIn))
async def post_feedback(request: Request):
    principal = await require_api_key(request)
    body = await _parse(request, ThumbIn)
    idempotency_key = request.headers.get("idempotency-key")
    answers = await _lookup(request, [body.response_id])
    item = _thumb_event(request, body, answers[body.response_id], principal, idempotency_key)
    (res,) = await _record(request, [item])
    return JSONResponse(_reply(item, res))


@router.post("/feedback/batch", openapi_extra=_body_doc(ThumbBatchIn))
async def post_feedback_batch(request: Request):
    """Many thumbs in one call and one Redis round trip; all-or-nothing validation."""
    principal = await require_api_key(request)
    body = await _parse(request, ThumbBatchIn)
    answers = await _lookup(request, list({t.response_id for t in body.items}))
    items = [_thumb_event(request, t, answers[t.response_id], principal, None)
             for t in body.items]
    results = await _record(request, items)
    return JSONResponse({"object": "list",
                         "data": [_reply(i, r) for i, r in zip(items, results)]})


@router.post("/comparisons", openapi_extra=_body_doc(ComparisonIn))
async def post_comparison(request: Request):
    principal = await require_api_key(request)
    body = await _parse(request, ComparisonIn)
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
    rater = _rater(request, body.user, [a, b], principal)
    ev = FeedbackEvent(event_id="fb_" + uuid.uuid4().hex, kind="comparison", rater=rater,
                       target=f"{a_id}|{b_id}", response_ids=[a_id, b_id],
                       choice=body.choice, comment=body.comment)
    idem = _idem_key(idempotency_key, body.idempotency_key, principal)
    digest = body_hash(body.model_dump(exclude={"idempotency_key"}) | {"rater": rater}) \
        if idem else ""
    item = PendingEvent(ev, idem, digest)
    (res,) = await _record(request, [item])
    return JSONResponse(_reply(item, res))
