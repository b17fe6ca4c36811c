"""The Redis key schema: the one place that names keys, streams and channels.

Everything lives under one prefix so several deployments (or tests) can share a Redis.
"""
from __future__ import annotations

import os

FEEDBACK_GROUP = "trainer"
"""Consumer group of the feedback stream read by the retrain pipeline."""


class Keys:
    def __init__(self, prefix: str | None = None):
        self._prefix = prefix

    @property
    def prefix(self) -> str:
        # Looked up on use, so a process (the demo) can pick its deployment's prefix at run time.
        return self._prefix or os.environ.get("RLHF_KEY_PREFIX", "rlhf")

    # answers: one JSON string per returned choice, TTL = retention
    def answer(self, response_id: str) -> str:
        return f"{self.prefix}:answer:{response_id}"

    # feedback: append-only stream (the training side's source of truth)
    @property
    def feedback_stream(self) -> str:
        return f"{self.prefix}:feedback"

    def vote(self, rater: str, target: str) -> str:
        """Latest vote of one rater on one target (response id, or 'a|b' for a pair)."""
        return f"{self.prefix}:vote:{rater}:{target}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    @property
    def feedback_counts(self) -> str:
        """Hash: up, down, comparison, total."""
        return f"{self.prefix}:feedback:counts"

    # model registry / deployment
    @property
    def current_version(self) -> str:
        return f"{self.prefix}:models:current"

    @property
    def deploy_channel(self) -> str:
        """Pub/sub: JSON {version, path} tells every replica to hot-swap."""
        return f"{self.prefix}:deploy"

    def replica(self, replica_id: str) -> str:
        """Hash: version, status, error, updated (with a heartbeat TTL)."""
        return f"{self.prefix}:replica:{replica_id}"

    @property
    def replicas(self) -> str:
        return f"{self.prefix}:replicas"

    # pipeline
    @property
    def pipeline_lock(self) -> str:
        return f"{self.prefix}:pipeline:lock"

    @property
    def pipeline_status(self) -> str:
        return f"{self.prefix}:pipeline:status"

    @property
    def pipeline_history(self) -> str:
        return f"{self.prefix}:pipeline:history"

    @property
    def last_snapshot_total(self) -> str:
        return f"{self.prefix}:pipeline:last_total"

    @property
    def pipeline_last_run(self) -> str:
        return f"{self.prefix}:pipeline:last_run"

    @property
    def pipeline_queued(self) -> str:
        return f"{self.prefix}:pipeline:queued"

    @property
    def pipeline_last_failure(self) -> str:
        """Time of the last failed run: the trigger waits retry_after_failure_s before re-firing."""
        return f"{self.prefix}:pipeline:last_failure"

    @property
    def consumed_runs(self) -> str:
        """Set of run ids whose snapshot a *completed* run trained on. Feedback of a run that
        failed stays out of it, so the next run treats it as new again."""
        return f"{self.prefix}:pipeline:consumed_runs"


    @property
    def training_queue(self) -> str:
        """Celery queue of pipeline runs (prefixed: deployments sharing a Redis stay apart)."""
        return f"{self.prefix}.training"

    @property
    def control_queue(self) -> str:
        return f"{self.prefix}.control"


KEYS = Keys()
