"""Step 4: decide whether a freshly trained policy may replace the served one.

Refuses on non-finite weights, a failed sanity probe, no reward gain on held-out prompts, or
too much drift (KL) from the served policy. Every reason is recorded in the version metadata.
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


def run_gate(candidate: Path, served: Path, rm_dir: Path, prompts: list[PromptItem],
             settings: Settings) -> dict:
    from trainer.evaluate import check_finite, generate_answers, kl_between, mean_rm_score

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
        new = generate_answers(candidate, prompts, max_new_tokens=n, greedy=True)
        old = generate_answers(served, prompts, max_new_tokens=n, greedy=True)
        new_score = mean_rm_score(rm_dir, prompts, new)
        old_score = mean_rm_score(rm_dir, prompts, old)
        gain = new_score - old_score
        kl = kl_between(candidate, served, prompts, max_new_tokens=n, n_samples=2)
        metrics.update(rm_score_new=new_score, rm_score_served=old_score, rm_gain=gain,
                       kl_to_served=kl, gate_prompts=len(prompts))
        if not gain > settings.gate_min_rm_gain:
            reasons.append(f"no reward gain on held-out prompts ({gain:+.4f} <= {settings.gate_min_rm_gain})")
        if kl > settings.gate_max_kl:
            reasons.append(f"KL to served policy {kl:.3f} > bound {settings.gate_max_kl}")
    else:
        reasons.append("no held-out prompts to evaluate on")
    return {"passed": not reasons, "reasons": reasons, "metrics": metrics}
