"""Online, critic-free algorithms: sample from the *current* policy, score with the reward model.

- `run_rloo`: REINFORCE with a leave-one-out baseline over k answers per prompt; the reward is the
  shaped RM score minus β·KL(π || anchor) of the sample; β resumes from the parent's controller.
- `run_online_dpo`: 2 answers per prompt, the RM picks the better one, a DPO step vs the anchor.

Each step is on-policy (one optimizer step per fresh batch), so no importance ratios are needed.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
from tqdm.auto import tqdm

from trainer import ppo_math as pm
from trainer import preference_math as prm
from trainer.config import OnlineDPOConfig, RLOOConfig
from trainer.device import autocast, decode_autocast
from trainer.policy_base import PolicyJob, PolicyRun, Progress, log_step, prompt_cycle
from trainer.reward_model import RewardModel
from trainer.rollout import HFGenerator, SamplingSettings


class OnlineRun(PolicyRun):
    def __init__(self, job: PolicyJob, config):
        super().__init__(job, config)
        if job.reward_model_dir is None:
            raise ValueError("online algorithms need a reward model")
        if not job.prompts:
            raise ValueError("online algorithms need prompts")
        self.reward_model = RewardModel.load(job.reward_model_dir, self.device)
        self.generator = HFGenerator(self.actor)
        self.sampling = SamplingSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                         top_k=config.top_k, top_p=config.top_p, eos_token_ids=self.eos_ids,
                                         pad_token_id=self.pad_id)

    @torch.no_grad()
    def sample(self, messages: Sequence[list[dict]], k: int):
        """k answers per prompt (grouped: prompt i's answers are rows i*k .. i*k+k-1), their shaped
        RM scores and raw scores. Shaping = normalise, clip, minus the penalty for no EOS."""
        flat = [m for m in messages for _ in range(k)]
        prompts = [self.prompt_ids(m) for m in flat]
        with decode_autocast(self.device):
            responses = [r or self.eos_ids[:1] for r in self.generator.generate(prompts, self.sampling)]
        scores, raw, has_eos = self.score(flat, responses)
        return prompts, responses, scores, raw, has_eos

    @torch.no_grad()
    def score(self, messages: Sequence[list[dict]], responses: Sequence[list[int]]):
        """(shaped scores, raw RM scores, has-EOS flags) of answer token ids to `messages`."""
        cfg = self.config
        has_eos = torch.tensor([r[-1] in self.eos_ids for r in responses], device=self.device)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        raw = torch.tensor(self.reward_model.score(messages, texts, has_eos.tolist()), device=self.device)
        rm = self.reward_model
        scores = pm.shape_scores(raw, has_eos, rm.mean, rm.std, getattr(cfg, "normalise_reward", True),
                                 getattr(cfg, "reward_clip", None), cfg.missing_eos_penalty)
        return scores, raw, has_eos


def _micro(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, max(1, size))]


def run_rloo(job: PolicyJob, config: RLOOConfig = RLOOConfig(), progress: Progress | None = None) -> dict:
    run = OnlineRun(job, config)
    horizon = config.kl_horizon or config.steps * config.batch_size * config.k
    start_beta = job.kl_state["value"] if (job.kl_state and config.adaptive_kl) else config.init_kl_coef
    kl_ctl = (pm.AdaptiveKLController(start_beta, config.kl_target, horizon) if config.adaptive_kl
              else pm.FixedKLController(config.init_kl_coef))
    history: list[dict] = []
    bar = tqdm(total=config.steps, desc="rloo", disable=not config.show_progress_bar)
    for step, messages in enumerate(prompt_cycle(job.prompts, config.batch_size, config.steps,
                                                 random.Random(config.seed)), 1):
        prompts, responses, scores, raw, has_eos = run.sample(messages, config.k)
        with torch.no_grad(), autocast(run.device):
            ref = run.reference_logprobs(prompts, responses)
            old = torch.cat([run.logprobs(run.actor, prompts[s], responses[s])[0]
                             for s in _micro(len(prompts), config.micro_batch_size)])
        seq_kl = (old.float() - ref.float())
        beta = kl_ctl.value
        rewards = prm.kl_penalised_scores(scores, old.float(), ref.float(), beta)
        advantages = prm.rloo_advantages(rewards.view(-1, config.k)).reshape(-1)
        n = len(prompts)
        for s in _micro(n, config.micro_batch_size):
            with autocast(run.device):
                logp, n_tok = run.logprobs(run.actor, prompts[s], responses[s])
            loss = prm.reinforce_loss(logp.float(), advantages[s], n_tok) * (s.stop - s.start) / n
            loss.backward()
        grad_norm = run.clip_and_step()
        kl_ctl.update(seq_kl.mean().item(), n)
        stats = {"step": step, "reward_raw": raw.mean().item(), "score": scores.mean().item(),
                 "kl": seq_kl.mean().item(), "kl_coef": beta, "advantage_abs": advantages.abs().mean().item(),
                 "response_length": sum(map(len, responses)) / n,
                 "eos_fraction": has_eos.float().mean().item(), "grad_norm": grad_norm}
        log_step("rloo", stats, config.steps, history, bar, progress)
    bar.close()
    return run.finish("rloo", history, {"kl_coef_start": start_beta, "kl_coef": kl_ctl.value,
                                        "kl_state": kl_ctl.state(), "k": config.k}, progress=progress)


def run_online_dpo(job: PolicyJob, config: OnlineDPOConfig = OnlineDPOConfig(),
                   progress: Progress | None = None) -> dict:
    run = OnlineRun(job, config)
    history: list[dict] = []
    bar = tqdm(total=config.steps, desc="online_dpo", disable=not config.show_progress_bar)
    for step, messages in enumerate(prompt_cycle(job.prompts, config.batch_size, config.steps,
                                                 random.Random(config.seed)), 1):
        prompts, responses, scores, raw, has_eos = run.sample(messages, 2)
        a, b = scores[0::2], scores[1::2]
        keep = [i for i in range(len(messages)) if abs((a[i] - b[i]).item()) > config.min_score_gap]
        stats = {"step": step, "reward_raw": raw.mean().item(), "pairs": len(keep),
                 "response_length": sum(map(len, responses)) / len(responses),
                 "eos_fraction": has_eos.float().mean().item()}
        if keep:
            # chosen = the answer the RM scores higher
            chosen = [2 * i if a[i] > b[i] else 2 * i + 1 for i in keep]
            rejected = [2 * i + 1 if a[i] > b[i] else 2 * i for i in keep]
            p_ids = [prompts[i] for i in chosen]
            with autocast(run.device):
                ref_c = run.reference_logprobs(p_ids, [responses[i] for i in chosen])
                ref_r = run.reference_logprobs(p_ids, [responses[i] for i in rejected])
            sums: dict[str, float] = {}
            for s in _micro(len(keep), config.micro_batch_size):
                with autocast(run.device):
                    pc, _ = run.logprobs(run.actor, p_ids[s], [responses[i] for i in chosen[s]])
                    pr, _ = run.logprobs(run.actor, p_ids[s], [responses[i] for i in rejected[s]])
                loss, st = prm.dpo_loss(pc.float(), pr.float(), ref_c[s].float(), ref_r[s].float(), config.beta)
                (loss * (s.stop - s.start) / len(keep)).backward()
                for k, v in {"loss": loss.item(), **st}.items():
                    sums[k] = sums.get(k, 0.0) + v * (s.stop - s.start) / len(keep)
            stats.update(sums, grad_norm=run.clip_and_step())
        log_step("online_dpo", stats, config.steps, history, bar, progress)
    bar.close()
    return run.finish("online_dpo", history, {"beta": config.beta}, progress=progress)
