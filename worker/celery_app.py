"""Celery app configured for long training jobs on a Redis broker.

Why these settings:
- acks_late + reject_on_worker_lost: a pipeline whose process dies (SIGKILL, OOM) is put back
  on the queue and runs again, instead of being lost with an early ack. The retrain task counts
  deliveries per run in Redis (KEYS.run_attempts) and marks a run failed after
  `pipeline_max_attempts`, so a run the OOM killer always kills does not come back for ever.
- prefetch 1 and one task per child: a training job holds GBs; a fresh process per job returns
  that memory and never lets a worker hoard a second job it cannot start.
- visibility_timeout above the hard time limit: otherwise Redis hands a still-running job to
  another worker and it runs twice.
- no remote control, gossip or mingle (`rlhf worker` passes --without-gossip --without-mingle):
  nothing here uses `celery inspect/control`, revokes or worker clocks (status lives in Redis
  under our prefix), and their fanout bindings left `_kombu.binding_deadlines`, a key outside the
  deployment's prefix, in a shared Redis after every demo.
"""
from __future__ import annotations

from celery import Celery

from common.keys import KEYS
from common.settings import Settings

TRAINING_QUEUE = KEYS.training_queue
CONTROL_QUEUE = KEYS.control_queue


def make_app(settings: Settings | None = None) -> Celery:
    s = settings or Settings()
    app = Celery("rlhf", broker=s.redis_url, backend=s.redis_url, include=["worker.tasks"])
    visibility = s.max_training_seconds + 3600
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        task_time_limit=s.max_training_seconds,
        task_soft_time_limit=max(60, s.max_training_seconds - 300),
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        result_expires=7 * 24 * 3600,
        # Nobody reads task results (the pipeline reports through its status hash and history),
        # and the trigger task ran every few seconds: 657 celery-task-meta-* keys were left in a
        # shared Redis, outside the deployment's prefix, after one demo run.
        task_ignore_result=True,
        worker_enable_remote_control=False,
        task_default_queue=CONTROL_QUEUE,
        task_routes={
            "worker.tasks.retrain": {"queue": TRAINING_QUEUE},
            "worker.tasks.maybe_retrain": {"queue": CONTROL_QUEUE},
            "worker.tasks.deploy": {"queue": CONTROL_QUEUE},
        },
        beat_schedule={
            # One cheap check decides both triggers (every N minutes / M new events), so the
            # two can never race each other into two pipelines.
            "retrain-trigger": {"task": "worker.tasks.maybe_retrain", "schedule": s.trigger_check_seconds,
                                "options": {"expires": s.trigger_check_seconds}},
        },
        timezone="UTC",
    )
    return app


app = make_app()
