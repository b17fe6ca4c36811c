"""``create_app(settings)``: the FastAPI app embedding the vLLM engine.

Start-up order: decide the version (registry / --model), start the engine, connect Redis
(optional: completions are served without it), then the background tasks (answer flusher,
hot-swapper). Routes: OpenAI (/v1/chat/completions, /v1/completions, /v1/models), feedback
(/v1/feedback, /v1/feedback/batch, /v1/comparisons), /admin, /health, /metrics.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import socket
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from redis.exceptions import RedisError

from common.settings import Settings
from serving import admin_routes, feedback_routes, openai_routes, vllm_bridge
from serving.answer_store import AnswerStore
from serving.app_setup import finish_app, new_app, redis_client
from serving.feedback_store import FeedbackStore
from serving.hotswap import HotSwapper, resolve_startup

log = logging.getLogger("rlhf.app")


def engine_metrics() -> bytes:
    from prometheus_client import REGISTRY, generate_latest
    return generate_latest(REGISTRY)


def create_app(settings: Settings | None = None, model: str | None = None,
               replica_id: str | None = None, port: int | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from serving.engine import Engine  # heavy import (vllm) only when serving

        metrics = app.state.metrics
        version, path = resolve_startup(settings, model)
        engine = await Engine.start(settings, version, path)
        # vLLM's own OpenAI handlers on our engine (serving/vllm_api.py says why not its app)
        app.state.vllm = await vllm_bridge.build_state(engine, settings)
        redis = redis_client(settings.redis_url)
        answers = AnswerStore(redis, settings.retention_days, metrics,
                              group_commit=settings.redis_group_commit)
        feedback = FeedbackStore(redis, settings.idempotency_ttl_s, settings.retention_days,
                                 group_commit=settings.redis_group_commit)
        try:
            await feedback.ensure_group()
        except RedisError as exc:  # the Lua script creates it on first write anyway
            log.warning("Redis unavailable at start-up (%s); serving without it", exc)
        rid = replica_id or settings.replica_id or f"{socket.gethostname()}:{port or 0}"
        swapper = HotSwapper(settings, engine, redis, metrics, rid)
        app.state.engine, app.state.answers, app.state.feedback = engine, answers, feedback
        app.state.swapper, app.state.redis = swapper, redis
        # torch/vLLM imports leave millions of long-lived objects; without freezing them every
        # full GC walks them all and stalls requests for 100+ ms (seen as p99 spikes in ingest).
        gc.collect()
        gc.freeze()
        tasks = [asyncio.create_task(answers.run_flusher(), name="answer-flusher"),
                 asyncio.create_task(swapper.run(), name="hot-swapper")]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await answers.flush_pending()
            except RedisError:
                log.error("%d buffered answers could not be written before shutdown",
                          answers.pending)
            await swapper.withdraw()
            await redis.aclose()
            engine.shutdown()

    # shared with `rlhf ingest` (serving/app_setup.py): state, error handlers, UI, CORS, caps
    app = new_app(settings, "rlhf-live serving", lifespan)
    app.state.vllm = None  # vLLM's serving handlers, built at start-up (None: stub engine)
    app.include_router(openai_routes.router)
    app.include_router(openai_routes.root_router)  # /tokenize, /detokenize (as vllm serve)
    app.include_router(feedback_routes.router)
    app.include_router(admin_routes.router)
    finish_app(app, settings)  # /ui (issue 14), widget CORS, body cap, metrics (outermost)

    @app.get("/health", responses={503: {"description": "the engine died: this replica "
                                               "must be restarted (same body, status dead)"}})
    async def health(request: Request):
        state = request.app.state
        engine = state.engine
        body = state.swapper.state() | {"answers_buffered": state.answers.pending,
                                        "max_model_len": engine.max_model_len}
        if engine.llm.errored:
            return JSONResponse(body | {"status": "dead"}, status_code=503)
        return body

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text format"}})
    async def prometheus(request: Request):
        # ours, then vLLM's engine metrics (vllm:*, in prometheus_client's global registry)
        data, content_type = request.app.state.metrics.render()
        return Response(data + engine_metrics(), media_type=content_type)

    return app
