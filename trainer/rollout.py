"""Rollouts: the pluggable generator interface and the default HF `generate` implementation.

The PPO loop only sees `RolloutGenerator`: prompt token ids in, response token ids out. A vLLM
engine plugs in by implementing the same two methods (`sync_weights` would push the actor's new
weights into the engine, e.g. through `load_weights`), without touching the algorithm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from trainer.decoding import (compacted_decode, greedy_processors, sampling_processors, shared_prompt_cache,
                              unsupported_settings)
from trainer.modeling import left_pad


@dataclass
class SamplingSettings:
    """How to sample responses; mirrors the PPOConfig rollout fields."""
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    eos_token_ids: list[int] = field(default_factory=list)  # any of these ends a response
    pad_token_id: int = 0


@runtime_checkable
class RolloutGenerator(Protocol):
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the generator sample from `model`'s current weights (called before each rollout)."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings) -> list[list[int]]:
        """One response per prompt: its token ids, ending with the EOS if one was produced, no padding."""


def trim_response(tokens: Sequence[int], eos_ids: Sequence[int], pad_id: int) -> list[int]:
    """Cut a generated row after its first EOS (kept); without EOS drop trailing padding only."""
    out: list[int] = []
    for t in tokens:
        out.append(int(t))
        if t in eos_ids:
            return out
    while out and out[-1] == pad_id and pad_id not in eos_ids:
        out.pop()
    return out


class HFGenerator:
    """Samples with `model.generate` on the live actor (shared module, so syncing is free)."""

    def __init__(self, model: torch.nn.Module | None = None, batch_size: int = 64):
        # 64 sequences per `generate` call: measured (SmolLM2, 2 CPU cores, 64 sampled tokens) 0.57 s
        # per answer at 32, 0.51 at 64, 0.50 at 96 (session 23)
        self.model, self.batch_size = model, batch_size

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings) -> list[list[int]]:
        if self.model is None:
            raise RuntimeError("HFGenerator has no model: call sync_weights(model) first")
        responses: list[list[int]] = []
        for i in range(0, len(prompt_ids), self.batch_size):
            chunk = prompt_ids[i:i + self.batch_size]
            ids, mask = left_pad(chunk, sampling.pad_token_id)
            device = next(self.model.parameters()).device
            ids, mask = ids.to(device), mask.to(device)
            if not unsupported_settings(self.model.generation_config):
                # `generate`'s decoding, with each row leaving the batch when it ends (trainer/decoding.py)
                config = self.model.generation_config
                processors = (greedy_processors(config, output_penalties(config, ids.shape[1])) if sampling.greedy
                              else sampling_processors(sampling.temperature, sampling.top_k, sampling.top_p))
                rows = compacted_decode(self.model, ids, mask, sampling.max_new_tokens, sampling.eos_token_ids,
                                        processors, sample=not sampling.greedy)
                responses += [trim_response(row, sampling.eos_token_ids, sampling.pad_token_id) for row in rows]
                continue
            kwargs = dict(max_new_tokens=sampling.max_new_tokens, eos_token_id=sampling.eos_token_ids,
                          pad_token_id=sampling.pad_token_id)
            if sampling.greedy:
                # the decoding users get: HF applies the checkpoint's repetition_penalty itself; its
                # presence/frequency penalties (vLLM's, which HF lacks) are applied here
                kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None,
                              logits_processor=output_penalties(self.model.generation_config, ids.shape[1]))
            else:
                # explicit values override the checkpoint's generation_config (e.g. top_k=50,
                # repetition_penalty): PPO needs samples from π itself. top_k=0 disables top-k.
                kwargs.update(do_sample=True, temperature=sampling.temperature,
                              top_k=sampling.top_k, top_p=sampling.top_p, repetition_penalty=1.0)
            cache = shared_prompt_cache(self.model, ids, mask)    # e.g. RAFT's k samples of each prompt
            if cache is not None:
                kwargs["past_key_values"] = cache
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row in out[:, ids.shape[1]:].tolist():
                responses.append(trim_response(row, sampling.eos_token_ids, sampling.pad_token_id))
        return responses


class OutputPenalties(LogitsProcessor):
    """OpenAI's and vLLM's presence and frequency penalties, which HF `generate` does not have: the
    logit of every token already in the *answer* (not the prompt) is lowered by `presence`, and by
    `frequency` per time it occurs there — vLLM's order and arithmetic (after the repetition penalty,
    on the raw logits). Why not the prompt: a penalty on the prompt's words also pushes an answer off
    the subject it was asked about (CTRL's repetition penalty does that)."""

    def __init__(self, prompt_len: int, presence: float = 0.0, frequency: float = 0.0):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answer = input_ids[:, self.prompt_len:]
        if answer.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def output_penalties(generation_config, prompt_len: int) -> LogitsProcessorList:
    """The presence/frequency penalties a checkpoint's generation_config.json sets (vLLM reads the same
    keys when serving it), as a processor list for `generate`; empty when it sets none."""
    presence = float(getattr(generation_config, "presence_penalty", None) or 0.0)
    frequency = float(getattr(generation_config, "frequency_penalty", None) or 0.0)
    if not (presence or frequency):
        return LogitsProcessorList()
    return LogitsProcessorList([OutputPenalties(prompt_len, presence, frequency)])
