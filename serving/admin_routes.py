"""Operator routes under /admin: versions, status, retrain, deploy, rollback, forget a user.

Refused (401) unless the request carries `Authorization: Bearer <RLHF_ADMIN_TOKEN>`; when no
admin token is configured every call is refused (403), so an unconfigured server is never open.
The actions are the same functions the `rlhf` CLI calls (common/ops.py).
"""
from __future__ import annotations

import hmac

import redis
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from pydantic import BaseModel

from common import ops
from common.registry import RegistryError, UnknownVersion
from serving.auth import bearer


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


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class DeployRequest(BaseModel):
    version: str
    force: bool = False


def _redis_guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except redis.RedisError as exc:
        raise HTTPException(503, f"redis unavailable: {exc}", headers={"Retry-After": "5"})


@router.get("/versions")
def versions(request: Request):
    return {"versions": ops.list_versions(_settings(request))}


@router.get("/status")
def status(request: Request):
    return _redis_guard(ops.status, _settings(request))


@router.post("/retrain", status_code=202)
def retrain(request: Request):
    return {"run_id": _redis_guard(ops.request_retrain, _settings(request), reason="operator")}


@router.post("/deploy")
def deploy(body: DeployRequest, request: Request):
    try:
        return ops.deploy(_settings(request), body.version, force=body.force, actor="admin-api")
    except UnknownVersion as exc:
        raise HTTPException(404, str(exc))
    except RegistryError as exc:
        raise HTTPException(409, str(exc))


@router.delete("/users/{user}")
def forget_user(user: str, request: Request):
    """Erase one end user's answers and feedback (Redis and snapshot files); `user` is the id
    the product sent as `user` (stored only as its HMAC pseudonym)."""
    from common import privacy
    try:
        return _redis_guard(privacy.forget_user, _settings(request), user)
    except privacy.Busy:
        raise HTTPException(503, "a snapshot is being written; retry", headers={"Retry-After": "5"})


@router.post("/rollback")
def rollback(request: Request):
    try:
        return ops.rollback(_settings(request), actor="admin-api")
    except RegistryError as exc:
        raise HTTPException(409, str(exc))
