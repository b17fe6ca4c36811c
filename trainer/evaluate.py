"""Checks the promotion gate runs on a candidate policy folder before it is served.

Each function loads what it needs from disk (the gate runs rarely, on separate folders).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from trainer import ppo_math as pm
from trainer.data import PromptLike, prompt_messages
from trainer.modeling import (answer_token_ids, eos_token_ids, folder_eos_ids, left_pad, load_causal_lm, load_tokenizer,
                              prompt_token_ids, response_logits, right_pad)
from trainer.rollout import HFGenerator, SamplingSettings


def check_finite(model_dir: str | Path) -> list[str]:
    """Names of tensors in the folder's safetensors files that contain NaN or ±inf ([] = healthy)."""
    from safetensors import safe_open
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    bad = []
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad.append(name)
    return bad


def _sample(model, tokenizer, messages: list[list[dict]], max_new_tokens: int, greedy: bool,
            seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, response ids) for each prompt; sampling is at temperature 1, no top-k/p."""
    torch.manual_seed(seed)
    prompts = [prompt_token_ids(tokenizer, m) for m in messages]
    settings = SamplingSettings(max_new_tokens=max_new_tokens, greedy=greedy,
                                eos_token_ids=eos_token_ids(model, tokenizer),
                                pad_token_id=tokenizer.pad_token_id)
    responses = HFGenerator(model).generate(prompts, settings)
    return prompts, [r or settings.eos_token_ids[:1] for r in responses]


def generate_finished(model_dir: str | Path, prompts: Sequence[PromptLike], max_new_tokens: int,
                      greedy: bool = True, seed: int = 0) -> tuple[list[str], list[bool]]:
    """(answers, finished) for one answer per prompt: finished = ended with EOS rather than being
    cut off at max_new_tokens. Greedy by default; `seed` makes sampled answers reproducible."""
    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
    _, responses = _sample(model, tokenizer, [prompt_messages(p) for p in prompts], max_new_tokens, greedy, seed)
    eos = set(eos_token_ids(model, tokenizer))
    return tokenizer.batch_decode(responses, skip_special_tokens=True), [r[-1] in eos for r in responses]


def generate_answers(model_dir: str | Path, prompts: Sequence[PromptLike], max_new_tokens: int,
                     greedy: bool = True, seed: int = 0) -> list[str]:
    """One answer per prompt (see `generate_finished`)."""
    return generate_finished(model_dir, prompts, max_new_tokens, greedy, seed)[0]


def mean_rm_score(rm_dir: str | Path, prompts: Sequence[PromptLike], answers: Sequence[str]) -> float:
    """Mean *raw* reward-model score of the answers (compare candidates under the same RM)."""
    from trainer.reward_model import RewardModel
    scores = RewardModel.load(rm_dir).score([prompt_messages(p) for p in prompts], list(answers))
    return sum(scores) / len(scores)


@torch.no_grad()
def _sequence_logprobs(model, prompts, responses, pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """Sum of log π(response | prompt) per sequence."""
    totals = []
    for i in range(0, len(prompts), batch_size):
        p_ids, p_mask = left_pad(prompts[i:i + batch_size], pad_id)
        r_ids, r_mask = right_pad(responses[i:i + batch_size], pad_id)
        ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
        logp = pm.logprobs_from_logits(response_logits(model, ids, mask, r_ids.shape[1]), r_ids)
        totals.append((logp * r_mask).sum(1))
    return torch.cat(totals)


def kl_between(policy_dir: str | Path, reference_dir: str | Path, prompts: Sequence[PromptLike],
               max_new_tokens: int, n_samples: int, seed: int = 0) -> float:
    """Monte-Carlo KL(π || π_ref) per sequence: mean over samples y ~ π of log π(y) - log π_ref(y).

    Responses are sampled at temperature 1 (the distributions themselves), `n_samples` per prompt.
    Both folders must share the tokenizer.
    """
    tokenizer = load_tokenizer(policy_dir)
    policy, reference = load_causal_lm(policy_dir), load_causal_lm(reference_dir)
    messages = [prompt_messages(p) for p in prompts for _ in range(n_samples)]
    prompt_ids, responses = _sample(policy, tokenizer, messages, max_new_tokens, greedy=False, seed=seed)
    diff = (_sequence_logprobs(policy, prompt_ids, responses, tokenizer.pad_token_id)
            - _sequence_logprobs(reference, prompt_ids, responses, tokenizer.pad_token_id))
    return diff.mean().item()


def kl_to_references(policy_dir: str | Path, references: dict[str, str | Path], prompts: Sequence[PromptLike],
                     max_new_tokens: int, n_samples: int, seed: int = 0) -> dict[str, float]:
    """KL(π || ref) per sequence for several references from *one* set of samples y ~ π
    (e.g. {"served": parent, "anchor": v0}): the gate's two KL checks for the price of one rollout."""
    tokenizer = load_tokenizer(policy_dir)
    policy = load_causal_lm(policy_dir)
    messages = [prompt_messages(p) for p in prompts for _ in range(n_samples)]
    prompt_ids, responses = _sample(policy, tokenizer, messages, max_new_tokens, greedy=False, seed=seed)
    own = _sequence_logprobs(policy, prompt_ids, responses, tokenizer.pad_token_id)
    del policy
    by_folder: dict[Path, float] = {}     # served = anchor (a round from v0): one pass, not two
    for ref_dir in references.values():
        folder = Path(ref_dir).resolve()
        if folder not in by_folder:
            ref = load_causal_lm(folder)
            by_folder[folder] = (own - _sequence_logprobs(ref, prompt_ids, responses, tokenizer.pad_token_id)).mean().item()
    return {name: by_folder[Path(ref_dir).resolve()] for name, ref_dir in references.items()}


