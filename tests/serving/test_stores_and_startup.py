"""Pieces that need no engine: start-up resolution, the answer buffer, the feedback script."""
from __future__ import annotations

import asyncio
import os
import subprocess

import pytest
import redis as sync_redis

from common.events import FeedbackEvent, StoredAnswer
from common.keys import KEYS
from common.registry import ModelRegistry, RegistryError
from common.settings import Settings
from serving.answer_store import AnswerStore, StoreUnavailable
from serving.app import redis_client
from serving.feedback_store import FeedbackStore, PendingEvent
from serving.hotswap import resolve_startup
from serving.metrics import Metrics
from tests.helpers.server import free_port, rlhf_executable


@pytest.fixture
def db_url(redis_server):
    """DB 3 of the private Redis, emptied (DB 0 belongs to the shared test server)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/3"
    sync_redis.Redis.from_url(url).flushdb()
    return url


def answer(i: int) -> StoredAnswer:
    return StoredAnswer(response_id=f"resp_t{i}", request_id=f"resp_t{i}", model_version="v0",
                        kind="completion", prompt="p", prompt_key="k", text=f"text {i}")


def test_startup_bootstraps_v0_from_model_then_follows_current(tmp_path, tiny_model_dir):
    s = Settings(data_dir=tmp_path)
    with pytest.raises(RegistryError, match="nothing to serve"):
        resolve_startup(s)
    version, path = resolve_startup(s, str(tiny_model_dir))
    reg = ModelRegistry(s.models_dir)
    assert version == "v0" == reg.current() and path == str(reg.path("v0"))
    assert reg.metadata("v0")["note"] == "base policy"
    assert reg.metadata("v0")["parent"] is None
    assert resolve_startup(s, str(tiny_model_dir)) == ("v0", path)  # no second publish
    assert reg.versions() == ["v0"]


def test_serve_without_anything_to_serve_exits_with_a_message(tmp_path, redis_server):
    env = dict(os.environ, RLHF_DATA_DIR=str(tmp_path), RLHF_REDIS_URL=redis_server.url)
    env.pop("RLHF_MODEL", None)
    proc = subprocess.run([rlhf_executable(), "serve", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "nothing to serve" in proc.stdout + proc.stderr


def test_answers_are_buffered_while_redis_is_down_and_flushed_after(db_url):
    async def scenario():
        dead = redis_client(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
        metrics = Metrics()
        store = AnswerStore(dead, retention_days=1, metrics=metrics, buffer_max=3)
        assert await store.save([answer(1), answer(2)]) is False
        assert store.pending == 2
        assert (await store.get("resp_t1")).text == "text 1"  # served from memory
        with pytest.raises(StoreUnavailable):
            await store.get("resp_unknown")
        await store.save([answer(3), answer(4)])  # overflow: oldest dropped, and counted
        assert store.pending == 3
        assert metrics.answers_dropped._value.get() == 1
        store.redis = live = redis_client(db_url)  # "Redis is back"
        assert await store.flush_pending() == 3 and store.pending == 0
        await dead.aclose()
        await live.aclose()

    asyncio.run(scenario())
    r = sync_redis.Redis.from_url(db_url)
    assert sorted(k.decode() for k in r.keys("*answer*")) == [
        KEYS.answer(f"resp_t{i}") for i in (2, 3, 4)]
    assert 0 < r.ttl(KEYS.answer("resp_t2")) <= 86400


def test_feedback_script_is_idempotent_within_and_across_calls(db_url):
    def ev(rating):
        return FeedbackEvent(event_id=f"fb_{rating}", kind="thumb", rater="u", target="resp_a",
                             response_id="resp_a", rating=rating)

    async def scenario():
        client = redis_client(db_url)
        store = FeedbackStore(client, idempotency_ttl_s=60, retention_days=1)
        # a key reused with another body anywhere in a call: nothing of the call is written
        aborted = await store.add([PendingEvent(ev("up"), "key1", "h1"),
                                   PendingEvent(ev("down"), "key1", "h2")])
        first = await store.add([PendingEvent(ev("up"), "key1", "h1"),
                                 PendingEvent(ev("up"), "key1", "h1")])   # same batch retry
        reused = await store.add([PendingEvent(ev("down"), "key2", "h3"),
                                  PendingEvent(ev("down"), "key1", "h2")])  # reused key
        again = await store.add([PendingEvent(ev("up"), "key1", "h1")])
        await client.aclose()
        return aborted, first, reused, again

    aborted, first, reused, again = asyncio.run(scenario())
    assert [a.status for a in aborted] == ["aborted", "conflict"]
    assert [a.status for a in first] == ["new", "dup"]
    assert [a.status for a in reused] == ["aborted", "conflict"]
    assert again[0].status == "dup" and again[0].stream_id == first[0].stream_id
    r = sync_redis.Redis.from_url(db_url, decode_responses=True)
    assert r.xlen(KEYS.feedback_stream) == 1
    assert r.hgetall(KEYS.feedback_counts) == {"up": "1", "events": "1", "total": "1"}
    assert r.xinfo_groups(KEYS.feedback_stream)[0]["name"] == "trainer"
    assert r.ttl(KEYS.vote("u", "resp_a")) > 0 and r.ttl(KEYS.idempotency("key1")) > 0


def test_concurrent_feedback_writes_share_round_trips_and_stay_atomic_per_call(db_url):
    """Group commit (serving/group_commit.py) on real Redis: twenty concurrent calls, one of them a
    conflicting batch, go in fewer round trips than calls; the conflicting call writes nothing and
    the others everything; after SCRIPT FLUSH (Redis lost its scripts) the next calls still land."""
    def ev(i, rating="up"):
        return FeedbackEvent(event_id=f"fb_{i}_{rating}", kind="thumb", rater=f"u{i}", target=f"resp_{i}",
                             response_id=f"resp_{i}", rating=rating)

    async def scenario():
        client = redis_client(db_url)
        store = FeedbackStore(client, idempotency_ttl_s=60, retention_days=1)
        await store.add([PendingEvent(ev(0), "k0", "h0")])
        calls = [[PendingEvent(ev(i), None, "")] for i in range(1, 20)]
        calls.insert(7, [PendingEvent(ev(99), None, ""), PendingEvent(ev(0, "down"), "k0", "other")])
        results = await asyncio.gather(*[store.add(c) for c in calls])
        batches = store._commit.batches
        await client.script_flush()
        after = await asyncio.gather(*[store.add([PendingEvent(ev(i), None, "")]) for i in (30, 31)])
        await client.aclose()
        return results, batches, after

    results, batches, after = asyncio.run(scenario())
    assert [a.status for a in results[7]] == ["aborted", "conflict"]
    assert all(r[0].status == "new" for k, r in enumerate(results) if k != 7)
    assert batches < 1 + len(results)                           # round trips were shared
    assert [a[0].status for a in after] == ["new", "new"]
    r = sync_redis.Redis.from_url(db_url, decode_responses=True)
    assert r.xlen(KEYS.feedback_stream) == 1 + 19 + 2          # k0, the 19 plain calls, 30 and 31
    assert not r.exists(KEYS.vote("u99", "resp_99"))            # the aborted call wrote nothing


def test_concurrent_answer_lookups_share_one_mget(db_url):
    async def scenario():
        client = redis_client(db_url)
        writer = AnswerStore(client, retention_days=1, metrics=Metrics())
        await writer.save([answer(i) for i in range(6)])
        reader = AnswerStore(client, retention_days=1, metrics=Metrics())   # another process: no cache
        found = await asyncio.gather(*[reader.get_many([f"resp_t{i}", "resp_nope"]) for i in range(6)])
        batches = reader._mget.batches
        await client.aclose()
        return found, batches

    found, batches = asyncio.run(scenario())
    assert [f[f"resp_t{i}"].text for i, f in enumerate(found)] == [f"text {i}" for i in range(6)]
    assert all(f["resp_nope"] is None for f in found) and batches == 1
