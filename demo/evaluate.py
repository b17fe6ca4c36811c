"""Score every published version on held-out prompts by the users' hidden preference.

Greedy answers (deterministic), so a rerun gives the same table; win-rate is per prompt
against v0 (a tie counts half); KL to v0 is estimated on samples from each version.
"""
from __future__ import annotations

import json
from pathlib import Path

from common.registry import ModelRegistry
from demo.personas import hidden_score


def evaluate_versions(registry: ModelRegistry, prompts: list[str], max_new_tokens: int,
                      on_version=None) -> list[dict]:
    from transformers import AutoTokenizer

    from trainer.data import PromptItem
    from trainer.evaluate import generate_answers, kl_between

    items = [PromptItem([{"role": "user", "content": p}]) for p in prompts]
    versions = registry.versions()
    base = registry.path(versions[0])
    tok = AutoTokenizer.from_pretrained(base)
    rows, base_scores = [], None
    for v in versions:
        if on_version:
            on_version(v)
        path = registry.path(v)
        answers = generate_answers(path, items, max_new_tokens=max_new_tokens, greedy=True)
        # An answer that used the whole token budget was cut off (no end of sequence).
        finished = [len(tok(a, add_special_tokens=False).input_ids) < max_new_tokens - 1 for a in answers]
        scores = [hidden_score(a, f) for a, f in zip(answers, finished)]
        if base_scores is None:
            base_scores = scores
        wins = [1.0 if s > b + 1e-9 else 0.5 if abs(s - b) <= 1e-9 else 0.0
                for s, b in zip(scores, base_scores)]
        meta = registry.metadata(v)
        metrics = meta.get("metrics", {})
        gate = meta.get("gate") or {}
        rows.append({
            "version": v,
            "parent": meta.get("parent"),
            "algorithm": meta.get("algorithm"),
            "kl_to_anchor_gate": meta.get("kl_to_anchor"),
            "win_rate_vs_v0": sum(wins) / len(wins),
            "hidden_score": sum(scores) / len(scores),
            "mean_words": sum(len(a.split()) for a in answers) / len(answers),
            "finished_share": sum(finished) / len(finished),
            "kl_to_v0": 0.0 if v == versions[0] else kl_between(path, base, items, max_new_tokens=max_new_tokens, n_samples=2),
            "rm_accuracy": (metrics.get("reward_model") or {}).get("heldout_accuracy"),
            "feedback_used": (meta.get("data") or {}).get("votes_used"),
            "gate": None if not gate else ("pass" if gate.get("passed") else "fail: " + "; ".join(gate.get("reasons", []))),
            "examples": [{"prompt": p, "answer": a} for p, a in list(zip(prompts, answers))[:3]],
        })
    return rows


def ppo_steps(registry: ModelRegistry) -> list[dict]:
    """Per-step PPO metrics of every version, in order, tagged with the version."""
    out = []
    for v in registry.versions():
        f = registry.path(v) / "metrics.jsonl"
        if f.exists():
            for line in f.read_text().splitlines():
                if line.strip():
                    out.append({"version": v, **json.loads(line)})
    return out


def save(rows: list[dict], path: Path) -> None:
    path.write_text(json.dumps(rows, indent=2, default=str))
