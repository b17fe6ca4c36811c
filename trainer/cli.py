"""`rlhf train-rm` and `rlhf ppo`. torch/transformers are imported inside the handlers so that
`rlhf --help` stays instant. Both print their final metrics as one JSON object on stdout."""
from __future__ import annotations

import argparse
import json
import typing
from dataclasses import fields
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser("train-rm", help="train a reward model on preference pairs (+ thumbs)")
    p.add_argument("--data", help="JSONL of PreferencePair records")
    p.add_argument("--rated", help="JSONL of RatedAnswer records (thumbs up/down)")
    p.add_argument("--eval-data", help="JSONL of held-out PreferencePair records (default: split --data)")
    p.add_argument("--base", required=True, help="model folder to initialise the RM from (usually the policy)")
    p.add_argument("--out", required=True, help="new folder for the RM (must not exist or be empty)")
    p.add_argument("--warm-start", help="previous RM folder to continue from instead of --base")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    _common(p)
    p.set_defaults(handler=_train_rm)

    p = sub.add_parser("train-policy", help="train a policy with one algorithm (ppo, rloo, dpo, online_dpo, raft, kto)")
    p.add_argument("--algorithm", required=True, help="ppo | rloo | dpo | online_dpo | raft | kto")
    p.add_argument("--policy", required=True, help="policy HF folder to start from")
    p.add_argument("--reference", help="KL anchor folder (default: --policy)")
    p.add_argument("--reward-model", help="folder written by train-rm (ppo, rloo, online_dpo, raft)")
    p.add_argument("--critic", help="critic folder of a previous PPO run (default: from the RM)")
    p.add_argument("--prompts", help="JSONL of PromptItem records (ppo, rloo, online_dpo, raft)")
    p.add_argument("--pairs", help="JSONL of PreferencePair records (dpo; kto with use_pairs)")
    p.add_argument("--rated", help="JSONL of RatedAnswer records (kto)")
    p.add_argument("--out", required=True, help="new folder for the policy (must not exist or be empty)")
    _common(p)
    p.set_defaults(handler=_train_policy)

    p = sub.add_parser("ppo", help="run PPO on a policy against a reward model")
    p.add_argument("--policy", required=True, help="policy HF folder to start from")
    p.add_argument("--reference", help="KL anchor folder (default: --policy)")
    p.add_argument("--reward-model", required=True, help="folder written by train-rm")
    p.add_argument("--prompts", required=True, help="JSONL of PromptItem records")
    p.add_argument("--eval-prompts", help="JSONL of PromptItem records scored (greedy) before/after")
    p.add_argument("--out", required=True, help="new folder for the policy (must not exist or be empty)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--mini-batch-size", type=int)
    p.add_argument("--ppo-epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--kl-estimator", choices=["k1", "k3"])
    p.add_argument("--init-kl-coef", type=float)
    p.add_argument("--kl-target", type=float)
    p.add_argument("--kl-horizon", type=int)
    _common(p)
    p.set_defaults(handler=_ppo)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trainable-layers", type=int, help="train only the top N transformer blocks")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, dest="num_threads", help="torch threads")
    p.add_argument("--no-progress", action="store_false", dest="show_progress_bar", default=None)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other config field, e.g. --set cliprange=0.1 (repeatable)")


def build_config(cls, args: argparse.Namespace):
    """Config from its defaults, the explicit flags that were given, then --set overrides."""
    hints = typing.get_type_hints(cls)
    values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    for item in args.set:
        name, sep, raw = item.partition("=")
        if not sep or name not in hints:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(hints)}")
        values[name] = _parse(raw, hints[name])
    return cls(**values)


def _parse(raw: str, hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if raw.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    target = args[0] if args and typing.get_origin(hint) is typing.Union else hint
    if target is bool:
        return raw.lower() in ("1", "true", "yes", "on")
    if typing.get_origin(target) is typing.Literal:
        return raw
    return target(raw)


def _train_rm(args) -> int:
    from trainer.config import RMConfig
    from trainer.data import read_pairs, read_rated
    from trainer.reward_model import train_reward_model
    if not args.data and not args.rated:
        raise SystemExit("train-rm needs --data and/or --rated")
    metrics = train_reward_model(
        read_pairs(args.data) if args.data else [], read_rated(args.rated) if args.rated else [],
        args.base, args.out, build_config(RMConfig, args), warm_start=args.warm_start,
        eval_pairs=read_pairs(args.eval_data) if args.eval_data else None)
    print(json.dumps(metrics))
    return 0


def _ppo(args) -> int:
    from trainer.config import PPOConfig
    from trainer.data import read_prompts
    from trainer.policy_base import PolicyJob
    from trainer.ppo import run_ppo
    job = PolicyJob(Path(args.policy), Path(args.reference or args.policy), Path(args.out),
                    prompts=read_prompts(args.prompts), reward_model_dir=Path(args.reward_model))
    result = run_ppo(job, build_config(PPOConfig, args),
                     eval_prompts=read_prompts(args.eval_prompts) if args.eval_prompts else None)
    print(json.dumps(result, default=str))
    return 0


def _train_policy(args) -> int:
    from trainer import algorithms
    from trainer.data import read_pairs, read_prompts, read_rated
    from trainer.policy_base import PolicyJob
    algo = algorithms.get(args.algorithm)
    path = lambda x: Path(x) if x else None  # noqa: E731
    job = PolicyJob(Path(args.policy), Path(args.reference or args.policy), Path(args.out),
                    prompts=read_prompts(args.prompts) if args.prompts else [],
                    pairs=read_pairs(args.pairs) if args.pairs else [],
                    rated=read_rated(args.rated) if args.rated else [],
                    reward_model_dir=path(args.reward_model), critic_dir=path(args.critic))
    result = algorithms.train_policy(args.algorithm, job, build_config(algo.config_class, args))
    print(json.dumps(result, default=str))
    return 0
