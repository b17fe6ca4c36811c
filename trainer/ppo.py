"""PPO over a chat policy: actor, critic (from the RM, carried across runs), frozen anchor
reference, reward model.

One step = roll out a batch of prompts, score it (RM, normalised and clipped, EOS penalty), fold the
per-token KL to the anchor into the rewards, GAE + whitening, then `ppo_epochs` passes of
clipped-surrogate updates of the actor and clipped-value updates of the critic over minibatches,
each with its own optimiser and clip norm. The maths lives in `ppo_math`.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from trainer import ppo_math as pm
from trainer.config import PPOConfig
from trainer.critic import Critic
from trainer.data import PromptLike, prompt_messages
from trainer.device import autocast
from trainer.embedding_rm import is_embedding_rm
from trainer.modeling import left_pad, prompt_token_ids, response_hidden, right_pad
from trainer.policy_base import PolicyJob, PolicyRun, Progress, log_step, prompt_cycle
from trainer.reward_model import RewardModel
from trainer.rollout import HFGenerator, RolloutGenerator, SamplingSettings



@dataclass
class Rollout:
    """One batch of sampled responses and everything PPO needs from rollout time (all detached)."""
    input_ids: torch.Tensor        # (B, P+R) left-padded prompt | right-padded response
    attention_mask: torch.Tensor   # (B, P+R)
    response_ids: torch.Tensor     # (B, R)
    mask: torch.Tensor             # (B, R) float, 1 on response tokens
    old_logprobs: torch.Tensor     # (B, R)
    old_values: torch.Tensor       # (B, R)
    advantages: torch.Tensor       # (B, R)
    returns: torch.Tensor          # (B, R)


def actor_forward(actor, input_ids, attention_mask, response_ids, temperature):
    """Response-token logits (at the sampling temperature) and log-probs."""
    hidden = response_hidden(actor, input_ids, attention_mask, response_ids.shape[1])
    logits = actor.get_output_embeddings()(hidden) / temperature
    return logits, pm.logprobs_from_logits(logits, response_ids)


@torch.no_grad()
def reference_logprobs(reference, input_ids, attention_mask, response_ids, temperature):
    hidden = response_hidden(reference, input_ids, attention_mask, response_ids.shape[1])
    return pm.logprobs_from_logits(reference.get_output_embeddings()(hidden) / temperature, response_ids)


class PPOTrainer(PolicyRun):
    """Holds the models (loaded once) and runs steps; `run_ppo` is the one-call entry point."""

    def __init__(self, job: PolicyJob, config: PPOConfig, generator: RolloutGenerator | None = None):
        super().__init__(job, config)
        if job.reward_model_dir is None:
            raise ValueError("PPO needs a reward model")
        self.reward_model = RewardModel.load(job.reward_model_dir, self.device)
        rm = self.reward_model
        # The parent's critic when there is one; else the RM, rescaled to normalised scores; an
        # embedding RM has no transformer to start from, so then the policy with a fresh value head.
        from_rm = job.critic_dir is None and not is_embedding_rm(job.reward_model_dir)
        source = job.critic_dir or (job.reward_model_dir if from_rm else job.policy_dir)
        self.critic_source = str(source)
        self.critic = Critic.load(source, self.device, config.critic_trainable_layers,
                                  rm.mean if from_rm else None, rm.std if from_rm else None)
        self.critic_optimizer = torch.optim.AdamW(self.critic.trainable(), lr=config.critic_lr)
        horizon = config.kl_horizon or config.steps * config.batch_size
        if job.kl_state and config.adaptive_kl:   # resume the parent's β, this config's target/horizon
            self.kl_ctl = pm.AdaptiveKLController(job.kl_state["value"], config.kl_target, horizon)
        elif config.adaptive_kl:
            self.kl_ctl = pm.AdaptiveKLController(config.init_kl_coef, config.kl_target, horizon)
        else:
            self.kl_ctl = pm.FixedKLController(config.init_kl_coef)
        self.kl_coef_start = self.kl_ctl.value
        self.generator = generator or HFGenerator()
        self.sampling = SamplingSettings(
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k,
            top_p=config.top_p, eos_token_ids=self.eos_ids, pad_token_id=self.pad_id)

    # ------------------------------------------------------------------ rollout + scoring
    @torch.no_grad()
    def rollout(self, messages: Sequence[list[dict]]) -> tuple[Rollout, dict]:
        cfg = self.config
        prompts = [prompt_token_ids(self.tokenizer, m, cfg.max_prompt_tokens) for m in messages]
        self.generator.sync_weights(self.actor)
        responses = [r or [self.sampling.eos_token_ids[0]] for r in self.generator.generate(prompts, self.sampling)]
        has_eos = torch.tensor([r[-1] in self.sampling.eos_token_ids for r in responses])
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_id)
        response_ids, response_mask = right_pad(responses, self.pad_id)
        dev = self.device
        input_ids = torch.cat([prompt_ids, response_ids], 1).to(dev)
        attention_mask = torch.cat([prompt_mask, response_mask], 1).to(dev)
        response_ids, mask, has_eos = response_ids.to(dev), response_mask.float().to(dev), has_eos.to(dev)

        with autocast(dev):
            logits, old_logprobs = actor_forward(self.actor, input_ids, attention_mask, response_ids,
                                                 cfg.temperature)
            entropy = pm.masked_mean(pm.entropy_from_logits(logits), mask).item()
            del logits
            old_values = self.critic(input_ids, attention_mask, response_ids.shape[1]) * mask
            ref_logprobs = reference_logprobs(self.reference, input_ids, attention_mask, response_ids,
                                              cfg.temperature)

        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        raw = torch.tensor(self.reward_model.score(messages, texts, has_eos.tolist()), device=dev)
        rm = self.reward_model
        scores = pm.shape_scores(raw, has_eos, rm.mean, rm.std, cfg.normalise_reward, cfg.reward_clip,
                                 cfg.missing_eos_penalty)
        kl = pm.kl_per_token(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask
        kl_coef = self.kl_ctl.value
        rewards = pm.penalised_rewards(scores, kl, mask, kl_coef)
        advantages, returns = pm.compute_gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = pm.masked_whiten(advantages, mask)
        seq_kl = kl.sum(1).mean().item()
        stats = {
            "reward_raw": raw.mean().item(),
            "reward_normalised": ((raw - rm.mean) / rm.std).mean().item(),
            "score": scores.mean().item(),
            "kl": seq_kl,
            "kl_coef": kl_coef,
            "entropy": entropy,
            "response_length": mask.sum(1).mean().item(),
            "eos_fraction": has_eos.float().mean().item(),
            "value_mean": pm.masked_mean(old_values, mask).item(),
            "returns_mean": pm.masked_mean(returns, mask).item(),
            # how much of the return the critic predicted *before* this batch (rollout-time values)
            "explained_variance": pm.explained_variance(old_values, returns, mask),
        }
        self.kl_ctl.update(seq_kl, len(responses))
        return Rollout(input_ids, attention_mask, response_ids, mask, old_logprobs, old_values,
                       advantages, returns), stats

    # ------------------------------------------------------------------ optimisation
    def update(self, batch: Rollout) -> dict:
        cfg = self.config
        n = batch.input_ids.shape[0]
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.ppo_epochs):
            for idx in torch.randperm(n).split(cfg.mini_batch_size):
                idx = idx.to(self.device)
                mb_mask = batch.mask[idx]
                with autocast(self.device):
                    logits, logprobs = actor_forward(self.actor, batch.input_ids[idx], batch.attention_mask[idx],
                                                     batch.response_ids[idx], cfg.temperature)
                    values = self.critic(batch.input_ids[idx], batch.attention_mask[idx],
                                         batch.response_ids.shape[1])
                pg_loss, pg_stats = pm.clipped_surrogate_loss(
                    logprobs, batch.old_logprobs[idx], batch.advantages[idx], mb_mask, cfg.cliprange)
                vf_loss, vf_stats = pm.clipped_value_loss(
                    values, batch.old_values[idx], batch.returns[idx], mb_mask, cfg.cliprange_value)
                loss = pg_loss
                if cfg.entropy_coef:
                    loss = loss - cfg.entropy_coef * pm.masked_mean(pm.entropy_from_logits(logits), mb_mask)
                # Separate graphs, optimisers and clip norms: the critic cannot eat the actor's budget.
                self.optimizer.zero_grad(set_to_none=True)
                self.critic_optimizer.zero_grad(set_to_none=True)
                (loss + cfg.vf_coef * vf_loss).backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                critic_norm = torch.nn.utils.clip_grad_norm_(self.critic.trainable(), cfg.critic_max_grad_norm)
                self.optimizer.step()
                self.critic_optimizer.step()
                for k, v in {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                             "grad_norm": float(grad_norm), "critic_grad_norm": float(critic_norm),
                             **pg_stats, **vf_stats}.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        return {k: v / count for k, v in sums.items()}

    def step(self, messages: Sequence[list[dict]]) -> dict:
        started = time.time()
        batch, stats = self.rollout(messages)
        rollout_seconds = time.time() - started
        stats.update(self.update(batch))
        seconds = time.time() - started
        stats.update(rollout_seconds=rollout_seconds, seconds=seconds, samples_per_second=len(messages) / seconds)
        return stats

    @torch.no_grad()
    def eval_reward(self, messages: Sequence[list[dict]]) -> float:
        """Mean raw RM score of greedy answers (deterministic, comparable before/after)."""
        prompts = [prompt_token_ids(self.tokenizer, m, self.config.max_prompt_tokens) for m in messages]
        self.generator.sync_weights(self.actor)
        greedy = SamplingSettings(**{**asdict(self.sampling), "greedy": True})
        responses = self.generator.generate(prompts, greedy)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        finished = [bool(r) and r[-1] in self.sampling.eos_token_ids for r in responses]
        scores = self.reward_model.score(messages, texts, finished)
        return sum(scores) / len(scores)


def run_ppo(job: PolicyJob, config: PPOConfig = PPOConfig(), generator: RolloutGenerator | None = None,
            progress: Progress | None = None, eval_prompts: Sequence[PromptLike] | None = None) -> dict:
    """Run `config.steps` PPO steps from `job.policy_dir` against the RM and write the new policy.

    job.out_dir receives the HF policy folder, `critic/` (the trained critic, for the next run),
    `metrics.jsonl` (one line per step) and `train_meta.json` (parent, anchor, reward model,
    config, final metrics incl. `kl_state`). Returns the metadata's `final` dict.
    """
    from tqdm.auto import tqdm
    if not job.prompts:
        raise ValueError("run_ppo needs at least one prompt")
    random.seed(config.seed)
    trainer = PPOTrainer(job, config, generator)
    eval_messages = [prompt_messages(p) for p in eval_prompts or []]
    result: dict = {"critic_init": trainer.critic_source, "kl_coef_start": trainer.kl_coef_start}
    if eval_messages:
        result["eval_reward_start"] = trainer.eval_reward(eval_messages)

    history = []
    bar = tqdm(total=config.steps, desc="ppo", disable=not config.show_progress_bar)
    for step, messages in enumerate(prompt_cycle(job.prompts, config.batch_size, config.steps,
                                                 random.Random(config.seed)), 1):
        log_step("ppo", {"step": step, **trainer.step(messages)}, config.steps, history, bar, progress)
    bar.close()

    if eval_messages:
        result["eval_reward_end"] = trainer.eval_reward(eval_messages)
    result.update({"last_step": history[-1], "first_reward_raw": history[0]["reward_raw"],
                   "kl_coef": trainer.kl_ctl.value, "kl_state": trainer.kl_ctl.state(),
                   "samples": len(history) * config.batch_size})
    return trainer.finish("ppo", history, result,
                          extra_save=lambda folder: trainer.critic.save(folder / "critic", trainer.tokenizer),
                          progress=progress)
