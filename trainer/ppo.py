"""PPO over a chat policy: actor + value head (critic), frozen reference, reward model.

One step = roll out a batch of prompts, score it (RM, normalised and clipped, EOS penalty), fold the
per-token KL to the reference into the rewards, GAE + whitening, then `ppo_epochs` passes of
clipped-surrogate + clipped-value updates over minibatches. The maths lives in `ppo_math`.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from trainer import ppo_math as pm
from trainer.config import PPOConfig
from trainer.data import PromptLike, prompt_messages
from trainer.modeling import (eos_token_ids, freeze_lower_layers, fresh_output_dir, left_pad,
                              load_causal_lm, load_tokenizer, prompt_token_ids, publish,
                              response_hidden, right_pad, set_threads)
from trainer.reward_model import RewardModel
from trainer.rollout import HFGenerator, RolloutGenerator, SamplingSettings

Progress = Callable[[str, int, int, dict], None]


class ValueHead(torch.nn.Module):
    """Critic: a linear read-out of the actor's last hidden state (shared backbone, as in TRL)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.linear.weight, std=1e-2)  # start near V = 0
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)


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


def actor_critic_forward(actor, value_head, input_ids, attention_mask, response_ids, temperature):
    """Response-token logits (at the sampling temperature), log-probs and values in one pass."""
    hidden = response_hidden(actor, input_ids, attention_mask, response_ids.shape[1])
    logits = actor.get_output_embeddings()(hidden) / temperature
    return logits, pm.logprobs_from_logits(logits, response_ids), value_head(hidden)


@torch.no_grad()
def reference_logprobs(reference, input_ids, attention_mask, response_ids, temperature):
    hidden = response_hidden(reference, input_ids, attention_mask, response_ids.shape[1])
    return pm.logprobs_from_logits(reference.get_output_embeddings()(hidden) / temperature, response_ids)


