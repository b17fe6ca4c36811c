"""Writes feedback events atomically: one Lua script per event (or per batch); concurrent
requests' scripts share one pipelined round trip (serving/group_commit.py).

Inside Redis and all-or-nothing for the whole call (a batch writes every event or none):
  1. idempotency, checked for every event before anything is written: a key seen before with
     the same body makes that event a duplicate (the first result is returned, nothing counted
     twice); a key seen with a different body, here or earlier in the same batch, is a
     conflict, and then *nothing* of the call is written;
  2. XADD the event to the feedback stream (the training side's source of truth), creating the
     stream and its consumer group first if they do not exist, so no event predates the group;
  3. SET the (rater, target) vote record: one vote per rater and target, the latest wins;
  4. HINCRBY the counters: the kind and ``events`` for every event, ``total`` only for a
     *distinct* vote (a (rater, target) with no record yet), so repeating or flipping a vote
     does not bring the "M new events" retrain trigger closer.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from common.events import FeedbackEvent
from common.keys import FEEDBACK_GROUP, KEYS
from serving.group_commit import GroupCommit

# KEYS: stream, counts, then per event: idem key ('' = none), vote key
# ARGV: group, idem_ttl, vote_ttl, then per event: event json, body hash, count field, event id
_LUA = """
local stream, counts = KEYS[1], KEYS[2]
local group, idem_ttl, vote_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = (#KEYS - 2) / 2
local function split(prev)
  local sep1 = string.find(prev, '|', 1, true)
  local sep2 = string.find(prev, '|', sep1 + 1, true)
  return string.sub(prev, 1, sep1 - 1), string.sub(prev, sep1 + 1, sep2 - 1),
         string.sub(prev, sep2 + 1)
end
-- pass 1: idempotency conflicts anywhere => write nothing at all
local in_batch, conflict = {}, false
local out = {}
for i = 1, n do
  local idem, body_hash = KEYS[2 + 2*i - 1], ARGV[3 + 4*i - 2]
  out[i] = {'ok', '', ''}
  if idem ~= '' then
    local prev = redis.call('GET', idem)
    local prev_hash = in_batch[idem]
    if prev then
      local eid, sid, h = split(prev)
      prev_hash = h
      out[i] = {'ok', eid, ''}
    end
    if prev_hash and prev_hash ~= body_hash then
      out[i] = {'conflict', out[i][2], ''}
      conflict = true
    end
    in_batch[idem] = in_batch[idem] or body_hash
  end
end
if conflict then
  for i = 1, n do
    if out[i][1] ~= 'conflict' then out[i] = {'aborted', '', ''} end
  end
  return out
end
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
end
-- pass 2: write
for i = 1, n do
  local idem, vote = KEYS[2 + 2*i - 1], KEYS[2 + 2*i]
  local event, body_hash, field, event_id = ARGV[3 + 4*i - 3], ARGV[3 + 4*i - 2],
                                            ARGV[3 + 4*i - 1], ARGV[3 + 4*i]
  local prev = false
  if idem ~= '' then prev = redis.call('GET', idem) end
  if prev then
    local eid, sid, h = split(prev)
    out[i] = {'dup', eid, sid}
  else
    local sid = redis.call('XADD', stream, '*', 'event', event)
    local distinct = redis.call('EXISTS', vote) == 0
    redis.call('SET', vote, cjson.encode({event_id = event_id, stream_id = sid, event = event}),
               'EX', vote_ttl)
    redis.call('HINCRBY', counts, field, 1)
    redis.call('HINCRBY', counts, 'events', 1)
    if distinct then redis.call('HINCRBY', counts, 'total', 1) end
    if idem ~= '' then
      redis.call('SET', idem, event_id .. '|' .. sid .. '|' .. body_hash, 'EX', idem_ttl)
    end
    out[i] = {'new', event_id, sid}
  end
end
return out
"""


@dataclass
class Accepted:
    status: str  # "new" | "dup" | "conflict" | "aborted" (another item conflicted: nothing written)
    event_id: str
    stream_id: str


@dataclass
class PendingEvent:
    event: FeedbackEvent
    idempotency_key: str | None
    body_hash: str


def body_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                          ).hexdigest()[:32]


class FeedbackStore:
    def __init__(self, redis: aioredis.Redis, idempotency_ttl_s: int, retention_days: int,
                 group_commit: int = 128):
        self.redis = redis
        self.idem_ttl = int(idempotency_ttl_s)
        self.vote_ttl = int(retention_days * 86400)
        self._sha: str | None = None
        # concurrent requests' writes share a round trip (serving/group_commit.py): one script
        # call per request, pipelined, so each request stays all-or-nothing on its own
        self._commit: GroupCommit[list[PendingEvent], list[Accepted]] = GroupCommit(
            self._add_calls, max_batch=group_commit)

    async def ensure_group(self) -> None:
        """Create the stream and the trainer's consumer group (id 0: it reads everything)."""
        try:
            await self.redis.xgroup_create(KEYS.feedback_stream, FEEDBACK_GROUP, id="0",
                                           mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def add(self, items: list[PendingEvent]) -> list[Accepted]:
        """Record events in one atomic script; raises RedisError if Redis is unreachable."""
        return await self._commit(items)

    def _script_args(self, items: list[PendingEvent]) -> list:
        keys = [KEYS.feedback_stream, KEYS.feedback_counts]
        args: list = [FEEDBACK_GROUP, self.idem_ttl, self.vote_ttl]
        for it in items:
            ev = it.event
            keys += [KEYS.idempotency(it.idempotency_key) if it.idempotency_key else "",
                     KEYS.vote(ev.rater, ev.target)]
            field = ev.rating if ev.kind == "thumb" else "comparison"
            args += [ev.to_stream_fields()["event"], it.body_hash, field, ev.event_id]
        return [len(keys), *keys, *args]

    async def _add_calls(self, calls: list[list[PendingEvent]]) -> list:
        """Each call's script, all in one pipelined round trip (not a transaction: each script
        is atomic by itself, and a call's conflict never touches another call)."""
        if self._sha is None:
            self._sha = await self.redis.script_load(_LUA)
        raws = await self._evalsha_all(calls)
        lost = [i for i, r in enumerate(raws) if isinstance(r, NoScriptError)]
        if lost:  # Redis lost its script cache (restart, SCRIPT FLUSH): those did not run
            self._sha = await self.redis.script_load(_LUA)
            for i, r in zip(lost, await self._evalsha_all([calls[i] for i in lost])):
                raws[i] = r
        return [r if isinstance(r, Exception) else [Accepted(_s(x[0]), _s(x[1]), _s(x[2])) for x in r]
                for r in raws]

    async def _evalsha_all(self, calls: list[list[PendingEvent]]) -> list:
        if len(calls) == 1:   # alone: a plain call, no pipeline to build
            try:
                return [await self.redis.evalsha(self._sha, *self._script_args(calls[0]))]
            except ResponseError as exc:   # NoScriptError included: handled by the caller
                return [exc]
        pipe = self.redis.pipeline(transaction=False)
        for items in calls:
            pipe.evalsha(self._sha, *self._script_args(items))
        return list(await pipe.execute(raise_on_error=False))


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
