"""Celery app for tests/worker/test_faults_oom.py: the real worker app and retrain task, with a
pipeline that records its pid and then hangs, so the test can SIGKILL it the way the OOM killer
would. The stand-in pipeline is installed only inside a Celery worker (on `worker_init`): the test
process imports PIDS_KEY from here, and must keep the real `run_pipeline` (session 4's CI run lost
25 minutes and five tests when this module patched it at import time)."""
import os
import time

import redis
from celery.signals import worker_init

import worker.pipeline
from worker.celery_app import app  # noqa: F401  (celery -A finds it here)

PIDS_KEY = "test:hanging:pids"


def _hang(settings, run_id, reason="", force=False, fence=None):
    redis.Redis.from_url(settings.redis_url).rpush(PIDS_KEY, f"{run_id}:{os.getpid()}")
    time.sleep(300)
    return {"run_id": run_id, "state": "succeeded"}


@worker_init.connect
def _install_hanging_pipeline(**_):
    # before the prefork pool forks, so every pool child runs the stand-in
    worker.pipeline.run_pipeline = _hang
