"""Every policy algorithm side by side on SmolLM2-135M-Instruct with the demo's simulated users:
same feedback budget per round, 3 rounds, the product's own dataset rules, training step and gate.

Per algorithm, starting from v0 (also the KL anchor), each round:
1. feedback: `--interactions` chats sample 2 answers each from the *served* policy (HF sampling,
   temperature 1), a simulated user (demo/personas.py) picks one and sometimes presses a thumb;
   events go through worker.datasets.build_training_sets exactly as in the pipeline;
2. the pipeline's training steps (worker/training.py): RM (when the algorithm needs one),
   then the policy, then the pipeline's gate (worker/gate.py), publish into a registry, and the
   candidate is served next round only if the gate passed;
3. the served version is scored on held-out prompts by the users' hidden preference
   (greedy answers, win-rate vs v0, a tie counts half).

Timed per round: feedback generation (not part of the service: users' chats), RM, policy (and the
gate with --gate). "round seconds" = RM + policy (+ gate) = what the service spends from feedback
to a new version, plus the gate and the swap (2.3 s measured in bench_hotswap). Without --gate
every candidate is served next round (a trainer without a gate), so the algorithms are compared
on their own learning; the gate is measured in the pipeline and the demo. Writes bench/results/algorithms.json and
docs/algorithms.png.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import REPO, machine_facts, write_result  # noqa: E402

# Bench defaults, sized for ~50 pairs per round on 2 cores (6 trainable blocks). PPO is the
# demo's measured preset; the others were set for a similar step size per round.
CONFIGS = {
    "ppo": {"steps": 8, "batch_size": 8, "mini_batch_size": 4, "max_new_tokens": 48, "lr": 7e-5,
            "init_kl_coef": 0.1},
    "rloo": {"steps": 8, "batch_size": 8, "k": 2, "max_new_tokens": 48, "lr": 5e-5, "init_kl_coef": 0.1},
    "online_dpo": {"steps": 8, "batch_size": 8, "max_new_tokens": 48, "lr": 2e-5, "beta": 0.1},
    "dpo": {"lr": 2e-5, "beta": 0.1, "epochs": 3},
    "kto": {"lr": 2e-5, "beta": 0.1, "epochs": 3},
}
RM_CONFIG = {"epochs": 2, "batch_size": 8, "lr": 5e-5}


def sample_feedback(policy_dir: Path, version: str, users, prompts: list[str], n: int, max_tokens: int,
                    rng: random.Random, round_no: int) -> list[dict]:
    """Snapshot-style records (event + joined answers) for n chats with 2 sampled answers each."""
    import torch

    from common.events import FeedbackEvent, StoredAnswer
    from trainer.evaluate import _sample
    from trainer.modeling import eos_token_ids, load_causal_lm, load_tokenizer
    tokenizer, model = load_tokenizer(policy_dir), load_causal_lm(policy_dir)
    chats = [(rng.choice(users), rng.choice(prompts)) for _ in range(n)]
    messages = [[{"role": "user", "content": p}] for _, p in chats for _ in range(2)]
    _, responses = _sample(model, tokenizer, messages, max_tokens, greedy=False, seed=rng.randrange(1 << 30))
    eos = set(eos_token_ids(model, tokenizer))
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    finished = [bool(r) and r[-1] in eos for r in responses]
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    records = []
    for i, (user, prompt) in enumerate(chats):
        answers = {}
        for j in range(2):
            rid = f"r{round_no}-{i}-{j}"
            answers[rid] = StoredAnswer(response_id=rid, request_id=f"q{round_no}-{i}", model_version=version,
                                        kind="chat", messages=[{"role": "user", "content": prompt}],
                                        prompt_key=f"k-{prompt}", text=texts[2 * i + j],
                                        finish_reason="stop" if finished[2 * i + j] else "length").model_dump()
        ids = list(answers)
        pair = [(texts[2 * i + j], finished[2 * i + j]) for j in range(2)]
        ev = FeedbackEvent(event_id=f"c{round_no}-{i}", kind="comparison", rater=user.user_id,
                           target="|".join(ids), response_ids=ids, choice=user.choose(*pair, prompt=prompt))
        records.append({"stream_id": f"{round_no}-{2 * i}", "event": ev.model_dump(), "answers": answers,
                        "snapshot_run": f"round{round_no}"})
        if user.rng.random() < 0.4:
            k = user.rng.randrange(2)
            ev = FeedbackEvent(event_id=f"t{round_no}-{i}", kind="thumb", rater=user.user_id, target=ids[k],
                               response_id=ids[k], rating=user.thumb(pair[k], prompt=prompt))
            records.append({"stream_id": f"{round_no}-{2 * i + 1}", "event": ev.model_dump(),
                            "answers": {ids[k]: answers[ids[k]]}, "snapshot_run": f"round{round_no}"})
    return records


def hidden_scores(policy_dir: Path, prompts: list[str], max_tokens: int, preference: str | None = None
                  ) -> tuple[list[float], list[str]]:
    from demo.personas import hidden_score
    from trainer.data import PromptItem
    from trainer.evaluate import generate_answers
    from trainer.modeling import load_tokenizer
    tok = load_tokenizer(policy_dir)
    answers = generate_answers(policy_dir, [PromptItem([{"role": "user", "content": p}]) for p in prompts],
                               max_new_tokens=max_tokens, greedy=True)
    finished = [len(tok(a, add_special_tokens=False).input_ids) < max_tokens - 1 for a in answers]
    return [hidden_score(a, f, p, preference=preference) for p, a, f in zip(prompts, answers, finished)], answers


def win_rate(scores: list[float], base: list[float]) -> float:
    return sum(1.0 if s > b + 1e-9 else 0.5 if abs(s - b) <= 1e-9 else 0.0 for s, b in zip(scores, base)) / len(base)


def run_algorithm(label: str, model: Path, args, prompts: dict, base_scores: list[float], root: Path) -> dict:  # noqa: C901
    """`label` = an algorithm name, optionally `name:variant` to run one algorithm under several
    `--config label=JSON` overrides in one bench run."""
    name = label.split(":", 1)[0]
    from common import artifacts
    from common.settings import Settings
    from demo.personas import make_population
    from trainer import algorithms
    from worker.datasets import build_training_sets
    from worker.gate import run_gate
    from trainer.data import PromptItem
    from trainer.evaluate import kl_between
    from worker.training import judge_reward_models, train_policy_step, train_reward_model_step
    kl_prompts = [PromptItem([{"role": "user", "content": p}]) for p in prompts["heldout"][: args.gate_prompts]]

    data = root / label.replace(":", "-")
    settings = Settings(data_dir=data, algorithm=name, algorithm_overrides=json.dumps(
        {**CONFIGS[name], "show_progress_bar": False, **json.loads(args.config.get(label, "{}"))}),
        rm_overrides=json.dumps({**RM_CONFIG, "show_progress_bar": False}),
        gate_eval_prompts=args.gate_prompts, gate_max_new_tokens=args.max_tokens, torch_threads=args.threads)
    reg = artifacts.policies(settings)
    served = reg.publish(model, {"parent": None, "note": "v0"})
    reg.set_current(served)
    users = make_population(16, args.seed, preference=args.preference)
    rng = random.Random(args.seed)
    records: list[dict] = []
    rounds = []
    trained_against = algorithms.get(name).needs_reward_model
    needs_rm = trained_against or (args.gate and settings.gate_train_rm)  # as the pipeline: a judge RM
    for rnd in range(1, args.rounds + 1):
        row: dict = {"round": rnd, "served_before": served}
        t = time.time()
        records += sample_feedback(reg.path(served), served, users, prompts["train"], args.interactions,
                                   args.max_tokens, rng, rnd)
        row["feedback_seconds"] = round(time.time() - t, 1)
        consumed = {f"round{i}" for i in range(1, rnd)}
        sets = build_training_sets(records, set(reg.versions()), settings.max_rater_share,
                                   settings.heldout_fraction, is_new=lambda r: r["snapshot_run"] not in consumed)
        stats = dict(sets.stats)
        row["data"] = {k: stats.get(k, 0) for k in ("votes_used", "pairs", "new_pairs", "rated", "eval_pairs",
                                                    "ties_skipped", "both_bad")}
        work = data / "work" / f"round{rnd}"
        work.mkdir(parents=True)
        rm_dir = None
        t = time.time()
        if needs_rm:
            _, rm_dir, rm_metrics = train_reward_model_step(settings, sets, f"round{rnd}", reg.path(served), work,
                                                            stats, None)
            row["rm_heldout_accuracy"] = rm_metrics.get("heldout_accuracy")
        row["rm_seconds"] = round(time.time() - t, 1)
        t = time.time()
        policy_dir, result, meta = train_policy_step(settings, sets, f"round{rnd}", served, "v0",
                                                     rm_dir if trained_against else None, work, stats, None)
        row["policy_seconds"] = round(time.time() - t, 1)
        t = time.time()
        if args.gate:
            own = rm_dir if trained_against else None
            gate = run_gate(policy_dir, reg.path(served), reg.path("v0"), sets.heldout_prompts or sets.train_prompts,
                            settings, judges=judge_reward_models(settings, exclude=own.name if own else None),
                            own_rm=own, own_rm_accuracy=row.get("rm_heldout_accuracy") if own else None,
                            eval_pairs=sets.eval_pairs)
            kl = gate["metrics"].get("kl_to_anchor")
        else:  # every candidate is served next round, as in a trainer without a gate
            gate = {"passed": True, "reasons": [], "metrics": {}}
            kl = kl_between(policy_dir, reg.path("v0"), kl_prompts, args.max_tokens, n_samples=2)
        row["gate_seconds"] = round(time.time() - t, 1)
        row["round_seconds"] = round(row["rm_seconds"] + row["policy_seconds"] + (row["gate_seconds"] if args.gate else 0), 1)
        version = reg.publish(policy_dir, {"parent": served, "gate": gate, **meta, "kl_to_anchor": kl}, move=True)
        row.update(candidate=version, gate_passed=gate["passed"], gate_reasons=gate["reasons"],
                   candidate_kl_to_anchor=kl, candidate_pref_accuracy=gate["metrics"].get("pref_accuracy"),
                   candidate_rm_gain=gate["metrics"].get("rm_gain"))
        scores, answers = hidden_scores(reg.path(version), prompts["heldout"][: args.eval_prompts], args.max_tokens,
                                        args.preference)
        row["candidate_win_rate_vs_v0"] = win_rate(scores, base_scores)
        row["candidate_mean_words"] = sum(len(a.split()) for a in answers) / len(answers)
        row["candidate_examples"] = answers[:3]
        if gate["passed"]:
            served = version
            reg.set_current(served)
        row["served_after"] = served
        shutil.rmtree(work, ignore_errors=True)
        rounds.append(row)
        print(json.dumps({"algorithm": name, **{k: v for k, v in row.items() if k != "candidate_examples"}}),
              flush=True)
    served_row = next((r for r in reversed(rounds) if r["candidate"] == served), None)
    return {"rounds": rounds, "final_served": served,
            "final_win_rate_vs_v0": served_row["candidate_win_rate_vs_v0"] if served_row else 0.5,
            "final_kl_to_anchor": served_row["candidate_kl_to_anchor"] if served_row else 0.0,
            "mean_round_seconds": sum(r["round_seconds"] for r in rounds) / len(rounds),
            "config": json.loads(settings.algorithm_overrides)}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name, res in results.items():
        rounds = [0] + [r["round"] for r in res["rounds"]]
        axes[0].plot(rounds, [0.5] + [r["candidate_win_rate_vs_v0"] for r in res["rounds"]], marker="o", label=name)
        axes[1].plot(rounds, [0.0] + [r["candidate_kl_to_anchor"] or 0 for r in res["rounds"]], marker="o", label=name)
        axes[2].bar(name, res["mean_round_seconds"])
    axes[0].set(title="candidate win-rate vs v0 (held-out, hidden taste)", xlabel="round", ylim=(0, 1))
    axes[1].set(title="candidate KL to anchor (nats/answer)", xlabel="round")
    axes[2].set(title="training seconds per round (RM + policy)")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithms", default="dpo,kto,rloo,online_dpo,ppo")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--interactions", type=int, default=32, help="chats (n=2 comparisons) per round")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--eval-prompts", type=int, default=20)
    p.add_argument("--gate-prompts", type=int, default=8, help="held-out prompts for KL (and the gate)")
    p.add_argument("--gate", action="store_true", help="run the pipeline's gate each round (slower); "
                   "default: serve every candidate and measure KL to the anchor directly")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preference", default=None, help="demo preference (default: the demo's default)")
    p.add_argument("--model", help="HF folder (default: SmolLM2-135M-Instruct from the wheel)")
    p.add_argument("--config", action="append", default=[], metavar="ALGO=JSON", help="config overrides")
    p.add_argument("--out", default="algorithms")
    args = p.parse_args()
    args.config = dict(c.split("=", 1) for c in args.config)
    import torch
    torch.set_num_threads(args.threads)
    prompts = json.loads((REPO / "demo" / "data" / "prompts.json").read_text())
    root = Path(tempfile.mkdtemp(prefix="bench-algos-"))
    started = time.time()
    facts = machine_facts()
    try:
        if args.model:
            model = Path(args.model)
        else:
            from common.smollm2 import ensure_smollm2
            model = ensure_smollm2(os.environ.get("RLHF_DATA_DIR", ".rlhf-data"))
        base_scores, _ = hidden_scores(model, prompts["heldout"][: args.eval_prompts], args.max_tokens,
                                       args.preference)
        results = {}
        for name in args.algorithms.split(","):
            results[name] = run_algorithm(name, model, args, prompts, base_scores, root)
            write_result(args.out, {"machine": facts, "args": vars(args), "results": results,
                                    "seconds": round(time.time() - started, 1), "complete": False})
        write_result(args.out, {"machine": facts, "args": vars(args), "results": results,
                                "seconds": round(time.time() - started, 1), "complete": True})
        plot(results, REPO / "docs" / f"{args.out}.png")
        print(json.dumps({n: {k: r[k] for k in ("final_win_rate_vs_v0", "final_kl_to_anchor", "mean_round_seconds")}
                          for n, r in results.items()}, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
