"""What every policy algorithm shares: its inputs (`PolicyJob`), loading actor + anchor reference,
turning stored answers into token ids, sequence log-probs, and writing the finished checkpoint.

The algorithms (ppo, rloo, dpo, online_dpo, kto) are thin loops over these pieces plus their own
loss from `ppo_math` / `preference_math`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import torch

from trainer import ppo_math as pm
from trainer.data import PreferencePair, PromptItem, RatedAnswer, prompt_messages
from trainer.device import describe, resolve_device
from trainer.modeling import (answer_token_ids, eos_token_ids, fresh_output_dir, freeze_lower_layers, left_pad, load_causal_lm,
                              load_tokenizer, prompt_token_ids, publish, response_logits, right_pad,
                              set_threads)

Progress = Callable[[str, int, int, dict], None]
META_FILE = "train_meta.json"


@dataclass
class PolicyJob:
    """Data in, checkpoint out: everything a policy algorithm may use (each reads what it needs)."""
    policy_dir: Path                   # the policy to improve (the served version)
    reference_dir: Path                # the KL anchor (the deployment's anchor version)
    out_dir: Path                      # new folder for the trained policy
    prompts: list[PromptItem] = field(default_factory=list)       # for sampling (ppo, rloo, online_dpo)
    pairs: list[PreferencePair] = field(default_factory=list)     # human pairs (dpo; kto if use_pairs)
    rated: list[RatedAnswer] = field(default_factory=list)        # thumbs (kto)
    reward_model_dir: Path | None = None   # ppo, rloo, online_dpo
    critic_dir: Path | None = None         # ppo: the parent version's critic (None = from the RM)
    kl_state: dict | None = None           # the parent's KL controller state, resumed (ppo, rloo)
    kl_budget: float | None = None         # the most KL to the anchor the gate accepts (raft's brake holds a share)
    served_kl_to_anchor: float | None = None   # the policy's own KL to the anchor as its gate measured it (0 when
                                               # it is the anchor; None = unknown): raft's brake aims its next step by it


class PolicyRun:
    """Loads tokenizer and trainable actor, and the frozen anchor reference when first used, once,
    on the config's device."""

    def __init__(self, job: PolicyJob, config):
        set_threads(config.num_threads)
        torch.manual_seed(config.seed)
        self.job, self.config = job, config
        self.device = resolve_device(config.device)
        self.tokenizer = load_tokenizer(job.policy_dir)
        self.actor = load_causal_lm(job.policy_dir, self.device)
        freeze_lower_layers(self.actor.get_decoder(), config.trainable_layers)
        self.params = [p for p in self.actor.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr)
        self.eos_ids = eos_token_ids(self.actor, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        self.started = time.time()

    @cached_property
    def reference(self):
        """The frozen anchor, loaded on first use: RAFT reads it only for its KL brake (trainer/kl_brake.py)."""
        return load_causal_lm(self.job.reference_dir, self.device).requires_grad_(False)

    # ---------------------------------------------------------------- data -> token ids
    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return prompt_token_ids(self.tokenizer, messages, self.config.max_prompt_tokens)

    def answer_ids(self, answer: str, finished: bool = True) -> list[int]:
        """A stored answer as the policy emitted it: its tokens, then the end of turn if it finished."""
        return answer_token_ids(self.tokenizer, answer, self.eos_ids[0], self.config.max_answer_tokens, finished)

    def encode(self, messages: list[dict], answer: str, finished: bool = True) -> tuple[list[int], list[int]]:
        return self.prompt_ids(messages), self.answer_ids(answer, finished)

    # ---------------------------------------------------------------- log-probs
    def logprobs(self, model, prompts: Sequence[list[int]], responses: Sequence[list[int]]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ_t log π(y_t), |y|) per sequence at the sampling temperature; grads flow if enabled."""
        token_logp, r_mask = self.token_logprobs(model, prompts, responses)
        return (token_logp * r_mask).sum(1), r_mask.sum(1)

    def token_logprobs(self, model, prompts: Sequence[list[int]], responses: Sequence[list[int]]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log π(y_t) per response token, 0/1 mask of real tokens), both (B, T_response)."""
        logits, r_ids, r_mask = self._response_logits(model, prompts, responses)
        return pm.logprobs_from_logits(logits, r_ids), r_mask

    def token_and_stop_logprobs(self, model, prompts: Sequence[list[int]], responses: Sequence[list[int]]
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`token_logprobs` plus log π(stop) at each position (any end-of-sequence id), (B, T_response)."""
        logits, r_ids, r_mask = self._response_logits(model, prompts, responses)
        log_p = torch.log_softmax(logits.float(), dim=-1)
        stop = torch.logsumexp(log_p[..., list(self.eos_ids)], dim=-1)
        return log_p.gather(-1, r_ids.unsqueeze(-1)).squeeze(-1), r_mask, stop

    def _response_logits(self, model, prompts, responses):
        p_ids, p_mask = left_pad(prompts, self.pad_id)
        r_ids, r_mask = right_pad(responses, self.pad_id)
        ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
        logits = response_logits(model, ids, mask, r_ids.shape[1]) / self.config.temperature
        return logits, r_ids.to(logits.device), r_mask.to(logits.device).float()

    @torch.no_grad()
    def reference_logprobs(self, prompts, responses, batch_size: int = 16) -> torch.Tensor:
        """Anchor log-probs (no grad), in chunks: computed once per example for offline data."""
        out = [self.logprobs(self.reference, prompts[i:i + batch_size], responses[i:i + batch_size])[0]
               for i in range(0, len(prompts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    def clip_and_step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # ---------------------------------------------------------------- output
    def finish(self, algorithm: str, history: list[dict], result: dict,
               extra_save: Callable[[Path], None] | None = None, progress: Progress | None = None) -> dict:
        """Check, save and atomically publish the policy (+ metrics.jsonl, train_meta.json)."""
        non_finite = [n for n, p in self.actor.named_parameters() if not torch.isfinite(p).all()]
        if non_finite:
            raise FloatingPointError(f"{algorithm} produced non-finite weights: {non_finite[:5]}")
        final, partial = fresh_output_dir(self.job.out_dir)
        self.actor.save_pretrained(str(partial), safe_serialization=True)
        self.tokenizer.save_pretrained(str(partial))
        if extra_save:
            extra_save(partial)
        with (partial / "metrics.jsonl").open("w") as log:
            for h in history:
                log.write(json.dumps(h) + "\n")
        result = {**result, "steps": len(history), "seconds": round(time.time() - self.started, 2),
                  "device": describe(self.device)}
        if history:
            tail = history[-max(1, len(history) // 4):]  # last quarter: less noisy than the last step
            for k, v in history[-1].items():
                if isinstance(v, (int, float)) and k != "step":
                    result.setdefault(f"mean_last_{k}", sum(h.get(k, 0.0) for h in tail) / len(tail))
        meta = {"algorithm": algorithm, "parent": str(self.job.policy_dir),
                "reference": str(self.job.reference_dir),
                "reward_model": str(self.job.reward_model_dir) if self.job.reward_model_dir else None,
                "config": asdict(self.config), "final": result}
        (partial / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        publish(partial, final)
        if progress:
            progress(f"{algorithm}_done", len(history), len(history), result)
        return result


class PhaseClock:
    """Seconds spent per named phase: `lap(name)` books the time since the previous lap (or since
    the clock started) to `name`; phases that did not run book ~0."""
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.time()

    def lap(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 1)
        self._last = now


def log_step(name: str, stats: dict, total: int, history: list, bar, progress: Progress | None) -> None:
    """Record one optimizer step: history (-> metrics.jsonl), the tqdm bar, the progress callback."""
    history.append(stats)
    bar.update(1)
    if "reward_raw" in stats and "kl" in stats:
        bar.set_postfix(reward=f"{stats['reward_raw']:.3f}", kl=f"{stats['kl']:.2f}")
    if progress:
        progress(name, stats["step"], total, stats)


def batches(items: list, size: int, epochs: int, rng) -> list[list]:
    """`epochs` reshuffled passes over items, cut into batches of `size` (last one may be short)."""
    out = []
    for _ in range(epochs):
        order = list(items)
        rng.shuffle(order)
        out += [order[i:i + size] for i in range(0, len(order), size)]
    return out


def prompt_cycle(prompts: Sequence, batch_size: int, steps: int, rng):
    """`steps` batches walking through reshuffled epochs of the prompts."""
    order: list = []
    for _ in range(steps):
        while len(order) < batch_size:
            fresh = [prompt_messages(p) for p in prompts]
            rng.shuffle(fresh)
            order += fresh
        yield order[:batch_size]
        del order[:batch_size]
