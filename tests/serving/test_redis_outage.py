"""Redis down: completions keep being served, feedback answers 503 + Retry-After, and
everything accepted (before and during the outage) is in Redis once it is back."""
from __future__ import annotations

import time

import httpx

from common.events import StoredAnswer
from common.keys import KEYS
from tests.serving.test_feedback_api import chat, post


def wait_for(pred, timeout=30.0, every=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def test_redis_outage_keeps_serving_and_loses_nothing(server, redis_server, r):
    (before_id,) = chat(server)
    accepted = post(server, "/feedback", {"response_id": before_id, "rating": "up"})
    assert accepted.status_code == 200
    stream_id = accepted.json()["stream_id"]

    redis_server.stop()
    try:
        during = chat(server, content="asked while Redis is down", n=2)  # still 200
        res = post(server, "/feedback", {"response_id": during[0], "rating": "up"})
        assert res.status_code == 503 and int(res.headers["Retry-After"]) > 0
        assert "retry" in res.json()["error"]["message"]
        res = post(server, "/comparisons", {"response_ids": during, "choice": "a"})
        assert res.status_code == 503 and "Retry-After" in res.headers
        res = post(server, "/feedback", {"response_id": "resp_unknown", "rating": "up"})
        assert res.status_code == 503  # cannot say 404 without asking Redis
        health = httpx.get(server.url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["answers_buffered"] >= 2
    finally:
        redis_server.start()  # same port and AOF folder: a restart, not a new Redis

    assert wait_for(lambda: server.health()["answers_buffered"] == 0), server.log_tail()
    for rid in during:  # answers given during the outage were flushed, with their TTL
        ans = StoredAnswer.model_validate_json(r.get(KEYS.answer(rid)))
        assert ans.model_version == "v0" and r.ttl(KEYS.answer(rid)) > 0
    assert r.exists(KEYS.answer(before_id))
    assert [eid for eid, _ in r.xrange(KEYS.feedback_stream, stream_id, stream_id)] == [
        stream_id]  # feedback accepted before the outage survived (AOF)
    ok = post(server, "/feedback", {"response_id": during[0], "rating": "up"})
    assert ok.status_code == 200, ok.text
    ok = post(server, "/comparisons", {"response_ids": during, "choice": "b"})
    assert ok.status_code == 200, ok.text
