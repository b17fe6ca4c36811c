"""Re-score a finished demo's versions with today's hidden preference and degeneracy check: the
greedy held-out answers are regenerated from the run's registry (deterministic), then scored as
the report does (`demo.evaluate.evaluate_versions`, without KL). For a scorer fix after a run: win rate vs v0,
hidden score, degenerate count per version (no KL: the scorer does not change it).

    python bench/rescore_demo.py OUT_FOLDER PREFERENCE [--eval-prompts 48] [--max-tokens 64]

--eval-prompts defaults to the default preset's (48 since session 28; 24 before: a run reported on
24 rescores comparably with --eval-prompts 24).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.registry import ModelRegistry
from demo.cli import PRESETS
from demo.evaluate import evaluate_versions

ROOT = Path(__file__).parents[1]


def demo_run_parser(description: str) -> argparse.ArgumentParser:
    """The options of a bench that re-reads a finished demo: its folder, the preference, the report's prompts."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("out", type=Path, help="the demo's --out folder (holds data/models)")
    ap.add_argument("preference")
    ap.add_argument("--eval-prompts", type=int, default=PRESETS["default"].eval_prompts)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    return ap


def main() -> None:
    args = demo_run_parser(__doc__.split("\n\n")[0]).parse_args()
    registry = ModelRegistry(args.out / "data" / "models")
    prompts = json.loads((ROOT / "demo" / "data" / "prompts.json").read_text())["heldout"][: args.eval_prompts]
    rows = evaluate_versions(registry, prompts, args.max_tokens, preference=args.preference, with_kl=False)
    for row in rows:
        print(f"{row['version']}: win {row['win_rate_vs_v0']:.0%}, hidden {row['hidden_score']:+.3f}, "
              f"degenerate {row['degenerate_count']}/{row['eval_prompts']}", flush=True)
    if args.json:
        keep = ("version", "win_rate_vs_v0", "hidden_score", "mean_words", "degenerate_count", "eval_prompts",
                "degenerate_examples")
        args.json.write_text(json.dumps({"run": str(args.out), "preference": args.preference,
                                         "rows": [{k: r.get(k) for k in keep} for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
