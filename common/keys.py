"""The Redis key schema: the one place that names keys, streams and channels.

Everything lives under one prefix so several deployments (or tests) can share a Redis.
"""
from __future__ import annotations

import os
import re

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

    @property
    def answers_flushing(self) -> str:
        """Set, with a short TTL, while a server writes the answers it buffered while Redis
        was unreachable: a response id missing now may appear within seconds, so feedback on
        it is a 503 + Retry-After rather than a 404 (serving/answer_store.py)."""
        return f"{self.prefix}:flushing"

    # feedback: append-only stream (the training side's source of truth)
    @property
    def feedback_stream(self) -> str:
        return f"{self.prefix}:feedback"

    def vote(self, rater: str, target: str) -> str:
        """Latest vote of one rater on one target (response id, or 'a|b' for a pair)."""
        return f"{self.prefix}:vote:{rater}:{target}"

    @property
    def rate_limits(self) -> str:
        """Prefix of the rate-limit counters (the `limits` library's keys) of serving/quotas.py."""
        return f"{self.prefix}:limits"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    @property
    def feedback_counts(self) -> str:
        """Hash: up, down, comparison, events (every accepted event) and total (distinct
        votes: a new (rater, target) pair; what the retrain trigger counts)."""
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

    # --- faults and privacy (issue 12) ----------------------------------------------------
    @property
    def feedback_dead_letter(self) -> str:
        """Stream of feedback entries the pipeline could not read (raw fields + error), so one
        malformed entry is kept for inspection instead of failing every later run."""
        return f"{self.prefix}:feedback:dead"

    def run_attempts(self, run_id: str) -> str:
        """Deliveries of one pipeline run (a worker killed mid-run, e.g. by the OOM killer,
        gets it redelivered); past settings.pipeline_max_attempts the run is marked failed."""
        return f"{self.prefix}:pipeline:attempts:{run_id}"

    @property
    def snapshot_lock(self) -> str:
        """Short lock around snapshot writes and user erasure, so `forget` never races a
        snapshot that is copying the user's entries into a file."""
        return f"{self.prefix}:pipeline:snapshot_lock"

    @property
    def training_queue(self) -> str:
        """Celery queue of pipeline runs (prefixed: deployments sharing a Redis stay apart)."""
        return f"{self.prefix}.training"

    @property
    def control_queue(self) -> str:
        return f"{self.prefix}.control"


KEYS = Keys()

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""Run ids name folders (work/RUN_ID, snapshots/RUN_ID-K.jsonl) and keys; they come from the
broker, so anything else (slashes, '..', NUL, spaces, empty) is refused before use."""


def check_run_id(run_id) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {str(run_id)[:80]!r}: expected {RUN_ID_RE.pattern}")
    return run_id
