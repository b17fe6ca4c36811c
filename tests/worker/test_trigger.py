"""The beat trigger: retrain on M new events or after N minutes, never two queued/running."""
import time

import redis

from common.keys import KEYS
from worker.tasks import maybe_retrain


def test_trigger_on_new_events_queues_one_run_only(rlhf_env, monkeypatch):
    monkeypatch.setenv("RLHF_RETRAIN_MIN_EVENTS", "5")
    monkeypatch.setenv("RLHF_RETRAIN_EVERY_MINUTES", "1000")
    r = redis.Redis.from_url(rlhf_env["RLHF_REDIS_URL"], decode_responses=True)
    r.hset(KEYS.feedback_counts, "total", 4)
    r.set(KEYS.pipeline_last_run, time.time())
    assert maybe_retrain().startswith("idle (4 new events)")
    r.hset(KEYS.feedback_counts, "total", 5)
    assert maybe_retrain().startswith("queued run-")
    assert r.llen(KEYS.training_queue) == 1          # a real message on the real broker
    assert maybe_retrain() == "already queued"
    assert r.llen(KEYS.training_queue) == 1


def test_fresh_deployment_starts_the_clock_instead_of_firing(rlhf_env, monkeypatch):
    monkeypatch.setenv("RLHF_RETRAIN_MIN_EVENTS", "1000")
    monkeypatch.setenv("RLHF_RETRAIN_EVERY_MINUTES", "1")
    r = redis.Redis.from_url(rlhf_env["RLHF_REDIS_URL"], decode_responses=True)
    r.hset(KEYS.feedback_counts, "total", 3)
    assert maybe_retrain().startswith("idle (3 new")
    assert r.llen(KEYS.training_queue) == 0


def test_trigger_on_time_needs_new_events_and_respects_the_lock(rlhf_env, monkeypatch):
    monkeypatch.setenv("RLHF_RETRAIN_MIN_EVENTS", "1000")
    monkeypatch.setenv("RLHF_RETRAIN_EVERY_MINUTES", "0.001")
    r = redis.Redis.from_url(rlhf_env["RLHF_REDIS_URL"], decode_responses=True)
    r.set(KEYS.pipeline_last_run, time.time() - 10)
    assert maybe_retrain().startswith("idle (0 new")   # nothing new: no empty retrain
    r.hset(KEYS.feedback_counts, "total", 1)
    r.set(KEYS.pipeline_lock, "someone")
    assert maybe_retrain() == "running"
    r.delete(KEYS.pipeline_lock)
    assert maybe_retrain().startswith("queued")
    r.delete(KEYS.pipeline_queued)
