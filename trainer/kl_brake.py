"""A brake on one round's drift: keep a trained policy's KL to the anchor under a limit by pulling
its weights back toward the version it started from.

Why: the gate refuses a candidate whose KL to the anchor (sampled on held-out prompts) is above the
deployment's budget, and RAFT rounds moved that KL in jumps (balanced demo, session 19: 3.99 -> 9.22
in one round, refused at 83% win; five of the twelve demo runs of sessions 14-19 lost their last round
to KL 8.2-11.5 > 8). A round that overshoots wasted its work; a round held to the budget still moves.

How: estimate KL(π || anchor) the way the gate does (answers sampled at the policy's own temperature,
no top-k/p; mean of log π(y) - log π_anchor(y) per answer), on the round's own prompts. While it is
above the limit, set the trainable weights to θ_start + α (θ_trained - θ_start) with a smaller α.
Weight-space interpolation between a model and its fine-tuned self stays fluent and keeps much of the
gain (WiSE-FT, Wortsman et al. 2022); it is the trust region of one round, chosen by measurement rather
than by a learning rate guessed in advance.

Which α next (`next_alpha`): where the line through the start's KL (α = 0: the served version's, as its
gate measured it; 0 when it is the anchor) and the last estimate meets the limit — a secant step — kept
within [α/8, 0.9 α]; halving when the start's KL is unknown or already at the limit. Why not always
halve: the KL along the path read nearly linear in session 20's demos (served 3.66 -> α ½ 5.50 -> α 1
7.34; 3.06 -> 6.30 -> 8.92; 4.29 -> 6.72 -> 9.67), so a round 2 % over the limit (7.34 vs 7.2) lost
half its step to halving where the line asks for 0.96 of it. Measured (balanced demo, session 21, one run):
round 2 kept α 0.665 (8.80 -> 6.70; halving keeps ½), round 3 reached α 0.192 in one step (11.17 -> 7.18).

Each estimate costs one batch of sampled answers and two scoring passes: 29 s for 32 answers of up to 64
tokens on the 2-core demo machine (session 20, SmolLM2, the anchor's first load included).

A secant step whose line meets the limit is not re-estimated (`RAFTConfig.kl_brake_verify_secant`, off by default): its
α is applied and the KL the line predicts there recorded as predicted, not measured. Why: the gate
measures the candidate's KL to the anchor anyway (on held-out prompts, the budget's hard check), the
re-estimate was a second ~33 s pass in most braked rounds, and the line held in every recorded round
(session 21: 8.80 -> 6.70 and 11.17 -> 7.18 at limit 7.2; session 22: 6.91 and 6.73, and the gate read
5.40-6.15 for those versions, 2 nats under the budget of 8).
"""
from __future__ import annotations

import random
import time
from typing import Callable, Sequence

import torch

from trainer.device import autocast, decode_autocast
from trainer.rollout import SamplingSettings


def interpolate_(params: Sequence[torch.Tensor], start: Sequence[torch.Tensor], end: Sequence[torch.Tensor],
                 alpha: float) -> None:
    """In place: each param = start + alpha (end - start) (alpha 1 = end, 0 = start)."""
    with torch.no_grad():
        for p, s, e in zip(params, start, end):
            p.copy_(s + alpha * (e - s))


def next_alpha(alpha: float, kl: float, limit: float, start_kl: float | None) -> float:
    """The next, smaller alpha after `kl` at `alpha` was over `limit` (module docstring): the secant
    from (0, start_kl) through (alpha, kl) to the limit, within [alpha/8, 0.9 alpha], rounded to 3
    decimals; alpha/2 when start_kl is None or not below the limit (so kl > limit > start_kl below)."""
    if start_kl is None or start_kl >= limit:
        return alpha / 2
    line = alpha * (limit - start_kl) / (kl - start_kl)
    return round(min(0.9 * alpha, max(alpha / 8, line)), 3)


def secant_prediction(alpha: float, kl: float, new_alpha: float, start_kl: float) -> float:
    """The KL the line from (0, start_kl) through (alpha, kl) predicts at `new_alpha` (the caller
    knows the start's KL: without it there is no line)."""
    return start_kl + new_alpha / alpha * (kl - start_kl)


