"""A demo run's versions under greedy decoding with a repetition penalty, on prompts none of them
trained on: degenerate answers (common/degeneracy.py, against v0's answer at the same penalty),
fragment openings, finished share, words, and the hidden taste's win share vs v0 at the same penalty.

Why: the served versions' remaining degenerate answers are v0's own loops ("a never-ending journey, a
never-ending journey"), which RAFT-side terms moved but did not remove (sessions 14-25). A repetition
penalty (CTRL-style: the logit of every token already in the prompt or the answer is divided by it
when positive, multiplied when negative) is applied the same way by HF `generate` and by vLLM, both
reading it from the model folder's generation_config.json — so gate, report and serving would decode
alike. This measures what it does to loops, fragments and the taste, per penalty, before any default.

    python bench/decode_guard.py /work/runs/X [--penalties 1.0,1.1,1.2] [--preference balanced]
        [--out bench/results/decode_guard-X.json]

Prompts: bench/raft_degenerate_ab.py's evaluation set (the demo's four question templates on the
held-out topics and on everyday topics none of the demo's training prompts names).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench.greedy_openings import run_versions  # noqa: E402
from bench.raft_degenerate_ab import MAX_NEW, eval_prompts, judge_answers  # noqa: E402
from common.degeneracy import degenerate_reasons  # noqa: E402
from trainer.modeling import eos_token_ids, load_causal_lm, load_tokenizer, prompt_token_ids  # noqa: E402
from trainer.rollout import HFGenerator, SamplingSettings  # noqa: E402

ROOT = Path(__file__).parents[1]


def greedy(model, tokenizer, prompts: list[str], penalty: float) -> tuple[list[str], list[bool]]:
    """Greedy answers with `penalty` set as the checkpoint's generation_config would set it."""
    model.generation_config.repetition_penalty = penalty
    ids = [prompt_token_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    eos = eos_token_ids(model, tokenizer)
    out = HFGenerator(model).generate(ids, SamplingSettings(max_new_tokens=MAX_NEW, greedy=True, eos_token_ids=eos,
                                                            pad_token_id=tokenizer.pad_token_id))
    return tokenizer.batch_decode(out, skip_special_tokens=True), [bool(r) and r[-1] in eos for r in out]


def judge(prompts, answers, done, base, preference) -> dict:
    """raft_degenerate_ab's judgement, plus how many degenerate answers are loops (the repetition clauses)."""
    loops = sum(any(r.startswith(("repeated", "one word")) for r in degenerate_reasons(a, p, b))
                for p, a, b in zip(prompts, answers, base[0]))
    return {**judge_answers(prompts, answers, done, base, preference), "loops": loops}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a demo's --out folder (its data/models/vN)")
    ap.add_argument("--penalties", default="1.0,1.1,1.2")
    ap.add_argument("--preference", default="balanced")
    ap.add_argument("--versions", default=None, help="comma-separated names (default: every vN)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(args.run)
    models = run_versions(run)
    if args.versions:
        models = [m for m in models if m.name in args.versions.split(",")]
    prompts = eval_prompts(json.loads((ROOT / "demo" / "data" / "prompts.json").read_text()))
    penalties = [float(x) for x in args.penalties.split(",")]
    out = Path(args.out or ROOT / "bench" / "results" / f"decode_guard-{run.name}.json")
    result = {"run": str(run), "preference": args.preference, "prompts": len(prompts), "rows": {}}
    base: dict[float, tuple] = {}
    for model_dir in models:
        tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
        meta = json.loads((model_dir / "rlhf_version.json").read_text()) if (model_dir / "rlhf_version.json").exists() else {}
        for penalty in penalties:
            t = time.time()
            answers, done = greedy(model, tokenizer, prompts, penalty)
            base.setdefault(penalty, (answers, done))    # v0 first: each version against v0 at the same penalty
            row = {"gate_passed": (meta.get("gate") or {}).get("passed"), "penalty": penalty,
                   **judge(prompts, answers, done, base[penalty], args.preference), "seconds": round(time.time() - t)}
            result["rows"][f"{model_dir.name}@{penalty}"] = row
            print(model_dir.name, json.dumps(row), flush=True)
            out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
