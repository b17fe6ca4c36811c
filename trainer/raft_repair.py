"""RAFT's repair of degenerate greedy answers: after the fine-tuning (and the loop check, which can
only choose among epoch ends), the policy's greedy answers to the round's prompts that are still
degenerate by the gate's definition become negatives, unlearned by a few unlikelihood steps
(Welleck et al. 2019 on the model's own generations), then checked again.

Why: an answer such as "The thunderstorms." or "Hugging Face:" is the policy choosing to stop after
an opening fragment of its own style; sessions 14-15 measured such answers on ~2% of unseen prompts
after one round, so a served version shows one in 24 about half the time. The same fragment shows on
the round's own prompts (the loop check sees it), and unlearning that one stop — the EOS token after
the fragment — reaches the same habit elsewhere. A loop is unlearned on its repeated tokens, as the
sequence-level unlikelihood of the training steps does. An answer off the prompt has no single token
to blame and is left to the gate.

Each repair round: `repair_steps` optimizer steps of repair_weight x unlikelihood of the marked
tokens plus the likelihood of a batch of the answers RAFT kept (what the round taught stays taught),
then the round's prompts are decoded greedily again. The policy leaves with the weights that gave the
fewest degenerate answers (the later on a tie), so a repair that made things worse is given back.
"""
from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import Sequence

import torch

from common.degeneracy import degenerate_reasons, is_looping
from trainer import preference_math as prm
from trainer.data import user_text
from trainer.device import autocast, decode_autocast
from trainer.online import OnlineRun

Answer = tuple[list[int], list[int], str, list[str]]     # prompt ids, response ids, text, reasons


def repair_marks(response: Sequence[int], reasons: Sequence[str], eos_ids: Sequence[int], ngram: int) -> list[bool]:
    """Which tokens of a degenerate answer to unlearn: a loop's repeated tokens (a token n-gram that
    occurred before covers it); an answer that stopped far too early (or at once): its stop token,
    the choice to end there. Nothing for any other reason, or for a short answer cut off without a stop."""
    if any(r.startswith(("repeated", "one word repeated")) for r in reasons):
        return prm.repeated_ngram_mask(list(response), ngram)
    marks = [False] * len(response)
    if response and response[-1] in set(eos_ids) and any(r.startswith(("far too short", "empty")) for r in reasons):
        marks[-1] = True
    return marks


@torch.no_grad()
def greedy_answers(run: OnlineRun, messages: list[list[dict]]) -> list[tuple[list[int], list[int], str]]:
    """(prompt ids, response ids, text) of the policy's greedy answers: the decoding the gate and the
    report use."""
    p_ids = [run.prompt_ids(msg) for msg in messages]
    with decode_autocast(run.device):
        answers = run.generator.generate(p_ids, replace(run.sampling, greedy=True))
    return list(zip(p_ids, answers, run.tokenizer.batch_decode(answers, skip_special_tokens=True)))


@torch.no_grad()
def degenerate_greedy_answers(run: OnlineRun, messages: list[list[dict]], usual: list[str], config) -> list[Answer]:
    """The policy's greedy answers to `messages` that are degenerate by the gate's definition (against
    the prompt's typical sample); without `drop_degenerate` (text that is not language) only loops."""
    out = []
    for (p, r, text), msg, u in zip(greedy_answers(run, messages), messages, usual):
        if config.drop_degenerate:
            why = degenerate_reasons(text, user_text(msg), anchor_answer=u)
        else:
            why = ["repeated n-grams"] if is_looping(text) else []
        if why:
            out.append((p, r, text, why))
    return out


def repair_degenerate(run: OnlineRun, messages: list[list[dict]], usual: list[str],
                      kept: list[tuple[list[int], list[int]]], config, rng: random.Random) -> dict:
    """Up to `config.repair_rounds` rounds of repair (module docstring) while the greedy answers to
    `messages` include degenerate ones; leaves the actor with the fewest. Returns what it did."""
    started = time.time()
    bad = degenerate_greedy_answers(run, messages, usual, config)
    counts = [len(bad)]
    states = [None]                       # None: the weights the repair started from, copied lazily
    examples = [bad[0][2][:160]] if bad else []
    for _ in range(config.repair_rounds):
        targets = [(p, r, m) for p, r, _, why in bad if any(m := repair_marks(r, why, run.eos_ids, config.unlikelihood_ngram))]
        if not targets:
            break
        if states[0] is None:
            states[0] = _copy(run)
        for _step in range(config.repair_steps):
            _repair_step(run, targets, rng.sample(kept, min(len(kept), config.batch_size)), config)
        bad = degenerate_greedy_answers(run, messages, usual, config)
        counts.append(len(bad))
        states.append(_copy(run) if bad else None)   # a healthy last state is the one loaded now
        if bad:
            examples.append(bad[0][2][:160])
    best = min(range(len(counts)), key=lambda i: (counts[i], -i))
    if best != len(counts) - 1:
        run.actor.load_state_dict(states[best])
    return {"degenerate": counts, "kept_round": best, "prompts": len(messages), "examples": examples,
            "seconds": round(time.time() - started, 1)}


def marked_unlikelihood(run: OnlineRun, micro: list) -> torch.Tensor:
    """Unlikelihood of the marked tokens of (prompt ids, response ids, marks) items, on the actor."""
    with autocast(run.device):
        token_logp, real = run.token_logprobs(run.actor, [p for p, _, _ in micro], [r for _, r, _ in micro])
    width = token_logp.shape[1]
    marks = torch.tensor([m + [False] * (width - len(m)) for _, _, m in micro],
                         dtype=torch.float32, device=token_logp.device) * real
    return prm.unlikelihood_loss(token_logp.float(), marks)


def _repair_step(run: OnlineRun, targets: list, kept: list, config) -> None:
    """One optimizer step: repair_weight x unlikelihood of the marked tokens of `targets` plus the
    per-token likelihood of the `kept` answers, each averaged over its micro-batches."""
    size = config.micro_batch_size
    for s in range(0, len(targets), size):     # (no targets: the likelihood alone, as the tests use it)
        micro = targets[s:s + size]
        (config.repair_weight * marked_unlikelihood(run, micro) * len(micro) / len(targets)).backward()
    for s in range(0, len(kept), size):
        micro = kept[s:s + size]
        with autocast(run.device):
            token_logp, real = run.token_logprobs(run.actor, [p for p, _ in micro], [r for _, r in micro])
        loss = prm.rpo_nll(token_logp.float().sum(1), real.sum(1))
        (loss * len(micro) / len(kept)).backward()
    run.clip_and_step()


def _copy(run: OnlineRun) -> dict:
    return {k: v.detach().clone() for k, v in run.actor.state_dict().items()}
