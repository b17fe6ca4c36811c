"""DPO configs over demo-like rounds on a GPU machine (torch + transformers only: no Redis,
pydantic or vLLM there), to choose the demo's policy config before the slow CPU runs.

Each round: `--interactions` chats sample 2 answers (temperature 1, `--max-tokens`) from the
served policy, a simulated user of the preference (demo/personas.py: noise and adversaries
included) picks one; ties and both-bad are skipped; DPO trains the served policy on this
round's pairs plus as many replayed older pairs (the pipeline's replay ratio 1), reference =
v0; the candidate is served next round (no gate). Scored like the demo's report: greedy answers
on held-out prompts, win-rate vs v0 by the hidden preference, KL to v0 on samples.

    python bench/gpu_dpo_rounds.py --config a='{"lr":1e-4}' --config b='{"lr":1e-4,"beta":0.2}'

Configs run as parallel processes (one GPU holds many 135M models). Writes
bench/results/gpu_dpo_rounds.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def greedy_scores(model_dir: Path, prompts: list[str], max_tokens: int, preference: str, device):
    from demo.personas import hidden_score
    from trainer.evaluate import _sample
    from trainer.modeling import eos_token_ids, load_causal_lm, load_tokenizer
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir, device)
    eos = set(eos_token_ids(model, tok))
    _, resp = _sample(model, tok, [[{"role": "user", "content": p}] for p in prompts], max_tokens, greedy=True, seed=0)
    texts = tok.batch_decode(resp, skip_special_tokens=True)
    done = [r[-1] in eos for r in resp]
    return [hidden_score(t, f, p, preference=preference) for p, t, f in zip(prompts, texts, done)], texts, done


def run_config(label: str, overrides: dict, args) -> dict:
    """`overrides`: DPOConfig fields, plus an optional "_preference" for this config alone."""
    import torch
    overrides = dict(overrides)
    args.preference = overrides.pop("_preference", args.preference)

    from demo.personas import make_population
    from trainer.algorithms import make_config, train_policy
    from trainer.data import PreferencePair
    from trainer.evaluate import _sample, kl_between
    from trainer.modeling import eos_token_ids, load_causal_lm, load_tokenizer
    from trainer.policy_base import PolicyJob
    torch.set_num_threads(2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prompts = json.loads((REPO / "demo" / "data" / "prompts.json").read_text())
    heldout = prompts["heldout"][: args.eval_prompts]
    v0 = Path(args.model)
    base, _, _ = greedy_scores(v0, heldout, args.max_tokens, args.preference, device)
    users = make_population(16, args.seed, preference=args.preference)
    rng = random.Random(args.seed)
    served, pairs, rows = v0, [], []
    work = Path(tempfile.mkdtemp(prefix=f"dpo-{label}-"))
    for rnd in range(1, args.rounds + 1):
        tok, model = load_tokenizer(served), load_causal_lm(served, device)
        eos = set(eos_token_ids(model, tok))
        chats = [(rng.choice(users), rng.choice(prompts["train"])) for _ in range(args.interactions)]
        msgs = [[{"role": "user", "content": p}] for _, p in chats for _ in range(2)]
        _, resp = _sample(model, tok, msgs, args.max_tokens, greedy=False, seed=rng.randrange(1 << 30))
        texts = tok.batch_decode(resp, skip_special_tokens=True)
        done = [r[-1] in eos for r in resp]
        del model
        new = []
        for i, (user, prompt) in enumerate(chats):
            a, b = (texts[2 * i], done[2 * i]), (texts[2 * i + 1], done[2 * i + 1])
            choice = user.choose(a, b, prompt=prompt)
            if choice in ("a", "b"):
                (c, cf), (r, rf) = (a, b) if choice == "a" else (b, a)
                if c != r:
                    new.append(PreferencePair([{"role": "user", "content": prompt}], c, r,
                                              chosen_finished=cf, rejected_finished=rf))
        replay = rng.sample(pairs, min(len(pairs), len(new)))
        pairs += new
        out = work / f"v{rnd}"
        t = time.time()
        config = make_config("dpo", {"show_progress_bar": False, **overrides})
        result = train_policy("dpo", PolicyJob(served, v0, out, pairs=new + replay), config)
        train_s = time.time() - t
        scores, answers, fin = greedy_scores(out, heldout, args.max_tokens, args.preference, device)
        wins = [1.0 if s > b + 1e-9 else 0.5 if abs(s - b) <= 1e-9 else 0.0 for s, b in zip(scores, base)]
        kl = kl_between(out, v0, [[{"role": "user", "content": p}] for p in heldout[:8]], args.max_tokens, n_samples=2)
        from common.degeneracy import degenerate_reasons
        _, v0_answers, _ = greedy_scores(v0, heldout, args.max_tokens, args.preference, device) if rnd == 1 else (None, rows[0]["_v0"], None)
        degenerate = sum(bool(degenerate_reasons(a, p, r)) for a, p, r in zip(answers, heldout, v0_answers))
        row = {"label": label, "round": rnd, "new_pairs": len(new), "trained_pairs": len(new) + len(replay),
               "win_rate_vs_v0": sum(wins) / len(wins), "kl_to_v0": kl, "finished_share": sum(fin) / len(fin),
               "mean_words": sum(len(a.split()) for a in answers) / len(answers), "degenerate": degenerate,
               "train_seconds": round(train_s, 1), "dpo_final": {k: v for k, v in result.items() if isinstance(v, (int, float))},
               "examples": answers[:3], "_v0": v0_answers}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("examples", "_v0", "dpo_final")}), flush=True)
        served = out
    for r in rows:
        r.pop("_v0", None)
    return {"config": overrides, "preference": args.preference, "rounds": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", default=[], metavar="LABEL=JSON")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--interactions", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--eval-prompts", type=int, default=24)
    p.add_argument("--preference", default="balanced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None)
    p.add_argument("--one", help=argparse.SUPPRESS)   # worker mode: LABEL=JSON, prints the result
    p.add_argument("--out", default="gpu_dpo_rounds")
    args = p.parse_args()
    if not args.model:
        from common.smollm2 import ensure_smollm2
        args.model = str(ensure_smollm2(os.environ.get("RLHF_DATA_DIR", REPO / ".rlhf-data")))
    if args.one:
        label, js = args.one.split("=", 1)
        print("RESULT " + json.dumps(run_config(label, json.loads(js), args)), flush=True)
        return 0
    procs = {}
    for c in args.config:
        cmd = [sys.executable, __file__, "--one", c, "--model", args.model, "--rounds", str(args.rounds),
               "--interactions", str(args.interactions), "--max-tokens", str(args.max_tokens),
               "--eval-prompts", str(args.eval_prompts), "--preference", args.preference, "--seed", str(args.seed)]
        procs[c.split("=", 1)[0]] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    results = {}
    for label, proc in procs.items():
        out, _ = proc.communicate()
        for line in out.splitlines():
            if line.startswith("RESULT "):
                results[label] = json.loads(line[7:])
            else:
                print(f"[{label}] {line}", flush=True)
    path = REPO / "bench" / "results" / f"{args.out}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
