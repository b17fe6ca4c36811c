"""The pipeline's two training steps, as orchestration over `trainer`: the reward model (when the
deployment's algorithm needs one) and the policy, with every artifact published into its registry.

What each run trains on: the feedback that is new since the last *completed* run, plus a replay
sample of older feedback (`rm_replay_ratio` old examples per new one), for the RM and for the
offline algorithms alike, so a round's cost stays flat and old votes are not re-applied in full
on a policy that already learned them.
"""
from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

from common import artifacts
from common.settings import Settings


def replay_mix(new: list, every: list, replay_ratio: float, seed: str) -> list:
    """`new` plus round(replay_ratio * len(new)) examples sampled from the rest of `every`;
    replay_ratio < 0 (or nothing new) = all of `every`."""
    if replay_ratio < 0 or not new:
        return list(every)
    fresh = {id(x) for x in new}
    old = [x for x in every if id(x) not in fresh]
    return list(new) + random.Random(seed).sample(old, min(len(old), int(round(replay_ratio * len(new)))))


def rm_training_data(sets, warm_start: bool, replay_ratio: float, seed: str):
    """What the RM trains on this run: everything for a fresh RM; for one warm-started from the
    previous RM, this run's new examples plus `replay_ratio` old ones per new one."""
    if not warm_start or replay_ratio < 0 or not (sets.new_pairs or sets.new_rated):
        return sets.pairs, sets.rated
    return (replay_mix(sets.new_pairs, sets.pairs, replay_ratio, seed),
            replay_mix(sets.new_rated, sets.rated, replay_ratio, seed))


def train_reward_model_step(settings: Settings, sets, run_id: str, base_dir: Path, work: Path,
                            stats: dict, progress) -> tuple[str, Path, dict]:
    """Train (a transformer RM warm-started from the newest published transformer RM) and publish;
    returns (id, folder, metrics)."""
    from trainer.config import RMConfig
    from trainer.embedding_rm import is_embedding_rm
    from trainer.reward_model import train_reward_model
    config = RMConfig(**json.loads(settings.rm_overrides or "{}"))
    rms = artifacts.reward_models(settings)
    # An embedding RM refits its small head on all feedback in seconds: nothing to warm-start; and a
    # transformer RM cannot start from an embedding RM (a deployment that switched kinds).
    latest = rms.latest() if config.kind == "transformer" else None
    warm_id = latest if latest and not is_embedding_rm(rms.path(latest)) else None
    warm = rms.path(warm_id) if warm_id else None
    pairs, rated = rm_training_data(sets, warm is not None, settings.rm_replay_ratio, run_id)
    stats.update(rm_pairs=len(pairs), rm_rated=len(rated))
    out = work / "reward_model"
    metrics = train_reward_model(pairs, rated, base_dir, out, config=config,
                                 warm_start=warm, eval_pairs=sets.eval_pairs or None, progress=progress)
    rm_id = rms.publish(out, {"run_id": run_id, "warm_start": warm_id, "base": str(base_dir),
                              "metrics": scalars(metrics)}, move=True)
    return rm_id, rms.path(rm_id), metrics


def policy_config(settings: Settings):
    from trainer import algorithms
    overrides = json.loads(settings.ppo_overrides or "{}") if settings.algorithm == "ppo" else {}
    overrides.update(json.loads(settings.algorithm_overrides or "{}"))
    return algorithms.make_config(settings.algorithm, overrides)


def train_policy_step(settings: Settings, sets, run_id: str, served: str, anchor: str, rm_dir: Path | None,
                      work: Path, stats: dict, progress) -> tuple[Path, dict, dict]:
    """Train the deployment's algorithm from the served version against the anchor.

    Returns (policy folder, final metrics, metadata for the version: algorithm, config, anchor,
    kl_state, critic id). PPO's critic is published into the critics registry here.
    """
    from dataclasses import asdict

    from trainer import algorithms
    from trainer.policy_base import PolicyJob
    policies = artifacts.policies(settings)
    served_meta = policies.metadata(served)
    algo = algorithms.get(settings.algorithm)
    config = policy_config(settings)
    critic_id = served_meta.get("critic") if algo.has_critic else None
    critics = artifacts.critics(settings)
    pairs = replay_mix(sets.new_pairs, sets.pairs, settings.rm_replay_ratio, run_id)
    rated = replay_mix(sets.new_rated, sets.rated, settings.rm_replay_ratio, run_id)
    stats.update(policy_pairs=len(pairs), policy_rated=len(rated))
    job = PolicyJob(policies.path(served), policies.path(anchor), work / "policy", prompts=sets.train_prompts,
                    pairs=pairs, rated=rated, reward_model_dir=rm_dir,
                    critic_dir=critics.path(critic_id) if critic_id and critics.exists(critic_id) else None,
                    kl_state=served_meta.get("kl_state") if served_meta.get("algorithm") == algo.name else None,
                    kl_budget=settings.kl_budget, served_kl_to_anchor=served_kl_to_anchor(served_meta, served, anchor))
    result = algorithms.train_policy(algo.name, job, config, progress=progress)
    meta = {"algorithm": algo.name, "config": asdict(config), "anchor": anchor,
            "kl_state": result.get("kl_state"), "critic": None}
    critic_dir = job.out_dir / "critic"
    if critic_dir.exists():
        meta["critic"] = critics.publish(critic_dir, {"run_id": run_id, "policy_parent": served,
                                                      "init": result.get("critic_init")}, move=True)
    return job.out_dir, result, meta


def served_kl_to_anchor(served_meta: dict, served: str, anchor: str) -> float | None:
    """The served version's KL to today's anchor as its gate measured it: 0 for the anchor itself;
    None when unknown (no finite record, or it was measured against another anchor)."""
    if served == anchor:
        return 0.0
    kl = served_meta.get("kl_to_anchor")
    if served_meta.get("anchor") != anchor or not isinstance(kl, (int, float)) or not math.isfinite(kl):
        return None
    return float(kl)


def judge_reward_models(settings: Settings, exclude: str | None = None) -> list[Path]:
    """Published RMs newest first, except `exclude` (the one the candidate was trained against)."""
    rms = artifacts.reward_models(settings)
    return [rms.path(v) for v in reversed(rms.versions()) if v != exclude][: settings.gate_judges]


def scalars(metrics: dict) -> dict:
    """The JSON-plain scalars of a metrics dict (what version metadata keeps)."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool))}


def remove_work(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