def brake_alphas(estimate: Callable[[float], float], limit: float, tries: int,
                 start_kl: float | None = None,
                 settle: Callable[[float], None] | None = None) -> tuple[float, dict[float, float], dict[float, float]]:
    """Try alpha = 1, then smaller ones (`next_alpha`; `tries` at most): `estimate(alpha)` is the KL
    with the weights at alpha, `start_kl` the KL at alpha 0 (None: unknown, so alpha halves). Returns
    (the first alpha whose KL is within `limit`, else the last tried; every estimate by alpha; the
    predicted KL of an alpha not estimated). The weights loaded are those of the alpha returned.
    With `settle` (sets the weights at alpha without estimating), a secant step whose line predicts
    a KL within the limit is settled, not estimated (module docstring)."""
    alpha, seen, predicted = 1.0, {}, {}
    for i in range(tries + 1):
        seen[alpha] = estimate(alpha)
        if seen[alpha] <= limit or i == tries:
            break
        new = next_alpha(alpha, seen[alpha], limit, start_kl)
        line = secant_prediction(alpha, seen[alpha], new, start_kl) if start_kl is not None and start_kl < limit else None
        # next_alpha rounds to 3 decimals, which may put the line up to 0.0005 of the step over the limit
        rounding = 0.0005 * (seen[alpha] - start_kl) / alpha if line is not None else 0.0
        alpha = new
        if settle is not None and line is not None and line <= limit + rounding + 1e-9:
            settle(alpha)
            predicted[alpha] = line
            break
    return alpha, seen, predicted


@torch.no_grad()
def sampled_kl_to_anchor(run, messages: list[list[dict]], max_new_tokens: int, seed: int) -> float:
    """Monte-Carlo KL(π || anchor) per answer, one answer per prompt sampled from the run's actor at
    its log-prob temperature with no top-k/p (trainer/evaluate.kl_between's estimator, in memory)."""
    prompts = [run.prompt_ids(m) for m in messages]
    sampling = SamplingSettings(max_new_tokens=max_new_tokens, temperature=run.config.temperature,
                                eos_token_ids=run.eos_ids, pad_token_id=run.pad_id)
    torch.manual_seed(seed)
    with decode_autocast(run.device):
        responses = [r or run.eos_ids[:1] for r in run.generator.generate(prompts, sampling)]
    with autocast(run.device):
        diffs = []
        for i in range(0, len(prompts), 16):
            p, r = prompts[i:i + 16], responses[i:i + 16]
            diffs.append(run.logprobs(run.actor, p, r)[0].float() - run.logprobs(run.reference, p, r)[0].float())
    return torch.cat(diffs).mean().item()


def apply_brake(run, messages: list[list[dict]], start: list[torch.Tensor], limit: float, config,
                start_kl: float | None = None) -> dict:
    """Hold the actor's KL to the anchor within `limit` (see the module docstring). `start`: the
    served version's trainable weights, in `run.params` order (also with RAFT's `start_from_anchor`: the
    brake pulls toward what users are served now, not toward where fine-tuning began); `start_kl`: their
    KL to the anchor, if known. Returns the record the version's metadata carries: limit, start KL,
    estimates by alpha, the alpha kept, seconds."""
    started = time.time()
    rng = random.Random(config.seed)
    chosen = rng.sample(messages, min(len(messages), config.kl_brake_prompts))
    end = [p.detach().clone() for p in run.params]

    def settle(alpha: float) -> None:
        if alpha != 1.0:
            interpolate_(run.params, start, end, alpha)

    def estimate(alpha: float) -> float:
        settle(alpha)
        return sampled_kl_to_anchor(run, chosen, config.max_new_tokens, config.seed)

    alpha, seen, predicted = brake_alphas(estimate, limit, config.kl_brake_tries, start_kl,
                                          None if config.kl_brake_verify_secant else settle)
    return {"limit": limit, "start_kl": start_kl, "prompts": len(chosen), "alpha": alpha,
            "estimates": {str(a): round(kl, 3) for a, kl in seen.items()},
            "predicted": {str(a): round(kl, 3) for a, kl in predicted.items()},
            "kl": round(seen.get(alpha, predicted.get(alpha, float("nan"))), 3),
            "seconds": round(time.time() - started, 1)}
