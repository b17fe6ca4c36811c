"""Score every published version on held-out prompts by the users' hidden preference.

Greedy answers (deterministic), so a rerun gives the same table; win-rate is per prompt
against v0 (a tie counts half); KL to v0 is estimated on samples from each version. Beside
the score, each row says how the version got there: degenerate answers (common/degeneracy.py,
against v0's answer to the same prompt), how much its reward model rewarded length, KL to the
anchor, the algorithm and the gate's verdict, so a win bought by reward hacking shows.
"""
from __future__ import annotations

import json
from pathlib import Path

from common.degeneracy import degenerate_reasons
from common.registry import ModelRegistry, UnknownVersion
from demo.personas import hidden_score

MAX_DEGENERATE_EXAMPLES = 3


def evaluate_versions(registry: ModelRegistry, prompts: list[str], max_new_tokens: int,
                      on_version=None, preference: str | None = None,
                      reward_models: ModelRegistry | None = None, with_kl: bool = True) -> list[dict]:
    """One row per published version. `preference`: the name in demo.personas.PREFERENCES
    (default: the default preference); `reward_models`: the RM registry, for the RM columns;
    `with_kl` False: no KL to v0 (None), for a re-score that only changes the scorer."""
    from transformers import AutoTokenizer

    from trainer.data import PromptItem
    from trainer.evaluate import generate_answers, kl_between

    items = [PromptItem([{"role": "user", "content": p}]) for p in prompts]
    versions = registry.versions()
    base = registry.path(versions[0])
    tok = AutoTokenizer.from_pretrained(base)
    rows, base_answers, base_scores = [], None, None
    for v in versions:
        if on_version:
            on_version(v)
        path = registry.path(v)
        answers = generate_answers(path, items, max_new_tokens=max_new_tokens, greedy=True)
        # An answer that used the whole token budget was cut off (no end of sequence).
        finished = [len(tok(a, add_special_tokens=False).input_ids) < max_new_tokens - 1 for a in answers]
        scored = score_answers(prompts, answers, finished, base_answers, base_scores, preference)
        scores = scored.pop("scores")
        if base_answers is None:
            base_answers, base_scores = answers, scores
        # one sampled answer per held-out prompt: the gate already measured KL to the anchor (= v0 in the
        # demo) on its own prompts with two each; this column re-checks it off the gate's prompts, and
        # the second sample per prompt cost ~40 s of a 30-minute budget (session 20)
        kl = None if not with_kl else 0.0 if v == versions[0] else kl_between(path, base, items, max_new_tokens=max_new_tokens, n_samples=1)
        rows.append({"version": v, **scored, "kl_to_v0": kl,
                     **metadata_columns(registry.metadata(v), reward_models),
                     "examples": [{"prompt": p, "answer": a} for p, a in list(zip(prompts, answers))[:3]]})
    return rows


def score_answers(prompts: list[str], answers: list[str], finished: list[bool],
                  base_answers: list[str] | None, base_scores: list[float] | None,
                  preference: str | None = None) -> dict:
    """Hidden-preference columns of one version's held-out answers. `base_*` None = this is v0:
    its win-rate is 0.5 by definition, and its answers are judged against the prompt alone (v0's
    own answer as the anchor would make the relevance and length checks vacuous)."""
    scores = [hidden_score(a, f, p, preference=preference) for p, a, f in zip(prompts, answers, finished)]
    versus = base_scores if base_scores is not None else scores
    wins = [1.0 if s > b + 1e-9 else 0.5 if abs(s - b) <= 1e-9 else 0.0 for s, b in zip(scores, versus)]
    count, examples = degenerate_summary(prompts, answers, base_answers)
    return {"win_rate_vs_v0": sum(wins) / len(wins), "hidden_score": sum(scores) / len(scores),
            "mean_words": sum(len(a.split()) for a in answers) / len(answers),
            "finished_share": sum(finished) / len(finished),
            "degenerate_count": count, "eval_prompts": len(prompts), "degenerate_examples": examples,
            "scores": scores}


def degenerate_summary(prompts: list[str], answers: list[str], anchor_answers: list[str] | None = None,
                       max_examples: int = MAX_DEGENERATE_EXAMPLES) -> tuple[int, list[dict]]:
    """(how many answers are degenerate, the first few as {prompt, answer, reasons})."""
    anchors = anchor_answers or [None] * len(answers)
    bad = []
    for p, a, ref in zip(prompts, answers, anchors):
        why = degenerate_reasons(a, p, anchor_answer=ref)
        if why:
            bad.append({"prompt": p, "answer": a, "reasons": why})
    return len(bad), bad[:max_examples]


def rm_length_correlation(meta: dict, reward_models: ModelRegistry | None) -> float | None:
    """Pearson correlation of the version's reward model scores with answer length (the RM's
    `metrics.length_correlation`), None when unknown. The policy metadata names the RM by id
    (or by folder path); a garbage-collected RM falls back to the copy of its scalar metrics
    the pipeline stored in the policy metadata."""
    ref = meta.get("reward_model") or meta.get("judge_reward_model")
    if not ref:
        return None  # v0, or a run that trained no RM
    if reward_models is not None:
        try:
            value = (reward_models.metadata(Path(str(ref)).name).get("metrics") or {}).get("length_correlation")
            if value is not None:
                return value
        except UnknownVersion:
            pass
    return ((meta.get("metrics") or {}).get("reward_model") or {}).get("length_correlation")


def metadata_columns(meta: dict, reward_models: ModelRegistry | None = None) -> dict:
    """The columns read from a version's registry metadata (no model needed)."""
    metrics = meta.get("metrics") or {}
    gate = meta.get("gate") or {}
    reasons = list(gate.get("reasons") or [])
    return {
        "parent": meta.get("parent"),
        "algorithm": meta.get("algorithm"),
        "reward_model": meta.get("reward_model") or meta.get("judge_reward_model"),
        "kl_to_anchor": meta.get("kl_to_anchor"),
        "rm_accuracy": (metrics.get("reward_model") or {}).get("heldout_accuracy"),
        "rm_pooled_accuracy": (metrics.get("reward_model") or {}).get("pooled_heldout_accuracy"),
        "rm_pooled_pairs": (metrics.get("reward_model") or {}).get("n_pooled_pairs"),
        "rm_length_correlation": rm_length_correlation(meta, reward_models),
        "feedback_used": (meta.get("data") or {}).get("votes_used"),
        "gate": None if not gate else ("pass" if gate.get("passed") else "fail: " + "; ".join(reasons)),
        "gate_reasons": reasons,
    }


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
