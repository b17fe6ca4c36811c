"""Which reward-model settings make a trustworthy gate judge? Retrains RM variants on a finished demo's
own feedback, round by round, and sets each against the truth the demo knows and the service does not.

    .venv/bin/python bench/rm_judge_variants.py DEMO_OUT [--preference NAME] \
        --variant default='{}' --variant other='{"length_debias": false}'

For round k, the RM data is built from the first k snapshot files exactly as the pipeline builds it
(`worker.datasets.build_training_sets`, the gate set's prompts held out). Each variant (JSON overrides of
the demo's RMConfig) is trained on it, then measured:
- `truth_accuracy`: on the held-out pairs (prompts the RM never saw), agreement with the preference's
  hidden score, where the two hidden scores differ (the users' clicks are noisy; this is what to learn);
- as a gate judge, on every gate comparison the demo recorded (each candidate's greedy gate answers vs
  its served version's, `gate_answers.json`): correlation of judged and hidden per-prompt gains, share
  of prompts where their signs agree, mean judged gain and its paired-bootstrap lower bound, next to
  the hidden gain. A judge whose per-prompt gains run against the hidden ones refuses good candidates
  (session 21: correlations -0.33..-0.64) and would pass bad ones.
Writes bench/results/rm_judge_variants-<demo folder name>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402
from bench.gate_judges_replay import correlation  # noqa: E402


def round_sets(settings, snapshot_files: list[Path], gate_texts: set[str]):
    """The pipeline's training sets from these snapshot files (worker/pipeline.py's datasets step)."""
    from worker.datasets import build_training_sets, hold_out_texts, key_cap_args
    from worker.snapshot import load_snapshots
    with tempfile.TemporaryDirectory() as tmp:
        for f in snapshot_files:
            (Path(tmp) / f.name).symlink_to(f.resolve())
        records = load_snapshots(Path(tmp))
    # every record counts as new: the embedding RM refits on all feedback (nothing is warm-started)
    from common.registry import ModelRegistry
    known = set(ModelRegistry(settings.models_dir).versions())
    sets = build_training_sets(records, known, settings.max_rater_share,
                               settings.heldout_fraction, is_new=lambda rec: True, **key_cap_args(settings))
    hold_out_texts(sets, gate_texts)
    return sets


def gate_comparisons(settings, budget: int, preference: str) -> list[dict]:
    """Every recorded gate comparison: prompts, candidate and served answers, hidden per-prompt gains."""
    from common.registry import ModelRegistry
    from demo.personas import hidden_score
    from trainer.data import prompt_messages, user_text
    from worker.gate import answers_cache, recorded_answers
    reg = ModelRegistry(settings.models_dir)
    out = []
    for version in reg.versions():
        meta = reg.metadata(version)
        if not meta.get("gate"):
            continue
        new = recorded_answers(reg.path(version), answers_cache(settings, reg.path(version)), budget)
        old = recorded_answers(reg.path(meta["parent"]), answers_cache(settings, reg.path(meta["parent"])), budget)
        keys = [k for k in new if k in old]
        messages = [json.loads(k) for k in keys]
        texts = [user_text(prompt_messages(m)) for m in messages]
        cand = ([new[k][0] for k in keys], [bool(new[k][1]) for k in keys])
        base = ([old[k][0] for k in keys], [bool(old[k][1]) for k in keys])
        truth = [hidden_score(a, f, t, preference) - hidden_score(b, g, t, preference)
                 for a, f, b, g, t in zip(*cand, *base, texts)]
        out.append({"version": version, "served": meta["parent"], "messages": messages, "cand": cand,
                    "base": base, "truth": truth})
    return out


def judge_row(rm, comp: dict) -> dict:
    from worker.gate import paired_bootstrap_lower_bound
    diffs = [a - b for a, b in zip(rm.normalised(comp["messages"], *comp["cand"]),
                                   rm.normalised(comp["messages"], *comp["base"]))]
    truth = comp["truth"]
    return {"candidate": f"{comp['version']} vs {comp['served']}", "hidden_gain": round(statistics.mean(truth), 3),
            "judged_gain": round(statistics.mean(diffs), 3),
            "judged_lower_bound": round(paired_bootstrap_lower_bound(diffs), 3),
            "sign_agreement": round(sum((d > 0) == (t > 0) for d, t in zip(diffs, truth)) / len(diffs), 3),
            "correlation_with_hidden": correlation(diffs, truth)}


def truth_accuracy(rm, pairs, preference: str) -> tuple[float | None, int]:
    from demo.personas import hidden_score
    from trainer.embedding_rm import prompt_text
    hits, n = 0, 0
    chosen = rm.score([p.messages for p in pairs], [p.chosen for p in pairs], [p.chosen_finished for p in pairs])
    rejected = rm.score([p.messages for p in pairs], [p.rejected for p in pairs], [p.rejected_finished for p in pairs])
    for p, c, r in zip(pairs, chosen, rejected):
        t = prompt_text(p.messages)
        hc, hr = hidden_score(p.chosen, p.chosen_finished, t, preference), hidden_score(p.rejected, p.rejected_finished, t, preference)
        if hc != hr:
            n += 1
            hits += (c > r) == (hc > hr)
    return (round(hits / n, 3) if n else None), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("demo_out", type=Path)
    ap.add_argument("--preference", default=None, help="the demo's --preference (default: read from report.md)")
    ap.add_argument("--budget", type=int, default=None, help="the gate's token budget (default: as recorded)")
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON overrides of the demo's RMConfig")
    args = ap.parse_args()

    from bench.gate_judges_replay import _preference_from_report, _recorded_budget
    from common.settings import Settings
    from demo.cli import PRESETS
    from trainer.config import RMConfig
    from trainer.data import user_text
    from trainer.embedding_rm import EmbeddingRewardModel
    from trainer.reward_model import train_reward_model
    from worker.gate import load_gate_prompts

    out = args.demo_out
    preference = args.preference or _preference_from_report(out)
    settings = Settings(data_dir=out / "data")
    budget = args.budget or _recorded_budget(settings.models_dir)
    gate_texts = {user_text(p.messages) for p in load_gate_prompts(out / "gate_prompts.json")}
    comps = gate_comparisons(settings, budget, preference)
    snapshots = sorted(Path(settings.snapshots_dir).glob("*.jsonl"))
    variants = dict(v.split("=", 1) for v in args.variant) or {"default": "{}"}
    rows = []
    for k in range(1, len(snapshots) + 1):
        sets = round_sets(settings, snapshots[:k], gate_texts)
        for name, raw in variants.items():
            config = RMConfig(**{**PRESETS["default"].rm, **json.loads(raw)})
            with tempfile.TemporaryDirectory() as tmp:
                metrics = train_reward_model(sets.pairs, sets.rated, "", Path(tmp) / "rm", config=config,
                                             eval_pairs=sets.eval_pairs or None)
                rm = EmbeddingRewardModel.load(Path(tmp) / "rm")
                acc, n_truth = truth_accuracy(rm, sets.eval_pairs, preference)
                judged = [judge_row(rm, c) for c in comps]
            row = {"round": k, "variant": name, "pairs": len(sets.pairs), "rated": len(sets.rated),
                   "heldout_pairs": len(sets.eval_pairs), "vote_accuracy": metrics.get("heldout_accuracy"),
                   "pooled_vote_accuracy": metrics.get("pooled_heldout_accuracy"),
                   "truth_accuracy": acc, "truth_pairs": n_truth, "l2": metrics.get("l2"),
                   "length_correlation": metrics.get("length_correlation"),
                   "mean_judge_correlation": round(statistics.mean(
                       [j["correlation_with_hidden"] for j in judged if j["correlation_with_hidden"] is not None] or [0]), 3),
                   "judged": judged}
            rows.append(row)
            print(json.dumps({k2: v for k2, v in row.items() if k2 != "judged"}))
            for j in judged:
                print("    ", j)
    result = {"name": "rm_judge_variants", "command": " ".join(["python"] + sys.argv), "demo": str(out),
              "preference": preference, "budget": budget, "variants": variants, "rows": rows}
    print(write_result(f"rm_judge_variants-{out.name}", result))


if __name__ == "__main__":
    main()
