"""Re-score a finished demo's versions with today's hidden preference and degeneracy check: the
greedy held-out answers are regenerated from the run's registry (deterministic), then scored as
the report does (`demo.evaluate.evaluate_versions`, without KL). For a scorer fix after a run: win rate vs v0,
hidden score, degenerate count per version (no KL: the scorer does not change it).

    python bench/rescore_demo.py OUT_FOLDER PREFERENCE [--eval-prompts 24] [--max-tokens 64]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.registry import ModelRegistry
from demo.evaluate import evaluate_versions

ROOT = Path(__file__).parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the demo's --out folder (holds data/models)")
    ap.add_argument("preference")
    ap.add_argument("--eval-prompts", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    registry = ModelRegistry(args.out / "data" / "models")
    prompts = json.loads((ROOT / "demo" / "data" / "prompts.json").read_text())["heldout"][: args.eval_prompts]
    for row in evaluate_versions(registry, prompts, args.max_tokens, preference=args.preference, with_kl=False):
        print(f"{row['version']}: win {row['win_rate_vs_v0']:.0%}, hidden {row['hidden_score']:+.3f}, "
              f"degenerate {row['degenerate_count']}/{row['eval_prompts']}", flush=True)


if __name__ == "__main__":
    main()
