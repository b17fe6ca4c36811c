"""Prometheus metrics of one server process (own registry, so several apps in one process,
as in tests, do not collide)."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("rlhf_http_requests_total", "HTTP requests",
                                ["route", "status"], registry=r)
        self.latency = Histogram("rlhf_http_request_seconds", "HTTP request latency",
                                 ["route"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1,
                                          2.5, 5, 10, 30, 60))
        self.tokens = Counter("rlhf_tokens_total", "Tokens processed", ["kind"], registry=r)
        self.ttft = Histogram("rlhf_time_to_first_token_seconds", "Streaming TTFT",
                              registry=r, buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.answers = Counter("rlhf_answers_total", "Stored answers (choices)", registry=r)
        self.answers_buffered = Gauge("rlhf_answers_buffered",
                                      "Answers held in memory while Redis is unreachable",
                                      registry=r)
        self.answers_dropped = Counter("rlhf_answers_dropped_total",
                                       "Answers dropped because the memory buffer was full",
                                       registry=r)
        self.feedback = Counter("rlhf_feedback_total", "Feedback events accepted",
                                ["kind"], registry=r)
        self.feedback_duplicates = Counter("rlhf_feedback_duplicates_total",
                                           "Feedback retries answered from idempotency keys",
                                           registry=r)
        self.swaps = Counter("rlhf_hot_swaps_total", "Hot swaps", ["result"], registry=r)
        self.swap_seconds = Histogram("rlhf_hot_swap_seconds", "Hot swap duration",
                                      registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware (BaseHTTPMiddleware costs ~30% throughput on small requests)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics
        # (route, status) -> its two labelled children: `labels()` builds a key and takes a lock
        # per call; routes and status codes are few, so they are looked up once
        self._children: dict[tuple[str, int], tuple] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # the route template, not the raw path: keeps label cardinality bounded
            name = getattr(route, "path", None) or "unmatched"
            key = (name, status["code"])
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (self.metrics.requests.labels(name, str(key[1])),
                                                  self.metrics.latency.labels(name))
            children[0].inc()
            children[1].observe(time.perf_counter() - t0)
