"""The persistence setting deploy/ requires (AOF, appendfsync everysec) keeps every
acknowledged feedback event across a Redis process that is killed outright (SIGKILL) and
restarted, including the consumer group's view of what the trainer already took."""
import asyncio
import signal

import redis
import redis.asyncio as aioredis

from common.events import FeedbackEvent
from common.keys import FEEDBACK_GROUP, KEYS
from serving.feedback_store import FeedbackStore, PendingEvent
from tests.conftest import RedisServer
from worker.snapshot import take_snapshot


def _event(i: int) -> PendingEvent:
    ev = FeedbackEvent(event_id=f"e{i}", kind="thumb", rater=f"u{i % 7}", target=f"r{i}",
                       response_id=f"r{i}", rating="up" if i % 2 else "down")
    return PendingEvent(ev, idempotency_key=f"k{i}", body_hash=str(i))


async def _write(url: str, start: int, n: int) -> None:
    client = aioredis.Redis.from_url(url)
    store = FeedbackStore(client, idempotency_ttl_s=3600, retention_days=1)
    for i in range(start, start + n):
        assert (await store.add([_event(i)]))[0].status == "new"
    await client.aclose()


def test_acknowledged_feedback_survives_redis_sigkill(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        asyncio.run(_write(server.url, 0, 300))
        r = redis.Redis.from_url(server.url, decode_responses=True)
        snap = take_snapshot(r, tmp_path / "snaps", "run")      # trainer took (and acked) 300
        assert snap.events == 300
        asyncio.run(_write(server.url, 300, 200))               # 200 more, not yet taken
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        server.start()                                           # same dir, same port
        r = redis.Redis.from_url(server.url, decode_responses=True)
        # the 300 the snapshot made durable were trimmed from the stream (XTRIM MINID); the
        # 200 not yet taken survived the kill
        assert r.xlen(KEYS.feedback_stream) == 200
        assert int(r.hget(KEYS.feedback_counts, "total")) == 500
        group = r.xinfo_groups(KEYS.feedback_stream)[0]
        assert group["name"] == FEEDBACK_GROUP and group["pending"] == 0   # acks survived too
        assert r.exists(KEYS.idempotency("k499"))                # a retry still de-duplicates
        assert take_snapshot(r, tmp_path / "snaps", "run2").events == 200
    finally:
        server.stop()
