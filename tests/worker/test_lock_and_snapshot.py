import json
import time

import redis

from common.events import FeedbackEvent
from common.keys import FEEDBACK_GROUP, KEYS
from worker.lock import LockHeld, RenewingLock
from worker.snapshot import load_snapshots, take_snapshot


def test_lock_excludes_renews_and_expires_when_holder_stops(redis_url):
    r = redis.Redis.from_url(redis_url)
    a = RenewingLock(r, "k", ttl_s=0.6, token="a")
    a.acquire()
    b = RenewingLock(r, "k", ttl_s=0.6, token="b")
    try:
        b.acquire()
        raise AssertionError("second holder got the lock")
    except LockHeld:
        pass
    time.sleep(1.5)              # well past the TTL: renewals keep it alive
    assert r.get("k") == b"a"
    # the same token (a redelivered run) may take it over
    again = RenewingLock(r, "k", ttl_s=0.6, token="a")
    again.acquire()
    again._stop.set()
    a._stop.set()                # holder "dies": renewals stop, nobody releases
    time.sleep(1.0)
    assert r.get("k") is None    # expired by itself
    b.acquire()
    a.release()                  # a stale holder's release must not free b's lock
    assert r.get("k") == b"b"
    b.release()
    assert r.get("k") is None


def _event(i, rid):
    return FeedbackEvent(event_id=f"e{i}", kind="thumb", rater=f"u{i}", target=rid,
                         response_id=rid, rating="up")


def test_snapshot_joins_persists_then_acks_and_recovers_pending(redis_url, tmp_path):
    r = redis.Redis.from_url(redis_url)
    r.set(KEYS.answer("r1"), json.dumps({"response_id": "r1", "text": "hi"}))
    for i in range(3):
        r.xadd(KEYS.feedback_stream, _event(i, "r1" if i < 2 else "gone").to_stream_fields())
    # a previous run read one event and died before acknowledging it
    from worker.snapshot import CONSUMER, ensure_group
    ensure_group(r)
    r.xreadgroup(FEEDBACK_GROUP, CONSUMER, {KEYS.feedback_stream: ">"}, count=1)

    snap = take_snapshot(r, tmp_path, "run1")
    assert snap.events == 3 and snap.missing_answers == 1
    recs = load_snapshots(tmp_path)
    assert [x["event"]["event_id"] for x in recs] == ["e0", "e1", "e2"]
    assert recs[0]["answers"]["r1"]["text"] == "hi"
    assert r.xpending(KEYS.feedback_stream, FEEDBACK_GROUP)["pending"] == 0

    # nothing new: a redelivered run1 still counts the events it persisted before dying
    again = take_snapshot(r, tmp_path, "run1")
    assert again.events == 3
    assert take_snapshot(r, tmp_path, "run2").events == 0
    r.xadd(KEYS.feedback_stream, _event(9, "r1").to_stream_fields())
    assert take_snapshot(r, tmp_path, "run2").events == 1
    recs = load_snapshots(tmp_path)
    assert len(recs) == 4
    assert [x["snapshot_run"] for x in recs] == ["run1", "run1", "run1", "run2"]
