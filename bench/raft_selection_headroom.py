"""How much RAFT's best-of-k selection can still buy: sample k answers per training prompt from a demo
run's version (RAFT's own sampling settings), and score, by the users' hidden taste (never seen by the
system), what the RM's best of the first n picks, what the hidden taste's own best of n would be (the
oracle), and a random sample — for n = 2, 4, 6, 8, k. Only answers that ended by themselves are picked
(RAFT's `require_eos`), unless none did.

    python bench/raft_selection_headroom.py OUT VERSION RM K PROMPTS PREFERENCE [--json PATH]
    e.g. python bench/raft_selection_headroom.py /work/runs/fe28a v1 rm1 12 32 formal_expert

Session 28 (formal_expert run, v1 with rm1, 12 samples on 32 prompts): RM best of 6 .686, oracle .735,
random sample .568, RM best of 12 .707 (bench/results/raft_selection_headroom-fe28a.json).
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).parents[1]


def best_hidden(row: dict, n: int, key) -> float:
    """The hidden score of the answer `key` ranks first among the first n (finished ones if any)."""
    idx = [j for j in range(n) if row["eos"][j]] or list(range(n))
    return row["hidden"][max(idx, key=lambda j: key(row, j))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the demo's --out folder")
    ap.add_argument("version")
    ap.add_argument("rm", help="reward model id in the run's registry, e.g. rm1")
    ap.add_argument("k", type=int)
    ap.add_argument("prompts", type=int, help="training prompts (a seeded random subset)")
    ap.add_argument("preference")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from demo import personas
    from trainer.algorithms import make_config
    from trainer.data import PromptItem, prompt_messages
    from trainer.online import OnlineRun
    from trainer.policy_base import PolicyJob

    models = args.out / "data" / "models"
    texts_in = json.loads((ROOT / "demo" / "data" / "prompts.json").read_text())["train"]
    prompts = random.Random(0).sample(texts_in, args.prompts)
    items = [PromptItem([{"role": "user", "content": p}]) for p in prompts]
    config = make_config("raft", {"show_progress_bar": False, "device": "cpu", "k": args.k})
    job = PolicyJob(models / args.version, models / "v0", args.out / "selection-headroom", prompts=items,
                    reward_model_dir=args.out / "data" / "reward_models" / args.rm)
    run = OnlineRun(job, config)
    run.generator.batch_size = config.generation_batch_size
    run.sampling = replace(run.sampling, temperature=config.sample_temperature or config.temperature)
    _, responses, _, raw, has_eos = run.sample([prompt_messages(p) for p in items], args.k)
    texts = run.tokenizer.batch_decode(responses, skip_special_tokens=True)
    rows = []
    for i, p in enumerate(prompts):
        group = range(i * args.k, (i + 1) * args.k)
        rows.append({"prompt": p, "texts": [texts[j] for j in group], "raw": [float(raw[j]) for j in group],
                     "eos": [bool(has_eos[j]) for j in group],
                     "hidden": [personas.hidden_score(texts[j], bool(has_eos[j]), p, preference=args.preference)
                                for j in group]})
    summary = {"mean_sample": sum(sum(r["hidden"]) / args.k for r in rows) / len(rows)}
    for n in sorted({2, 4, 6, 8, args.k}):
        if n <= args.k:
            summary[f"rm_best_of_{n}"] = sum(best_hidden(r, n, lambda r, j: r["raw"][j]) for r in rows) / len(rows)
            summary[f"oracle_best_of_{n}"] = sum(best_hidden(r, n, lambda r, j: r["hidden"][j]) for r in rows) / len(rows)
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.out), "version": args.version, "rm": args.rm, "k": args.k,
                                         "preference": args.preference, "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
