"""``create_ingest_app(settings)``: the feedback routes alone, without the engine (``rlhf ingest``).

Why: in ``rlhf serve`` feedback shares one Python process (one core) with generation; issue 13
wants more feedback events per second than one process can parse, check and forward. This app
needs only Redis, so ``rlhf ingest --workers N`` runs it in N processes behind one port.

What it serves: ``POST /v1/feedback``, ``/v1/feedback/batch``, ``/v1/comparisons`` (the very
router of ``rlhf serve``), the feedback widget's routes (``/ui/feedback.js``, ``/ui/feedback.css``,
``POST /ui/api/vote-state``: the widget uses one base URL for all of them), ``/health`` and
``/metrics``. Same keys, quotas, body cap, error shape and widget CORS as the main app
(serving/app_setup.py builds both). Never imports vLLM or torch.

Answers: looked up in Redis, where ``rlhf serve`` writes each one before its response completes.
An answer that server could not write (Redis was down) is held in *its* memory and written
when Redis returns (serving/answer_store.py); until then this process cannot see it: while the
flush runs the lookup answers 503 + Retry-After (``answer_not_written_yet``), and in the ~1 s
before the flusher's first write a plain 404 that a client who just got the answer may retry.
"""
from __future__ import annotations

import gc
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from redis.exceptions import RedisError

from common.settings import Settings
from serving import feedback_routes
from serving.answer_store import AnswerStore
from serving.app_setup import finish_app, new_app, redis_client
from serving.feedback_store import FeedbackStore

log = logging.getLogger("rlhf.ingest")


def create_ingest_app(settings: Settings | None = None) -> FastAPI:
    """The ingest app; with no argument (uvicorn's factory call in each worker process) the
    settings come from the environment, as for every other process."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        redis = redis_client(settings.redis_url)
        # read-only here: this process never saves answers, so the store's buffer and its
        # flusher stay empty; lookups go straight to Redis
        answers = AnswerStore(redis, settings.retention_days, app.state.metrics,
                              group_commit=settings.redis_group_commit)
        feedback = FeedbackStore(redis, settings.idempotency_ttl_s, settings.retention_days,
                                 group_commit=settings.redis_group_commit)
        try:
            await feedback.ensure_group()
        except RedisError as exc:  # the Lua script creates it on first write anyway
            log.warning("Redis unavailable at start-up (%s); answering 503 until it is back", exc)
        app.state.redis, app.state.answers, app.state.feedback = redis, answers, feedback
        # the start-up garbage (FastAPI, pydantic schemas) is long-lived: freezing it keeps
        # full collections short, which is p99 latency at thousands of requests per second
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await redis.aclose()

    app = new_app(settings, "rlhf-live feedback ingest", lifespan)
    app.include_router(feedback_routes.router)
    finish_app(app, settings, ui_pages=False)  # widget routes + CORS, body cap, metrics

    @app.get("/health", responses={503: {"description": "Redis unreachable: feedback is "
                                               "answered 503 until it is back"}})
    async def health(request: Request):
        # Redis is this process's only dependency: without it every feedback call fails, so
        # a load balancer should route around it (unlike `rlhf serve`, which still generates)
        body = {"status": "ok", "role": "ingest", "pid": os.getpid()}
        try:
            await request.app.state.redis.ping()
        except RedisError as exc:
            return JSONResponse(body | {"status": "redis_unavailable", "error": str(exc)},
                                status_code=503)
        return body

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text format, of the worker "
                                             "process that answered (see pid in /health)"}})
    async def prometheus(request: Request):
        data, content_type = request.app.state.metrics.render()
        return Response(data, media_type=content_type)

    return app