class PPOTrainer:
    """Holds the models (loaded once) and runs steps; `run_ppo` is the one-call entry point."""

    def __init__(self, policy_dir, reward_model_dir, config: PPOConfig,
                 generator: RolloutGenerator | None = None):
        self.config = config
        self.tokenizer = load_tokenizer(policy_dir)
        self.actor = load_causal_lm(policy_dir)
        self.reference = load_causal_lm(policy_dir).requires_grad_(False)
        self.reward_model = RewardModel.load(reward_model_dir)
        freeze_lower_layers(self.actor.get_decoder(), config.trainable_layers)
        self.value_head = ValueHead(self.actor.config.hidden_size)
        self.params = [p for p in self.actor.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr)
        self.kl_ctl = (pm.AdaptiveKLController(config.init_kl_coef, config.kl_target, config.kl_horizon)
                       if config.adaptive_kl else pm.FixedKLController(config.init_kl_coef))
        self.generator = generator or HFGenerator()
        self.sampling = SamplingSettings(
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k,
            top_p=config.top_p, eos_token_ids=eos_token_ids(self.actor, self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id)

    # ------------------------------------------------------------------ rollout + scoring
    @torch.no_grad()
    def rollout(self, messages: Sequence[list[dict]]) -> tuple[Rollout, dict]:
        cfg = self.config
        prompts = [prompt_token_ids(self.tokenizer, m, cfg.max_prompt_tokens) for m in messages]
        self.generator.sync_weights(self.actor)
        responses = [r or [self.sampling.eos_token_ids[0]] for r in self.generator.generate(prompts, self.sampling)]
        has_eos = torch.tensor([r[-1] in self.sampling.eos_token_ids for r in responses])
        prompt_ids, prompt_mask = left_pad(prompts, self.tokenizer.pad_token_id)
        response_ids, response_mask = right_pad(responses, self.tokenizer.pad_token_id)
        input_ids = torch.cat([prompt_ids, response_ids], 1)
        attention_mask = torch.cat([prompt_mask, response_mask], 1)
        mask = response_mask.float()

        logits, old_logprobs, old_values = actor_critic_forward(
            self.actor, self.value_head, input_ids, attention_mask, response_ids, cfg.temperature)
        entropy = pm.masked_mean(pm.entropy_from_logits(logits), mask).item()
        del logits
        ref_logprobs = reference_logprobs(self.reference, input_ids, attention_mask, response_ids, cfg.temperature)

        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        raw = torch.tensor(self.reward_model.score(messages, texts))
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
                mb_mask = batch.mask[idx]
                logits, logprobs, values = actor_critic_forward(
                    self.actor, self.value_head, batch.input_ids[idx], batch.attention_mask[idx],
                    batch.response_ids[idx], cfg.temperature)
                pg_loss, pg_stats = pm.clipped_surrogate_loss(
                    logprobs, batch.old_logprobs[idx], batch.advantages[idx], mb_mask, cfg.cliprange)
                vf_loss, vf_stats = pm.clipped_value_loss(
                    values, batch.old_values[idx], batch.returns[idx], mb_mask, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                if cfg.entropy_coef:
                    loss = loss - cfg.entropy_coef * pm.masked_mean(pm.entropy_from_logits(logits), mb_mask)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                for k, v in {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                             "grad_norm": float(grad_norm), **pg_stats, **vf_stats}.items():
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
        texts = self.tokenizer.batch_decode(self.generator.generate(prompts, greedy), skip_special_tokens=True)
        scores = self.reward_model.score(messages, texts)
        return sum(scores) / len(scores)

    def save(self, out_dir: Path) -> None:
        """Policy only (no value head): same architecture, tokenizer, chat template, generation config."""
        self.actor.save_pretrained(str(out_dir), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out_dir))


def _prompt_batches(prompts: list[list[dict]], batch_size: int, steps: int, rng: random.Random):
    """`steps` batches walking through reshuffled epochs of the prompts."""
    order: list[list[dict]] = []
    for _ in range(steps):
        while len(order) < batch_size:
            fresh = list(prompts)
            rng.shuffle(fresh)
            order += fresh
        yield order[:batch_size]
        del order[:batch_size]


def run_ppo(policy_dir: str | Path, reward_model_dir: str | Path, prompts: Sequence[PromptLike],
            out_dir: str | Path, config: PPOConfig = PPOConfig(),
            generator: RolloutGenerator | None = None, progress: Progress | None = None,
            eval_prompts: Sequence[PromptLike] | None = None) -> dict:
    """Run `config.steps` PPO steps from `policy_dir` against the RM and write the new policy.

    out_dir receives the HF policy folder, `metrics.jsonl` (one line per step) and `ppo_meta.json`
    (parent, reward model, config, final metrics). Written under `<out_dir>.partial` and renamed at
    the end. Returns the metadata's `final` dict.
    """
    from tqdm.auto import tqdm
    if not prompts:
        raise ValueError("run_ppo needs at least one prompt")
    set_threads(config.num_threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    final_dir, partial = fresh_output_dir(out_dir)
    started = time.time()
    trainer = PPOTrainer(policy_dir, reward_model_dir, config, generator)
    eval_messages = [prompt_messages(p) for p in eval_prompts or []]
    result: dict = {}
    if eval_messages:
        result["eval_reward_start"] = trainer.eval_reward(eval_messages)

    history = []
    bar = tqdm(total=config.steps, desc="ppo", disable=not config.show_progress_bar)
    batches = _prompt_batches([prompt_messages(p) for p in prompts], config.batch_size, config.steps,
                              random.Random(config.seed))
    with (partial / "metrics.jsonl").open("w") as log:
        for step, messages in enumerate(batches, 1):
            stats = {"step": step, **trainer.step(messages)}
            history.append(stats)
            log.write(json.dumps(stats) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(reward=f"{stats['reward_raw']:.3f}", kl=f"{stats['kl']:.2f}")
            if progress:
                progress("ppo", step, config.steps, stats)
    bar.close()

    if eval_messages:
        result["eval_reward_end"] = trainer.eval_reward(eval_messages)
    non_finite = [n for n, p in trainer.actor.named_parameters() if not torch.isfinite(p).all()]
    if non_finite:
        raise FloatingPointError(f"PPO produced non-finite weights: {non_finite[:5]}")
    trainer.save(partial)
    tail = history[-max(1, len(history) // 4):]  # last quarter: less noisy than the last step alone
    result.update({
        "last_step": history[-1],
        **{f"mean_last_{k}": sum(h[k] for h in tail) / len(tail)
           for k in ("reward_raw", "reward_normalised", "kl", "entropy", "response_length")},
        "first_reward_raw": history[0]["reward_raw"],
        "kl_coef": trainer.kl_ctl.value,
        "steps": len(history), "samples": len(history) * config.batch_size,
        "seconds": round(time.time() - started, 2),
    })
    meta = {"parent": str(policy_dir), "reward_model": str(reward_model_dir), "config": asdict(config),
            "n_prompts": len(prompts), "n_eval_prompts": len(eval_messages), "final": result}
    (partial / "ppo_meta.json").write_text(json.dumps(meta, indent=2))
    publish(partial, final_dir)
    if progress:
        progress("ppo_done", len(history), config.steps, result)
    return result
