"""Where a demo's versions win or lose by the hidden taste: each version's greedy answers to the report's
held-out prompts (as the report decodes them), and the mean of every hidden factor (demo/personas.py
FACTORS), the share of answers that finished, mean words and the hidden score.

    python bench/hidden_factors.py OUT PREFERENCE [--eval-prompts 48] [--json PATH]

Session 28 (formal_expert, 2 × 96 run 1, 48 prompts; bench/results/hidden_factors-fe28a.json): v0 → v1
finished .10 → .79, formal_tone .54 → .70, concrete .32 → .18.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
from bench.rescore_demo import demo_run_parser  # noqa: E402


def main() -> None:
    args = demo_run_parser(__doc__.split("\n\n")[0]).parse_args()
    from transformers import AutoTokenizer

    from common.registry import ModelRegistry
    from demo import personas
    from trainer.data import PromptItem
    from trainer.evaluate import generate_answers

    prompts = json.loads((ROOT / "demo" / "data" / "prompts.json").read_text())["heldout"][: args.eval_prompts]
    items = [PromptItem([{"role": "user", "content": p}]) for p in prompts]
    registry = ModelRegistry(args.out / "data" / "models")
    n, result = len(prompts), {}
    for version in registry.versions():
        path = registry.path(version)
        tok = AutoTokenizer.from_pretrained(path)
        answers = generate_answers(path, items, max_new_tokens=args.max_tokens, greedy=True)
        # as the report counts it: an answer that used the whole token budget was cut off
        done = [len(tok(a, add_special_tokens=False).input_ids) < args.max_tokens - 1 for a in answers]
        row = {name: sum(f.fn(p, a, d) for p, a, d in zip(prompts, answers, done)) / n
               for name, f in personas.FACTORS.items()}
        row.update(finished=sum(done) / n, words=sum(len(a.split()) for a in answers) / n,
                   hidden=sum(personas.hidden_score(a, d, p, preference=args.preference)
                              for p, a, d in zip(prompts, answers, done)) / n)
        result[version] = {"means": row, "answers": answers}
        print(version, {k: round(v, 3) for k, v in row.items()}, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.out), "preference": args.preference, "prompts": prompts,
                                         "versions": result}, indent=1))


if __name__ == "__main__":
    main()
