"""Reward-ranked fine-tuning (RAFT / rejection-sampling fine-tuning): best-of-k answers of the
policy itself, as ranked by the reward model, become its supervised targets.

One run = one round of expert iteration: sample k answers per prompt from the served policy,
score them (the RM, normalised, minus the penalty for answers cut off without EOS), drop every
degenerate one (common/degeneracy.py: the gate's definition, so the policy is never taught what
the gate refuses), optionally every one that opens with a fragment (`drop_fragment_openings`) and every one cut
off without EOS (not a whole answer), keep each prompt's best when it clearly beats its siblings
(`preference_math.best_of_group`), then maximise the kept answers' per-token likelihood
(EOS included: finishing in time is part of what is learned).

Cut-off samples are closed at their last full sentence (`close_cut_answers`, trainer/raft_candidates.py): on a small model and
a 64-token budget most samples run past the limit, and "the same answer, stopped where a sentence
ends" is a candidate the policy nearly wrote. It is ranked by the RM like the rest — nothing says
shorter wins — and when it is kept the policy learns to plan its answer to the budget.

Earlier rounds' answers are replayed (`replay_max`): every version RAFT writes carries the answers it
was taught (`raft_kept.jsonl`, with those of its ancestors), and the next round, which starts from
that version, takes one more pass over a random subset of them beside its own answers — so a round
of a few dozen answers does not unlearn what the earlier rounds taught (Llama 2 kept the best
samples of all earlier iterations in each rejection-sampling round, for this reason).
Optionally (`start_from_anchor`, off: measured no gain) the fine-tuning starts from the anchor, not
from the served version that sampled: the anchor learns this round's answers and all earlier rounds'
together, every epoch (ReST-EM fine-tunes the base model at each iteration, against overfitting), so
the drift after n rounds is that of one fine-tuning, not of n stacked ones.

Loops are checked before the policy leaves (`loop_check`): its greedy answers to the round's prompts
(the decoding the gate and the report use), after the last epoch and, while some are degenerate, after
the earlier ones; it keeps the epoch with the fewest. Fine-tuning sharpens a small model, and a sharper
one loops more under greedy decoding; the round's own prompts show it before the gate's held-out ones.
What the kept epoch still gets wrong there can be repaired (`repair_rounds`, trainer/raft_repair.py):
unlikelihood on those answers' own stop token or repeated tokens, then a re-check.

A round's drift is braked (`kl_brake_share`, trainer/kl_brake.py): when the policy's sampled KL to the
anchor is above a share of the deployment's budget, its weights are pulled back toward the served ones.

A sample that opens with a fragment ("The storm. Thunderstorms are ...") can have the token that closed
the fragment unlearned (`fragment_unlikelihood_weight`, off: the habit moved to "The trains..." and loops).

Loops are also unlearned (`unlikelihood_weight`, 0.3): the policy's own answers that repeat themselves — among
the samples and its greedy answers to the round's prompts, the decoding the gate and the report
use — add a sequence-level unlikelihood term (Welleck et al. 2019) on their repeated tokens to each
step. Likelihood training on a few dozen answers sharpens the policy, and a sharper small model
loops more under greedy decoding: the gate's most frequent refusal before this term.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from common.degeneracy import degenerate_reasons, fragment_opening, length_floor, repeated_ngram_share, words
from trainer import preference_math as prm
from trainer.config import RAFTConfig
from trainer.data import prompt_messages, user_text
from trainer.device import autocast
from trainer.kl_brake import apply_brake
from trainer.modeling import load_causal_lm
from trainer.online import OnlineRun
from trainer.policy_base import PhaseClock, PolicyJob, Progress, log_step
from trainer.raft_candidates import fragment_end, sample_candidates
from trainer.raft_repair import degenerate_greedy_answers, greedy_answers, marked_unlikelihood, repair_degenerate

KEPT_FILE = "raft_kept.jsonl"   # in a RAFT version's folder: the answers it (and its ancestors) learned


def run_raft(job: PolicyJob, config: RAFTConfig = RAFTConfig(), progress: Progress | None = None) -> dict:
    if config.k < 2:
        raise ValueError("raft needs k >= 2 answers per prompt to rank")
    run = OnlineRun(job, config)
    run.generator.batch_size = config.generation_batch_size
    brake = bool(config.kl_brake_share and job.kl_budget)
    start = [p.detach().clone() for p in run.params] if brake else []   # the served weights (kl_brake)
    # the k candidates are drawn at sample_temperature; every log-prob (training included) stays at temperature
    run.sampling = replace(run.sampling, temperature=config.sample_temperature or config.temperature)
    messages = [prompt_messages(p) for p in job.prompts]
    rng = random.Random(config.seed)
    if config.max_prompts and len(messages) > config.max_prompts:
        messages = rng.sample(messages, config.max_prompts)

    # 1. sample and rank (no grad): k answers per prompt, plus (close_cut_answers) a candidate closed
    # at its last full sentence for each cut-off one; grouped by prompt, m candidates each
    k = config.k
    clock = PhaseClock()        # seconds per phase, in the version's metadata: where a round's time goes
    prompts, responses, scores, raw, has_eos, made = sample_candidates(run, messages, config)
    m = len(responses) // len(messages)
    texts = run.tokenizer.batch_decode(responses, skip_special_tokens=True)
    # degenerate by the gate's definition, against what the policy usually says to that prompt
    # (its median-length sample) in place of the anchor's answer: a 2-word quip is "far too short"
    usual = [typical_answer(texts[p * m:p * m + k]) for p in range(len(messages))]
    samples = torch.tensor([i % m < k for i in range(len(responses))])   # the k real samples of each row
    # samples that open with a fragment: counted always (language only), dropped with drop_fragment_openings
    fragment = [config.drop_degenerate and fragment_opening(t, usual[i // m]) for i, t in enumerate(texts)]
    eligible = torch.tensor([(bool(samples[i]) or made[i])
                             and not (config.drop_degenerate and degenerate_reasons(
                                 t, user_text(messages[i // m]), anchor_answer=usual[i // m],
                                 min_length_ratio=config.min_length_ratio,
                                 max_repeated_ngram_share=config.max_repeated_ngram_share))
                             and not (config.drop_fragment_openings and fragment[i])
                             and (bool(has_eos[i]) or not config.require_eos)
                             for i, t in enumerate(texts)]).view(-1, m)
    kept = prm.best_of_group(scores.view(-1, m), eligible, config.min_advantage, source=[j % k for j in range(m)])
    rows = [i * m + j for i, j in kept]
    sample_stats = {
        "prompts": len(messages), "answers": int(samples.sum()), "kept": len(rows),
        "closed_candidates": sum(made), "kept_closed": sum(made[r] for r in rows),
        "ineligible_samples": int((~eligible.view(-1)[samples]).sum()),
        "fragment_openings": sum(fragment[i] for i in range(len(texts)) if samples[i]),
        "eos_fraction": has_eos[samples].float().mean().item(),
        "kept_eos_fraction": sum(bool(has_eos[r]) for r in rows) / max(1, len(rows)),
        "reward_raw": raw[samples].mean().item(), "kept_reward_raw": (raw[rows].mean().item() if rows else 0.0),
        "response_length": sum(len(r) for r, s in zip(responses, samples) if s) / int(samples.sum()),
        "kept_response_length": sum(len(responses[r]) for r in rows) / max(1, len(rows))}
    clock.lap("sample_and_rank")
    if progress:
        progress("raft_sampled", 0, 0, sample_stats)
    if not rows:
        raise ValueError("raft: no prompt had a best answer clearly above its siblings "
                         f"(min_advantage {config.min_advantage}); nothing to learn this round")

    # 2. the policy's own loops, to unlearn (sequence-level unlikelihood): repetitive samples, and
    # greedy answers to the same prompts that repeat themselves
    loops = find_loops(run, messages, [(prompts[i], responses[i], texts[i]) for i in range(len(responses))
                                       if samples[i]], config) if config.unlikelihood_weight > 0 else []
    sample_stats.update(loops=len(loops), loop_tokens=sum(sum(mask) for _, _, mask in loops))
    # 2b. the openings of all its samples, where it should not stop (opening_stop_weight): each cut to
    # its leading `opening_share` of tokens, which is all the term looks at
    openings = [(prompts[i], list(responses[i][:math.ceil(config.opening_share * len(responses[i]))]))
                for i in range(len(responses)) if samples[i]] if config.opening_stop_weight > 0 else []
    rng.shuffle(openings)
    # 2c. the fragment openings among its samples (fragment_unlikelihood_weight): the token that closed each
    fragments = fragment_targets(run, [(prompts[i], responses[i], usual[i // m]) for i in range(len(responses))
                                       if samples[i] and fragment[i]]) if config.fragment_unlikelihood_weight > 0 else []
    sample_stats.update(fragment_targets=len(fragments))
    clock.lap("find_loops")

    # 3. supervised fine-tuning on the kept answers (per-token NLL, EOS included) and one pass over
    # the replayed answers of earlier rounds, plus the unlikelihood of the looping tokens
    earlier = read_kept(job.policy_dir)
    restart = config.start_from_anchor and Path(job.reference_dir).resolve() != Path(job.policy_dir).resolve()
    if restart:     # ReST-EM: the anchor learns what every round kept, each epoch
        run.actor.load_state_dict(load_causal_lm(job.reference_dir).state_dict())
        replayed = earlier[: config.anchor_replay_max]
    else:           # continue from the served version: one rehearsal pass over a sample of earlier answers
        replayed = rng.sample(earlier, min(len(earlier), config.replay_max))
    first = len(prompts)
    prompts = prompts + [r["prompt_ids"] for r in replayed]
    responses = responses + [r["response_ids"] for r in replayed]
    sample_stats.update(replayed=len(replayed), replay_pool=len(earlier), started_from="anchor" if restart else "served")
    again = list(range(first, len(prompts)))
    # the answers that end where a cut-off sample was closed (this round's and replayed ones)
    closed_rows = {r for r in rows if made[r]} | {first + j for j, rec in enumerate(replayed) if rec.get("closed")}
    plan = (replay_plan(rows + again, [], config.batch_size, config.epochs, rng) if restart
            else replay_plan(rows, again, config.batch_size, config.epochs, rng))
    batches = [(e, b) for e, epoch in enumerate(plan) for b in epoch]
    history: list[dict] = []
    snapshots: list[dict] = []     # the weights at the end of each epoch but the last (loop_check)
    bar = tqdm(total=len(batches), desc="raft", disable=not config.show_progress_bar)
    for step, (epoch, batch) in enumerate(batches, 1):
        total = 0.0
        for s in range(0, len(batch), config.micro_batch_size):
            micro = batch[s:s + config.micro_batch_size]
            micro_p, micro_r = [prompts[r] for r in micro], [responses[r] for r in micro]
            with autocast(run.device):
                if config.early_stop_weight > 0:
                    token_logp, real, stop_logp = run.token_and_stop_logprobs(run.actor, micro_p, micro_r)
                else:
                    token_logp, real = run.token_logprobs(run.actor, micro_p, micro_r)
            weights = closing_weights(micro_r, [r in closed_rows for r in micro], config.closed_eos_weight, real)
            loss = prm.rpo_nll((token_logp.float() * weights).sum(1), real.sum(1))
            if config.early_stop_weight > 0:
                loss = loss + config.early_stop_weight * prm.unlikelihood_loss(
                    stop_logp, not_ended_mask(micro_r, run.eos_ids, real, config.early_stop_share))
            (loss * len(micro) / len(batch)).backward()
            total += loss.item() * len(micro) / len(batch)
        stats = {"step": step, "nll": total}
        if loops:
            stats["unlikelihood"] = _unlikelihood_step(run, loops, step, config)
        if openings:
            stats["opening_stop"] = _opening_stop_step(run, openings, step, config)
        if fragments:
            stats["fragment_unlikelihood"] = _cycled_step(fragments, step, config.fragment_batch, config.micro_batch_size,
                                                          config.fragment_unlikelihood_weight,
                                                          lambda micro: marked_unlikelihood(run, micro))
        log_step("raft", {**stats, "grad_norm": run.clip_and_step()}, len(batches), history, bar, progress)
        if config.loop_check and step < len(batches) and batches[step][0] != epoch:
            snapshots.append({k: v.detach().clone() for k, v in run.actor.state_dict().items()})
    bar.close()
    clock.lap("fine_tune")
    if config.loop_check:
        check = check_loops(run, messages, usual, snapshots, config)
        counts = check["degenerate_greedy"]
        sample_stats.update(loop_check=check, loop_check_kept_epoch=check["kept_epoch"],   # flat: version metadata
                            loop_check_degenerate_last=counts[str(check["of_epochs"])],
                            loop_check_degenerate_kept=counts[str(check["kept_epoch"])],
                            loop_check_seconds=check["seconds"])
    clock.lap("loop_check")
    if config.repair_rounds and (not config.loop_check or sample_stats["loop_check_degenerate_kept"]):
        repair = repair_degenerate(run, messages, usual, [(prompts[r], responses[r]) for r in rows], config, rng)
        sample_stats.update(repair=repair, repair_degenerate_before=repair["degenerate"][0],
                            repair_degenerate_after=repair["degenerate"][repair["kept_round"]],
                            repair_seconds=repair["seconds"])
    clock.lap("repair")
    if brake:
        held = apply_brake(run, messages, start, config.kl_brake_share * job.kl_budget, config, job.served_kl_to_anchor)
        sample_stats.update(kl_brake=held, kl_brake_alpha=held["alpha"],     # flat: version metadata
                            kl_brake_estimate=held["kl"], kl_brake_seconds=held["seconds"])
    clock.lap("kl_brake")
    sample_stats["phase_seconds"] = clock.seconds
    taught = [{"prompt_ids": list(prompts[r]), "response_ids": list(responses[r]),
               "prompt": user_text(messages[r // m]), "answer": texts[r], "closed": bool(made[r])} for r in rows]
    keep = (taught + earlier)[: config.replay_keep]
    return run.finish("raft", history, {**sample_stats, "k": config.k, "epochs": config.epochs},
                      extra_save=lambda folder: write_kept(folder, keep), progress=progress)


def closing_weights(responses: Sequence[list[int]], closed: Sequence[bool], eos_weight: float,
                    real: torch.Tensor) -> torch.Tensor:
    """(B, T) per-token weights of the likelihood: 1 at every real token, except `eos_weight` at the
    last token (the EOS appended when it was closed) of an answer that was closed at a sentence end."""
    weights = real.clone()
    for i, (r, c) in enumerate(zip(responses, closed)):
        if c and r:
            weights[i, len(r) - 1] = eos_weight * real[i, len(r) - 1]
    return weights


def not_ended_mask(responses: Sequence[list[int]], stop_ids: Sequence[int], real: torch.Tensor,
                   share: float = 1.0) -> torch.Tensor:
    """(B, T) 1 where the answer did not end: a real token that is not an end-of-sequence id, among
    the first `share` of the answer's tokens (rounded up; 1.0 = all of them). There, π(stop) should be
    ~0 (the writer went on); the early-stop unlikelihood pushes it down."""
    stops = set(stop_ids)
    marks = []
    for r in responses:
        span = math.ceil(share * len(r))
        marks.append([0.0 if (t in stops or i >= span) else 1.0 for i, t in enumerate(r)] + [0.0] * (real.shape[1] - len(r)))
    return torch.tensor(marks, dtype=real.dtype, device=real.device) * real


def replay_plan(rows: list, replay: list, size: int, epochs: int, rng: random.Random) -> list[list[list]]:
    """`epochs` reshuffled passes over `rows`, the first of them mixed with one pass over `replay`
    (earlier rounds' answers: rehearsed once, not relearned `epochs` times): per epoch, its batches
    of `size`."""
    plan = []
    for e in range(epochs):
        order = list(rows) + (list(replay) if e == 0 else [])
        rng.shuffle(order)
        plan.append([order[i:i + size] for i in range(0, len(order), size)])
    return plan


def fewest_loops(counts: dict[int, int]) -> int:
    """The epoch (key) whose weights gave the fewest degenerate greedy answers; the later on a tie
    (it learned more at the same health)."""
    return min(counts, key=lambda e: (counts[e], -e))


@torch.no_grad()
def check_loops(run: OnlineRun, messages: list[list[dict]], usual: list[str], snapshots: list[dict],
                config: RAFTConfig) -> dict:
    """Greedy answers to the round's prompts (the decoding the gate and the report use) after the
    last epoch; while some are degenerate, the same for the earlier epochs' weights (`snapshots`,
    newest last), back to one with none. The policy keeps the epoch with the fewest (`fewest_loops`).
    Why: a sharper small model loops more under greedy decoding, and a loop in 1 of ~33 gate answers
    was the gate's most frequent refusal (sessions 7 and 9); the round's own prompts show it first."""
    started = time.time()
    last = len(snapshots)
    final = {k: v.detach().clone() for k, v in run.actor.state_dict().items()} if snapshots else None
    states = snapshots + [final]
    counts: dict[int, int] = {}
    examples: dict[int, str] = {}
    for e in range(last, -1, -1):
        if e != last:
            run.actor.load_state_dict(states[e])
        bad = _degenerate_greedy(run, messages, usual, config)
        counts[e] = len(bad)
        if bad:
            examples[e] = bad[0][:160]
        if not bad:
            break
    chosen = fewest_loops(counts)
    if chosen != min(counts):            # the weights loaded now are those of the earliest epoch checked
        run.actor.load_state_dict(states[chosen])
    return {"degenerate_greedy": {str(e + 1): counts[e] for e in sorted(counts)}, "prompts": len(messages),
            "kept_epoch": chosen + 1, "of_epochs": last + 1, "seconds": round(time.time() - started, 1),
            "examples": {str(e + 1): t for e, t in sorted(examples.items())}}


def _degenerate_greedy(run: OnlineRun, messages: list[list[dict]], usual: list[str], config: RAFTConfig) -> list[str]:
    """The texts of the policy's degenerate greedy answers to `messages` (raft_repair's definition)."""
    return [text for _, _, text, _ in degenerate_greedy_answers(run, messages, usual, config)]


def read_kept(folder: str | Path) -> list[dict]:
    """The answers a RAFT version was taught, newest first ([] for any other folder). Each record:
    prompt_ids, response_ids (EOS included; the deployment's tokenizer), prompt, answer (text)."""
    path = Path(folder) / KEPT_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_kept(folder: str | Path, records: list[dict]) -> None:
    with (Path(folder) / KEPT_FILE).open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def typical_answer(texts: list[str]) -> str:
    """The median-length answer (by words) of a prompt's samples: the yardstick for "far too short"."""
    return sorted(texts, key=lambda t: len(words(t)))[len(texts) // 2]


def _cycled_step(items: list, step: int, batch: int, micro_size: int, weight: float, loss_of) -> float:
    """Backward of weight x the mean of `loss_of(micro)` over this step's share of `items` (cycled:
    step s takes items s*n .. s*n+n-1 modulo their number); returns that mean."""
    n = min(batch, len(items))
    chosen = [items[(step * n + j) % len(items)] for j in range(n)]
    total = 0.0
    for s in range(0, n, micro_size):
        micro = chosen[s:s + micro_size]
        loss = loss_of(micro)
        (weight * loss * len(micro) / n).backward()
        total += loss.item() * len(micro) / n
    return total


def _unlikelihood_step(run: OnlineRun, loops: list, step: int, config: RAFTConfig) -> float:
    """Backward of weight x unlikelihood on this step's share of the loops (cycled); returns it."""
    return _cycled_step(loops, step, config.unlikelihood_batch, config.micro_batch_size, config.unlikelihood_weight,
                        lambda micro: marked_unlikelihood(run, micro))


def _opening_stop_step(run: OnlineRun, openings: list, step: int, config: RAFTConfig) -> float:
    """Backward of opening_stop_weight x the unlikelihood of stopping anywhere in this step's share of
    the sample openings (cycled); returns it. Near zero while π(EOS) there is near zero (as in v0):
    it acts where fine-tuning starts to make the policy stop after an opening fragment."""
    def loss_of(micro):
        with autocast(run.device):
            _, real, stop_logp = run.token_and_stop_logprobs(run.actor, [p for p, _ in micro], [r for _, r in micro])
        return prm.unlikelihood_loss(stop_logp, not_ended_mask([r for _, r in micro], run.eos_ids, real))
    return _cycled_step(openings, step, config.opening_batch, config.micro_batch_size, config.opening_stop_weight, loss_of)


def fragment_targets(run: OnlineRun, samples: list[tuple[list[int], list[int], str]]) -> list:
    """(prompt ids, response ids up to the fragment's end, mark on its last token) for each (prompt ids,
    response ids, the prompt's usual answer) whose first sentence is a fragment by `fragment_end`."""
    out = []
    for p, r, usual in samples:
        n = fragment_end([run.tokenizer.decode([t]) for t in r], length_floor(usual))
        if n:
            out.append((p, list(r[:n]), [False] * (n - 1) + [True]))
    return out


@torch.no_grad()
def find_loops(run: OnlineRun, messages: list[list[dict]], samples: list[tuple[list[int], list[int], str]],
               config: RAFTConfig) -> list[tuple[list[int], list[int], list[bool]]]:
    """(prompt ids, response ids, repeat mask) of every answer that repeats more than
    `max_repeated_ngram_share` of its word 3-grams: among `samples` (prompt ids, response ids,
    text) and, with `unlikelihood_greedy`, the policy's greedy answers to `messages`."""
    found = list(samples)
    if config.unlikelihood_greedy:
        found += greedy_answers(run, messages)
    out = []
    for p, r, text in found:
        if repeated_ngram_share(words(text), 3) > config.max_repeated_ngram_share:
            mask = prm.repeated_ngram_mask(r, config.unlikelihood_ngram)
            if any(mask):
                out.append((p, r, mask))
    return out
