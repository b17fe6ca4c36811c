"""A pipeline run whose worker process is killed (what the OOM killer does) is retried a bounded
number of times, then marked failed: a real Celery worker (prefork, acks_late +
reject_on_worker_lost) whose pool child is SIGKILLed at every delivery."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from common.keys import KEYS
from common.settings import Settings
from demo.stack import stop_process_group
from tests.worker._hanging_worker_app import PIDS_KEY

ROOT = Path(__file__).resolve().parents[2]


def _wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_importing_the_hanging_app_leaves_this_process_real_pipeline():
    import worker.pipeline
    assert worker.pipeline.run_pipeline.__name__ == "run_pipeline"


def test_a_run_killed_every_time_is_retried_then_marked_failed(rlhf_env, redis_url, tmp_path):
    env = dict(rlhf_env, RLHF_PIPELINE_MAX_ATTEMPTS="3", PYTHONPATH=str(ROOT))
    settings = Settings(redis_url=redis_url, data_dir=Path(env["RLHF_DATA_DIR"]))
    celery = Path(sys.executable).parent / "celery"
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen(
        [str(celery), "-A", "tests.worker._hanging_worker_app:app", "worker", "-Q", KEYS.training_queue,
         "--concurrency", "1", "--pool", "prefork", "--loglevel", "info", "-n", f"oom-{os.getpid()}@%h",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        from common import ops
        run_id = ops.request_retrain(settings, reason="oom-test")
        killed = []
        for attempt in (1, 2, 3):
            entry = _wait(lambda: r.lindex(PIDS_KEY, attempt - 1), 90, f"delivery {attempt}")
            rid, pid = entry.rsplit(":", 1)
            assert rid == run_id
            assert int(r.get(KEYS.run_attempts(run_id))) == attempt
            os.kill(int(pid), signal.SIGKILL)           # the OOM killer's way: no cleanup at all
            killed.append(int(pid))
        # the 4th delivery does not run the pipeline again: the run is marked failed
        last = _wait(lambda: r.lindex(KEYS.pipeline_history, 0), 90, "the run's failure record")
        last = json.loads(last)
        assert last["run_id"] == run_id and last["state"] == "failed", last
        assert "died 3 times" in last["error"] and last["attempts"] == 3
        assert r.hget(KEYS.pipeline_status, "state") == "failed"
        assert r.llen(PIDS_KEY) == 3 and len(set(killed)) == 3      # a fresh process each time
        assert r.get(KEYS.pipeline_last_failure)                     # trigger pauses before re-firing
        assert not r.exists(KEYS.pipeline_lock)                      # the dead copies' lock is freed
        time.sleep(1.0)
        assert r.llen(KEYS.training_queue) == 0 and r.llen(PIDS_KEY) == 3   # not redelivered again
    finally:
        stop_process_group(proc, grace_s=10)
        log.close()
