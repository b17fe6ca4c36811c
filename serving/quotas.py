"""Quotas and request caps.

Rate limits (the maintained, async ``limits`` library, counters in Redis under the deployment's
prefix, sliding-window counters): generation requests and tokens per API key, generation
requests per end user, feedback events per key and per rater. "Per key" is per *account*: the
keys of one ``key:account`` account (common/identity.py) share one budget, so extra keys of one
customer buy no extra volume; a key without an account is its own. Over a limit: 429 with
``Retry-After`` (seconds). A request that alone needs more than a whole window's budget gets 400
(waiting would not help). When Redis cannot be reached the limits are not enforced (logged):
completions keep being served without Redis, as everywhere else in the server.

Body cap: ``BodyLimitMiddleware`` answers 413 for a body over ``max_request_bytes`` (by
Content-Length, or while reading a chunked body), before any route parses it.
"""
from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse_many
from starlette.exceptions import HTTPException as StarletteHTTPException
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.exceptions import NoScriptError

from common.keys import KEYS
from serving.errors import ApiError, error_response
from serving.group_commit import GroupCommit

log = logging.getLogger("rlhf.quotas")

SHARED = " (shared by the keys of one account)"
"""Said in the 429 of a per-key quota: another key of the account may have used it up."""


def parse_limits(text: str, setting: str) -> list[RateLimitItem]:
    if not text.strip():
        return []
    try:
        return parse_many(text)
    except ValueError as exc:
        raise ValueError(f"RLHF_{setting.upper()}={text!r} is not a rate limit "
                         f"(e.g. '600/minute' or '10/second;600/hour'): {exc}") from None


class Quotas:
    def __init__(self, settings):
        s = settings
        self.limits = {name: parse_limits(getattr(s, name), name) for name in (
            "rate_limit_generation_key", "rate_limit_generation_tokens_key",
            "rate_limit_generation_user", "rate_limit_feedback_key",
            "rate_limit_feedback_rater")}
        self.storage = None
        self.limiter = None
        if any(self.limits.values()):
            url = s.redis_url if s.redis_url.startswith("async+") else "async+" + s.redis_url
            self.storage = RedisStorage(url, implementation="redispy", wrap_exceptions=True,
                                        key_prefix=KEYS.rate_limits, socket_timeout=2.0,
                                        socket_connect_timeout=1.0)
            self.limiter = SlidingWindowCounterRateLimiter(self.storage)
            if s.redis_group_commit > 1:
                pipeline_sliding_window_hits(self.storage, s.redis_group_commit)
        self._warned_at = 0.0

    async def charge(self, checks: list[tuple[str, str, int, str]]) -> None:
        """Charge each (setting name, identifier, cost, what) in order; the first limit that
        is exhausted raises 429 (earlier ones stay charged: order narrow limits first)."""
        if self.limiter is None:
            return
        for name, ident, cost, what in checks:
            for item in self.limits[name]:
                if cost > item.amount:
                    raise ApiError(400, f"this request needs {cost} units of the {what} quota, "
                                   f"more than its whole budget ({item}); make it smaller",
                                   code="request_exceeds_quota")
                try:
                    ok = await self.limiter.hit(item, name, ident, cost=cost)
                    if ok:
                        continue
                    stats = await self.limiter.get_window_stats(item, name, ident)
                except Exception as exc:  # noqa: BLE001  storage errors: serve unlimited
                    self._warn(exc)
                    return
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                raise ApiError(429, f"rate limit exceeded: {what} ({item}); retry after "
                               f"{retry} s", "rate_limit_error", "rate_limit_exceeded",
                               headers={"Retry-After": str(retry)})

    def _warn(self, exc: Exception) -> None:
        if time.monotonic() - self._warned_at > 30:
            self._warned_at = time.monotonic()
            log.warning("rate limits not enforced: their Redis storage failed (%s)", exc)


class PipelinedScript:
    """A redis-py script whose concurrent calls share one pipelined round trip (group commit,
    serving/group_commit.py), each call still its own atomic EVALSHA with its own result.

    Why: every feedback event charges its rater's quota (and its key's) through `limits`, one
    script call each on a connection of its own: the one Redis call per event that did not
    share round trips with other requests' (the answer lookup and the vote write do). The
    script, its keys and its arguments stay `limits`' own; only the sending is batched. Not
    measured apart: bench/bench_ingest.py compares it only together with direct routes
    against session 17's code (README)."""

    def __init__(self, script, max_batch: int):
        self.script = script
        self._commit: GroupCommit[tuple, object] = GroupCommit(self._run, max_batch=max_batch)

    async def __call__(self, keys=None, args=None, client=None):
        if client is not None:               # a caller's own pipeline or client: as before
            return await self.script(keys, args, client)
        return await self._commit((list(keys or []), list(args or [])))

    async def _run(self, calls: list[tuple]) -> list:
        redis = self.script.registered_client
        results = await self._evalsha_all(redis, calls)
        lost = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if lost:   # Redis lost its script cache (restart, SCRIPT FLUSH): load it, run those again
            await redis.script_load(self.script.script)
            for i, r in zip(lost, await self._evalsha_all(redis, [calls[i] for i in lost])):
                results[i] = r
        return results

    async def _evalsha_all(self, redis, calls: list[tuple]) -> list:
        pipe = redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self.script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


def pipeline_sliding_window_hits(storage: RedisStorage, max_batch: int) -> bool:
    """Send the sliding-window hits of `storage` (limits' redis-py storage) through a
    `PipelinedScript`. Reaches one attribute of `limits`' redis-py bridge; if a `limits`
    version lacks it, the hits stay one round trip each (logged), nothing else changes."""
    bridge = getattr(storage, "bridge", None)
    script = getattr(bridge, "lua_acquire_sliding_window", None)
    if script is None or not hasattr(script, "registered_client"):
        log.warning("rate-limit hits not pipelined: this `limits` version has no redis-py "
                    "sliding-window script where expected")
        return False
    bridge.lua_acquire_sliding_window = PipelinedScript(script, max_batch)
    return True


class BodyLimitMiddleware:
    """Pure ASGI: 413 for request bodies over `max_bytes`, read at most max_bytes + 1 bytes."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    @property
    def _message(self) -> str:
        return (f"request body too large: the limit is {self.max_bytes} bytes "
                "(RLHF_MAX_REQUEST_BYTES)")

    def _too_large(self):
        return error_response(413, self._message, "invalid_request_error", "request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.max_bytes <= 0:
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._too_large()(scope, receive, send)
                break
        seen = 0
        responded = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(413, self._message)
            return message

        async def tracking_send(message):
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if responded:
                raise
            await self._too_large()(scope, receive, send)


class _BodyTooLarge(StarletteHTTPException):
    """An HTTPException, so FastAPI's body reader re-raises it as is (it turns any other
    exception into a 400) and the app's handler answers 413 in the usual error shape."""
