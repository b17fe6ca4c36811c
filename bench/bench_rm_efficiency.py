"""Reward-model sample efficiency on live-style data: held-out pair accuracy after N comparison
pairs, for each built-in preference of the demo's simulated users (issue target: >= 75% after 200).

Data, as the service sees it: answers sampled from v0 (SmolLM2-135M-Instruct, temperature 1,
`--max-tokens` like the demo's users, each answer with its finished/cut-off flag), two per chat;
a user drawn from the preference's population (noise, random clickers and adversaries included)
picks one; ties and both-bad are skipped as `worker/datasets.py` does. Prompts are split in two:
train pairs come from one half, held-out pairs from the other (the RM never saw those prompts).

Accuracy is reported two ways on the held-out pairs:
- `acc_votes`: agreement with the users' own clicks (noisy: random/adversarial raters included);
- `acc_truth`: agreement with the preference's hidden score (`demo.personas.hidden_score`), on the
  pairs whose hidden scores differ — what the RM is meant to learn.
Plus the Pearson correlation of the RM's scores with answer length on the held-out answers.

    .venv/bin/python bench/bench_rm_efficiency.py                    # 3 preferences, N = 50,100,200
    .venv/bin/python bench/bench_rm_efficiency.py --sizes 200 --variant head_only='{"trainable_layers":0,"lr":1e-3,"epochs":4}'
    .venv/bin/python bench/bench_rm_efficiency.py --variant embedding='{}' \
        --variant transformer='{"kind":"transformer","epochs":2,"batch_size":8,"lr":5e-5}'   # the two RM kinds

The answer pool is cached in RLHF_DATA_DIR/bench-cache (sampling 600+ answers takes minutes).
Writes bench/results/rm_efficiency.json.
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

# What the pipeline trains with in the demo (demo/cli.py PRESETS["default"].rm), on top of RMConfig.
# Until session 12 that was the fine-tuned transformer RM: {"kind": "transformer", "epochs": 2,
# "batch_size": 8, "lr": 5e-5}.
DEMO_RM = {"kind": "embedding"}

# A taste written nowhere in the product (not in demo/personas.py, not in the RM's feature list): how
# the RM does on a preference it was not designed around (`--preferences ...,unwritten`).
CAUSAL = ("because", "since", "due to", "so that", "which means", "therefore", "as a result", "causes", "caused")
HEDGES = ("maybe", "might", "perhaps", "i think", "not sure", "possibly", "probably", "it depends")


def register_unwritten_preference() -> None:
    """Adds 'unwritten' to the demo's preferences for this process only: users who want the reason
    why (a causal connective) and no hedging, a few sentences long."""
    from demo import personas as ps
    ps.FACTORS["explains_why"] = ps.Factor(lambda p, t, f=True: float(any(c in t.lower() for c in CAUSAL)))
    ps.FACTORS["no_hedging"] = ps.Factor(lambda p, t, f=True: 0.0 if any(h in t.lower() for h in HEDGES) else 1.0)
    main_persona = ps.Persona("reasoner", 0.7, 0.1, {"explains_why": 0.5, "no_hedging": 0.3, "moderate_length": 0.2})
    ps.PREFERENCES["unwritten"] = ps.Preference("unwritten", "Wants the reason why, without hedging.", [
        main_persona, ps.Persona("sure", 0.15, 0.1, {"no_hedging": 0.6, "moderate_length": 0.4}),
        ps._random(), ps._adversary_of(main_persona)])


def answer_pool(model_dir: Path, prompts: list[str], per_prompt: int, max_tokens: int, seed: int,
                cache: Path) -> list[dict]:
    """[{prompt, text, finished}] sampled from the model, cached by its arguments."""
    key = cache / f"pool-{len(prompts)}x{per_prompt}-{max_tokens}-{seed}.json"
    if key.exists():
        return json.loads(key.read_text())
    import torch

    from trainer.device import resolve_device
    from trainer.evaluate import _sample
    from trainer.modeling import eos_token_ids, load_causal_lm, load_tokenizer
    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir, resolve_device("auto"))
    eos = set(eos_token_ids(model, tokenizer))
    out = []
    step = 16 if model.device.type == "cpu" else 128
    for i in range(0, len(prompts), step):  # chunks: bounded memory, visible progress
        chunk = prompts[i:i + step]
        msgs = [[{"role": "user", "content": p}] for p in chunk for _ in range(per_prompt)]
        _, responses = _sample(model, tokenizer, msgs, max_tokens, greedy=False, seed=seed + i)
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        out += [{"prompt": m[0]["content"], "text": t, "finished": bool(r) and r[-1] in eos}
                for m, t, r in zip(msgs, texts, responses)]
        print(f"sampled {len(out)} answers", flush=True)
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    cache.mkdir(parents=True, exist_ok=True)
    key.write_text(json.dumps(out))
    return out


def votes(pool: list[dict], prompts: set[str], preference: str, n_users: int, seed: int):
    """(PreferencePair, truth_sign) for every voted chat on `prompts`: two answers of one prompt,
    one simulated user's click; truth_sign = +1 if the hidden score agrees with the click, -1 if it
    disagrees, 0 if the hidden scores tie."""
    from demo.personas import hidden_score, make_population
    from trainer.data import PreferencePair
    rng = random.Random(seed)
    users = make_population(n_users, seed, preference=preference)
    by_prompt: dict[str, list[dict]] = {}
    for a in pool:
        if a["prompt"] in prompts:
            by_prompt.setdefault(a["prompt"], []).append(a)
    out = []
    for prompt, answers in sorted(by_prompt.items()):
        rng.shuffle(answers)
        for a, b in zip(answers[0::2], answers[1::2]):
            user = rng.choice(users)
            choice = user.choose((a["text"], a["finished"]), (b["text"], b["finished"]), prompt=prompt)
            if choice not in ("a", "b"):
                continue
            chosen, rejected = (a, b) if choice == "a" else (b, a)
            hc = hidden_score(chosen["text"], chosen["finished"], prompt, preference=preference)
            hr = hidden_score(rejected["text"], rejected["finished"], prompt, preference=preference)
            truth = 0 if abs(hc - hr) < 1e-9 else (1 if hc > hr else -1)
            out.append((PreferencePair([{"role": "user", "content": prompt}], chosen["text"], rejected["text"],
                                       chosen_finished=chosen["finished"], rejected_finished=rejected["finished"]),
                        truth))
    rng.shuffle(out)
    return out


def evaluate(rm_dir: Path, heldout) -> dict:
    from trainer.ppo_math import pearson_correlation
    from trainer.reward_model import RewardModel
    import torch
    from trainer.device import resolve_device
    rm = RewardModel.load(rm_dir, resolve_device("auto"))
    pairs = [p for p, _ in heldout]
    rc = rm.score([p.messages for p in pairs], [p.chosen for p in pairs], [p.chosen_finished for p in pairs])
    rr = rm.score([p.messages for p in pairs], [p.rejected for p in pairs], [p.rejected_finished for p in pairs])
    agree = [c > r for c, r in zip(rc, rr)]
    truth = [(a if t > 0 else not a) for a, (_, t) in zip(agree, heldout) if t != 0]
    lengths = torch.tensor([float(len(rm.tokenizer(x, add_special_tokens=False).input_ids))
                            for p in pairs for x in (p.chosen, p.rejected)])
    scores = torch.tensor([s for pair in zip(rc, rr) for s in pair])
    return {"acc_votes": sum(agree) / len(agree), "acc_truth": sum(truth) / max(1, len(truth)),
            "heldout_pairs": len(agree), "truth_pairs": len(truth),
            "vote_truth_agreement": sum(t > 0 for _, t in heldout if t) / max(1, sum(1 for _, t in heldout if t)),
            "length_correlation": float(pearson_correlation(scores, lengths))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preferences", default="balanced,formal_expert,concise_warm")
    p.add_argument("--sizes", default="50,100,200", help="training pairs per measurement")
    p.add_argument("--per-prompt", type=int, default=10, help="answers sampled per prompt for the pool")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                   help="RMConfig overrides on top of the demo's RM config (default: the demo's own)")
    p.add_argument("--seed", type=int, default=0, help="seeds the answer pool (cached per seed), split and votes")
    p.add_argument("--split-seed", type=int, help="seeds the prompt split and the votes alone (default: --seed): "
                   "another draw of the same cached pool")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", help="HF folder (default: SmolLM2-135M-Instruct from the wheel)")
    p.add_argument("--limit-prompts", type=int, default=0, help="use only the first N prompts (smoke test)")
    p.add_argument("--out", default="rm_efficiency")
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    from common.smollm2 import ensure_smollm2
    from trainer.config import RMConfig
    from trainer.reward_model import train_reward_model
    register_unwritten_preference()
    data_dir = Path(os.environ.get("RLHF_DATA_DIR", REPO / ".rlhf-data"))
    model = Path(args.model) if args.model else ensure_smollm2(data_dir)
    prompts = json.loads((REPO / "demo" / "data" / "prompts.json").read_text())
    every = prompts["train"] + prompts["heldout"]
    every = every[: args.limit_prompts] if args.limit_prompts else every
    pool = answer_pool(model, every, args.per_prompt, args.max_tokens, args.seed, data_dir / "bench-cache")
    split_seed = args.seed if args.split_seed is None else args.split_seed
    rng = random.Random(split_seed)
    shuffled = list(every)
    rng.shuffle(shuffled)
    train_prompts, heldout_prompts = set(shuffled[: len(shuffled) * 2 // 3]), set(shuffled[len(shuffled) * 2 // 3:])
    variants = {"demo": {}} if not args.variant else {}
    variants.update({k: json.loads(v) for k, v in (x.split("=", 1) for x in args.variant)})
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {"machine": machine_facts(), "args": vars(args), "pool_answers": len(pool),
                     "pool_finished_share": sum(a["finished"] for a in pool) / len(pool), "runs": []}
    root = Path(tempfile.mkdtemp(prefix="rm-eff-"))
    try:
        data = {pref: (votes(pool, train_prompts, pref, 16, split_seed), votes(pool, heldout_prompts, pref, 16, split_seed + 1))
                for pref in args.preferences.split(",")}
        for name, overrides in variants.items():  # variant-major: the first variant covers every preference first
            for pref, (train, heldout) in data.items():
                for n in sizes:
                    if n > len(train):
                        print(f"{pref}: only {len(train)} training pairs, skipping N={n}", flush=True)
                        continue
                    out = root / f"{pref}-{name}-{n}"
                    config = RMConfig(**{**DEMO_RM, "show_progress_bar": False, **overrides})
                    t = time.time()
                    metrics = train_reward_model([p for p, _ in train[:n]], [], model, out, config,
                                                 eval_pairs=[p for p, _ in heldout])
                    row = {"preference": pref, "variant": name, "pairs": n, "train_seconds": round(time.time() - t, 1),
                           **evaluate(out, heldout), "rm_reported_heldout_accuracy": metrics.get("heldout_accuracy")}
                    results["runs"].append(row)
                    print(json.dumps(row), flush=True)
                    shutil.rmtree(out, ignore_errors=True)
                    write_result(args.out, results)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_result(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
