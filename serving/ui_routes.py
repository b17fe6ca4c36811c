"""Browser surfaces (issue 14), served by the API app itself, no build step:

- ``GET /ui``               chat page (streaming, multi-turn, thumbs + compare mode with reveal)
- ``GET /ui/admin``         operator console (talks to /admin/* with the admin token)
- ``GET /ui/feedback.js``   the embeddable feedback widget (plain JS, no dependencies)
- ``POST /ui/api/vote-state`` the holder of an answer's ``feedback_token`` reads back its own
  recorded vote(s) on those answers, so a widget shows the recorded state after a reload.

CORS (``RLHF_UI_CORS_ORIGINS``, off by default) is applied to the widget's paths only: the
widget script, the feedback routes and vote-state; never /admin and never generation.

The widget's own routes (script, stylesheet, vote-state) are a router of their own, also served
by ``rlhf ingest`` (serving/ingest_app.py): the widget takes one base URL for all of them and
its votes, so pointing it at an ingest port must find them there too.
"""
from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import RedisError
from starlette.middleware.cors import CORSMiddleware

from common.keys import KEYS
from serving import feedback_token
from serving.errors import ApiError

STATIC = Path(__file__).with_name("static")
CORS_PATHS = ("/v1/feedback", "/v1/feedback/batch", "/v1/comparisons", "/ui/feedback.js",
              "/ui/feedback.css", "/ui/api/vote-state")
_FILES = {  # url name -> (file, media type); nothing else under static/ is reachable
    "feedback.js": ("feedback.js", "text/javascript; charset=utf-8"),
    "feedback.css": ("feedback.css", "text/css; charset=utf-8"),
    "chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "admin.js": ("admin.js", "text/javascript; charset=utf-8"),
    "ui.css": ("ui.css", "text/css; charset=utf-8"),
}
_NO_STORE = {"Cache-Control": "no-cache"}

router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)
widget_router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers={
        **_NO_STORE, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": "default-src 'self'; connect-src 'self'; "
                                   "img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                   "frame-ancestors 'none'"})


@router.get("")
@router.get("/")
async def chat_page():
    return _page("chat.html")


@router.get("/admin")
async def admin_page():
    return _page("admin.html")


@router.get("/{name}")
async def asset(name: str):
    if name not in _FILES:
        raise ApiError(404, f"no such UI file {name!r}", code="not_found")
    file, media = _FILES[name]
    return FileResponse(STATIC / file, media_type=media, headers=_NO_STORE)


@widget_router.get("/feedback.js")
async def widget_script():
    return await asset("feedback.js")


@widget_router.get("/feedback.css")
async def widget_style():
    return await asset("feedback.css")


class VoteStateIn(BaseModel):
    feedback_token: str | list[str] = Field(description="the answers' feedback_token(s)")
    targets: list[str] = Field(min_length=1, max_length=20,
                               description="response ids, or 'a|b' for a pair")


@widget_router.post("/api/vote-state")
async def vote_state(request: Request):
    """The token holder's latest recorded vote on each target (null: none yet)."""
    try:
        body = VoteStateIn.model_validate_json(await request.body() or b"null")
    except ValidationError as exc:
        raise ApiError(422, f"invalid body: {exc.errors()[0].get('msg')}", code="invalid_body")
    settings = request.app.state.settings
    tokens = [body.feedback_token] if isinstance(body.feedback_token, str) else body.feedback_token
    if not 1 <= len(tokens) <= 2:
        raise ApiError(422, "feedback_token: one token or two", code="invalid_body")
    claims = [feedback_token.verify(settings, t) for t in tokens]  # 401 if forged/expired
    raters = {c.rater for c in claims}
    if len(raters) != 1:
        raise ApiError(403, "the feedback_tokens belong to different raters",
                       "permission_error", "feedback_token_mismatch")
    rater = raters.pop()
    for target in body.targets:
        for rid in target.split("|"):
            if not any(c.covers(rid) for c in claims):
                raise ApiError(403, f"the feedback_token does not cover {rid!r}",
                               "permission_error", "feedback_token_mismatch", "targets")
    try:
        raws = await request.app.state.redis.mget([KEYS.vote(rater, t) for t in body.targets])
    except RedisError as exc:
        raise ApiError(503, f"feedback store unavailable ({exc})", "server_error",
                       "store_unavailable", headers={"Retry-After": "2"})
    votes = {}
    for target, raw in zip(body.targets, raws):
        ev = None
        if raw is not None:
            try:
                rec = json.loads(raw)
                ev = json.loads(rec["event"]) if isinstance(rec["event"], str) else rec["event"]
            except (ValueError, KeyError, TypeError):
                ev = None
        votes[target] = None if ev is None else {
            k: ev.get(k) for k in ("event_id", "kind", "rating", "choice", "comment", "created",
                                   "response_ids")}
    return JSONResponse({"object": "feedback.vote_state", "votes": votes})


class _PathCORS:
    """CORS for a few paths only (the widget's); every other path is untouched."""

    def __init__(self, app, origins: list[str], paths: tuple[str, ...]):
        self.app, self.paths = app, paths
        self.cors = CORSMiddleware(app, allow_origins=origins, allow_credentials=False,
                                   allow_methods=["GET", "POST", "OPTIONS"],
                                   allow_headers=["Content-Type", "Idempotency-Key",
                                                  "Authorization"], max_age=600)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") in self.paths:
            return await self.cors(scope, receive, send)
        return await self.app(scope, receive, send)


def install(app: FastAPI, settings, pages: bool = True) -> None:
    """Add the UI routes (unless RLHF_UI_ENABLED=false; the chat page and console only if
    `pages`: not on an ingest process) and the widget's CORS (if configured)."""
    if settings.ui_enabled:
        app.include_router(widget_router)
        if pages:
            app.include_router(router)
    origins = [o.strip() for o in settings.ui_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(_PathCORS, origins=origins, paths=CORS_PATHS)
