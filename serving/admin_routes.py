"""Operator routes under /admin: versions, status, retrain, deploy, rollback, forget a user.

Refused (401) unless the request carries `Authorization: Bearer <RLHF_ADMIN_TOKEN>`; when no
admin token is configured every call is refused (403), so an unconfigured server is never open.
The actions are the same functions the `rlhf` CLI calls (common/ops.py).
"""
from __future__ import annotations

import hmac
from typing import Literal

import redis
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from pydantic import BaseModel, Field

from common import ops
from common.export import SINCE_PATTERN
from common.registry import RegistryError, UnknownVersion
from serving.auth import bearer
from serving.errors import ErrorBody


def _settings(request: Request):
    return request.app.state.settings


def require_admin(request: Request, authorization: str | None = Header(default=None)) -> None:
    token = _settings(request).admin_token
    if not token:
        raise HTTPException(403, "admin routes are disabled: set RLHF_ADMIN_TOKEN")
    given = bearer(authorization)  # "Bearer" in any case
    # bytes: compare_digest raises on non-ASCII str (was a 500); latin-1 header text -> UTF-8
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"})


def _errors(**why: str) -> dict:
    """OpenAPI `responses`: the {"error": {...}} body under each status (keys like s404)."""
    return {int(k[1:]): {"model": ErrorBody, "description": d} for k, d in why.items()}


# Every admin route can answer these (the token check, Redis, the body cap of the middleware).
ADMIN_ERRORS = _errors(s401="missing or wrong admin token",
                       s403="admin routes are disabled: RLHF_ADMIN_TOKEN is not set",
                       s413="request body over RLHF_MAX_REQUEST_BYTES",
                       s503="Redis unavailable, or a snapshot is being written (see Retry-After)")
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=ADMIN_ERRORS)
# OpenAPI links (the stateful phase of schemathesis follows them): list -> deploy -> rollback
_VERSIONS_LINKS = {200: {"description": "the registry's versions", "links": {"DeployListedVersion": {
    "operationId": "admin_deploy", "requestBody": {"version": "$response.body#/versions/0/version"},
    "description": "serve a version from the list"}}}}
_DEPLOY_LINKS = {200: {"description": "the deploy entry (version, previous, reason, actor, time)",
                       "links": {"RollBack": {"operationId": "admin_rollback",
                                              "description": "undo the deploy"}}}}


class DeployRequest(BaseModel):
    version: str = Field(min_length=1, max_length=64, description="a registry version, e.g. v3")
    force: bool = Field(default=False, description="deploy even if the version failed its gate")


def _redis_guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except redis.RedisError as exc:
        raise HTTPException(503, f"redis unavailable: {exc}", headers={"Retry-After": "5"})


@router.get("/versions", responses=_VERSIONS_LINKS)
def versions(request: Request):
    return {"versions": ops.list_versions(_settings(request))}


@router.get("/status")
def status(request: Request):
    return _redis_guard(ops.status, _settings(request))


@router.post("/retrain", status_code=202)
def retrain(request: Request):
    return {"run_id": _redis_guard(ops.request_retrain, _settings(request), reason="operator")}


@router.post("/deploy", operation_id="admin_deploy", responses=_DEPLOY_LINKS | _errors(
    s400="body is not valid JSON", s404="unknown version", s409="the version failed its gate (use force), or the served "
    "version changed meanwhile", s422="malformed body"))
def deploy(body: DeployRequest, request: Request):
    try:
        return ops.deploy(_settings(request), body.version, force=body.force, actor="admin-api")
    except UnknownVersion as exc:
        raise HTTPException(404, str(exc))
    except RegistryError as exc:
        raise HTTPException(409, str(exc))


@router.delete("/users/{user}", responses=_errors(s422="malformed user id"))
def forget_user(user: str, request: Request):
    """Erase one end user's answers and feedback (Redis and snapshot files); `user` is the id
    the product sent as `user` (stored only as its HMAC pseudonym)."""
    from common import privacy
    try:
        return _redis_guard(privacy.forget_user, _settings(request), user)
    except privacy.Busy:
        raise HTTPException(503, "a snapshot is being written; retry", headers={"Retry-After": "5"})


@router.post("/rollback", operation_id="admin_rollback",
             responses=_errors(s409="nothing to roll back to"))
