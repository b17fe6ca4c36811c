"""Celery tasks: the retrain pipeline (training queue) and its trigger (control queue)."""
from __future__ import annotations

import logging
import time
import uuid

from common import ops
from common.keys import KEYS
from common.settings import Settings
from worker.celery_app import app
from worker.lock import LockHeld, RenewingLock

log = logging.getLogger(__name__)


@app.task(name="worker.tasks.retrain", bind=True)
def retrain(self, run_id: str | None = None, reason: str = "operator", force: bool = False) -> dict:
    from worker.pipeline import run_pipeline

    settings = Settings()
    client = ops.client(settings)
    run_id = run_id or self.request.id or uuid.uuid4().hex
    client.delete(KEYS.pipeline_queued)
    # The run id is the lock token: a redelivered copy of this same run may take it over.
    lock = RenewingLock(client, KEYS.pipeline_lock, settings.pipeline_lock_ttl_s, token=run_id)
    try:
        lock.acquire()
    except LockHeld:
        log.warning("pipeline %s skipped: another pipeline holds the lock", run_id)
        return {"run_id": run_id, "state": "skipped", "error": "another pipeline is running"}
    try:
        result = run_pipeline(settings, run_id, reason=reason, force=force)
    finally:
        lock.release()
    log.info("pipeline %s: %s", run_id, result.get("state"))
    return result


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
