"""Celery tasks: the retrain pipeline (training queue) and its trigger (control queue)."""
from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path

import redis

from common import ops
from common.keys import KEYS, check_run_id
from common.settings import Settings
from worker.celery_app import app
from worker.lock import LockHeld, RenewingLock

log = logging.getLogger(__name__)


@app.task(name="worker.tasks.retrain", bind=True)
def retrain(self, run_id: str | None = None, reason: str = "operator", force: bool = False) -> dict:
    from worker.pipeline import StatusWriter, run_pipeline

    settings = Settings()
    run_id = run_id or self.request.id or uuid.uuid4().hex
    try:
        check_run_id(run_id)  # from the broker: it names folders, so refuse before any use
    except ValueError as exc:
        log.error("pipeline refused: %s", exc)
        return {"run_id": None, "state": "refused", "error": str(exc)}
    client = ops.client(settings)
    client.delete(KEYS.pipeline_queued)
    # Each delivery counts. acks_late + reject_on_worker_lost put a run whose process was killed
    # (OOM killer, SIGKILL) back on the queue; the counter bounds how often it comes back.
    attempts_key = KEYS.run_attempts(run_id)
    attempt = int(client.incr(attempts_key))
    client.expire(attempts_key, 7 * 24 * 3600)
    # The run id is the lock token: a redelivered copy of this same run may take it over.
    lock = RenewingLock(client, KEYS.pipeline_lock, settings.pipeline_lock_ttl_s, token=run_id)
    if attempt > settings.pipeline_max_attempts:
        lock.client.eval(_RELEASE_IF_OURS, 1, KEYS.pipeline_lock, run_id)  # the dead copy's lock
        client.set(KEYS.pipeline_last_failure, time.time())
        shutil.rmtree(Path(settings.data_dir) / "work" / run_id, ignore_errors=True)
        error = (f"the worker died {attempt - 1} times running it (out of memory? see the "
                 f"worker's log); gave up after {settings.pipeline_max_attempts} attempts")
        log.error("pipeline %s failed: %s", run_id, error)
        return StatusWriter(client, run_id, reason).finish("failed", error=error, attempts=attempt - 1)
    try:
        lock.acquire()
    except LockHeld:
        log.warning("pipeline %s skipped: another pipeline holds the lock", run_id)
        return {"run_id": run_id, "state": "skipped", "error": "another pipeline is running"}
    try:
        result = run_pipeline(settings, run_id, reason=reason, force=force, fence=lock.check)
    finally:
        lock.release()
        try:
            client.delete(attempts_key)  # ended (any state, even raising): no more deliveries
        except redis.RedisError:  # the key expires by itself
            pass
    log.info("pipeline %s: %s", run_id, result.get("state"))
    return result


_RELEASE_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


@app.task(name="worker.tasks.maybe_retrain", expires=60)
def maybe_retrain() -> str:
    """Queue a retrain if N minutes passed or M new events arrived since the last run."""
    settings = Settings()
    r = ops.client(settings)
    if r.exists(KEYS.pipeline_lock):
        return "running"
    total = int(r.hget(KEYS.feedback_counts, "total") or 0)
    new_events = total - int(r.get(KEYS.last_snapshot_total) or 0)
    # No run yet: the clock starts at the first check, so a fresh deployment does not retrain
    # on its very first event (the event-count trigger still applies).
    r.set(KEYS.pipeline_last_run, time.time(), nx=True)
    last_run = float(r.get(KEYS.pipeline_last_run))
    due_time = new_events > 0 and time.time() - last_run >= settings.retrain_every_minutes * 60
    due_count = new_events >= settings.retrain_min_events
    if not (due_time or due_count):
        return f"idle ({new_events} new events)"
    # A failed run left its feedback unconsumed, so the trigger re-fires — after a pause, not in a loop.
    failed_at = float(r.get(KEYS.pipeline_last_failure) or 0)
    if time.time() - failed_at < settings.retry_after_failure_s:
        return f"waiting after a failed run ({new_events} new events)"
    # One queued pipeline at most: the flag lives until the task starts (or 10 min).
    if not r.set(KEYS.pipeline_queued, "1", nx=True, ex=600):
        return "already queued"
    run_id = ops.request_retrain(settings, reason="new feedback" if due_count else "schedule",
                                 force=False)
    return f"queued {run_id}"
