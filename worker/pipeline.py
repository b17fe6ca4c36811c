"""The retrain pipeline: snapshot -> datasets -> reward model -> PPO -> gate -> publish -> deploy.

Orchestration only: the maths lives in `trainer`, the storage contracts in `common`. Progress
goes to one Redis hash (`rlhf status`, /admin/status and the demo read it).
"""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import redis

from common import ops
from common.keys import KEYS
from common.settings import Settings
from worker.datasets import build_training_sets
from worker.snapshot import load_snapshots, take_snapshot

STEPS = ["snapshot", "datasets", "reward_model", "ppo", "gate", "publish", "deploy"]


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
            self.client.hset(KEYS.pipeline_status, mapping={
                k: v if isinstance(v, (str, int, float)) else json.dumps(v, default=str)
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

    def finish(self, state: str, **extra) -> dict:
        self._close_step()
        self.fields.update(state=state, finished=time.time(), **extra)
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
                 force: bool = False) -> dict:
    if settings.torch_threads > 0:
        import torch
        torch.set_num_threads(settings.torch_threads)
    client = ops.client(settings)
    status = StatusWriter(client, run_id, reason)
    try:
        return _run_steps(settings, run_id, reason, force, client, status)
    except Exception as exc:
        # Recorded in the history too, so `rlhf status` and the demo see the failure at once.
        status.finish("failed", error=repr(exc)[:2000])
        raise


def _run_steps(settings: Settings, run_id: str, reason: str, force: bool,
               client: redis.Redis, status: StatusWriter) -> dict:
    from trainer.config import PPOConfig, RMConfig
    from trainer.data import write_jsonl
    from trainer.ppo import run_ppo
    from trainer.reward_model import train_reward_model
    from worker.gate import run_gate

    reg = ops.registry(settings)
    removed = reg.cleanup_partial()  # temp folders of publishes that died midway
    served = reg.current()
    if served is None:
        return status.finish("failed", error="no version is being served yet (start `rlhf serve`)")
    served_dir = reg.path(served)
    work = Path(settings.data_dir) / "work" / run_id
    shutil.rmtree(work, ignore_errors=True)  # a redelivered run starts from a clean folder
    work.mkdir(parents=True)

    status.step("snapshot", served=served, cleaned=removed)
    total_before = int(client.hget(KEYS.feedback_counts, "total") or 0)
    snap = take_snapshot(client, settings.snapshots_dir, run_id)
    client.set(KEYS.last_snapshot_total, total_before)
    client.set(KEYS.pipeline_last_run, time.time())
    if snap.events == 0 and not force:
        return status.finish("skipped", error="no new feedback since the last run")

    status.step("datasets", new_events=snap.events)
    sets = build_training_sets(load_snapshots(settings.snapshots_dir), set(reg.versions()),
                               settings.max_rater_share, settings.heldout_fraction,
                               is_new=lambda rec: rec.get("snapshot_run") == run_id)
    stats = dict(sets.stats)
    status.fields["data"] = stats
    if not sets.pairs and not sets.rated:
        return status.finish("skipped", error="no usable preference data yet")
    if not sets.train_prompts:
        return status.finish("skipped", error="no training prompts")
    for name, items in [("pairs", sets.pairs), ("eval_pairs", sets.eval_pairs),
                        ("rated", sets.rated), ("train_prompts", sets.train_prompts),
                        ("heldout_prompts", sets.heldout_prompts)]:
        write_jsonl(work / f"{name}.jsonl", items)

    status.step("reward_model")
    rm_root = Path(settings.data_dir) / "reward_models"
    latest_file = rm_root / "LATEST"
    warm = rm_root / latest_file.read_text().strip() if latest_file.exists() else None
    if warm is not None and not warm.exists():
        warm = None
    rm_work = work / "reward_model"
    rm_pairs, rm_rated = rm_training_data(sets, warm is not None, settings.rm_replay_ratio, run_id)
    stats.update(rm_pairs=len(rm_pairs), rm_rated=len(rm_rated))
    rm_metrics = train_reward_model(
        rm_pairs, rm_rated, served_dir, rm_work, config=_overrides(RMConfig, settings.rm_overrides),
        warm_start=warm, eval_pairs=sets.eval_pairs or None, progress=status.progress)
    rm_dir = rm_root / f"rm-{run_id}"
    rm_root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(rm_dir, ignore_errors=True)
    shutil.move(str(rm_work), rm_dir)
    (rm_root / "LATEST.tmp").write_text(rm_dir.name)
    (rm_root / "LATEST.tmp").replace(latest_file)

    status.step("ppo")
    policy_work = work / "policy"
    ppo_metrics = run_ppo(served_dir, rm_dir, sets.train_prompts, policy_work,
                          config=_overrides(PPOConfig, settings.ppo_overrides),
                          progress=status.progress)

    status.step("gate")
    gate_prompts = sets.heldout_prompts
    if not gate_prompts:  # tiny data sets: better a gate on seen prompts than none
        gate_prompts = sets.train_prompts
        stats["gate_prompts_not_heldout"] = True
    gate = run_gate(policy_work, served_dir, rm_dir, gate_prompts, settings)

    status.step("publish", gate=gate)
    meta = {"parent": served, "run_id": run_id, "reason": reason, "snapshot": str(snap.path),
            "reward_model": str(rm_dir), "data": stats, "gate": gate,
            "metrics": {"reward_model": _scalars(rm_metrics), "ppo": _scalars(ppo_metrics),
                        "gate": gate["metrics"]}}
    version = reg.publish(policy_work, meta, move=True)
    if not gate["passed"]:
        shutil.rmtree(work, ignore_errors=True)
        return status.finish("rejected", version=version, error="; ".join(gate["reasons"]))

    status.step("deploy", version=version)
    ops.deploy(settings, version, reason=f"pipeline {run_id}", actor="pipeline")
    deployed = ops.wait_for_replicas(settings, version, timeout=120)
    shutil.rmtree(work, ignore_errors=True)
    return status.finish("succeeded", version=version, replicas_confirmed=deployed)


def rm_training_data(sets, warm_start: bool, replay_ratio: float, seed: str):
    """What the RM trains on this run: everything for a fresh RM; for one warm-started from the
    previous RM, this run's new examples plus `replay_ratio` old ones per new one."""
    if not warm_start or replay_ratio < 0 or not (sets.new_pairs or sets.new_rated):
        return sets.pairs, sets.rated
    rng = random.Random(seed)

    def mix(new: list, every: list) -> list:
        fresh = {id(x) for x in new}
        old = [x for x in every if id(x) not in fresh]
        return new + rng.sample(old, min(len(old), int(round(replay_ratio * len(new)))))
    return mix(sets.new_pairs, sets.pairs), mix(sets.new_rated, sets.rated)


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool))}
