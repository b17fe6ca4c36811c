"""Step 4: decide whether a freshly trained policy may replace the served one.

Refuses on non-finite weights, a failed sanity probe, no reward gain on held-out prompts, too
much drift (KL) from the served policy in one round or from the anchor over all rounds (the KL
budget), or less agreement with held-out human pairs than the served version. Every reason is
recorded in the version metadata.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from common.settings import Settings
from trainer.data import PromptItem


def degenerate(text: str) -> str | None:
    """Why a probe answer looks broken, or None if it looks like text."""
    if not text.strip():
        return "empty answer"
    words = text.split()
    if len(words) >= 8:
        top = Counter(words).most_common(1)[0][1]
        if top / len(words) > 0.6:
            return f"repetitive answer ({top}/{len(words)} words identical)"
    return None


def run_gate(candidate: Path, served: Path, anchor: Path, rm_dir: Path | None, prompts: list[PromptItem],
             settings: Settings, eval_pairs: list | None = None) -> dict:
    """Every check below is recorded in `metrics`; every failed one adds a reason.

    rm_dir: the reward model to judge gain with (None = no RM exists yet: the check is skipped and
    said so). eval_pairs: held-out human pairs for the implicit-preference check.
    """
    from trainer.evaluate import (check_finite, generate_answers, implicit_preference_accuracies,
                                  kl_to_references, mean_rm_score)

    reasons: list[str] = []
    metrics: dict = {}
    bad = check_finite(candidate)
    if bad:
        return {"passed": False, "reasons": [f"non-finite weights in {len(bad)} tensors: {bad[:3]}"],
                "metrics": metrics}

    probe = [PromptItem([{"role": "user", "content": settings.probe_prompt}])]
    probe_answer = generate_answers(candidate, probe, max_new_tokens=32, greedy=True)[0]
    metrics["probe_answer"] = probe_answer
    why = degenerate(probe_answer)
    if why:
        reasons.append(f"sanity probe failed: {why}")

    prompts = prompts[: settings.gate_eval_prompts]
    if prompts:
        n = settings.gate_max_new_tokens
        metrics["gate_prompts"] = len(prompts)
        if rm_dir is not None:
            new = generate_answers(candidate, prompts, max_new_tokens=n, greedy=True)
            old = generate_answers(served, prompts, max_new_tokens=n, greedy=True)
            new_score, old_score = mean_rm_score(rm_dir, prompts, new), mean_rm_score(rm_dir, prompts, old)
            gain = new_score - old_score
            metrics.update(rm_score_new=new_score, rm_score_served=old_score, rm_gain=gain,
                           gate_reward_model=str(rm_dir))
            if not gain > settings.gate_min_rm_gain:
                reasons.append(f"no reward gain on held-out prompts ({gain:+.4f} <= {settings.gate_min_rm_gain})")
        else:
            metrics["rm_gain"] = None
            metrics["rm_gain_skipped"] = "no reward model published yet"
        kls = kl_to_references(candidate, {"served": served, "anchor": anchor}, prompts,
                               max_new_tokens=n, n_samples=2)
        metrics.update(kl_to_served=kls["served"], kl_to_anchor=kls["anchor"])
        if kls["served"] > settings.gate_max_kl:
            reasons.append(f"KL to served policy {kls['served']:.3f} > bound {settings.gate_max_kl}")
        if kls["anchor"] > settings.kl_budget:
            reasons.append(f"KL to anchor {kls['anchor']:.3f} > budget {settings.kl_budget}")
    else:
        reasons.append("no held-out prompts to evaluate on")

    if eval_pairs and len(eval_pairs) >= settings.gate_min_pref_pairs:
        acc = implicit_preference_accuracies({"candidate": candidate, "served": served}, anchor, eval_pairs)
        metrics.update(pref_accuracy=acc["candidate"], pref_accuracy_served=acc["served"],
                       pref_pairs=len(eval_pairs))
        if acc["candidate"] < acc["served"] - settings.gate_max_pref_drop:
            reasons.append(f"agrees less with held-out human pairs than the served version "
                           f"({acc['candidate']:.2f} < {acc['served']:.2f} - {settings.gate_max_pref_drop})")
    return {"passed": not reasons, "reasons": reasons, "metrics": metrics}
