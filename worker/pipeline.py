"""The retrain pipeline: snapshot -> datasets -> [reward model] -> policy (the deployment's
algorithm) -> gate -> publish -> deploy.

Orchestration only: the maths lives in `trainer`, the storage contracts in `common`. Progress
goes to one Redis hash (`rlhf status`, /admin/status and the demo read it).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import redis

from common import artifacts, ops
from common.keys import KEYS, check_run_id
from common.settings import Settings
from trainer.data import user_text
from worker.datasets import build_training_sets, hold_out_texts, key_cap_args
from worker.lock import LockLost
from worker.retention import prune_files, prune_versions
from worker.snapshot import load_snapshots, take_snapshot

STEPS = ["snapshot", "datasets", "reward_model", "policy", "gate", "publish", "deploy"]


class StatusWriter:
    def __init__(self, client: redis.Redis, run_id: str, reason: str):
        self.client, self.run_id = client, run_id
        self.fields: dict[str, Any] = {"run_id": run_id, "reason": reason, "state": "running",
                                       "started": time.time(), "step": "", "error": "",
                                       "step_seconds": {}}
        self._step_started = time.time()
        self.client.delete(KEYS.pipeline_status)
        self._write()

    def _write(self) -> None:
        self.fields["updated"] = time.time()
        try:
            # bools are JSON-encoded: redis-py refuses them (DataError), which once left the
            # status stuck at "running / deploy" after every successful deploy.
            self.client.hset(KEYS.pipeline_status, mapping={
                k: v if isinstance(v, (str, int, float)) and not isinstance(v, bool) else json.dumps(v, default=str)
                for k, v in self.fields.items()})
        except redis.RedisError:
            pass  # status is best effort; training goes on

    def _close_step(self) -> None:
        if self.fields["step"]:
            self.fields["step_seconds"][self.fields["step"]] = round(time.time() - self._step_started, 2)
        self._step_started = time.time()

    def step(self, name: str, **extra) -> None:
        self._close_step()
        self.fields.update(step=name, step_index=STEPS.index(name) + 1, steps=len(STEPS),
                           progress=0, total=0, **extra)
        self._write()

    def progress(self, stage: str, step: int, total: int, metrics: dict) -> None:
        self.fields.update(stage=stage, progress=step, total=total,
                           last_metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        self._write()

    def finish(self, state: str, write_status: bool = True, **extra) -> dict:
        self._close_step()
        self.fields.update(state=state, finished=time.time(), **extra)
        if write_status:  # False: the status hash may belong to the run that took our lock
            self._write()
        try:
            self.client.lpush(KEYS.pipeline_history, json.dumps(self.fields, default=str))
            self.client.ltrim(KEYS.pipeline_history, 0, 49)
        except redis.RedisError:
            pass
        return dict(self.fields)


def _overrides(cls, raw: str):
    fields = json.loads(raw or "{}")
    return cls(**fields)


def run_pipeline(settings: Settings, run_id: str, reason: str = "scheduled",
                 force: bool = False, fence=None) -> dict:
    """`fence()` raises LockLost when this run no longer holds the pipeline lock; it is checked
    before publish and (under the registry's pointer lock) before deploy."""
    check_run_id(run_id)  # it names folders and keys: refuse anything odd before any use
    if settings.torch_threads > 0:
        import torch
        torch.set_num_threads(settings.torch_threads)
    from trainer.device import set_train_precision
    set_train_precision(settings.train_precision)
    client = ops.client(settings)
    status = StatusWriter(client, run_id, reason)
    try:
        return _run_steps(settings, run_id, reason, force, client, status, fence or (lambda: None))
    except LockLost as exc:
        # Another run may hold the lock now and will train on this feedback: stop, mark nothing.
        return status.finish("lost_lock", write_status=False, error=f"stopped: {exc}")
    except Exception as exc:
        # Recorded in the history too, so `rlhf status` and the demo see the failure at once.
        # Its feedback is not marked consumed: the next run trains on it as new.
        try:
            client.set(KEYS.pipeline_last_failure, time.time())
        except redis.RedisError:
            pass
        status.finish("failed", error=repr(exc)[:2000])
        raise


def _run_steps(settings: Settings, run_id: str, reason: str, force: bool,
               client: redis.Redis, status: StatusWriter, fence) -> dict:
    from trainer import algorithms
    from trainer.data import write_jsonl
    from worker.gate import degeneracy_prompt_set, gate_prompt_set, load_gate_prompts, rm_gate_accuracy, run_gate
    from worker.training import (judge_reward_models, policy_config, remove_work, scalars,
                                 train_policy_step, train_reward_model_step)

    algo = algorithms.get(settings.algorithm)   # an unknown name fails the run before any work
    policy_config(settings)                      # so does a bad override (before an RM is trained)
    gate_set = load_gate_prompts(settings.gate_prompts_file) if settings.gate_prompts_file else []
    reg = artifacts.policies(settings)
    removed = reg.cleanup_partial()  # temp folders of publishes that died midway
    served = reg.current()
    if served is None:
        return status.finish("failed", error="no version is being served yet (start `rlhf serve`)")
    anchor = artifacts.anchor_version(settings, reg)
    served_dir = reg.path(served)
    work = Path(settings.data_dir) / "work" / run_id
    shutil.rmtree(work, ignore_errors=True)  # a redelivered run starts from a clean folder
    work.mkdir(parents=True)

    status.step("snapshot", served=served, anchor=anchor, algorithm=algo.name, cleaned=removed,
                retention=prune_files(settings, keep_run=run_id))
    total_before = int(client.hget(KEYS.feedback_counts, "total") or 0)
    snap = take_snapshot(client, settings.snapshots_dir, run_id,
                         dead_letter_maxlen=settings.dead_letter_maxlen,
                         lock_ttl_s=settings.snapshot_lock_ttl_s)
    status.fields["snapshot"] = {"dead_lettered": snap.dead_lettered, "erased": snap.erased,
                                 "trimmed": snap.trimmed}
    client.set(KEYS.pipeline_last_run, time.time())
    records = load_snapshots(settings.snapshots_dir)
    consumed = set(client.smembers(KEYS.consumed_runs))
    # New = taken by this run, or by an earlier run that failed before completing (nothing lost).
    unconsumed = {rec["snapshot_run"] for rec in records} - consumed
    if snap.events == 0 and not unconsumed and not force:
        _mark_consumed(client, run_id, total_before)
        return status.finish("skipped", error="no new feedback since the last run")

    status.step("datasets", new_events=snap.events, earlier_unconsumed_runs=sorted(unconsumed - {run_id}))
    sets = build_training_sets(records, set(reg.versions()),
                               settings.max_rater_share, settings.heldout_fraction,
                               is_new=lambda rec: rec.get("snapshot_run") not in consumed,
                               **key_cap_args(settings))
    hold_out_texts(sets, {user_text(p.messages) for p in gate_set})
    stats = dict(sets.stats)
    stats["dead_lettered"] = snap.dead_lettered  # malformed entries of this run's snapshot
    status.fields["data"] = stats
    if not sets.pairs and not sets.rated:
        _mark_consumed(client, run_id, total_before)
        return status.finish("skipped", error="no usable preference data yet")
    if not sets.train_prompts:
        _mark_consumed(client, run_id, total_before)
        return status.finish("skipped", error="no training prompts")
    for name, items in [("pairs", sets.pairs), ("eval_pairs", sets.eval_pairs),
                        ("rated", sets.rated), ("train_prompts", sets.train_prompts),
                        ("heldout_prompts", sets.heldout_prompts)]:
        write_jsonl(work / f"{name}.jsonl", items)

    rm_id, rm_dir, rm_metrics = None, None, {}
    trained_against = algo.needs_reward_model  # else the RM only judges (the gate's independent judge)
    if trained_against or settings.gate_train_rm:
        status.step("reward_model")
        rm_id, rm_dir, rm_metrics = train_reward_model_step(settings, sets, run_id, served_dir, work, stats,
                                                            status.progress)
    own_rm = rm_dir if trained_against else None

    status.step("policy")
    policy_work, policy_metrics, policy_meta = train_policy_step(
        settings, sets, run_id, served, anchor, own_rm, work, stats, status.progress)

    status.step("gate")
    gate_prompts = gate_prompt_set(sets.heldout_prompts, gate_set, settings.gate_eval_prompts)
    if not gate_prompts:  # tiny data sets: better a gate on seen prompts than none
        gate_prompts = sets.train_prompts
        stats["gate_prompts_not_heldout"] = True
    gate = run_gate(policy_work, served_dir, reg.path(anchor), gate_prompts, settings,
                    judges=judge_reward_models(settings, exclude=rm_id if trained_against else None),
                    own_rm=own_rm, own_rm_accuracy=rm_gate_accuracy(rm_metrics) if trained_against else None,
                    eval_pairs=sets.eval_pairs,
                    degeneracy_only=degeneracy_prompt_set(gate_prompts, gate_set, settings.gate_degeneracy_prompts))

    status.step("publish", gate=gate)
    meta = {"parent": served, "run_id": run_id, "reason": reason, "snapshot": str(snap.path),
            "reward_model": rm_id if trained_against else None,
            "judge_reward_model": None if trained_against else rm_id, "data": stats, "gate": gate, **policy_meta,
            "kl_to_anchor": gate["metrics"].get("kl_to_anchor"),
            "kl_to_parent": gate["metrics"].get("kl_to_served"),
            "metrics": {"reward_model": scalars(rm_metrics), "policy": scalars(policy_metrics),
                        "gate": gate["metrics"]}}
    fence()  # a run that lost its lock publishes nothing (another run may be publishing)
    version = reg.publish(policy_work, meta, move=True)
    _mark_consumed(client, run_id, total_before)
    status.fields["retention_versions"] = prune_versions(settings)
    status.fields["garbage_collected"] = artifacts.collect_garbage(settings)
    if not gate["passed"]:
        remove_work(work)
        return status.finish("rejected", version=version, error="; ".join(gate["reasons"]))

    status.step("deploy", version=version)
    fence()
    try:
        # Compare-and-set: trained from `served`, so deploy only if `served` is still served
        # (an operator's rollback or deploy meanwhile wins); the fence re-runs under the lock.
        ops.deploy(settings, version, reason=f"pipeline {run_id}", actor="pipeline",
                   expected_current=served, guard=fence)
    except ops.PointerMoved as exc:
        remove_work(work)
        return status.finish("superseded", version=version, error=f"not deployed: {exc}")
    swap = ops.confirm_swap(settings, version, timeout=settings.deploy_confirm_timeout_s)
    remove_work(work)
    if swap["confirmed"] is False:
        # A swap the replicas never confirm is a failed deploy: serve the parent again (unless
        # an operator moved the pointer meanwhile: theirs stands).
        try:
            ops.deploy(settings, served, reason=f"swap to {version} unconfirmed", actor="pipeline",
                       force=True, expected_current=version)
            reverted = served
        except ops.PointerMoved:
            reverted = None
        client.set(KEYS.pipeline_last_failure, time.time())
        return status.finish("failed", version=version, replicas_confirmed=False, reverted_to=reverted,
                             lagging_replicas=swap["lagging"],
                             error=f"{len(swap['lagging'])} of {swap['replicas']} replicas did not confirm "
                                   f"{version} within {settings.deploy_confirm_timeout_s}s")
    return status.finish("succeeded", version=version, replicas_confirmed=bool(swap["confirmed"]),
                         replicas=swap["replicas"])


def _mark_consumed(client: redis.Redis, run_id: str, total_before: int) -> None:
    """This run's feedback is learned (or had nothing to learn): stop counting it as new, for the
    datasets and for the event-count trigger. A failed run never gets here."""
    client.sadd(KEYS.consumed_runs, run_id)
    client.set(KEYS.last_snapshot_total, total_before)