LOGPROBS_FILE = "gate_logprobs.json"   # in a version's folder: log-probs of held-out answers at its own gate


def read_records(files: Sequence[Path | None], section: str | None = None) -> dict:
    """The entries of the JSON record files that exist (later files win); with `section`, those
    under that top-level key. The gate's records of a version's greedy answers and log-probs."""
    import json
    known: dict = {}
    for f in files:
        if f is not None and f.exists():
            data = json.loads(f.read_text())
            known.update(data.get(section, {}) if section is not None else data)
    return known


def add_to_record(record: Path, fresh: dict, section: str | None = None) -> None:
    """Add `fresh` entries to the JSON record file (under `section`), written atomically."""
    import json
    mine = json.loads(record.read_text()) if record.exists() else {}
    (mine.setdefault(section, {}) if section is not None else mine).update(fresh)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(mine))
    tmp.replace(record)


def recorded_logprobs(folder: str | Path, prompts: list[list[int]], answers: list[list[int]], pad_id: int,
                      record: Path | None = None) -> torch.Tensor:
    """Sum of log π(answer | prompt) per sequence under the folder's weights, reusing the values
    recorded for the same token ids in the folder's LOGPROBS_FILE or in `record`, and loading the
    model only for the rest (then added to `record`). A published version's weights never change,
    so neither do these: from round 2 the gate's held-out pairs cost one model (the candidate's)
    instead of three, as its greedy answers do (worker/gate.greedy_answers)."""
    import hashlib
    import json
    keys = [hashlib.sha1(json.dumps([p, a]).encode()).hexdigest() for p, a in zip(prompts, answers)]
    known = read_records([Path(folder) / LOGPROBS_FILE, record])
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        model = load_causal_lm(folder)
        values = _sequence_logprobs(model, [prompts[i] for i in todo], [answers[i] for i in todo], pad_id).tolist()
        del model
        fresh = {keys[i]: v for i, v in zip(todo, values)}
        known.update(fresh)
        if record is not None:
            add_to_record(record, fresh)
    return torch.tensor([known[k] for k in keys])


def implicit_preference_accuracies(policies: dict[str, str | Path], anchor_dir: str | Path,
                                   pairs: Sequence, max_answer_tokens: int = 128,
                                   records: dict[str, Path] | None = None) -> dict[str, float]:
    """For each policy, the share of held-out human pairs whose log-prob margin over the anchor
    favours the chosen answer (DPO's implicit reward): does the policy agree with people?"""
    agreements = implicit_preference_agreements(policies, anchor_dir, pairs, max_answer_tokens, records)
    return {name: sum(a) / len(a) for name, a in agreements.items()}


def implicit_preference_agreements(policies: dict[str, str | Path], anchor_dir: str | Path,
                                   pairs: Sequence, max_answer_tokens: int = 128,
                                   records: dict[str, Path] | None = None) -> dict[str, list[float]]:
    """For each policy, per held-out human pair: 1 / 0.5 / 0 as its log-prob margin over the
    anchor favours the chosen answer / neither / the rejected one (`implicit_preference_agreement`).
    `records`: folder (as str) -> file where its log-probs are recorded (`recorded_logprobs`)."""
    from trainer.preference_math import implicit_preference_agreement
    if not pairs:
        return {}
    records = records or {}
    tokenizer = load_tokenizer(anchor_dir)
    eos = folder_eos_ids(anchor_dir, tokenizer)[0]

    def answer(text: str, finished: bool) -> list[int]:
        return answer_token_ids(tokenizer, text, eos, max_answer_tokens, finished)
    prompts = [prompt_token_ids(tokenizer, p.messages) for p in pairs]
    answers = [answer(p.chosen, p.chosen_finished) for p in pairs] + [answer(p.rejected, p.rejected_finished)
                                                                      for p in pairs]
    n, pad = len(pairs), tokenizer.pad_token_id

    def margins(folder) -> tuple[torch.Tensor, torch.Tensor]:
        logp = recorded_logprobs(folder, prompts * 2, answers, pad, records.get(str(folder)))
        return logp[:n], logp[n:]
    ref = margins(anchor_dir)
    out = {}
    for name, folder in policies.items():
        mine = ref if Path(folder) == Path(anchor_dir) else margins(folder)   # round 1: served is the anchor
        out[name] = implicit_preference_agreement(*mine, *ref).tolist()
    return out
