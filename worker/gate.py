"""Step 4: decide whether a freshly trained policy may replace the served one — a gate the
optimiser cannot fool. On held-out prompts — the held-out share of live prompts, then the operator's
fixed gate set (`RLHF_GATE_PROMPTS_FILE`, never trained on), plus the probe — with greedy answers of
candidate, served and anchor, it refuses on, each reason recorded in the version metadata:

- non-finite weights;
- any degenerate answer (common/degeneracy.py, against the anchor's answer to the same prompt;
  the probe prompt is one of the prompts), more than `gate_max_degenerate` (default 0) on the judged
  prompts; on up to `gate_degeneracy_prompts` more of the operator's set ("degeneracy-only": no KL or
  human-pair check there), more than that or than the served version's own count there (never more
  degenerate than what is served);
- no reward gain: judged by *independent* reward models — the newest published ones other than
  the RM this candidate was optimised against (an optimiser always "wins" against its own RM).
  Per-prompt gains (normalised scores, averaged over judges) must have a paired-bootstrap 95%
  lower bound above `gate_min_rm_gain`, on the judged and the degeneracy-only prompts
  (`gate_judge_degeneracy_prompts`). Only when no other RM exists yet (the first RM-based
  round) does its own RM judge, and the metrics say so;
- a reward model at chance: an RM-trained candidate whose RM's accuracy on pairs of prompts it
  never saw (`rm_gate_accuracy`: out-of-fold plus held-out pairs where recorded) is not above
  `gate_min_rm_accuracy`;
- drift: KL to the served version above `gate_max_kl` (one round) or to the anchor above
  `kl_budget` (all rounds);
- less agreement with held-out human pairs than the served version (implicit preference
  accuracy relative to the anchor, DPO-style): per pair, candidate minus served agreement; refused
  when the paired-bootstrap 95% upper bound of the mean is below `-gate_max_pref_drop`, i.e. when
  the data show the candidate agrees with people less, not when noise says so.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from common.degeneracy import degenerate_reasons
from common.settings import Settings
from trainer.data import PromptItem, prompt_messages, user_text


def paired_bootstrap_lower_bound(diffs: Sequence[float], confidence: float = 0.95, n_boot: int = 2000,
                                 seed: int = 0) -> float:
    """One-sided lower confidence bound of mean(diffs) by the percentile bootstrap: resample the
    per-prompt differences with replacement `n_boot` times and take the (1 - confidence)
    quantile of the resampled means. Paired: each diff is candidate - served on one prompt."""
    if not diffs:
        return float("nan")
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(rng.choice(diffs) for _ in range(n)) / n for _ in range(n_boot))
    return means[int((1.0 - confidence) * n_boot)]


def agreement_drop_upper_bound(candidate: Sequence[float], served: Sequence[float]) -> float:
    """95% upper bound of mean(candidate - served) over paired per-pair agreements with people
    (1 / 0.5 / 0 each): below 0 only when the data show the candidate agrees less. Paired, like
    the reward gain, because on 13-30 held-out pairs two equally good policies' accuracies differ
    by ±0.1 from noise alone and a point comparison refused good candidates at random."""
    return -paired_bootstrap_lower_bound([s - c for c, s in zip(candidate, served)])


def load_gate_prompts(path: str | Path) -> list[PromptItem]:
    """The operator's gate set (Settings.gate_prompts_file): a JSON array whose items are prompt
    strings or message lists. A missing or malformed file is an error, not an empty set: the
    operator asked for it, and a gate that silently lost its prompts would be weaker than asked."""
    import json
    items = json.loads(Path(path).read_text())
    if not isinstance(items, list) or not items:
        raise ValueError(f"gate prompts file {path}: expected a non-empty JSON array")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str) and item.strip():
            out.append(PromptItem([{"role": "user", "content": item}]))
        elif isinstance(item, list) and item and all(isinstance(m, dict) and "role" in m for m in item):
            out.append(PromptItem(item))
        else:
            raise ValueError(f"gate prompts file {path}: item {i} is neither a prompt string nor a message list")
    return out


def gate_prompt_set(heldout: list[PromptItem], extra: list[PromptItem], limit: int) -> list[PromptItem]:
    """Held-out live prompts first (today's traffic), then the operator's set, without repeats,
    at most `limit`."""
    out, seen = [], set()
    for p in list(heldout) + list(extra):
        text = user_text(prompt_messages(p))
        if text not in seen:
            seen.add(text)
            out.append(p)
    return out[:limit]


def degeneracy_prompt_set(judged: list[PromptItem], extra: list[PromptItem], limit: int) -> list[PromptItem]:
    """The prompts checked for degenerate answers only (Settings.gate_degeneracy_prompts): the first
    `limit` of the operator's set that are not among the judged gate prompts, without repeats."""
    judged = gate_prompt_set(judged, [], len(judged))      # the judged prompts as gate_prompt_set keeps them
    return gate_prompt_set(judged, extra, len(judged) + limit)[len(judged):]


ANSWERS_FILE = "gate_answers.json"   # in a version's folder: its greedy answers at its own gate


def answers_cache(settings: Settings, model_dir: str | Path) -> Path:
    """Where the gate records greedy answers of a folder it did not write (the served version's
    when it predates this file, the anchor's): one file per folder and weights under the data dir
    (the weights' size and mtime in the key, so a folder rewritten in place is a new entry)."""
    import hashlib
    weights = sorted(Path(model_dir).glob("*.safetensors"))
    stamp = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
    digest = hashlib.sha256(repr((str(Path(model_dir).resolve()), stamp)).encode()).hexdigest()[:16]
    return Path(settings.data_dir) / "gate_answers" / f"{digest}.json"


def logprobs_cache(settings: Settings, model_dir: str | Path) -> Path:
    """Where the gate records log-probs of held-out answers under a folder it did not write (next to
    its greedy answers; trainer/evaluate.recorded_logprobs)."""
    cached = answers_cache(settings, model_dir)
    return cached.with_name(cached.stem + "-logprobs.json")


def recorded_answers(model_dir: str | Path, record: Path, max_new_tokens: int) -> dict:
    """prompt key (the messages as sorted JSON) -> [answer, finished] recorded for a folder at this
    token budget: in its own ANSWERS_FILE and in `record`."""
    from trainer.evaluate import read_records
    return read_records([Path(model_dir) / ANSWERS_FILE, record], str(max_new_tokens))


def greedy_answers(model_dir: str | Path, prompts: list[PromptItem], max_new_tokens: int,
                   record: Path) -> tuple[list[str], list[bool]]:
    """(answers, finished) of greedy decoding, reusing the answers recorded earlier for the same
    folder, prompt and token budget — in the folder's own ANSWERS_FILE (written at its gate, when it
    was the candidate) or in `record` — and generating only the rest, which are added to `record`.
    A published version's weights never change, so neither does its greedy answer: from round 2 on
    the gate decodes the candidate alone, not served and anchor again (two thirds of its decoding).
    Greedy answers batched with other prompts can differ in rare last-digit ties; either is the
    version's answer."""
    import json

    from trainer.evaluate import add_to_record, generate_finished
    known = recorded_answers(model_dir, record, max_new_tokens)
    keys = [json.dumps(prompt_messages(p), sort_keys=True) for p in prompts]
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        answers, finished = generate_finished(model_dir, [prompts[i] for i in todo], max_new_tokens, greedy=True)
        fresh = {keys[i]: [a, f] for i, a, f in zip(todo, answers, finished)}
        known.update(fresh)
        add_to_record(record, fresh, str(max_new_tokens))
    return [known[k][0] for k in keys], [bool(known[k][1]) for k in keys]


def rm_gate_accuracy(rm_metrics: dict) -> float | None:
    """The RM accuracy the gate's "at chance" test reads: on every pair a fit scored without having
    seen its prompt (`pooled_heldout_accuracy`: cross-validation's out-of-fold pairs plus the held-out
    pairs, the embedding RM's) where recorded, else the held-out pairs' accuracy alone."""
    pooled = rm_metrics.get("pooled_heldout_accuracy")
    return pooled if pooled is not None else rm_metrics.get("heldout_accuracy")


def run_gate(candidate: Path, served: Path, anchor: Path, prompts: list[PromptItem], settings: Settings,
             judges: Sequence[Path] = (), own_rm: Path | None = None, own_rm_accuracy: float | None = None,
             eval_pairs: list | None = None, degeneracy_only: Sequence[PromptItem] = ()) -> dict:
    """judges: independent RMs (newest first); own_rm: the RM the candidate was optimised against
    (None for RM-free algorithms); own_rm_accuracy: that RM's held-out pair accuracy; degeneracy_only:
    more prompts whose greedy answers are checked for degeneracy alone (`degeneracy_prompt_set`)."""
    from trainer.evaluate import LOGPROBS_FILE, check_finite, implicit_preference_agreements, kl_to_references
    from trainer.policy_base import PhaseClock

    clock = PhaseClock()        # seconds per check, in the metrics: where the gate's time goes
    reasons: list[str] = []
    metrics: dict = {}
    bad = check_finite(candidate)
    if bad:
        return {"passed": False, "reasons": [f"non-finite weights in {len(bad)} tensors: {bad[:3]}"],
                "metrics": metrics}
    probe = PromptItem([{"role": "user", "content": settings.probe_prompt}])
    prompts = [probe] + [p for p in prompts[: settings.gate_eval_prompts]
                         if user_text(prompt_messages(p)) != settings.probe_prompt]
    n = settings.gate_max_new_tokens
    judged = {user_text(prompt_messages(p)) for p in prompts}
    checked = prompts + [p for p in degeneracy_only if user_text(prompt_messages(p)) not in judged]
    every, every_done = greedy_answers(candidate, checked, n, Path(candidate) / ANSWERS_FILE)
    new, new_done = every[:len(prompts)], every_done[:len(prompts)]
    old, old_done = greedy_answers(served, prompts, n, answers_cache(settings, served))
    base = greedy_answers(anchor, checked, n, answers_cache(settings, anchor))[0]   # served = anchor: recorded above
    k, extra = len(prompts), checked[len(prompts):]
    served_extra, served_extra_done = (greedy_answers(served, extra, n, answers_cache(settings, served))
                                       if extra else ([], []))
    clock.lap("greedy_answers")
    metrics.update(gate_prompts=len(prompts), degeneracy_prompts=len(checked), probe_answer=new[0],
                   finished_share=sum(new_done) / len(new), finished_share_served=sum(old_done) / len(old))

    # 1. degeneracy on every answer: none on the judged prompts (gate_max_degenerate), and on the
    # degeneracy-only ones no more than the served version's own answers there. Why relative there:
    # with ~100 prompts a zero bar refused candidates with 1 loop while the served v0 had 3 on the
    # same 64 prompts (session 23)
    bad_answers = degenerate_answers(prompts, new, base[:k])
    extra_bad = degenerate_answers(extra, every[k:], base[k:])
    metrics.update(degenerate_answers=len(bad_answers), degenerate_examples=(bad_answers + extra_bad)[:3])
    if len(bad_answers) > settings.gate_max_degenerate:
        first = bad_answers[0]
        reasons.append(f"{len(bad_answers)}/{len(prompts)} degenerate answers (allowed "
                       f"{settings.gate_max_degenerate}), e.g. {first['answer'][:60]!r}: {first['reasons'][0]}")
    if extra:
        served_bad = degenerate_answers(extra, served_extra, base[k:])
        allowed = max(settings.gate_max_degenerate, len(served_bad))
        # recorded, not (yet) a bar: how many of the candidate's are on prompts the served version
        # answers healthily — a stricter "no new degenerate answer" rule, measured before adopting it
        served_bad_prompts = {b["prompt"] for b in served_bad}
        metrics.update(degeneracy_only_prompts=len(extra), degenerate_answers_extra=len(extra_bad),
                       degenerate_answers_extra_served=len(served_bad),
                       degenerate_answers_extra_new=sum(b["prompt"] not in served_bad_prompts for b in extra_bad))
        if len(extra_bad) > allowed:
            first = extra_bad[0]
            reasons.append(f"{len(extra_bad)}/{len(extra)} degenerate answers on the degeneracy-only prompts, more "
                           f"than the served version's {len(served_bad)} (allowed {allowed}), e.g. "
                           f"{first['answer'][:60]!r}: {first['reasons'][0]}")

    # 2. reward gain by independent judges, with a paired bootstrap bound
    judge_dirs = [Path(j) for j in judges if own_rm is None or Path(j) != Path(own_rm)][: settings.gate_judges]
    if not judge_dirs and own_rm is not None:
        judge_dirs = [Path(own_rm)]
        metrics["judge_note"] = "no independent reward model yet: judged by the candidate's own RM"
    if judge_dirs:
        # on the degeneracy-only prompts too where asked: their answers (both sides) are already here
        m = len(checked) if settings.gate_judge_degeneracy_prompts else k
        diffs = judged_diffs(judge_dirs, checked[:m], (every[:m], every_done[:m]),
                             ((old + served_extra)[:m], (old_done + served_extra_done)[:m]))
        bound = paired_bootstrap_lower_bound(diffs)
        metrics.update(judges=[j.name for j in judge_dirs], rm_gain=sum(diffs) / len(diffs),
                       rm_gain_lower_bound=bound, rm_gain_prompts=len(diffs))
        if not bound > settings.gate_min_rm_gain:
            reasons.append(f"no reward gain on {len(diffs)} held-out prompts by "
                           f"{', '.join(j.name for j in judge_dirs)} "
                           f"(95% lower bound {bound:+.3f} <= {settings.gate_min_rm_gain}; mean "
                           f"{metrics['rm_gain']:+.3f})")
    else:
        metrics.update(rm_gain=None, rm_gain_skipped="no reward model published yet")
    if own_rm is not None and own_rm_accuracy is not None:
        metrics["own_rm_accuracy"] = own_rm_accuracy
        if not own_rm_accuracy > settings.gate_min_rm_accuracy:
            reasons.append(f"trained against a reward model at chance (accuracy on unseen prompts' pairs "
                           f"{own_rm_accuracy:.2f} <= {settings.gate_min_rm_accuracy})")

    clock.lap("judges")
    # 3. drift, per round and from the anchor
    kls = kl_to_references(candidate, {"served": served, "anchor": anchor}, prompts[1:] or prompts,
                           max_new_tokens=n, n_samples=2)
    metrics.update(kl_to_served=kls["served"], kl_to_anchor=kls["anchor"])
    if kls["served"] > settings.gate_max_kl:
        reasons.append(f"KL to served policy {kls['served']:.3f} > bound {settings.gate_max_kl}")
    if kls["anchor"] > settings.kl_budget:
        reasons.append(f"KL to anchor {kls['anchor']:.3f} > budget {settings.kl_budget}")

    clock.lap("kl")
    # 4. agreement with held-out human pairs
    if eval_pairs and len(eval_pairs) >= settings.gate_min_pref_pairs:
        records = {str(served): logprobs_cache(settings, served), str(anchor): logprobs_cache(settings, anchor),
                   str(candidate): Path(candidate) / LOGPROBS_FILE}
        agree = implicit_preference_agreements({"candidate": candidate, "served": served}, anchor, eval_pairs,
                                               records=records)
        acc = {name: sum(a) / len(a) for name, a in agree.items()}
        upper = agreement_drop_upper_bound(agree["candidate"], agree["served"])
        metrics.update(pref_accuracy=acc["candidate"], pref_accuracy_served=acc["served"],
                       pref_pairs=len(eval_pairs), pref_diff_upper=upper)
        if upper < -settings.gate_max_pref_drop:
            reasons.append(f"agrees less with held-out human pairs than the served version "
                           f"({acc['candidate']:.2f} vs {acc['served']:.2f}; 95% upper bound of the "
                           f"paired difference {upper:+.2f} < -{settings.gate_max_pref_drop})")
    clock.lap("preference_pairs")
    metrics["seconds"] = clock.seconds
    return {"passed": not reasons, "reasons": reasons, "metrics": metrics}


def degenerate_answers(prompts: Sequence[PromptItem], answers: Sequence[str],
                       anchor_answers: Sequence[str]) -> list[dict]:
    """{prompt, answer, reasons} of each degenerate answer (common/degeneracy.py, against the anchor's
    answer to the same prompt)."""
    out = []
    for p, a, ref in zip(prompts, answers, anchor_answers):
        why = degenerate_reasons(a, user_text(prompt_messages(p)), ref)
        if why:
            out.append({"prompt": user_text(prompt_messages(p)), "answer": a, "reasons": why})
    return out


def judged_diffs(judges: list[Path], prompts: list[PromptItem], new: tuple[list[str], list[bool]],
                  old: tuple[list[str], list[bool]]) -> list[float]:
    """Per prompt: mean over judges of normalised score(candidate) - score(served); each side is
    (answers, finished flags), so a judge sees which answers were cut off."""
    from trainer.reward_model import RewardModel
    messages = [prompt_messages(p) for p in prompts]
    totals = [0.0] * len(prompts)
    for j in judges:
        rm = RewardModel.load(j)
        for i, (a, b) in enumerate(zip(rm.normalised(messages, *new), rm.normalised(messages, *old))):
            totals[i] += (a - b) / len(judges)
    return totals
