"""Which reward models should judge the gate? Replays each published candidate's gate decision of a
finished demo from the greedy answers the gate recorded (the candidate's `gate_answers.json`, the
served version's in its folder or the data dir's cache), under several judge ensembles, and sets
each against the truth the demo knows and the gate does not: the hidden preference of its
simulated users on the same answers.

    .venv/bin/python bench/gate_judges_replay.py DEMO_OUT [--preference balanced]

Ensembles: the gate's own (independent RMs: never the one the candidate was optimised against),
"own + independent" (the candidate's RM averaged with them) and "own alone" (what the issue says
an optimiser always wins against). Per candidate and ensemble: mean normalised gain, its paired
bootstrap 95% lower bound (the gate's test), whether it would pass, the share of prompts where the
judged sign agrees with the hidden one, and the correlation of judged and hidden per-prompt gains — on
every recorded prompt (judged + degeneracy-only) and, as `judged_prompts_only`, on the ones the gate
judged before `gate_judge_degeneracy_prompts` (rebuilt from the demo's gate_prompts.json).
Writes bench/results/gate_judges_replay-<demo folder name>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402


def correlation(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return round(statistics.correlation(xs, ys), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("demo_out", type=Path)
    ap.add_argument("--budget", type=int, default=None,
                    help="the gate's token budget (default: the one the candidates' answers were recorded at)")
    ap.add_argument("--preference", default=None, help="the demo's --preference (default: read from report.md)")
    args = ap.parse_args()

    from common import artifacts
    from common.registry import ModelRegistry
    from common.settings import Settings
    from demo.personas import hidden_score
    from trainer.data import PromptItem
    from trainer.data import prompt_messages, user_text
    from worker.gate import answers_cache, judged_diffs, paired_bootstrap_lower_bound, recorded_answers

    out = args.demo_out
    preference = args.preference or _preference_from_report(out)
    settings = Settings(data_dir=out / "data")
    budget = args.budget or _recorded_budget(settings.models_dir)
    reg = ModelRegistry(settings.models_dir)
    rms = artifacts.reward_models(settings)
    rows = []
    for version in reg.versions():
        meta = reg.metadata(version)
        gate = meta.get("gate")
        if not gate:
            continue
        served = meta["parent"]
        new = recorded_answers(reg.path(version), answers_cache(settings, reg.path(version)), budget)
        old = recorded_answers(reg.path(served), answers_cache(settings, reg.path(served)), budget)
        keys = [k for k in new if k in old]
        prompts = [PromptItem(json.loads(k)) for k in keys]
        texts = [user_text(prompt_messages(p)) for p in prompts]
        cand = ([new[k][0] for k in keys], [bool(new[k][1]) for k in keys])
        base = ([old[k][0] for k in keys], [bool(old[k][1]) for k in keys])
        truth = [hidden_score(a, f, t, preference) - hidden_score(b, g, t, preference)
                 for a, f, b, g, t in zip(*cand, *base, texts)]
        judges = [rms.path(j) for j in gate["metrics"].get("judges", []) if rms.exists(j)]
        own = [rms.path(meta["reward_model"])] if meta.get("reward_model") else []
        ensembles = {"gate (independent)": judges, "own + independent": own + [j for j in judges if j not in own],
                     "own alone": own}
        row = {"version": version, "served": served, "gate_passed": gate["passed"], "prompts": len(keys),
               "own_rm": meta.get("reward_model"), "independent": [j.name for j in judges],
               "hidden_gain_mean": round(sum(truth) / len(truth), 4) if truth else None,
               "hidden_win_share": round(sum(d > 0 for d in truth) / len(truth), 3) if truth else None,
               "hidden_gain_lower_bound": round(paired_bootstrap_lower_bound(truth), 4) if truth else None,
               "gate_reasons": gate.get("reasons", []), "ensembles": {}}
        judged = _judged_share(texts, out, settings, gate["metrics"].get("gate_prompts"))
        row["judged_prompts"] = sum(judged)
        if judged and not all(judged):
            sub = [t for t, j in zip(truth, judged) if j]
            row["hidden_on_judged"] = {"gain_mean": round(sum(sub) / len(sub), 4),
                                       "gain_lower_bound": round(paired_bootstrap_lower_bound(sub), 4)}
        for name, dirs in ensembles.items():
            if not dirs or not keys:
                continue
            diffs = judged_diffs(dirs, prompts, cand, base)
            row["ensembles"][name] = _judge_summary(diffs, truth, settings)
            if judged and not all(judged):
                pick = [i for i, j in enumerate(judged) if j]
                row["ensembles"][name]["judged_prompts_only"] = _judge_summary(
                    [diffs[i] for i in pick], [truth[i] for i in pick], settings)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("version", "served", "prompts", "hidden_gain_mean",
                                              "hidden_gain_lower_bound", "hidden_win_share")}))
        for name, e in row["ensembles"].items():
            print(f"   {name:20s} {e}")
    result = {"name": "gate_judges_replay", "command": " ".join(["python"] + sys.argv), "demo": str(out),
              "preference": preference, "budget": budget, "gate_min_rm_gain": settings.gate_min_rm_gain, "candidates": rows}
    print(write_result(f"gate_judges_replay-{out.name}", result))


def _judge_summary(diffs: list[float], truth: list[float], settings) -> dict:
    from worker.gate import paired_bootstrap_lower_bound
    bound = paired_bootstrap_lower_bound(diffs)
    return {"prompts": len(diffs), "mean": round(sum(diffs) / len(diffs), 4), "lower_bound": round(bound, 4),
            "would_pass_gain_test": bound > settings.gate_min_rm_gain,
            "win_share": round(sum(d > 0 for d in diffs) / len(diffs), 3),
            "sign_agreement": round(sum((d > 0) == (t > 0) for d, t in zip(diffs, truth)) / len(diffs), 3),
            "correlation_with_hidden": correlation(diffs, truth)}


def _judged_share(texts: list[str], out: Path, settings, judged_count: int | None) -> list[bool]:
    """Which replayed prompts the gate judged for reward gain (the rest it checked for degeneracy
    only), rebuilt as worker.gate.gate_prompt_set picks them: the probe, the held-out live prompts (the
    recorded ones not in the demo's gate file), then the gate file's first ones up to `judged_count`
    (the gate's recorded `gate_prompts`, probe included). [] when the demo wrote no gate file. A
    served version's record also holds later rounds' live prompts, which count as judged here."""
    gate_file = out / "gate_prompts.json"
    if not gate_file.exists() or not judged_count:
        return []
    from trainer.data import prompt_messages, user_text
    from worker.gate import load_gate_prompts
    operator = [user_text(prompt_messages(p)) for p in load_gate_prompts(gate_file)]
    not_live = set(operator) | {settings.probe_prompt}
    live = [t for t in texts if t not in not_live]
    judged = {settings.probe_prompt, *live, *operator[: max(0, judged_count - 1 - len(live))]}
    return [t in judged for t in texts]


def _recorded_budget(models: Path) -> int:
    budgets = {b for f in models.glob("*/gate_answers.json") for b in json.loads(f.read_text())}
    if len(budgets) != 1:
        raise SystemExit(f"pass --budget: the recorded gate answers have budgets {sorted(budgets)}")
    return int(budgets.pop())


def _preference_from_report(out: Path) -> str:
    import re
    report = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    m = re.search(r"preference[^\w]+(\w+)", report)
    if not m:
        raise SystemExit("pass --preference: report.md does not name it")
    return m.group(1)


if __name__ == "__main__":
    main()
