"""Set-up shared by the two FastAPI apps: ``create_app`` (serving/app.py, embeds the engine) and
``create_ingest_app`` (serving/ingest_app.py, feedback only). One place, so the feedback routes
answer the same way on either port: same state (settings, metrics, quotas), error shape, UI
widget routes and CORS, body cap and request metrics.

Nothing here imports vLLM or torch: the ingest processes must stay small and start fast.
"""
from __future__ import annotations

import time

import redis.asyncio as aioredis
from fastapi import FastAPI

from common.settings import Settings
from serving import feedback_routes, ui_routes
from serving.direct_routes import DirectRoutes, direct_routes_for
from serving.errors import install_error_handlers
from serving.metrics import Metrics, MetricsMiddleware
from serving.quotas import BodyLimitMiddleware, Quotas


def redis_client(url: str) -> aioredis.Redis:
    # Short timeouts: a dead Redis must cost a request milliseconds, not the default minutes.
    return aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0,
                             max_connections=256)


def new_app(settings: Settings, title: str, lifespan) -> FastAPI:
    """The app with its shared state and error handlers; routes come next, then
    ``finish_app``."""
    app = FastAPI(title=title, lifespan=lifespan)
    app.state.settings, app.state.metrics = settings, Metrics()
    app.state.started_at = time.time()
    app.state.quotas = Quotas(settings)  # rate limits (Redis via `limits`); connects lazily
    install_error_handlers(app)
    return app


def finish_app(app: FastAPI, settings: Settings, ui_pages: bool = True) -> FastAPI:
    """After the app's own routers (the feedback routes among them): the feedback POSTs'
    direct path (serving/direct_routes.py, innermost, so everything below wraps it too), the
    UI routes (the chat page and console only if `ui_pages`; the feedback widget's routes
    always, unless RLHF_UI_ENABLED=false), the widget's CORS, the body cap and the request
    metrics, in this order (the metrics middleware is added last, so it is outermost and
    counts the 413s too)."""
    if settings.direct_routes:
        app.add_middleware(DirectRoutes, routes=direct_routes_for(app, feedback_routes.POST_PATHS))
    ui_routes.install(app, settings, pages=ui_pages)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
