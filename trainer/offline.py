"""Offline preference algorithms on the stored human feedback, reference = anchor, no reward model:

- `run_dpo`: DPO on the pairs (comparisons and the pairs derived from thumbs);
- `run_kto`: KTO on thumbs (desirable / undesirable), optionally on the answers of pairs too.

Anchor log-probs are computed once per example (the anchor never changes within a run), so each
optimizer step costs one policy forward + backward per answer.
"""
from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

from trainer import preference_math as prm
from trainer.config import DPOConfig, KTOConfig
from trainer.device import autocast
from trainer.policy_base import PolicyJob, PolicyRun, Progress, batches, log_step


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def run_dpo(job: PolicyJob, config: DPOConfig = DPOConfig(), progress: Progress | None = None) -> dict:
    pairs = job.pairs[-config.max_pairs:] if config.max_pairs else list(job.pairs)
    if not pairs:
        raise ValueError("DPO needs preference pairs")
    run = PolicyRun(job, config)
    # (prompt, chosen, rejected) token ids and their fixed anchor log-probs, once.
    examples = []
    for p in pairs:
        prompt = run.prompt_ids(p.messages)
        examples.append((prompt, run.answer_ids(p.chosen, p.chosen_finished),
                         run.answer_ids(p.rejected, p.rejected_finished), p.weight))
    with autocast(run.device):
        ref_c = run.reference_logprobs([e[0] for e in examples], [e[1] for e in examples])
        ref_r = run.reference_logprobs([e[0] for e in examples], [e[2] for e in examples])
    indexed = list(range(len(examples)))
    plan = batches(indexed, config.batch_size, config.epochs, random.Random(config.seed))
    history: list[dict] = []
    bar = tqdm(total=len(plan), desc="dpo", disable=not config.show_progress_bar)
    for step, batch in enumerate(plan, 1):
        sums: dict[str, float] = {}
        for micro in _chunks(batch, config.micro_batch_size):
            prompts = [examples[i][0] for i in micro]
            with autocast(run.device):
                pc, nc = run.logprobs(run.actor, prompts, [examples[i][1] for i in micro])
                pr, _ = run.logprobs(run.actor, prompts, [examples[i][2] for i in micro])
            idx = torch.tensor(micro, device=pc.device)
            weight = torch.tensor([examples[i][3] for i in micro], device=pc.device)
            loss, stats = prm.dpo_loss(pc.float(), pr.float(), ref_c[idx].float(), ref_r[idx].float(),
                                       config.beta, config.label_smoothing, weight)
            if config.rpo_alpha:
                nll = prm.rpo_nll(pc.float(), nc, weight)
                loss = loss + config.rpo_alpha * nll
                stats["chosen_nll"] = nll.item()
            (loss * len(micro) / len(batch)).backward()   # gradient accumulation over micro-batches
            for k, v in {"loss": loss.item(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + v * len(micro) / len(batch)
        log_step("dpo", {"step": step, **sums, "grad_norm": run.clip_and_step()}, len(plan), history, bar, progress)
    bar.close()
    return run.finish("dpo", history, {"pairs": len(pairs), "epochs": config.epochs}, progress=progress)


def kto_examples(job: PolicyJob, config: KTOConfig) -> list[tuple[list[dict], str, bool, bool]]:
    """(messages, answer, desirable, finished) from thumbs, plus both answers of each pair if `use_pairs`."""
    out = [(r.messages, r.answer, r.label == "up", r.finished) for r in job.rated]
    if config.use_pairs:
        for p in job.pairs:
            out += [(p.messages, p.chosen, True, p.chosen_finished), (p.messages, p.rejected, False, p.rejected_finished)]
    return out[-config.max_examples:] if config.max_examples else out


def run_kto(job: PolicyJob, config: KTOConfig = KTOConfig(), progress: Progress | None = None) -> dict:
    data = kto_examples(job, config)
    if len(data) < 2:
        raise ValueError("KTO needs at least 2 rated answers")
    run = PolicyRun(job, config)
    prompts = [run.prompt_ids(m) for m, _, _, _ in data]
    answers = [run.answer_ids(a, f) for _, a, _, f in data]
    desirable = torch.tensor([d for _, _, d, _ in data], device=run.device)
    n_d = int(desirable.sum())
    lam_d, lam_u = prm.kto_class_weights(n_d, len(data) - n_d, config.desirable_ratio)
    with autocast(run.device):
        ref = run.reference_logprobs(prompts, answers)
    plan = batches(list(range(len(data))), config.batch_size, config.epochs, random.Random(config.seed))
    history: list[dict] = []
    bar = tqdm(total=len(plan), desc="kto", disable=not config.show_progress_bar)
    for step, batch in enumerate(plan, 1):
        if len(batch) < 2:   # the KL reference point needs another prompt in the batch
            continue
        # z0: each answer scored under the *next* example's prompt (mismatched), no grad.
        shifted = batch[1:] + batch[:1]
        with torch.no_grad(), autocast(run.device):
            mis_p = torch.cat([run.logprobs(run.actor, [prompts[j] for j in c_s], [answers[i] for i in c])[0]
                               for c, c_s in zip(_chunks(batch, config.micro_batch_size),
                                                 _chunks(shifted, config.micro_batch_size))])
            mis_r = run.reference_logprobs([prompts[j] for j in shifted], [answers[i] for i in batch])
        z0 = prm.kto_reference_point(mis_p.float(), mis_r.float())
        sums: dict[str, float] = {}
        for micro in _chunks(batch, config.micro_batch_size):
            with autocast(run.device):
                logp, _ = run.logprobs(run.actor, [prompts[i] for i in micro], [answers[i] for i in micro])
            idx = torch.tensor(micro, device=logp.device)
            loss, stats = prm.kto_loss(logp.float(), ref[idx].float(), desirable[idx], z0, config.beta,
                                       lam_d, lam_u)
            (loss * len(micro) / len(batch)).backward()
            sums["loss"] = sums.get("loss", 0.0) + loss.item() * len(micro) / len(batch)
        log_step("kto", {"step": len(history) + 1, **sums, "kl_ref_point": float(z0),
                         "grad_norm": run.clip_and_step()}, len(plan), history, bar, progress)
    bar.close()
    return run.finish("kto", history, {"examples": len(data), "desirable": n_d, "lambda_d": lam_d,
                                       "lambda_u": lam_u}, progress=progress)
