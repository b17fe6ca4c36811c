"""Stores every returned choice (``StoredAnswer``) in Redis with a TTL = retention.

Why a memory buffer: completions must keep being served when Redis is down, and an answer we
returned must still be rateable later. Answers that cannot be written go to a bounded buffer
(oldest dropped first, counted in metrics, only if it overflows) and a background task flushes
them as soon as Redis answers again. Lookups check the buffer first, so feedback on an answer
given during the outage works as soon as Redis is back.

Other processes (another replica, `rlhf ingest`) see a buffered answer only once it is flushed.
Each flush batch also sets ``KEYS.answers_flushing`` (TTL ``FLUSHING_TTL_S``) in the same
pipeline, so a lookup that misses while some server is still flushing is told "not written yet,
retry" (503 + Retry-After) instead of "unknown" (404). What no flag can cover: from Redis's
return to the flusher's first write (its 1 s tick) a missing buffered answer is still a 404.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.events import StoredAnswer
from common.keys import KEYS
from serving.group_commit import GroupCommit
from serving.metrics import Metrics

log = logging.getLogger("rlhf.answers")

FLUSHING_TTL_S = 10
"""How long after a flush batch a missing answer is still reported as "not written yet"."""

# Recently stored answers kept in memory: feedback usually arrives on fresh answers, and this
# saves a Redis round trip per feedback call. Answers are immutable, so the cache is exact.
_RECENT_MAX = 20_000


class ServedAnswer(StoredAnswer):
    """A stored answer plus serving-only facts. Written in the same JSON (readers that parse
    it as StoredAnswer ignore the extra field)."""

    principal: str | None = None
    """Pseudonym of the API key that asked for it (None: open API, or stored before keys were
    recorded): a key may only rate answers it produced."""
    account: str | None = None
    """Pseudonym of that key's account when it was asked (None: no key, or stored before
    accounts): the worker caps each account's share of the training votes by it."""


class StoreUnavailable(Exception):
    """Redis could not be reached: the caller answers 503 + Retry-After."""


class AnswerStore:
    def __init__(self, redis: aioredis.Redis, retention_days: int, metrics: Metrics,
                 buffer_max: int = 100_000, group_commit: int = 128):
        self.redis = redis
        self.ttl_s = int(retention_days * 86400)
        self.metrics = metrics
        self.buffer_max = buffer_max
        self._pending: OrderedDict[str, StoredAnswer] = OrderedDict()
        self._recent: OrderedDict[str, StoredAnswer] = OrderedDict()
        self._wake = asyncio.Event()
        # concurrent lookups share one MGET (serving/group_commit.py): feedback under load
        self._mget: GroupCommit[list[str], list] = GroupCommit(self._mget_calls, max_batch=group_commit)

    async def _mget_calls(self, calls: list[list[str]]) -> list[list]:
        keys = list(dict.fromkeys(k for call in calls for k in call))
        found = dict(zip(keys, await self.redis.mget(keys)))
        return [[found[k] for k in call] for call in calls]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _remember(self, answer: StoredAnswer) -> None:
        self._recent[answer.response_id] = answer
        if len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)

    async def save(self, answers: list[StoredAnswer]) -> bool:
        """Write answers; never raises. Returns False when they were buffered instead."""
        for a in answers:
            self._remember(a)
        if not self._pending:
            try:
                await self._write(answers)
                self.metrics.answers.inc(len(answers))
                return True
            except RedisError as exc:
                log.warning("Redis unavailable, buffering %d answers: %s", len(answers), exc)
        # keep order: if older answers are still pending, queue behind them
        for a in answers:
            self._pending[a.response_id] = a
        while len(self._pending) > self.buffer_max:
            self._pending.popitem(last=False)
            self.metrics.answers_dropped.inc()
        self.metrics.answers_buffered.set(len(self._pending))
        self._wake.set()
        return False

    async def _write(self, answers: list[StoredAnswer], flushing: bool = False) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            if flushing:  # before the batch: the answers still buffered after it are covered
                pipe.set(KEYS.answers_flushing, "1", ex=FLUSHING_TTL_S)
            for a in answers:
                pipe.set(KEYS.answer(a.response_id), a.model_dump_json(), ex=self.ttl_s)
            await pipe.execute()

    async def get(self, response_id: str) -> StoredAnswer | None:
        """The answer, or None if unknown/expired; raises StoreUnavailable if Redis is down
        and the answer is not held in memory."""
        found = self._pending.get(response_id) or self._recent.get(response_id)
        if found is not None:
            return found
        try:
            raw = await self.redis.get(KEYS.answer(response_id))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return ServedAnswer.model_validate_json(raw) if raw else None

    async def get_many(self, response_ids: list[str]) -> dict[str, StoredAnswer | None]:
        found: dict[str, StoredAnswer | None] = {}
        missing = []
        for rid in response_ids:
            a = self._pending.get(rid) or self._recent.get(rid)
            if a is None:
                missing.append(rid)
            else:
                found[rid] = a
        if missing:
            try:
                raws = await self._mget([KEYS.answer(r) for r in missing])
            except RedisError as exc:
                raise StoreUnavailable(str(exc)) from exc
            for rid, raw in zip(missing, raws):
                found[rid] = ServedAnswer.model_validate_json(raw) if raw else None
        return found

    async def being_flushed(self) -> bool:
        """Is some server still writing answers it buffered during a Redis outage? (Asked only
        after a miss: one GET on the 404 path, nothing on the hot path.)"""
        try:
            return bool(await self.redis.exists(KEYS.answers_flushing))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def flush_pending(self) -> int:
        """Write buffered answers (in batches); returns how many were written."""
        written = 0
        while self._pending:
            batch = list(self._pending.values())[:500]
            await self._write(batch, flushing=True)  # raises RedisError while still down
            for a in batch:
                self._pending.pop(a.response_id, None)
            written += len(batch)
            self.metrics.answers.inc(len(batch))
            self.metrics.answers_buffered.set(len(self._pending))
        return written

    async def run_flusher(self, interval_s: float = 1.0) -> None:
        """Background task: retry buffered answers until Redis takes them."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if not self._pending:
                continue
            try:
                n = await self.flush_pending()
                log.info("flushed %d buffered answers to Redis", n)
            except RedisError:
                await asyncio.sleep(interval_s)