def rollback(request: Request):
    try:
        return ops.rollback(_settings(request), actor="admin-api")
    except RegistryError as exc:
        raise HTTPException(409, str(exc))


# --- issue 14: operator console support (stats by version, deploy history, export) -----------

@router.get("/feedback-stats")
def feedback_stats(request: Request):
    """Per model version, from the live vote records in Redis: thumbs-up rate, pairwise
    win-rate against other versions (common/export.py: version_stats)."""
    from common import export
    return _redis_guard(export.version_stats, ops.client(_settings(request)))


@router.get("/deploys", responses=_errors(s422="limit is not an integer"))
def deploy_history(request: Request, limit: int = 20):
    """The newest deploy/rollback decisions (who, why, from which version), newest first."""
    history = ops.registry(_settings(request)).deploy_history()
    return {"deploys": list(reversed(history))[:max(1, min(limit, 500))]}


class ConsoleDeployRequest(BaseModel):
    version: str
    reason: str = Field(default="", max_length=300)
    operator: str = Field(default="", max_length=64)
    force: bool = False


class ConsoleRollbackRequest(BaseModel):
    operator: str = Field(default="", max_length=64)


def _actor(operator: str) -> str:
    name = "".join(ch for ch in operator.strip() if ch.isprintable())[:64]
    return f"console:{name}" if name else "console"


@router.post("/console/deploy", responses=_errors(
    s400="body is not valid JSON", s404="unknown version", s409="the version failed its gate "
    "(use force), or the served version changed meanwhile", s422="malformed body"))
def console_deploy(body: ConsoleDeployRequest, request: Request):
    """Deploy from the console: like POST /admin/deploy, recording who and why."""
    reason = "".join(ch for ch in body.reason.strip() if ch.isprintable()) or "deploy"
    if reason == "rollback":  # that word steers rollback_target(); keep it for real rollbacks
        reason = "deploy (rollback)"
    try:
        return ops.deploy(_settings(request), body.version, reason=reason,
                          actor=_actor(body.operator), force=body.force)
    except UnknownVersion as exc:
        raise HTTPException(404, str(exc))
    except RegistryError as exc:
        raise HTTPException(409, str(exc))


@router.post("/console/rollback", responses=_errors(
    s400="body is not valid JSON", s409="nothing to roll back to", s422="malformed body"))
def console_rollback(body: ConsoleRollbackRequest, request: Request):
    try:
        return ops.rollback(_settings(request), actor=_actor(body.operator))
    except RegistryError as exc:
        raise HTTPException(409, str(exc))


# `since` is documented by its pattern and checked against it here (422 otherwise), not by
# FastAPI: pydantic's regex engine reads `$` differently from the JSON Schema validators.
_SINCE = Query(default=None, json_schema_extra={"pattern": SINCE_PATTERN}, description=(
    "votes cast at or after: unix seconds (1767225600), an age (30m, 12h, 7d, 2w) or an ISO "
    "date / date-time (2026-01-31, 2026-01-31T12:00:00Z; UTC without an offset); empty: all"))


@router.get("/export", responses={200: {
    "description": "one JSON object per line", "content": {"application/x-ndjson": {
        "schema": {"type": "string"}}}}} | _errors(
    s422="unknown format, or a since that does not match its pattern"))
def export_preferences(request: Request, format: Literal["openai-dpo", "trl", "jsonl"] = "openai-dpo",
                       since: str | None = _SINCE,
                       version: str | None = None):
    """Preference data as JSONL: `openai-dpo` (OpenAI preference fine-tuning), `trl`
    (prompt/chosen/rejected) or `jsonl` (every vote); rater pseudonyms only."""
    from fastapi.responses import StreamingResponse

    from common import export
    settings = _settings(request)
    try:
        export.check_since(since)
        lines = _redis_guard(lambda: list(export.export_lines(
            settings, format, since, version, ops.client(settings))))
    except export.ExportError as exc:
        raise HTTPException(422, str(exc))
    tag = "".join(ch for ch in (version or "") if ch.isalnum() or ch in "._-")[:40]
    name = f"preferences-{format}{'-' + tag if tag else ''}.jsonl"
    return StreamingResponse(iter(lines), media_type="application/x-ndjson",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})
