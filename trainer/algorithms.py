"""The policy algorithms a deployment can select, by name: config class, what data each needs, and
one entry point `train_policy(name, job, overrides)`.

| name        | learns from                          | reward model | critic |
|-------------|--------------------------------------|--------------|--------|
| ppo         | prompts, RM-scored samples           | yes          | yes    |
| rloo        | prompts, k RM-scored samples each    | yes          | no     |
| online_dpo  | prompts, 2 samples labelled by the RM| yes          | no     |
| raft        | prompts, best of k RM-ranked samples | yes          | no     |
| dpo         | human pairs                          | no           | no     |
| kto         | thumbs (+ pair answers, optional)    | no           | no     |
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

from trainer.config import DPOConfig, KTOConfig, OnlineDPOConfig, PPOConfig, RAFTConfig, RLOOConfig
from trainer.policy_base import PolicyJob, Progress


@dataclass(frozen=True)
class Algorithm:
    name: str
    config_class: type
    needs_reward_model: bool
    run: Callable[..., dict]
    uses_kl_controller: bool = False   # resumes the parent's β
    has_critic: bool = False


def _ppo(job, config, progress):
    from trainer.ppo import run_ppo
    return run_ppo(job, config, progress=progress)


def _rloo(job, config, progress):
    from trainer.online import run_rloo
    return run_rloo(job, config, progress=progress)


def _online_dpo(job, config, progress):
    from trainer.online import run_online_dpo
    return run_online_dpo(job, config, progress=progress)


def _raft(job, config, progress):
    from trainer.rejection import run_raft
    return run_raft(job, config, progress=progress)


def _dpo(job, config, progress):
    from trainer.offline import run_dpo
    return run_dpo(job, config, progress=progress)


def _kto(job, config, progress):
    from trainer.offline import run_kto
    return run_kto(job, config, progress=progress)


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in [
    Algorithm("ppo", PPOConfig, True, _ppo, uses_kl_controller=True, has_critic=True),
    Algorithm("rloo", RLOOConfig, True, _rloo, uses_kl_controller=True),
    Algorithm("online_dpo", OnlineDPOConfig, True, _online_dpo),
    Algorithm("raft", RAFTConfig, True, _raft),
    Algorithm("dpo", DPOConfig, False, _dpo),
    Algorithm("kto", KTOConfig, False, _kto),
]}


def get(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def make_config(name: str, overrides: dict | None = None):
    """The algorithm's config from its defaults plus `overrides` (unknown fields are an error)."""
    cls = get(name).config_class
    known = {f.name for f in fields(cls)}
    unknown = set(overrides or {}) - known
    if unknown:
        raise ValueError(f"{name}: unknown config fields {sorted(unknown)}; known: {sorted(known)}")
    return cls(**(overrides or {}))


def train_policy(name: str, job: PolicyJob, config=None, progress: Progress | None = None) -> dict:
    """Train `job.policy_dir` with algorithm `name` into `job.out_dir`; returns the final metrics."""
    algo = get(name)
    config = config if config is not None else algo.config_class()
    if not isinstance(config, algo.config_class):
        raise TypeError(f"{name} needs a {algo.config_class.__name__}, got {type(config).__name__}")
    if algo.needs_reward_model and job.reward_model_dir is None:
        raise ValueError(f"{name} needs a reward model")
    return algo.run(job, config, progress)
