"""Writes feedback events atomically: one Lua script per event (or per batch).

Per event, inside Redis and all-or-nothing:
  1. idempotency: if the key was seen, return the first result (a retry never double counts;
     the same key with a different body is refused);
  2. XADD the event to the feedback stream (the training side's source of truth), creating the
     stream and its consumer group first if they do not exist, so no event predates the group;
  3. SET the (rater, target) vote record: one vote per rater and target, the latest wins;
  4. HINCRBY the counters (kind and total).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from common.events import FeedbackEvent
from common.keys import FEEDBACK_GROUP, KEYS

# KEYS: stream, counts, then per event: idem key ('' = none), vote key
# ARGV: group, idem_ttl, vote_ttl, then per event: event json, body hash, count field, event id
_LUA = """
local stream, counts = KEYS[1], KEYS[2]
local group, idem_ttl, vote_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
end
local out = {}
local n = (#KEYS - 2) / 2
for i = 1, n do
  local idem, vote = KEYS[2 + 2*i - 1], KEYS[2 + 2*i]
  local event, body_hash, field, event_id = ARGV[3 + 4*i - 3], ARGV[3 + 4*i - 2],
                                            ARGV[3 + 4*i - 1], ARGV[3 + 4*i]
  local seen = false
  if idem ~= '' then
    local prev = redis.call('GET', idem)
    if prev then
      local sep1 = string.find(prev, '|', 1, true)
      local sep2 = string.find(prev, '|', sep1 + 1, true)
      local prev_hash = string.sub(prev, sep2 + 1)
      if prev_hash == body_hash then
        out[i] = {'dup', string.sub(prev, 1, sep1 - 1), string.sub(prev, sep1 + 1, sep2 - 1)}
      else
        out[i] = {'conflict', string.sub(prev, 1, sep1 - 1), ''}
      end
      seen = true
    end
  end
  if not seen then
    local sid = redis.call('XADD', stream, '*', 'event', event)
    redis.call('SET', vote, cjson.encode({event_id = event_id, stream_id = sid, event = event}),
               'EX', vote_ttl)
    redis.call('HINCRBY', counts, field, 1)
    redis.call('HINCRBY', counts, 'total', 1)
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
    status: str  # "new" | "dup" | "conflict"
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
    def __init__(self, redis: aioredis.Redis, idempotency_ttl_s: int, retention_days: int):
        self.redis = redis
        self.idem_ttl = int(idempotency_ttl_s)
        self.vote_ttl = int(retention_days * 86400)
        self._script = redis.register_script(_LUA)

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
        keys = [KEYS.feedback_stream, KEYS.feedback_counts]
        args: list = [FEEDBACK_GROUP, self.idem_ttl, self.vote_ttl]
        for it in items:
            ev = it.event
            keys += [KEYS.idempotency(it.idempotency_key) if it.idempotency_key else "",
                     KEYS.vote(ev.rater, ev.target)]
            field = ev.rating if ev.kind == "thumb" else "comparison"
            args += [ev.to_stream_fields()["event"], it.body_hash, field, ev.event_id]
        raw = await self._script(keys=keys, args=args)
        return [Accepted(_s(r[0]), _s(r[1]), _s(r[2])) for r in raw]


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
