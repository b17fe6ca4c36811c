"""Reward-ranked fine-tuning (RAFT / rejection-sampling fine-tuning): best-of-k answers of the
policy itself, as ranked by the reward model, become its supervised targets.

One run = one round of expert iteration: sample k answers per prompt from the served policy,
score them (the RM, normalised, minus the penalty for answers cut off without EOS), drop every
degenerate one (common/degeneracy.py: the gate's definition, so the policy is never taught what
the gate refuses) and every one cut off without EOS (not a whole answer), keep each prompt's best when it clearly beats its siblings
(`preference_math.best_of_group`), then maximise the kept answers' per-token likelihood
(EOS included: finishing in time is part of what is learned).
"""
from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

from common.degeneracy import degenerate_reasons
from trainer import preference_math as prm
from trainer.config import RAFTConfig
from trainer.data import prompt_messages, user_text
from trainer.device import autocast
from trainer.online import OnlineRun
from trainer.policy_base import PolicyJob, Progress, batches, log_step


def run_raft(job: PolicyJob, config: RAFTConfig = RAFTConfig(), progress: Progress | None = None) -> dict:
    if config.k < 2:
        raise ValueError("raft needs k >= 2 answers per prompt to rank")
    run = OnlineRun(job, config)
    run.generator.batch_size = config.generation_batch_size
    messages = [prompt_messages(p) for p in job.prompts]
    rng = random.Random(config.seed)
    if config.max_prompts and len(messages) > config.max_prompts:
        messages = rng.sample(messages, config.max_prompts)

    # 1. sample and rank (no grad): k answers per prompt, grouped by prompt
    prompts, responses, scores, raw, has_eos = run.sample(messages, config.k)
    texts = run.tokenizer.batch_decode(responses, skip_special_tokens=True)
    eligible = torch.tensor([not (config.drop_degenerate and degenerate_reasons(
                                 t, user_text(messages[i // config.k]),
                                 max_repeated_ngram_share=config.max_repeated_ngram_share))
                            and (bool(has_eos[i]) or not config.require_eos)
                            for i, t in enumerate(texts)]).view(-1, config.k)
    kept = prm.best_of_group(scores.view(-1, config.k), eligible, config.min_advantage)
    rows = [i * config.k + j for i, j in kept]
    sample_stats = {
        "prompts": len(messages), "answers": len(texts), "kept": len(rows),
        "ineligible_samples": int((~eligible).sum()), "eos_fraction": has_eos.float().mean().item(),
        "kept_eos_fraction": sum(bool(has_eos[r]) for r in rows) / max(1, len(rows)),
        "reward_raw": raw.mean().item(), "kept_reward_raw": (raw[rows].mean().item() if rows else 0.0),
        "response_length": sum(map(len, responses)) / len(responses),
        "kept_response_length": sum(len(responses[r]) for r in rows) / max(1, len(rows))}
    if progress:
        progress("raft_sampled", 0, 0, sample_stats)
    if not rows:
        raise ValueError("raft: no prompt had a best answer clearly above its siblings "
                         f"(min_advantage {config.min_advantage}); nothing to learn this round")

    # 2. supervised fine-tuning on the kept answers (per-token NLL, EOS included)
    plan = batches(rows, config.batch_size, config.epochs, rng)
    history: list[dict] = []
    bar = tqdm(total=len(plan), desc="raft", disable=not config.show_progress_bar)
    for step, batch in enumerate(plan, 1):
        total = 0.0
        for s in range(0, len(batch), config.micro_batch_size):
            micro = batch[s:s + config.micro_batch_size]
            with autocast(run.device):
                logp, n_tok = run.logprobs(run.actor, [prompts[r] for r in micro], [responses[r] for r in micro])
            loss = prm.rpo_nll(logp.float(), n_tok)
            (loss * len(micro) / len(batch)).backward()
            total += loss.item() * len(micro) / len(batch)
        log_step("raft", {"step": step, "nll": total, "grad_norm": run.clip_and_step()}, len(plan), history,
                 bar, progress)
    bar.close()
    return run.finish("raft", history, {**sample_stats, "k": config.k, "epochs": config.epochs},
                      progress=progress)
