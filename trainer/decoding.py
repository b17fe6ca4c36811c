"""Decoding helpers around HF `generate` that skip work whose result is thrown away.

Each answer leaves the batch once it has ended (`compacted_decode`, greedy or sampled). HF `generate`
keeps every row of a batch in every forward pass until the longest answer ends (or the token budget),
so an answer that ended early still costs a full step each time, and on 2 CPU cores a step's cost
grows with its rows. The trained versions end most answers early: a round-1 candidate's 188 greedy gate
answers (SmolLM2, 64-token budget, session 31) averaged 41 tokens, and in batches of 64 the ended rows
were 36% of the row-steps `generate` ran; RAFT's samples in rounds 2-3 averaged 31-34 tokens of 64 (93%
ended). A finished row leaves the batch and the KV cache (`Cache.batch_select_indices`).

Greedy: the same answers as `generate` (tests/trainer/test_decoding.py compares them token for token):
the same positions (left padding skipped), the checkpoint's repetition penalty over prompt and answer
(padding included, as `generate` does), then the presence/frequency penalties
(`trainer.rollout.OutputPenalties`). Sampled: `generate`'s processors in its order (repetition
penalty, temperature, top-k, top-p; HF's own classes) and its draw (`torch.multinomial` over the
softmax, with the ended rows kept in the draw, `_draw`), so a seed gives `generate`'s samples token for
token. A checkpoint whose generation config asks for any other processor (`unsupported_settings`)
keeps `generate`.

Repeated prompts: a batch that holds a prompt several times (RAFT's k samples of each prompt, the KL
checks' samples) computes each distinct prompt's KV cache once (`shared_prompt_cache`) and hands it
to the decoding, `generate` included, which then runs only each row's last prompt token. No random
number is drawn before the first answer token, so `generate`'s samples are unchanged by it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import (DynamicCache, LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

from trainer.modeling import position_ids_from_mask

# generation-config fields that add a logits processor (or change the search) in HF `generate`, with
# the values that leave them off; the compacted loop does not implement them
_OFF = {"no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
        "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
        "forced_eos_token_id": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
        "sequence_bias": (None,), "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False),
        "guidance_scale": (None, 1, 1.0), "watermarking_config": (None,), "num_beams": (None, 1),
        "penalty_alpha": (None,), "force_words_ids": (None,), "constraints": (None,), "top_h": (None,),
        "min_p": (None,), "typical_p": (None, 1, 1.0), "epsilon_cutoff": (None, 0, 0.0), "eta_cutoff": (None, 0, 0.0)}


def unsupported_settings(generation_config) -> list[str]:
    """The fields of `generation_config` set to something `compacted_decode` does not do ([] = it can)."""
    return [name for name, off in _OFF.items() if getattr(generation_config, name, None) not in off]


def greedy_processors(generation_config, extra: LogitsProcessorList) -> LogitsProcessorList:
    """`generate`'s greedy processors for a supported config: its repetition penalty, then `extra`."""
    penalty = getattr(generation_config, "repetition_penalty", None)
    first = [RepetitionPenaltyLogitsProcessor(float(penalty))] if penalty not in (None, 1, 1.0) else []
    return LogitsProcessorList(first + list(extra))


def sampling_processors(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """`generate`'s sampling warpers for explicit temperature / top-k (0 = off) / top-p, in its order
    (HFGenerator samples with repetition penalty 1, so no other processor applies)."""
    warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    warpers += [TopKLogitsWarper(top_k=top_k)] if top_k else []
    warpers += [TopPLogitsWarper(top_p=top_p)] if top_p < 1.0 else []
    return LogitsProcessorList(warpers)


@torch.no_grad()
def compacted_decode(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos_ids: Sequence[int],
                     processors: LogitsProcessorList, sample: bool = False) -> list[list[int]]:
    """Answers (token ids, ending with the EOS when one was produced) to the left-padded prompts
    `ids` / `mask`, at most `max_new_tokens` each, greedy or (`sample`) drawn from the processed
    distribution; a row leaves the batch when it ends."""
    answers: list[list[int]] = [[] for _ in range(ids.shape[0])]
    rows = torch.arange(ids.shape[0], device=ids.device)     # which answer each live row writes
    eos = torch.tensor(list(eos_ids), device=ids.device)
    seq = ids                                               # prompt + answer so far: the penalties read it
    cache = shared_prompt_cache(model, ids, mask)
    if cache is None:
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
    else:
        out = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                    past_key_values=cache, use_cache=True)
    for step in range(max_new_tokens):
        scores = processors(seq, out.logits[:, -1, :].float())
        nxt = _draw(torch.softmax(scores, -1), rows, len(answers)) if sample else scores.argmax(-1)
        for row, token in zip(rows.tolist(), nxt.tolist()):
            answers[row].append(token)
        if step == max_new_tokens - 1:
            break
        live = ~torch.isin(nxt, eos)
        if not live.any():
            break
        if not live.all():
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, seq, mask, nxt = rows[keep], seq[keep], mask[keep], nxt[keep]
        seq = torch.cat([seq, nxt[:, None]], 1)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], 1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                    past_key_values=cache, use_cache=True)
    return answers


def _draw(probs: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """One token per live row from `probs`, drawn as `generate` draws for the whole batch: the ended
    rows stay in the draw (as a certain token 0), because `torch.multinomial` takes the same random
    numbers for a batch of the same shape whatever it holds — so each live row gets the token
    `generate` would have given it, and a seed reproduces `generate`'s samples (checked on CPU by
    tests/trainer/test_decoding.py; on any device each live row is a draw from its own distribution)."""
    full = probs.new_zeros((batch, probs.shape[1]))
    full[:, 0] = 1.0
    full[rows] = probs
    return torch.multinomial(full, num_samples=1).squeeze(1)[rows]


@torch.no_grad()
def shared_prompt_cache(model, ids: torch.Tensor, mask: torch.Tensor) -> DynamicCache | None:
    """The KV cache of each row's prompt but its last token, computed once per distinct prompt and
    copied to the rows that repeat it; None when no prompt repeats (nothing to share)."""
    if ids.shape[1] < 2:
        return None
    distinct, inverse = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)
    if distinct.shape[0] == ids.shape[0]:
        return None
    width = ids.shape[1] - 1
    d_ids, d_mask = distinct[:, :width], distinct[:, ids.shape[1]:ids.shape[1] + width]
    cache = DynamicCache(config=model.config)
    model(input_ids=d_ids, attention_mask=d_mask, position_ids=position_ids_from_mask(d_mask),
          past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_select_indices(inverse)
    return cache
