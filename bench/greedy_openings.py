"""How a demo run's versions open their greedy answers on prompts none of them trained on: degenerate
answers (common/degeneracy.py, against v0's answer) and fragment openings — a first sentence too
short to be an answer ("The thunderstorms." alone, or followed by more), counted whether or not the
answer stops there.

Why: the report judges 24 held-out prompts, where a degenerate rate of a few percent shows as 0 or 1
answers by chance. The fragment opening is the step before the demos' most frequent degenerate
answer ("The thunderstorms." / "The thunderstorms. They are a never-ending cycle, a never-ending
cycle"), so counting it on ~140 unseen prompts measures the mechanism, not one unlucky prompt.

    python bench/greedy_openings.py /work/runs/X [--out bench/results/greedy_openings-X.json]

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
from bench.raft_degenerate_ab import MAX_NEW, eval_prompts, item, short_first_sentence  # noqa: E402
from common.degeneracy import degenerate_reasons, first_sentence  # noqa: E402
from trainer.evaluate import generate_finished  # noqa: E402

ROOT = Path(__file__).parents[1]


def run_versions(run: Path) -> list[Path]:
    """A demo run's version folders (its --out folder's data/models/vN), v0 first."""
    return sorted((p for p in (run / "data" / "models").glob("v*") if (p / "config.json").exists()),
                  key=lambda p: int(p.name[1:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a demo's --out folder (its data/models/vN)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(args.run)
    models = run_versions(run)
    prompts = eval_prompts(json.loads((ROOT / "demo" / "data" / "prompts.json").read_text()))
    result = {"run": str(run), "prompts": len(prompts), "versions": {}}
    base: list[str] = []
    for model in models:
        t = time.time()
        answers, done = generate_finished(model, [item(p) for p in prompts], MAX_NEW, greedy=True)
        base = base or answers       # v0 first: every version is judged against v0's answer
        bad = [(p, a[:90], r[0]) for p, a, b in zip(prompts, answers, base) for r in [degenerate_reasons(a, p, b)] if r]
        openings = [(p, first_sentence(a)[:60]) for p, a, b in zip(prompts, answers, base) if short_first_sentence(a, b)]
        meta = json.loads((model / "rlhf_version.json").read_text()) if (model / "rlhf_version.json").exists() else {}
        row = {"gate_passed": (meta.get("gate") or {}).get("passed"), "degenerate": len(bad), "fragment_openings": len(openings),
               "finished": round(sum(done) / len(done), 3), "seconds": round(time.time() - t),
               "degenerate_examples": bad[:8], "opening_examples": openings[:12]}
        result["versions"][model.name] = row
        print(model.name, json.dumps(row), flush=True)
    out = Path(args.out or ROOT / "bench" / "results" / f"greedy_openings-{run.name}.json")
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
