"""Celery app for tests/worker/test_faults_oom.py: the real worker app and retrain task, with a
pipeline that records its pid and then hangs, so the test can SIGKILL it the way the OOM killer
would. Imported by the worker process only (`celery -A tests.worker._hanging_worker_app:app`)."""
import os
import time

import redis

import worker.pipeline
from worker.celery_app import app  # noqa: F401  (celery -A finds it here)

PIDS_KEY = "test:hanging:pids"


def _hang(settings, run_id, reason="", force=False, fence=None):
    redis.Redis.from_url(settings.redis_url).rpush(PIDS_KEY, f"{run_id}:{os.getpid()}")
    time.sleep(300)
    return {"run_id": run_id, "state": "succeeded"}


worker.pipeline.run_pipeline = _hang
